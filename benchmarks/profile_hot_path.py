"""Profile ConnectionPool's checkout and return with pyinstrument: where a
request's time goes, pool against driver, one thread, pinned like the suite.

    python benchmarks/profile_hot_path.py [--form getconn|with] [--no-query]
        [--seconds 3] [--interval 0.0001] [--html out.html] [--dsn DSN] [--no-pin]

It runs S2's request (acquire, ``SELECT 1``, release; ``--no-query`` for S1's)
in a loop under the sampling profiler and prints the call tree. The pool's own
frames (``getconn``, ``putconn``, ``__enter__``/``__exit__`` of the context) sit
beside psycopg2's ``execute`` and ``fetchone``: their share of the samples is
the pool's share of a request. wrapt's and psycopg2's C code show up inside the
Python frame that called them.
"""

from __future__ import annotations

import argparse
import time

from environment import benchmark_server, default_cpu
from peers import ADAPTERS, opened
from pyinstrument import Profiler
from scenarios import SELECT_1, _timed_ops

BATCH = 1000  # requests per call between two looks at the clock


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--form", choices=["getconn", "with"], default="getconn")
    parser.add_argument("--no-query", action="store_true", help="S1: no query, pool alone")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--interval", type=float, default=0.0001, help="sampling interval, s")
    parser.add_argument("--html", help="also write pyinstrument's HTML view here")
    parser.add_argument("--dsn", help="an existing server (default: an embedded one)")
    parser.add_argument("--no-pin", action="store_true", help="do not pin client and server")
    args = parser.parse_args()

    # The suite's own adapter and request loop: the same pool, connections and code path.
    adapter = ADAPTERS["ours-with" if args.form == "with" else "ours"]()
    query = None if args.no_query else SELECT_1
    server = benchmark_server(args.dsn, None if args.no_pin else default_cpu())
    with server as target, opened(adapter, target.dsn, 1, 1):
        _timed_ops(adapter, query, 10_000)  # warm caches and the adaptive interpreter
        profiler = Profiler(interval=args.interval)
        requests = 0
        deadline = time.perf_counter() + args.seconds
        profiler.start()
        while time.perf_counter() < deadline:
            _timed_ops(adapter, query, BATCH)
            requests += BATCH
        profiler.stop()
    print(f"{requests:,} requests ({args.form}, {query or 'no query'}); {target.pinning}")
    print(profiler.output_text(unicode=True, color=False, show_all=True))
    if args.html:
        with open(args.html, "w") as out:
            out.write(profiler.output_html())


if __name__ == "__main__":
    main()
