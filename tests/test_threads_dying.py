"""Threads that end while holding a connection: the pool gets it back, rolled back.

Persistent pools key connections by thread, so a dead thread's connection can
be known for what it is. Threaded pools hand out raw connections under an auto
key: only the connection object going unreferenced can tell the pool.
"""

from __future__ import annotations

import gc
import threading
import warnings
from collections.abc import Iterator
from typing import Any, Callable

import psycopg2.extensions as ext
import pytest

from psycopg2_pool import PersistentConnectionPool, ThreadedConnectionPool
from tests.helpers import app_name, backends, dsn_with, wait_for


def run_thread(fn: Callable[[], Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}

    def run() -> None:
        out["result"] = fn()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(10)
    assert not thread.is_alive()
    return out


def open_transaction(conn: Any) -> int:
    """Leave ``conn`` in a transaction that created a temp table; return its backend pid."""
    with conn.cursor() as cur:
        cur.execute("CREATE TEMP TABLE p2p_dying (x int)")
        cur.execute("SELECT pg_backend_pid()")
        pid: int = cur.fetchone()[0]
    assert conn.get_transaction_status() == ext.TRANSACTION_STATUS_INTRANS
    return pid


def assert_rolled_back(conn: Any) -> None:
    assert conn.get_transaction_status() == ext.TRANSACTION_STATUS_IDLE
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass('pg_temp.p2p_dying')")
        assert cur.fetchone()[0] is None, "the dead thread's transaction was not rolled back"
    conn.rollback()


@pytest.fixture
def name() -> str:
    return app_name()


@pytest.fixture
def persistent(dsn: str, name: str) -> Iterator[PersistentConnectionPool]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        pool = PersistentConnectionPool(1, 1, dsn_with(dsn, application_name=name))
    yield pool
    if not pool.closed:
        pool.closeall()


@pytest.fixture
def threaded(dsn: str, name: str) -> Iterator[ThreadedConnectionPool]:
    pool = ThreadedConnectionPool(1, 1, dsn_with(dsn, application_name=name))
    yield pool
    if not pool.closed:
        pool.closeall()


def test_persistent_dead_thread_connection_is_reclaimed(
    persistent: PersistentConnectionPool,
) -> None:
    run_thread(lambda: open_transaction(persistent.getconn()))
    gc.collect()
    # maxconn is 1: the dead thread's connection must come back to serve this one.
    out = run_thread(lambda: persistent.getconn() is not None)
    assert out["result"]


def test_persistent_dead_thread_connection_is_rolled_back_and_reused(
    persistent: PersistentConnectionPool, dsn: str, name: str
) -> None:
    dead_pid = run_thread(lambda: open_transaction(persistent.getconn()))["result"]
    gc.collect()
    conn = persistent.getconn()
    assert_rolled_back(conn)
    assert conn.get_backend_pid() == dead_pid  # the same connection, reused
    persistent.putconn(conn)
    assert backends(dsn, name) == [dead_pid]


def test_persistent_many_dying_threads_leak_nothing(
    persistent: PersistentConnectionPool, dsn: str, name: str
) -> None:
    for _ in range(20):
        run_thread(lambda: open_transaction(persistent.getconn()))
    gc.collect()
    conn = persistent.getconn()
    assert_rolled_back(conn)
    persistent.putconn(conn)
    assert len(backends(dsn, name)) == 1


def test_threaded_unreferenced_connection_of_dead_thread_is_reclaimed(
    threaded: ThreadedConnectionPool,
) -> None:
    # The thread takes a connection with an automatic key and ends without
    # giving it back; nothing but the pool refers to it afterwards.
    run_thread(lambda: open_transaction(threaded.getconn()))
    gc.collect()
    got = wait_for(
        lambda: run_thread(lambda: _try_getconn(threaded))["result"],
        timeout=2.0,
        message="the dead thread's connection back in the pool",
    )
    assert_rolled_back(got)
    threaded.putconn(got)


def _try_getconn(pool: ThreadedConnectionPool) -> Any:
    try:
        return pool.getconn()
    except Exception:
        return None
