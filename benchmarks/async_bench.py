"""Async pools side by side: 200 tasks doing ``SELECT 1`` through a pool of 10.

    python benchmarks/async_bench.py [--dsn DSN] [--tasks 200] [--size 10]
                                     [--ops 20000] [--rounds 3] [--no-pin]

Each (pool, mode, round) runs in a fresh Python process (this script with
``--worker``), pools alternating round by round so that drift on a noisy
machine hits them alike; the figure is the median ops/s over the rounds.

Pools: ours (psycopg2_pool.AsyncConnectionPool on psycopg2's asynchronous
mode), psycopg_pool's AsyncConnectionPool (psycopg 3) and aiopg's pool
(psycopg2's asynchronous mode too). Modes:

- ``transaction``: each pool's default, ``async with pool.connection()`` then
  ``execute("SELECT 1")``. For ours and psycopg_pool that is BEGIN, SELECT 1,
  COMMIT; aiopg has no transactions by default (its connections autocommit),
  so it does the SELECT alone: the row is shown for reference only.
- ``autocommit``: every connection in autocommit mode (ours with
  ``await conn.set_autocommit(True)`` in ``configure``, psycopg 3 with
  ``autocommit=True``): one round trip per operation for all three.

Without ``--dsn`` (or $PSYCOPG2_POOL_BENCH_DSN) one embedded server is started
for the run. Unless ``--no-pin``, client and server run on one CPU, as in the
other benchmarks here (a round trip across cores costs more on small machines).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from environment import ROOT, benchmark_server, default_cpu  # noqa: E402

POOLS = ("ours", "psycopg_pool", "aiopg")
MODES = ("transaction", "autocommit")


async def _run_ours(dsn: str, tasks: int, size: int, ops: int, autocommit: bool) -> float:
    from psycopg2_pool import AsyncConnectionPool

    async def configure(conn: Any) -> None:
        await conn.set_autocommit(True)

    pool = AsyncConnectionPool(
        dsn, min_size=size, max_size=size, open=False, configure=configure if autocommit else None
    )
    async with pool:
        await pool.wait()
        return await _drive(pool.connection, tasks, ops)


async def _run_psycopg_pool(dsn: str, tasks: int, size: int, ops: int, autocommit: bool) -> float:
    from psycopg_pool import AsyncConnectionPool

    pool = AsyncConnectionPool(
        dsn, min_size=size, max_size=size, open=False, kwargs={"autocommit": autocommit}
    )
    async with pool:
        await pool.wait()
        return await _drive(pool.connection, tasks, ops)


async def _run_aiopg(dsn: str, tasks: int, size: int, ops: int, autocommit: bool) -> float:
    import aiopg

    pool = await aiopg.create_pool(dsn, minsize=size, maxsize=size)
    try:

        class Conn:  # aiopg: connection, then a cursor; always autocommit
            def __init__(self) -> None:
                self.cm = pool.acquire()

            async def __aenter__(self) -> Any:
                conn = await self.cm.__aenter__()
                return _AiopgConn(conn)

            async def __aexit__(self, *exc: Any) -> None:
                await self.cm.__aexit__(*exc)

        return await _drive(Conn, tasks, ops)
    finally:
        pool.close()
        await pool.wait_closed()


class _AiopgConn:
    def __init__(self, conn: Any) -> None:
        self.conn = conn

    async def execute(self, query: str) -> Any:
        cur = await self.conn.cursor()
        await cur.execute(query)
        return cur


async def _drive(connection: Any, tasks: int, ops: int) -> float:
    """``tasks`` tasks share ``ops`` operations; return ops/s."""
    remaining = ops

    async def client() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            async with connection() as conn:
                cur = await conn.execute("SELECT 1")
                if hasattr(cur, "fetchone"):
                    await cur.fetchone()

    # Warm-up: every task once.
    warm = remaining
    remaining = tasks
    await asyncio.gather(*(client() for _ in range(tasks)))
    remaining = warm
    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(tasks)))
    return ops / (time.perf_counter() - start)


RUNNERS = {"ours": _run_ours, "psycopg_pool": _run_psycopg_pool, "aiopg": _run_aiopg}


def worker(args: argparse.Namespace) -> None:
    run = RUNNERS[args.pool]
    rate = asyncio.run(run(args.dsn, args.tasks, args.size, args.ops, args.mode == "autocommit"))
    print(json.dumps({"ops_per_s": rate}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dsn")
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--size", type=int, default=10)
    parser.add_argument("--ops", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pools", default=",".join(POOLS))
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--no-pin", action="store_true")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--pool", help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    pools = [p for p in args.pools.split(",") if p]
    modes = [m for m in args.modes.split(",") if m]
    cpu = None if args.no_pin else default_cpu()
    with benchmark_server(args.dsn, cpu) as target:
        print(f"server: {target.dsn}; {target.pinning}")
        print(f"{args.tasks} tasks, max_size {args.size}, {args.ops} x SELECT 1 per run,")
        print(f"median of {args.rounds} rounds, each pool in a fresh process\n")
        results: dict[tuple[str, str], list[float]] = {}
        for _ in range(args.rounds):
            for mode in modes:
                for pool in pools:
                    cmd = [
                        sys.executable, __file__, "--worker", "--pool", pool, "--mode", mode,
                        "--dsn", target.dsn, "--tasks", str(args.tasks),
                        "--size", str(args.size), "--ops", str(args.ops),
                    ]  # fmt: skip
                    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
                    if out.returncode:
                        print(f"{pool}/{mode} failed:\n{out.stderr}", file=sys.stderr)
                        continue
                    rate = json.loads(out.stdout.strip().splitlines()[-1])["ops_per_s"]
                    results.setdefault((pool, mode), []).append(rate)
        for mode in modes:
            print(f"mode {mode}:")
            base = results.get(("psycopg_pool", mode))
            for pool in pools:
                rates = results.get((pool, mode))
                if not rates:
                    print(f"  {pool:14} failed")
                    continue
                med = statistics.median(rates)
                ratio = f"  {med / statistics.median(base):.2f}x psycopg_pool" if base else ""
                note = "  (no transaction: reference only)" if (
                    pool == "aiopg" and mode == "transaction"
                ) else ""  # fmt: skip
                print(f"  {pool:14} {med:9.0f} ops/s{ratio}{note}")
            ours, theirs = results.get(("ours", mode)), base
            if ours and theirs:
                ok = statistics.median(ours) >= statistics.median(theirs)
                print(f"  target ours >= psycopg_pool: {'PASS' if ok else 'FAIL'}")
            print()


if __name__ == "__main__":
    main()
