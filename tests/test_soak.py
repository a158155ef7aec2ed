"""A soak: 64 threads share a pool of 8 for a few seconds, running mixed work and
failing on purpose now and then. Zero wrong results, zero leaked connections.

``PSYCOPG2_POOL_SOAK_SECONDS`` makes it run longer by hand (default 5 s).
"""

from __future__ import annotations

import os
import random
import threading
import uuid
from collections import Counter
from time import monotonic

import psycopg2

from psycopg2_pool import ConnectionPool
from tests.helpers import app_name, backends, dsn_with, wait_for

SECONDS = float(os.environ.get("PSYCOPG2_POOL_SOAK_SECONDS", "5"))
THREADS = 64
MAX_SIZE = 8


class Boom(Exception):
    """A client's own failure inside ``with pool.connection()``."""


def test_soak_mixed_load_no_wrong_result_no_leak(dsn: str) -> None:
    name = app_name()
    table = f"p2p_soak_{uuid.uuid4().hex[:8]}"
    admin = psycopg2.connect(dsn)
    admin.autocommit = True
    admin.cursor().execute(f"CREATE TABLE {table} (worker int, n int)")
    pool = ConnectionPool(
        dsn_with(dsn, application_name=name),
        min_size=MAX_SIZE,
        max_size=MAX_SIZE,
        timeout=30,
        open=True,
    )
    wrong: list[str] = []
    errors: list[BaseException] = []
    waits: list[float] = []
    done: Counter[str] = Counter()
    committed: Counter[int] = Counter()  # worker -> rows it committed
    stop_at = monotonic() + SECONDS

    def work(worker: int) -> None:
        rng = random.Random(worker)
        try:
            while monotonic() < stop_at:
                kind = rng.choice(("select", "sleep", "insert", "boom"))
                asked = monotonic()
                try:
                    with pool.connection() as conn:
                        waits.append(monotonic() - asked)
                        cur = conn.cursor()
                        if kind == "select":
                            a, b = rng.randrange(10**6), rng.randrange(10**6)
                            cur.execute("SELECT %s::int + %s::int, %s::text", (a, b, worker))
                            if cur.fetchone() != (a + b, str(worker)):
                                wrong.append(f"select {a}+{b} by {worker}")
                        elif kind == "sleep":
                            cur.execute("SELECT pg_sleep(0.001)")
                        elif kind == "insert":
                            n = rng.randrange(10**6)
                            cur.execute(f"INSERT INTO {table} VALUES (%s, %s)", (worker, n))
                            cur.execute(
                                f"SELECT count(*) FROM {table} WHERE worker = %s", (worker,)
                            )
                            # Inside the transaction: what it committed before, plus this row.
                            if cur.fetchone()[0] != committed[worker] + 1:
                                wrong.append(f"insert count of {worker}")
                        else:
                            cur.execute(f"INSERT INTO {table} VALUES (%s, -1)", (worker,))
                            raise Boom  # rolled back by the with block
                    if kind == "insert":
                        committed[worker] += 1
                    done[kind] += 1
                except Boom:
                    done["boom"] += 1
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(THREADS)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(SECONDS + 60)
        assert not any(t.is_alive() for t in threads), "a soak thread is stuck"
        assert not errors, errors[:3]
        assert not wrong, wrong[:10]
        with admin.cursor() as cur:
            cur.execute(f"SELECT worker, count(*) FROM {table} GROUP BY worker")
            on_server = dict(cur.fetchall())
            cur.execute(f"SELECT count(*) FROM {table} WHERE n = -1")
            rolled_back_rows = cur.fetchone()[0]
        assert rolled_back_rows == 0, "a client exception did not roll its transaction back"
        assert on_server == {w: c for w, c in committed.items() if c}
        stats = pool.get_stats()
        assert stats["pool_size"] <= MAX_SIZE
    finally:
        pool.close()
        admin.cursor().execute(f"DROP TABLE IF EXISTS {table}")
        admin.close()
    wait_for(lambda: not backends(dsn, name), message="no server connection after close")
    ordered = sorted(waits)
    p99 = ordered[int(len(ordered) * 0.99)] if ordered else 0.0
    print(
        f"\nsoak: {SECONDS:.0f} s, {THREADS} threads, max_size {MAX_SIZE}:"
        f" {sum(done.values())} operations {dict(done)};"
        f" wait p50 {ordered[len(ordered) // 2] * 1000:.2f} ms,"
        f" p99 {p99 * 1000:.2f} ms, max {ordered[-1] * 1000:.2f} ms"
    )
    assert sum(done.values()) > THREADS
