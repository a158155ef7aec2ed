"""Where S2's time goes: acquire + ``SELECT 1`` + release, one thread, split
into the client's CPU time and the server backend's, with how often the
server preempted the client, for a few pools alternating in one process.

    python benchmarks/s2_split.py [--rounds 7] [--ops 20000] [--dsn DSN] [--no-pin]

With client and server pinned to one CPU, each request is a ping-pong of
two tasks, and the kernel's scheduler decides who runs when the other wakes
up. The rows "no pool + busy loop" add a loop to each request without a pool,
named by the client CPU time it added: they show what extra client work
costs, whoever does it.
CPU times come from /proc/<pid>/schedstat, so the server figures need a
server on this machine (the embedded one, by default).
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from pathlib import Path
from typing import Any, Callable

from environment import benchmark_server, default_cpu
from peers import ADAPTERS, Adapter
from scenarios import SELECT_1, _timed_ops

POOLS = ["no-pool", "bare-fifo", "bare-fifo-handle", "psycopg2-threaded", "ours", "ours-with"]
EXTRA_WORK_US = [0.5, 1.0, 1.5, 2.0, 3.0]
# Issue 19: ours' share of a round trip (µs/op over no pool) at most this times
# the handle floor's, and ours at most this times psycopg2's ThreadedConnectionPool.
SHARE_TARGET, FLOOR = 1.25, "bare-fifo-handle"
THREADED_TARGET, THREADED = 1.15, "psycopg2-threaded"


def _cpu_ns(path: str) -> int | None:
    """Time on CPU so far, from a schedstat file; None if it cannot be read."""
    try:
        return int(Path(path).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _switches(path: str) -> tuple[int, int]:
    """(voluntary, involuntary) context switches so far, from a status file."""
    counts = {}
    for line in Path(path).read_text().splitlines():
        if "ctxt_switches" in line:
            name, value = line.split(":")
            counts[name] = int(value)
    return counts["voluntary_ctxt_switches"], counts["nonvoluntary_ctxt_switches"]


def _busy_loop(microseconds: float) -> Callable[[], None]:
    """A function that keeps the CPU busy for about ``microseconds`` (hot)."""
    iterations = 100_000
    timings = []
    for _ in range(5):
        start = time.perf_counter_ns()
        for _ in range(iterations):
            pass
        timings.append(time.perf_counter_ns() - start)
    per_iteration = min(timings) / iterations
    spins = range(max(1, round(microseconds * 1000 / per_iteration)))

    def work() -> None:
        for _ in spins:
            pass

    return work


def _add_work(adapter: Adapter, microseconds: float) -> None:
    """Make ``adapter``'s release busy the CPU for ``microseconds`` first."""
    release, work = adapter.release, _busy_loop(microseconds)

    def slower_release(conn: Any) -> None:
        work()
        release(conn)

    adapter.release = slower_release


class Contender:
    """One pool (or baseline) and what it cost over the rounds so far."""

    def __init__(self, name: str, adapter: Adapter, dsn: str, extra_work: float = 0.0) -> None:
        self.name, self.adapter, self.extra_work = name, adapter, extra_work
        adapter.make(dsn, 1, 1)
        if extra_work:
            _add_work(adapter, extra_work)
        conn = adapter.acquire()
        self.backend = f"/proc/{conn.get_backend_pid()}"
        adapter.release(conn)
        self.wall: list[float] = []
        self.client: list[float] = []
        self.server: list[float] = []
        self.preempted: list[float] = []

    def measure(self, ops: int) -> None:
        task = f"/proc/self/task/{threading.get_native_id()}"
        client0, server0 = _cpu_ns(f"{task}/schedstat"), _cpu_ns(f"{self.backend}/schedstat")
        voluntary0, involuntary0 = _switches(f"{task}/status")
        wall = _timed_ops(self.adapter, SELECT_1, ops)
        client1, server1 = _cpu_ns(f"{task}/schedstat"), _cpu_ns(f"{self.backend}/schedstat")
        voluntary1, involuntary1 = _switches(f"{task}/status")
        self.wall.append(wall / ops / 1000)
        if client0 is not None and client1 is not None:
            self.client.append((client1 - client0) / ops / 1000)
        if server0 is not None and server1 is not None:
            self.server.append((server1 - server0) / ops / 1000)
        switches = (voluntary1 - voluntary0) + (involuntary1 - involuntary0)
        self.preempted.append((involuntary1 - involuntary0) / switches if switches else 0.0)


def _median(values: list[float], form: str) -> str:
    return format(statistics.median(values), form) if values else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--ops", type=int, default=20_000)
    parser.add_argument("--dsn", help="an existing server (default: an embedded one)")
    parser.add_argument("--no-pin", action="store_true", help="do not pin client and server")
    args = parser.parse_args()

    with benchmark_server(args.dsn, None if args.no_pin else default_cpu()) as target:
        contenders = [Contender(key, ADAPTERS[key](), target.dsn) for key in POOLS]
        contenders += [
            Contender("no-pool", ADAPTERS["no-pool"](), target.dsn, extra)
            for extra in EXTRA_WORK_US
        ]
        try:
            for contender in contenders:
                _timed_ops(contender.adapter, SELECT_1, args.ops // 4)  # warm-up
            for _ in range(args.rounds):
                for contender in contenders:
                    contender.measure(args.ops)
        finally:
            for contender in contenders:
                contender.adapter.close()

    baseline = statistics.median(contenders[0].wall)
    baseline_client = statistics.median(contenders[0].client) if contenders[0].client else None
    print(f"S2 split: {args.rounds} rounds of {args.ops} requests, medians; {target.pinning}")
    print()
    print("| pool | µs/op | x no pool | client CPU µs/op | server CPU µs/op | client preempted |")
    print("|---|---:|---:|---:|---:|---:|")
    for c in contenders:
        wall = statistics.median(c.wall)
        name = c.name
        if c.extra_work and baseline_client is not None and c.client:
            # Named by the client CPU the loop added, measured, not by its nominal length.
            name = f"no pool + busy loop (+{statistics.median(c.client) - baseline_client:.2f} µs)"
        print(
            f"| {name} | {wall:.2f} | {wall / baseline:.2f} | {_median(c.client, '.2f')}"
            f" | {_median(c.server, '.2f')} | {_median(c.preempted, '.0%')} |"
        )
    print()
    print("'client preempted': the share of the client's context switches that were")
    print("involuntary.")
    walls = {c.name: statistics.median(c.wall) for c in contenders if not c.extra_work}
    floor = walls[FLOOR] - baseline
    for pool in ("ours", "ours-with"):
        share = walls[pool] - baseline
        verdict = "PASS" if share <= SHARE_TARGET * max(floor, 0.0) else "FAIL"
        print(
            f"{verdict}  {pool} share over no pool {share:.2f} µs / {FLOOR}'s {floor:.2f} µs"
            f" = {share / floor if floor > 0 else float('inf'):.2f}x"
            f" (target <= {SHARE_TARGET:.2f}x)"
        )
    mine, theirs = walls["ours"], walls[THREADED]
    verdict = "PASS" if mine <= THREADED_TARGET * theirs else "FAIL"
    print(
        f"{verdict}  ours / {THREADED} = {mine:.2f} / {theirs:.2f} µs = {mine / theirs:.2f}x"
        f" (target <= {THREADED_TARGET:.2f}x)"
    )


if __name__ == "__main__":
    main()
