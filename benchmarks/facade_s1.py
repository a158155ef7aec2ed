"""S1 for the psycopg_pool-style API alone: getconn + putconn and an empty
``with pool.connection()``, one thread, ours (psycopg2) against psycopg_pool
(psycopg 3), alternating in one process.

    python benchmarks/facade_s1.py [--rounds 15] [--ops 30000] [--dsn DSN] [--no-pin]
"""

from __future__ import annotations

import argparse
import statistics
from typing import Any, Callable

import psycopg_pool
from environment import alternate, benchmark_server, default_cpu, ratio_line

from psycopg2_pool import ConnectionPool  # on sys.path once environment is imported

# Ours must take at most this share of psycopg_pool's time (issue 19).
TARGET_GETCONN = 0.5
TARGET_WITH = 0.4


def getconn_putconn(pool: Any) -> Callable[[int], None]:
    getconn, putconn = pool.getconn, pool.putconn

    def run(ops: int) -> None:
        for _ in range(ops):
            putconn(getconn())

    return run


def with_connection(pool: Any) -> Callable[[int], None]:
    connection = pool.connection

    def run(ops: int) -> None:
        for _ in range(ops):
            with connection():
                pass

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--ops", type=int, default=30_000)
    parser.add_argument("--dsn", help="an existing server (default: an embedded one)")
    parser.add_argument("--no-pin", action="store_true", help="do not pin client and server")
    args = parser.parse_args()

    with benchmark_server(args.dsn, None if args.no_pin else default_cpu()) as target:
        theirs = psycopg_pool.ConnectionPool(target.dsn, min_size=1, max_size=1, open=True)
        ours = ConnectionPool(target.dsn, min_size=1, max_size=1, open=True)
        try:
            theirs.wait()
            ours.wait()
            variants = {
                "ours getconn": getconn_putconn(ours),
                "psycopg_pool getconn": getconn_putconn(theirs),
                "ours with": with_connection(ours),
                "psycopg_pool with": with_connection(theirs),
            }
            timings = alternate(variants, args.rounds, args.ops)
        finally:
            ours.close()
            theirs.close()
    print(f"S1 ConnectionPool vs psycopg_pool 3.3, one thread, {target.pinning}")
    for name, values in timings.items():
        print(f"  {name:22} median {statistics.median(values):.3f} µs/op  (rounds: {len(values)})")
    print(ratio_line(timings, "ours getconn", "psycopg_pool getconn", TARGET_GETCONN))
    print(ratio_line(timings, "ours with", "psycopg_pool with", TARGET_WITH))


if __name__ == "__main__":
    main()
