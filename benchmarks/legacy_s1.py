"""S1 for the legacy API alone: getconn + putconn, no query, one thread, for
psycopg2.pool.ThreadedConnectionPool and ours, alternating in one process.

    python benchmarks/legacy_s1.py [--rounds 15] [--ops 50000] [--dsn DSN] [--no-pin]
"""

from __future__ import annotations

import argparse
import statistics
from typing import Any, Callable

import psycopg2.pool
from environment import alternate, benchmark_server, default_cpu, ratio_line

from psycopg2_pool import ThreadedConnectionPool  # on sys.path once environment is imported

TARGET = 1.05  # ours may cost at most 5% more than psycopg2.pool's (issue 19)


def cycle(pool: Any) -> Callable[[int], None]:
    getconn, putconn = pool.getconn, pool.putconn

    def run(ops: int) -> None:
        for _ in range(ops):
            putconn(getconn())

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--ops", type=int, default=50_000)
    parser.add_argument("--dsn", help="an existing server (default: an embedded one)")
    parser.add_argument("--no-pin", action="store_true", help="do not pin client and server")
    args = parser.parse_args()

    with benchmark_server(args.dsn, None if args.no_pin else default_cpu()) as target:
        theirs = psycopg2.pool.ThreadedConnectionPool(1, 1, target.dsn)
        ours = ThreadedConnectionPool(1, 1, target.dsn)
        try:
            timings = alternate(
                {"ours": cycle(ours), "psycopg2.pool": cycle(theirs)}, args.rounds, args.ops
            )
        finally:
            ours.closeall()
            theirs.closeall()
    print(f"S1 legacy ThreadedConnectionPool, getconn+putconn, {target.pinning}")
    for name, values in timings.items():
        print(f"  {name:14} median {statistics.median(values):.3f} µs/op  (rounds: {len(values)})")
    print(ratio_line(timings, "ours", "psycopg2.pool", TARGET))


if __name__ == "__main__":
    main()
