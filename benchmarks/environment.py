"""What the benchmark scripts share: the throwaway server (or a given DSN),
pinning client and server to one CPU, and timing variants in alternation."""

from __future__ import annotations

import os
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
# The scripts import from the repository too (the embedded server, the TCP proxy).
if str(ROOT) not in sys.path:
    sys.path.insert(1, str(ROOT))
DSN_ENV = "PSYCOPG2_POOL_BENCH_DSN"

# On a small machine a round trip between a client and a server that run on
# different cores costs several times one on the same core (the wake-up crosses
# CPUs): client, server backends and proxy are all pinned to one CPU, the one
# where a probe finds the fewest interruptions.


# CPU -> the longest stall (ms) the probe saw there.
_STALLS: dict[int, float] = {}


def longest_stall(cpu: int, seconds: float = 0.5) -> float:
    """Milliseconds a lone busy thread pinned to ``cpu`` went longest without running.

    Other tenants and kernel threads (seen here: DAMON's kdamond, every 100 ms)
    can take a CPU for milliseconds; that lands in every pool's worst wait.
    """
    found: list[float] = []

    def spin() -> None:
        os.sched_setaffinity(0, {cpu})  # 0 is this thread only
        clock = time.perf_counter_ns
        last = start = clock()
        end = start + int(seconds * 1e9)
        worst = 0
        while last < end:
            now = clock()
            worst = max(worst, now - last)
            last = now
        found.append(worst / 1e6)

    thread = threading.Thread(target=spin)
    thread.start()
    thread.join()
    _STALLS[cpu] = found[0]
    return found[0]


def default_cpu() -> int:
    """The CPU, of those this process may use, where a lone thread is stalled least."""
    cpus = sorted(os.sched_getaffinity(0), reverse=True)
    if len(cpus) == 1:
        return cpus[0]
    return min(cpus, key=longest_stall)  # the highest-numbered one on a tie


def stall_note(cpu: int) -> str:
    """What the probe saw on ``cpu``, for the results."""
    stall = _STALLS.get(cpu)
    if stall is None:
        stall = longest_stall(cpu)
    return f"a lone busy thread on CPU {cpu} was stalled up to {stall:.2f} ms in a 0.5 s probe"


def pin_process_tree(pid: int, cpu: int) -> list[int]:
    """Pin every thread of ``pid`` and of its children to ``cpu``; return the pids.

    Like ``taskset -a -p -c CPU PID`` on the process and each child. Processes
    that the postmaster forks later (new backends) inherit its affinity.
    """
    pinned = []
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            for task in os.listdir(f"/proc/{current}/task"):
                os.sched_setaffinity(int(task), {cpu})
                pending.extend(
                    int(child)
                    for child in Path(f"/proc/{current}/task/{task}/children").read_text().split()
                )
        except (FileNotFoundError, ProcessLookupError):
            continue  # it exited meanwhile
        pinned.append(current)
    return pinned


@dataclass
class Target:
    """The server the benchmarks talk to."""

    dsn: str
    host: str
    port: int
    # Where the client runs; None when nothing was pinned.
    cpu: int | None
    # How the figures were made comparable, said in every output.
    pinning: str


@contextmanager
def benchmark_server(dsn: str | None = None, cpu: int | None = None) -> Iterator[Target]:
    """Start one embedded server (unless ``dsn`` or $PSYCOPG2_POOL_BENCH_DSN is set).

    With ``cpu`` the calling process is pinned to it, and so is the embedded
    server's postmaster with all its processes; an external server cannot be
    pinned from here, and the description says so.
    """
    from psycopg2.extensions import parse_dsn

    dsn = dsn or os.environ.get(DSN_ENV)
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    if dsn:
        params = parse_dsn(dsn)
        pinning = (
            f"benchmark processes pinned to CPU {cpu}; the external server is not pinned"
            if cpu is not None
            else "nothing pinned"
        )
        yield Target(
            dsn, params.get("host", "localhost"), int(params.get("port", 5432)), cpu, pinning
        )
        return

    from psycopg2_pool._embedded import EmbeddedServer

    with EmbeddedServer() as server:
        if cpu is None:
            pinning = "nothing pinned"
        else:
            postmaster = int((server.datadir / "postmaster.pid").read_text().split()[0])
            pids = pin_process_tree(postmaster, cpu)
            pinning = (
                f"benchmark processes and server (postmaster pid {postmaster}, its"
                f" {len(pids) - 1} processes and every later backend) pinned to CPU {cpu}"
                f" ({stall_note(cpu)})"
            )
        yield Target(server.dsn, "127.0.0.1", server.port, cpu, pinning)


def alternate(
    variants: dict[str, Callable[[int], None]], rounds: int, ops: int
) -> dict[str, list[float]]:
    """Time each variant's ``run(ops)`` in turn, ``rounds`` times; µs per op per round.

    Alternating in one process means drift on a noisy machine hits every
    variant alike. One unmeasured round comes first as a warm-up.
    """
    timings: dict[str, list[float]] = {name: [] for name in variants}
    for round_number in range(rounds + 1):
        for name, run in variants.items():
            start = time.perf_counter_ns()
            run(ops)
            elapsed = time.perf_counter_ns() - start
            if round_number:
                timings[name].append(elapsed / ops / 1000)
    return timings


def ratio_line(timings: dict[str, list[float]], mine: str, theirs: str, limit: float) -> str:
    """``mine`` over ``theirs`` (medians), with the median per-round ratio and a verdict."""
    a, b = statistics.median(timings[mine]), statistics.median(timings[theirs])
    per_round = statistics.median(x / y for x, y in zip(timings[mine], timings[theirs]))
    verdict = "PASS" if a / b <= limit else "FAIL"
    return (
        f"{verdict}  {mine} / {theirs} = {a:.3f} / {b:.3f} µs = {a / b:.2f}x"
        f" (median per-round ratio {per_round:.2f}x; target <= {limit:.2f}x)"
    )
