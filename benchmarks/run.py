"""Run the benchmark suite: every pool in every scenario, each (pool, scenario)
in a fresh process, against one throwaway server; write benchmarks/results/
(results.* for S1-S6, s7.* for S7).

    python benchmarks/run.py [--quick] [--only S1,S3] [--pools ours,psycopg_pool] [--dsn DSN]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import psycopg2
import report
from environment import DSN_ENV, ROOT, Target, benchmark_server, default_cpu
from peers import ADAPTERS
from psycopg2.extensions import make_dsn
from scenarios import HOLD_SECONDS, SCENARIOS, SLEEP_2MS, Scenario, parameters

from tests.tcpproxy import TcpProxy  # importable once environment is imported

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
WORKER = HERE / "scenarios.py"
OLD_PACKAGE = "psycopg2-pool==1.2"
# Seconds one (pool, scenario) process may take before it is counted as failed.
WORKER_TIMEOUT = 300


def old_package_dir() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "psycopg2_pool-bench" / "psycopg2-pool-1.2"


def install_old_package() -> Path:
    """Install psycopg2-pool 1.2 (same import name as ours) into a directory of its own."""
    target = old_package_dir()
    if not (target / "psycopg2_pool" / "__init__.py").exists():
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
             OLD_PACKAGE],
            check=True,
            capture_output=True,
            text=True,
        )  # fmt: skip
    return target


def worker_env(isolated: bool) -> dict[str, str]:
    """The environment of a worker: our repo on sys.path, or psycopg2-pool 1.2's directory."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(old_package_dir() if isolated else ROOT)
    env.pop(DSN_ENV, None)
    return env


def ours_importable() -> str | None:
    """None if our pools import, else the reason they don't."""
    probe = subprocess.run(
        [sys.executable, "-c", "from psycopg2_pool import ConnectionPool, ThreadedConnectionPool"],
        env=worker_env(isolated=False),
        capture_output=True,
        text=True,
    )
    return None if probe.returncode == 0 else probe.stderr.strip().splitlines()[-1]


class ConnectionSampler(threading.Thread):
    """Counts one application_name's server backends every 20 ms, from its own connection.

    It runs, with its backend, off the CPU the pools are pinned to (when there
    is another): a query every 20 ms there would land in the waits measured.
    """

    def __init__(self, dsn: str, application_name: str, cpu: int | None = None) -> None:
        super().__init__(daemon=True)
        self.dsn, self.application_name = dsn, application_name
        others = os.sched_getaffinity(0) - {cpu} if cpu is not None else set()
        self.elsewhere = others or None
        self.most = 0
        self.samples = 0
        self._finished = threading.Event()

    def run(self) -> None:
        conn = psycopg2.connect(make_dsn(self.dsn, application_name="bench-sampler"))
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                if self.elsewhere is not None:
                    os.sched_setaffinity(0, self.elsewhere)  # 0 is this thread only
                    with contextlib.suppress(OSError):  # an external server's backend
                        os.sched_setaffinity(conn.get_backend_pid(), self.elsewhere)
                while not self._finished.wait(0.02):
                    cur.execute(
                        "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                        (self.application_name,),
                    )
                    (count,) = cur.fetchone()  # type: ignore[misc]
                    self.most = max(self.most, count)
                    self.samples += 1
        finally:
            conn.close()

    def stop(self) -> int:
        """Stop sampling (if it ever started) and return the most connections seen."""
        self._finished.set()
        if self.is_alive():
            self.join()
        return self.most


def _run_process(command: list[str], env: dict[str, str]) -> dict[str, Any]:
    """The JSON line a worker printed, or what went wrong."""
    try:
        done = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=WORKER_TIMEOUT
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {WORKER_TIMEOUT}s"}
    if done.returncode == 0 and done.stdout.strip():
        result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
        return result
    lines = done.stderr.strip().splitlines() or [f"exit status {done.returncode}"]
    return {"error": lines[-1], "stderr": done.stderr[-3000:]}


def run_worker(
    pool: str, scenario: str, params: dict[str, Any], target: Target, pool_dsn: str, tag: str
) -> dict[str, Any]:
    """Run one (pool, scenario) in a fresh process; return its result or its error."""
    application_name = f"bench-{pool}-{scenario}-{tag}"[:63]
    params = {**params, "dsn": make_dsn(pool_dsn, application_name=application_name)}
    command = [sys.executable, str(WORKER), pool, scenario, "--params", json.dumps(params)]
    if target.cpu is not None:
        command += ["--cpu", str(target.cpu)]
    sampler = ConnectionSampler(target.dsn, application_name, target.cpu)
    if SCENARIOS[scenario].sample_connections:
        sampler.start()
    started = time.monotonic()
    try:
        result = _run_process(command, worker_env(ADAPTERS[pool].isolated))
    finally:
        most = sampler.stop()
    if SCENARIOS[scenario].sample_connections:
        result["server_connections_max"] = most
    result["seconds"] = round(time.monotonic() - started, 2)
    return result


def combine_rounds(rounds: list[dict[str, Any]], figure: str) -> dict[str, Any]:
    """One result per pool from its interleaved rounds, hiding no failure.

    The round with the median ``figure`` gives the figures; errors and retries
    are summed over all rounds, starved threads and server connections are
    those of the worst round, and rounds that failed are counted.
    """
    good = [r for r in rounds if "error" not in r]
    if len(rounds) == 1 or not good:
        return rounds[-1]
    ordered = sorted(good, key=lambda r: r[figure])
    combined = dict(ordered[(len(ordered) - 1) // 2])
    combined[f"{figure}_rounds"] = [r[figure] for r in good]
    for key, merge in (("errors", sum), ("retries", sum), ("starved", max)):
        if combined.get(key) is not None:
            combined[key] = merge(r[key] for r in good)
    if "server_connections_max" in combined:
        combined["server_connections_max"] = max(r["server_connections_max"] for r in good)
    combined["failed_rounds"] = len(rounds) - len(good)
    return combined


def summary(result: dict[str, Any]) -> str:
    if "error" in result:
        return f"ERROR {result['error']}"
    keys = ("us_per_op", "ops_per_s", "pct_of_ideal", "connections_opened", "serve_ms", "errors")
    return ", ".join(
        f"{key}={result[key]:.4g}" if isinstance(result[key], float) else f"{key}={result[key]}"
        for key in keys
        if result.get(key) is not None
    )


def versions() -> dict[str, str]:
    found = {"python": platform.python_version(), "psycopg2-pool (old)": OLD_PACKAGE[-3:]}
    for dist in ("psycopg2-binary", "psycopg2", "psycopg", "psycopg-pool", "DBUtils", "SQLAlchemy"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[dist] = metadata.version(dist)
    return found


def server_version(dsn: str) -> str:
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW server_version")
            return str(cur.fetchone()[0])  # type: ignore[index]
    finally:
        conn.close()


def sleep_ceiling(dsn: str, batches: int = 5, count: int = 50) -> float:
    """The % of S4's ideal that its connections reach with no client in the way.

    One connection runs the S4 query back to back (the fastest of a few
    batches): its real duration (pg_sleep overshoots, and there is a round
    trip) bounds what any pool can do.
    """
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(SLEEP_2MS)
            fastest = float("inf")
            for _ in range(batches):
                start = time.perf_counter()
                for _ in range(count):
                    cur.execute(SLEEP_2MS)
                fastest = min(fastest, (time.perf_counter() - start) / count)
    finally:
        conn.close()
    return 100 * HOLD_SECONDS / fastest


@contextlib.contextmanager
def pools_dsn(scenario: Scenario, target: Target, params: dict[str, Any]) -> Iterator[str]:
    """The DSN the pools use: the server's own, or a delaying proxy's in front of it."""
    if not scenario.needs_proxy:
        yield target.dsn
        return
    with TcpProxy(target.host, target.port, connect_delay=params["connect_delay"]) as proxy:
        yield make_dsn(target.dsn, host="127.0.0.1", port=proxy.port)


def run_scenario(key: str, pools: list[str], target: Target, quick: bool) -> dict[str, Any]:
    """Every pool that takes part in one scenario, each in its fresh processes."""
    scenario = SCENARIOS[key]
    params = parameters(key, quick)
    runnable = [p for p in pools if scenario.applies(ADAPTERS[p])]
    runs: dict[str, list[dict[str, Any]]] = {p: [] for p in runnable}
    with pools_dsn(scenario, target, params) as dsn:
        for round_number in range(1 if quick else scenario.rounds):
            for pool in runnable:
                result = run_worker(pool, key, params, target, dsn, f"r{round_number}")
                runs[pool].append(result)
                print(
                    f"{key} {pool:32} {result['seconds']:6.1f}s  {summary(result)}", file=sys.stderr
                )
    outcome: dict[str, Any] = {"title": scenario.title, "params": params}
    if key == "S4":
        outcome["ceiling_pct"] = sleep_ceiling(target.dsn)
    outcome["results"] = {
        pool: combine_rounds(found, scenario.figure) for pool, found in runs.items()
    }
    return outcome


def choose_pools(wanted: str | None) -> list[str]:
    """Pool keys from a comma list of keys or families (ours, peer, baseline).

    A key brings its variants along: ``psycopg_pool`` also selects
    ``psycopg_pool-with``, ``psycopg2-threaded`` its ``+retry`` row.
    """
    if not wanted:
        return list(ADAPTERS)
    names = {w.strip() for w in wanted.split(",") if w.strip()}
    if unknown := names - set(ADAPTERS) - {"ours", "peer", "baseline"}:
        raise SystemExit(
            f"unknown pools: {', '.join(sorted(unknown))}; known: {', '.join(ADAPTERS)}"
        )

    def chosen(key: str) -> bool:
        family = ADAPTERS[key].family
        return family in names or any(key == n or key.startswith((n + "-", n + "+")) for n in names)

    return [key for key in ADAPTERS if chosen(key)]


def unavailable(pools: list[str]) -> dict[str, str]:
    """The chosen pools that cannot run here, with the reason."""
    missing: dict[str, str] = {}
    ours = [p for p in pools if ADAPTERS[p].family == "ours"]
    if ours and (reason := ours_importable()):
        missing.update(dict.fromkeys(ours, f"does not import: {reason}"))
    isolated = [p for p in pools if ADAPTERS[p].isolated]
    if isolated:
        try:
            install_old_package()
        except subprocess.CalledProcessError as exc:
            missing.update(dict.fromkeys(isolated, f"pip install failed: {exc.stderr[-200:]}"))
    return missing


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="shorter runs (about 2 minutes)")
    parser.add_argument("--only", help="comma list of scenarios, e.g. S1,S3")
    parser.add_argument(
        "--pools", help="comma list of pool keys or families (ours, peer, baseline)"
    )
    parser.add_argument("--dsn", help=f"use this server instead of an embedded one (or ${DSN_ENV})")
    parser.add_argument(
        "--cpu", type=int, help="CPU to pin everything to (default: the quietest, probed)"
    )
    parser.add_argument("--no-pin", action="store_true", help="pin nothing")
    parser.add_argument("--out", type=Path, default=RESULTS, help="directory for the results")
    args = parser.parse_args(argv)
    # A plain `kill` must still stop the embedded server and delete its files.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(f"stopped by signal {signum}"))

    scenario_keys = (
        [s.strip().upper() for s in args.only.split(",")] if args.only else list(SCENARIOS)
    )
    if unknown := set(scenario_keys) - set(SCENARIOS):
        raise SystemExit(f"unknown scenarios: {', '.join(sorted(unknown))}")
    pools = choose_pools(args.pools)
    skipped = unavailable(pools)
    pools = [p for p in pools if p not in skipped]
    for pool, reason in skipped.items():
        print(f"skipping {pool}: {reason}", file=sys.stderr)

    started = time.monotonic()
    results: dict[str, Any] = {}
    cpu = None if args.no_pin else args.cpu if args.cpu is not None else default_cpu()
    with benchmark_server(args.dsn, cpu) as target:
        print(f"server {target.dsn}; {target.pinning}", file=sys.stderr)
        for key in scenario_keys:
            results[key] = run_scenario(key, pools, target, args.quick)
        meta = {
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "quick": args.quick,
            "pinning": target.pinning,
            "cpus": os.cpu_count(),
            "machine": platform.machine(),
            "server_version": server_version(target.dsn),
            "versions": versions(),
            "skipped": skipped,
            "labels": {key: cls.label for key, cls in ADAPTERS.items()},
            "families": {key: cls.family for key, cls in ADAPTERS.items()},
            "drivers": {key: cls.driver for key, cls in ADAPTERS.items()},
            "seconds": round(time.monotonic() - started, 1),
        }

    document = {"meta": meta, "scenarios": results}
    args.out.mkdir(parents=True, exist_ok=True)
    for stem, part in report.split(document).items():
        (args.out / f"{stem}.json").write_text(json.dumps(part, indent=1) + "\n")
    print(report.write(document, args.out))


if __name__ == "__main__":
    main()
