"""The seven benchmark scenarios, run one pool at a time in a fresh process:
``python benchmarks/scenarios.py POOL SCENARIO --params JSON`` prints one JSON line.

run.py starts these processes; the functions here do the timing with
perf_counter_ns. Which pools take part in which scenario, and with what sizes,
is decided here too (:data:`SCENARIOS`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import threading
import time
from array import array
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from peers import ADAPTERS, OPENED, Adapter, opened

Result = dict[str, Any]
now = time.perf_counter_ns

SELECT_1 = "SELECT 1"
HOLD_SECONDS = 0.002  # S4 and S6 hold each connection this long
SLEEP_2MS = f"SELECT pg_sleep({HOLD_SECONDS})"
STALL_PROBE_PERIOD = 0.005  # seconds the stall probe sleeps at a time


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    run: Callable[[Adapter, dict[str, Any]], Result]
    applies: Callable[[type[Adapter]], bool]
    # The figure rounds are ranked by (see run.combine_rounds).
    figure: str
    # Fresh processes per pool (interleaved across pools) in a full run; --quick runs one.
    rounds: int = 1
    needs_proxy: bool = False
    # Sample the pool's server connections (pointless with a single connection).
    sample_connections: bool = True


def _select(conn: Any, query: str) -> None:
    cur = conn.cursor()
    cur.execute(query)
    cur.fetchone()


def percentile(sorted_values: list[int], fraction: float) -> int:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return 0
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[rank - 1]


# -- S1, S2: one thread, one connection, the cost of the pool itself ---------------


def _timed_ops(adapter: Adapter, query: str | None, count: int) -> int:
    """Nanoseconds taken by ``count`` acquire(+query)+release cycles."""
    acquire, release = adapter.acquire, adapter.release
    start = now()
    if adapter.uses_with:
        connection = adapter.connection
        if query is None:
            for _ in range(count):
                with connection():
                    pass
        else:
            for _ in range(count):
                with connection() as conn:
                    _select(conn, query)
    elif query is None:
        for _ in range(count):
            release(acquire())
    else:
        for _ in range(count):
            conn = acquire()
            try:
                _select(conn, query)
            finally:
                release(conn)
    return now() - start


def _single_thread(adapter: Adapter, params: dict[str, Any], query: str | None) -> Result:
    repeats: int = params["repeats"]
    seconds: float = params["repeat_seconds"]
    with opened(adapter, params["dsn"], 1, 1):
        _timed_ops(adapter, query, 1)  # opens the connection of a lazy pool
        # Warm-up doubles as calibration: grow the batch until it lasts a while.
        count = 1
        while (elapsed := _timed_ops(adapter, query, count)) < seconds * 1e9 / 4:
            count *= 2
        count = max(1, int(count * seconds * 1e9 / elapsed))
        samples = [_timed_ops(adapter, query, count) / count / 1000 for _ in range(repeats)]
    return {"us_per_op": statistics.median(samples), "samples_us": samples, "ops_per_repeat": count}


def s1_acquire_release(adapter: Adapter, params: dict[str, Any]) -> Result:
    return _single_thread(adapter, params, None)


def s2_select_1(adapter: Adapter, params: dict[str, Any]) -> Result:
    return _single_thread(adapter, params, SELECT_1)


# -- S3, S4, S5: many threads in a closed loop -------------------------------------


def _request(adapter: Adapter, query: str) -> int:
    """One request: acquire, run ``query``, release. Returns when it was served."""
    if adapter.uses_with:
        with adapter.connection() as conn:
            served = now()
            _select(conn, query)
    else:
        conn = adapter.acquire()
        served = now()
        try:
            _select(conn, query)
        finally:
            adapter.release(conn)
    return served


class _Client(threading.Thread):
    """One closed-loop client: acquire, query, release, think, again until stopped.

    Records when each request was asked and served (perf_counter_ns) and counts
    its failures by exception type, only those that start inside ``counted``.
    The times go into arrays of machine integers: tuples kept by the thousand
    would make the collector run full passes, pauses charged to whichever pool
    is measured.
    """

    def __init__(
        self,
        adapter: Adapter,
        query: str,
        stop: threading.Event,
        counted: tuple[int, int],
        think: float = 0.0,
    ) -> None:
        super().__init__(daemon=True)
        self.adapter, self.query, self.stop, self.think = adapter, query, stop, think
        self.counted = counted
        self.asked: array[int] = array("q")
        self.served: array[int] = array("q")
        self.errors: Counter[str] = Counter()

    def run(self) -> None:
        adapter, query, think = self.adapter, self.query, self.think
        asked_at, served_at, first, last = self.asked, self.served, *self.counted
        while not self.stop.is_set():
            asked = now()
            try:
                got = _request(adapter, query)
            except Exception as exc:
                if first <= asked < last:
                    self.errors[type(exc).__name__] += 1
                continue
            asked_at.append(asked)
            served_at.append(got)
            if think:
                time.sleep(think)


def _run_clients(
    adapter: Adapter, query: str, threads: int, windows: list[tuple[int, int]], think: float = 0.0
) -> list[_Client]:
    """Run ``threads`` clients until the last window ends; return them for analysis."""
    stop = threading.Event()
    clients = [
        _Client(adapter, query, stop, (windows[0][0], windows[-1][1]), think)
        for _ in range(threads)
    ]
    for client in clients:
        client.start()
    time.sleep(max(0, windows[-1][1] - now()) / 1e9)
    stop.set()
    for client in clients:
        client.join(60)
    return clients


def _schedule(start_in: float, window: float, count: int) -> list[tuple[int, int]]:
    """``count`` back-to-back windows (ns), the first beginning ``start_in`` s from now."""
    first = now() + int(start_in * 1e9)
    return [
        (first + int(i * window * 1e9), first + int((i + 1) * window * 1e9)) for i in range(count)
    ]


@contextmanager
def _watching_stalls(enabled: bool) -> Iterator[dict[str, Any]]:
    """Run stall_probe.py on this process's CPU meanwhile; yield what it found.

    Only when pinned to one CPU: on several, a stall of one is not a stall of all.
    """
    found: dict[str, Any] = {}
    cpus = os.sched_getaffinity(0)
    if not enabled or len(cpus) != 1:
        yield found
        return
    command = [sys.executable, str(Path(__file__).with_name("stall_probe.py"))]
    probe = subprocess.Popen(
        [*command, "--cpu", str(next(iter(cpus))), "--period", str(STALL_PROBE_PERIOD)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert probe.stdout is not None
    probe.stdout.readline()  # "ready": it watches from here on
    try:
        yield found
    finally:
        probe.terminate()
        out, _ = probe.communicate(timeout=10)
        if out.strip():
            found.update(json.loads(out))


def _stall_figures(
    clients: list[_Client], windows: list[tuple[int, int]], stalls: list[list[int]]
) -> Result:
    """How long the machine stopped in the windows, and fairness without those moments.

    A wait that overlaps a stall is left out of the second figure. The probe
    only knows which of its sleeps overran, so the whole sleep counts as the
    stall: a wait that merely came near one is left out too.
    """
    begin, end = windows[0][0], windows[-1][1]
    inside = sorted((start, stop) for start, stop in stalls if stop > begin and start < end)
    clear: list[int] = []
    left_out = 0
    for client in clients:
        for asked, got in zip(client.asked, client.served):
            if not begin <= got < end:
                continue
            if any(start < got and stop > asked for start, stop in inside):
                left_out += 1
            else:
                clear.append(got - asked)
    clear.sort()
    p50 = percentile(clear, 0.5)
    return {
        "machine_stalls": len(inside),
        # By how much the probe's longest sleep overran: at least that long stopped.
        "machine_stall_max_ms": max(
            ((stop - start) / 1e6 - STALL_PROBE_PERIOD * 1e3 for start, stop in inside),
            default=0.0,
        ),
        "fairness_outside_stalls": clear[-1] / p50 if p50 else None,
        "waits_in_stalls": left_out,
    }


def _analyse(
    clients: list[_Client], windows: list[tuple[int, int]], stalls: dict[str, Any] | None = None
) -> Result:
    per_window_ops, starved = [], []
    waits: list[int] = []
    for begin, end in windows:
        served_threads = 0
        ops = 0
        for client in clients:
            mine = [
                got - asked for asked, got in zip(client.asked, client.served) if begin <= got < end
            ]
            ops += len(mine)
            served_threads += bool(mine)
            waits.extend(mine)
        per_window_ops.append(ops / ((end - begin) / 1e9))
        starved.append(len(clients) - served_threads)
    waits.sort()
    errors: Counter[str] = Counter()
    for client in clients:
        errors.update(client.errors)
    p50, p99, worst = percentile(waits, 0.5), percentile(waits, 0.99), waits[-1] if waits else 0
    result = {
        "ops_per_s": statistics.median(per_window_ops),
        "ops_per_s_windows": per_window_ops,
        "wait_p50_us": p50 / 1000,
        "wait_p99_us": p99 / 1000,
        "wait_max_us": worst / 1000,
        "fairness": worst / p50 if p50 else None,
        "errors": sum(errors.values()),
        "errors_by_type": dict(errors),
        "starved": max(starved),
        "starved_windows": starved,
    }
    if stalls:
        result["stall_probe_realtime"] = stalls["fifo"]
        result.update(_stall_figures(clients, windows, stalls["stalls"]))
    return result


def _retries_between(adapter: Adapter, begin: int, end: int) -> int | None:
    times = getattr(adapter, "retry_times", None)
    return None if times is None else sum(begin <= t < end for t in times)


def _under_contention(adapter: Adapter, params: dict[str, Any], query: str) -> Result:
    with opened(adapter, params["dsn"], params["size"], params["size"]):
        windows = _schedule(params["warmup"], params["window"], params["windows"])
        threads = adapter.client_threads or params["threads"]
        with _watching_stalls(params.get("stall_probe", False)) as stalls:
            clients = _run_clients(adapter, query, threads, windows)
        result = _analyse(clients, windows, stalls)
        result["retries"] = _retries_between(adapter, windows[0][0], windows[-1][1])
        result["connections_opened"] = len(OPENED)
    return result


def s3_select_1_contended(adapter: Adapter, params: dict[str, Any]) -> Result:
    return _under_contention(adapter, params, SELECT_1)


def s4_hold_2ms_contended(adapter: Adapter, params: dict[str, Any]) -> Result:
    result = _under_contention(adapter, params, SLEEP_2MS)
    ideal = params["size"] / HOLD_SECONDS
    result["ideal_ops_per_s"] = ideal
    result["pct_of_ideal"] = 100 * result["ops_per_s"] / ideal
    return result


def s5_churn(adapter: Adapter, params: dict[str, Any]) -> Result:
    phase: float = params["phase"]
    result: Result = {}
    with opened(adapter, params["dsn"], params["min_size"], params["max_size"]):
        result["connections_at_start"] = len(OPENED)
        for name, threads in (("busy", params["threads"]), ("quiet", 1)):
            windows = _schedule(0.0, phase, 1)
            clients = _run_clients(adapter, SELECT_1, threads, windows, think=params["think"])
            analysis = _analyse(clients, windows)
            result[f"{name}_ops_per_s"] = analysis["ops_per_s"]
            result[f"{name}_errors"] = analysis["errors"]
            result[f"connections_opened_after_{name}"] = len(OPENED)
        result["connections_opened"] = len(OPENED)
        result["errors"] = result["busy_errors"] + result["quiet_errors"]
    return result


# -- S6: a spike on a pool whose connections are slow to open -----------------------


def _spike_once(adapter: Adapter, params: dict[str, Any]) -> Result:
    requests: int = params["requests"]
    with opened(adapter, params["dsn"], params["min_size"], params["max_size"]):
        before = len(OPENED)
        start = threading.Barrier(requests + 1)
        finished: list[int] = []
        errors: Counter[str] = Counter()

        def request() -> None:
            start.wait()
            try:
                _request(adapter, SLEEP_2MS)
            except Exception as exc:
                errors[type(exc).__name__] += 1
            finished.append(now())

        threads = [threading.Thread(target=request, daemon=True) for _ in range(requests)]
        for thread in threads:
            thread.start()
        start.wait()
        released = now()
        for thread in threads:
            thread.join(120)
        served_ms = (max(finished) - released) / 1e6 if finished else None
        # Let connection attempts started during the spike land before counting.
        time.sleep(params["settle"])
        return {
            "serve_ms": served_ms,
            "connections_opened": len(OPENED) - before,
            "errors": sum(errors.values()),
            "errors_by_type": dict(errors),
        }


def s6_spike(adapter: Adapter, params: dict[str, Any]) -> Result:
    runs = [_spike_once(adapter, params) for _ in range(params["repeats"])]
    needed = max(
        params["min_size"],
        math.ceil(params["requests"] * HOLD_SECONDS / params["connect_delay"]),
    )
    return {
        "serve_ms": statistics.median(r["serve_ms"] for r in runs if r["serve_ms"] is not None),
        "connections_opened": statistics.median(r["connections_opened"] for r in runs),
        "connections_needed": needed - params["min_size"],
        "errors": sum(r["errors"] for r in runs),
        "runs": runs,
    }


# -- S7: many clients (many_clients.py, which builds on the helpers above) -----------


def s7_many_clients(adapter: Adapter, params: dict[str, Any]) -> Result:
    import many_clients

    return many_clients.run(adapter, params)


def _many_clients(cls: type[Adapter]) -> bool:
    import many_clients

    return many_clients.applies(cls)


# -- which pool runs where, with which settings ------------------------------------


# Baselines that only make sense in some scenarios.
_DRIVER_BASELINE = "no-pool-psycopg3"  # S1, S2: the cost of psycopg 3 itself
_EIGHT_CONNECTIONS = "no-pool-8"  # S3, S4: what 8 connections do without a pool


def _single(cls: type[Adapter]) -> bool:
    return not cls.retried and cls.key != _EIGHT_CONNECTIONS


def _contended(cls: type[Adapter]) -> bool:
    return cls.thread_safe and cls.key != _DRIVER_BASELINE


def _growing(cls: type[Adapter]) -> bool:
    return _contended(cls) and cls.grows and not cls.retried and cls.key != _EIGHT_CONNECTIONS


SCENARIOS: dict[str, Scenario] = {
    s.key: s
    for s in (
        Scenario("S1", "acquire + release, no query", s1_acquire_release, _single,
                 "us_per_op", rounds=3, sample_connections=False),
        Scenario("S2", "acquire + SELECT 1 + release", s2_select_1, _single,
                 "us_per_op", rounds=3, sample_connections=False),
        Scenario("S3", "32 threads, 8 connections, SELECT 1", s3_select_1_contended,
                 _contended, "ops_per_s", rounds=3),
        Scenario("S4", "32 threads, 8 connections, hold 2 ms", s4_hold_2ms_contended,
                 _contended, "ops_per_s", rounds=3),
        Scenario("S5", "churn: min 2 max 16, 16 threads then 1", s5_churn, _growing,
                 "connections_opened"),
        Scenario("S6", "spike: 50 requests, min 5 max 50, connect 150 ms", s6_spike, _growing,
                 "serve_ms", needs_proxy=True),
        Scenario("S7", "many clients: 8-2,000 threads, 1,000-30,000 tasks, timeouts, memory",
                 s7_many_clients, _many_clients, "ops_per_s"),
    )
}  # fmt: skip


def parameters(scenario: str, quick: bool) -> dict[str, Any]:
    """The settings of one scenario (``quick`` trades precision for time)."""
    if scenario in ("S1", "S2"):
        return {"repeats": 3 if quick else 5, "repeat_seconds": 0.08 if quick else 0.15}
    if scenario in ("S3", "S4"):
        return {
            "threads": 32,
            "size": 8,
            "warmup": 0.2 if quick else 0.5,
            "window": 0.4 if quick else 1.5,
            "windows": 2 if quick else 1,
            "stall_probe": True,
        }
    if scenario == "S5":
        return {
            "threads": 16,
            "min_size": 2,
            "max_size": 16,
            "think": 0.001,
            "phase": 0.7 if quick else 2.5,
        }
    if scenario == "S6":
        return {
            "requests": 50,
            "min_size": 5,
            "max_size": 50,
            "connect_delay": 0.15,
            "settle": 0.5,
            "repeats": 1 if quick else 3,
        }
    if scenario == "S7":
        import many_clients

        return many_clients.parameters(quick)
    raise KeyError(scenario)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("pool", choices=sorted(ADAPTERS))
    parser.add_argument("scenario", choices=sorted(SCENARIOS))
    parser.add_argument("--params", required=True, help="JSON object; needs 'dsn'")
    parser.add_argument("--cpu", type=int, help="pin this process to one CPU")
    args = parser.parse_args(argv)
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    params = json.loads(args.params)
    result = SCENARIOS[args.scenario].run(ADAPTERS[args.pool](), params)
    result["cpus"] = sorted(os.sched_getaffinity(0))
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
