"""Watch one CPU for moments when nothing on it runs at all, while a scenario runs.

A shared machine can stop a virtual CPU for milliseconds (other tenants, the
host, long kernel sections). Whatever pool is measured then, its worst wait
grows by that much, and max-based figures such as fairness say more about the
machine than about the pool.

This process sleeps ``--period`` seconds at a time, pinned to ``--cpu`` and at
real-time priority when allowed (so that nothing of the benchmark can delay it),
and notes every sleep that overran by more than ``--threshold`` seconds. On
SIGTERM it writes a JSON object to stdout: ``{"fifo": bool, "stalls": [[start_ns,
end_ns], ...]}`` in perf_counter_ns time, the clock the scenarios use.

A sleep of 5 ms costs the measured CPU about 200 wake-ups a second.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cpu", type=int, required=True)
    parser.add_argument("--period", type=float, default=0.005)
    parser.add_argument("--threshold", type=float, default=0.0005)
    args = parser.parse_args(argv)
    os.sched_setaffinity(0, {args.cpu})
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
        fifo = True
    except (OSError, AttributeError):
        fifo = False  # not root: still useful, but the benchmark can delay it
    stopped: list[int] = []
    signal.signal(signal.SIGTERM, lambda *_: stopped.append(1))
    clock, sleep = time.perf_counter_ns, time.sleep
    limit = int((args.period + args.threshold) * 1e9)
    stalls = []
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    while not stopped:
        before = clock()
        sleep(args.period)
        after = clock()
        if after - before > limit:
            stalls.append([before, after])
    sys.stdout.write(json.dumps({"fifo": fifo, "stalls": stalls}) + "\n")


if __name__ == "__main__":
    main()
