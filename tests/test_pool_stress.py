"""32 threads share a ConnectionPool of 4: no connection is ever held twice,
no thread starves, the server never sees more than max_size connections."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

import psycopg2
import pytest

from psycopg2_pool import ConnectionPool
from tests.helpers import app_name, backends, dsn_with, wait_for

THREADS = 32
MAX_SIZE = 4
TOTAL = 3000


@pytest.fixture(scope="module")
def run(dsn: str) -> dict[str, Any]:
    name = app_name()
    pdsn = dsn_with(dsn, application_name=name)
    pool = ConnectionPool(pdsn, min_size=2, max_size=MAX_SIZE, timeout=10, open=True)
    lock = threading.Lock()
    holders: dict[int, int] = {}  # backend pid -> thread index holding it
    overlaps: list[tuple[int, int, int]] = []
    errors: list[BaseException] = []
    per_thread: Counter[int] = Counter()
    done = [0]
    stop_sampling = threading.Event()
    samples: list[int] = []

    def sampler() -> None:
        conn = psycopg2.connect(dsn_with(dsn, application_name="p2p-test-admin"))
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                while not stop_sampling.is_set():
                    cur.execute(
                        "select count(*) from pg_stat_activity where application_name = %s",
                        (name,),
                    )
                    samples.append(cur.fetchone()[0])
                    stop_sampling.wait(0.005)
        finally:
            conn.close()

    def client(i: int) -> None:
        try:
            while True:
                with lock:
                    if done[0] >= TOTAL:
                        return
                    done[0] += 1
                with pool.connection() as conn:
                    pid = conn.execute("select pg_backend_pid()").fetchone()[0]
                    with lock:
                        if pid in holders:
                            overlaps.append((pid, holders[pid], i))
                        holders[pid] = i
                        per_thread[i] += 1
                    conn.execute("select 1")
                    with lock:
                        if holders.get(pid) == i:
                            del holders[pid]
        except BaseException as exc:
            with lock:
                errors.append(exc)

    sampling = threading.Thread(target=sampler)
    sampling.start()
    pool.wait(5)
    threads = [threading.Thread(target=client, args=(i,)) for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    stop_sampling.set()
    sampling.join(5)
    stats = pool.get_stats()
    pool.close()
    wait_for(lambda: backends(dsn, name) == [], timeout=5)
    return {
        "overlaps": overlaps,
        "errors": errors,
        "per_thread": per_thread,
        "samples": samples,
        "stats": stats,
        "alive": [t for t in threads if t.is_alive()],
        "after_close": backends(dsn, name),
    }


def test_all_checkouts_done_without_error(run):
    assert run["alive"] == []
    assert run["errors"] == []
    assert sum(run["per_thread"].values()) == TOTAL


def test_no_backend_held_by_two_clients_at_once(run):
    assert run["overlaps"] == []


def test_no_thread_starved(run):
    assert set(run["per_thread"]) == set(range(THREADS))
    assert min(run["per_thread"].values()) >= 1


def test_fair_share_fifo(run):
    counts = run["per_thread"]
    mean = TOTAL / THREADS
    assert min(counts.values()) >= mean / 4, counts


def test_server_never_sees_more_than_max_size(run):
    assert run["samples"], "the sampler took no sample"
    assert max(run["samples"]) <= MAX_SIZE


def test_pool_size_never_above_max_size(run):
    assert run["stats"]["pool_size"] <= MAX_SIZE
    assert run["stats"]["requests_num"] == TOTAL


def test_no_backend_left_after_close(run):
    assert run["after_close"] == []
