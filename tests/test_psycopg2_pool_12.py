"""Code written for psycopg2-pool 1.2 (minconn/maxconn/idle_timeout spelling)."""

from __future__ import annotations

import threading
import time
import warnings
from collections.abc import Iterator
from typing import Any, Callable

import psycopg2
import psycopg2.extensions
import psycopg2.extras
import psycopg2.pool
import pytest

from psycopg2_pool import ConnectionPool, PoolClosed, PoolError, ThreadSafeConnectionPool
from tests.helpers import app_name, backends, dsn_with, wait_for


@pytest.fixture
def made(dsn: str) -> Iterator[Callable[[Any], Any]]:
    """``made(pool)`` registers a pool to close after the test."""
    pools: list[Any] = []

    def add(pool: Any) -> Any:
        pools.append(pool)
        return pool

    try:
        yield add
    finally:
        for pool in pools:
            pool.close()


@pytest.fixture
def named(dsn: str) -> tuple[str, str]:
    name = app_name()
    return dsn_with(dsn, application_name=name), name


def test_keywords_select_the_12_pool(made, named):
    pdsn, name = named
    pool = made(ConnectionPool(minconn=1, maxconn=2, idle_timeout=600, dsn=pdsn))
    assert isinstance(pool, ThreadSafeConnectionPool)
    assert len(backends(pdsn, name)) == 1


def test_attributes(made, named):
    pdsn, _ = named
    pool = made(ConnectionPool(minconn=1, maxconn=2, idle_timeout=600, dsn=pdsn))
    assert pool.minconn == 1
    assert pool.maxconn == 2
    assert pool.idle_timeout == 600
    assert pool.connect_kwargs == {"dsn": pdsn}


def test_host_port_dbname_user_keywords(made, dsn):
    name = app_name()
    params = psycopg2.extensions.parse_dsn(dsn)
    pool = made(
        ConnectionPool(
            minconn=1,
            maxconn=2,
            host=params["host"],
            port=params["port"],
            dbname=params["dbname"],
            user=params["user"],
            application_name=name,
        )
    )
    assert pool.connect_kwargs["host"] == params["host"]
    conn = pool.getconn()
    with conn.cursor() as cur:
        cur.execute("select current_database(), current_user")
        assert cur.fetchone() == (params["dbname"], params["user"])
    pool.putconn(conn)
    assert len(backends(dsn, name)) == 1


def test_defaults_minconn_1_maxconn_inf(made, named):
    pdsn, name = named
    pool = made(ConnectionPool(idle_timeout=600, dsn=pdsn))
    assert pool.minconn == 1
    assert pool.maxconn == float("inf")
    assert len(backends(pdsn, name)) == 1
    conns = [pool.getconn() for _ in range(6)]  # no limit
    assert len(backends(pdsn, name)) == 6
    for c in conns:
        pool.putconn(c)


def test_exhausted_raises_at_once_pool_error_and_operational_error(made, named):
    pdsn, _ = named
    pool = made(ConnectionPool(minconn=1, maxconn=2, dsn=pdsn))
    a, b = pool.getconn(), pool.getconn()
    with pytest.raises(psycopg2.pool.PoolError, match="connection pool exhausted") as info:
        pool.getconn()
    assert isinstance(info.value, psycopg2.OperationalError)
    pool.putconn(a)
    pool.putconn(b)


def test_exhausted_is_caught_as_operational_error(made, named):
    pdsn, _ = named
    pool = made(ConnectionPool(minconn=0, maxconn=1, dsn=pdsn))
    a = pool.getconn()
    try:
        pool.getconn()
    except psycopg2.OperationalError as exc:
        assert "connection pool exhausted" in str(exc)
    else:  # pragma: no cover
        pytest.fail("no error")
    pool.putconn(a)


def test_lifo_reuse(made, named):
    pdsn, _ = named
    pool = made(ConnectionPool(minconn=0, maxconn=3, dsn=pdsn))
    a, b, c = pool.getconn(), pool.getconn(), pool.getconn()
    pid_a = a.get_backend_pid()
    pool.putconn(b)
    pool.putconn(c)
    pool.putconn(a)
    d = pool.getconn()
    assert d.get_backend_pid() == pid_a
    pool.putconn(d)


def test_clear_closes_idle_connections(made, named):
    pdsn, name = named
    pool = made(ConnectionPool(minconn=2, maxconn=4, dsn=pdsn))
    held = pool.getconn()
    extra = [pool.getconn() for _ in range(2)]
    for c in extra:
        pool.putconn(c)
    assert len(backends(pdsn, name)) == 3
    pool.clear()
    wait_for(lambda: backends(pdsn, name) == [held.get_backend_pid()])
    pool.putconn(held)


def test_idle_timeout_closes_idle_connections_when_the_pool_is_next_used(made, named):
    # As in 1.2, there is no background thread: the next putconn tidies up.
    pdsn, name = named
    pool = made(ConnectionPool(minconn=1, maxconn=3, idle_timeout=0.2, dsn=pdsn))
    conns = [pool.getconn() for _ in range(3)]
    for c in conns:
        pool.putconn(c)
    assert len(backends(pdsn, name)) == 3
    time.sleep(0.3)
    conn = pool.getconn()  # the most recent is too old as well: a new one
    pool.putconn(conn)
    wait_for(lambda: backends(pdsn, name) == [conn.get_backend_pid()])
    assert list(pool.idle_connections) == [conn]


def test_thread_safe_pool_takes_keywords(made, named):
    pdsn, name = named
    pool = made(ThreadSafeConnectionPool(minconn=2, maxconn=3, dsn=pdsn))
    assert (pool.minconn, pool.maxconn) == (2, 3)
    assert len(backends(pdsn, name)) == 2
    conn = pool.getconn()
    pool.putconn(conn)


def test_with_conn_commits_and_keeps_the_connection_checked_out(made, named):
    pdsn, _ = named
    pool = made(ConnectionPool(minconn=1, maxconn=2, dsn=pdsn))
    with pool.getconn() as conn, conn.cursor() as cur:
        cur.execute("create temp table if not exists t12 (x int)")  # session-local
        cur.execute("insert into t12 values (1)")
    # psycopg2's own semantics: the transaction ended, the connection is still ours.
    assert conn in pool.connections_in_use
    assert conn.get_transaction_status() == psycopg2.extensions.TRANSACTION_STATUS_IDLE
    with conn.cursor() as cur:
        cur.execute("select count(*) from t12")
        assert cur.fetchone() == (1,)
    conn.__exit__(None, None, None)  # what postgres.py does before putconn
    pool.putconn(conn)
    assert conn not in pool.connections_in_use
    assert list(pool.idle_connections) == [conn]


def test_dropped_connection_comes_back_to_the_pool(made, named):
    pdsn, name = named
    pool = made(ConnectionPool(minconn=0, maxconn=1, dsn=pdsn))
    conn = pool.getconn()
    conn.cursor().execute("select 1")  # left inside a transaction
    del conn
    again = pool.getconn()  # not "exhausted": the dropped one was taken back
    assert backends(pdsn, name) == [again.get_backend_pid()]
    assert again.get_transaction_status() == psycopg2.extensions.TRANSACTION_STATUS_IDLE
    pool.putconn(again)


def test_with_getconn_in_a_loop_never_exhausts_the_pool(made, named):
    # The pattern 1.2's users wrote: each connection is dropped, never put back.
    pdsn, name = named
    pool = made(ConnectionPool(minconn=1, maxconn=2, dsn=pdsn))
    for i in range(20):
        with pool.getconn() as conn, conn.cursor() as cur:
            cur.execute("select %s", (i,))
            assert cur.fetchone() == (i,)
    assert len(backends(pdsn, name)) <= 2


def test_putconn_twice_raises_pool_error(made, named):
    pdsn, _ = named
    pool = made(ConnectionPool(minconn=1, maxconn=2, dsn=pdsn))
    conn = pool.getconn()
    pool.putconn(conn)
    with pytest.raises(PoolError, match="not checked out of this pool"):
        pool.putconn(conn)
    assert list(pool.idle_connections) == [conn]


def test_positional_sizes_select_the_12_pool(made, named):
    pdsn, name = named
    pool = made(ConnectionPool(0, 1, 30, dsn=pdsn))
    assert isinstance(pool, ThreadSafeConnectionPool)
    assert (pool.minconn, pool.maxconn, pool.idle_timeout) == (0, 1, 30)
    assert backends(pdsn, name) == []


def test_getconn_hands_out_the_psycopg2_connection_itself(made, named):
    pdsn, _ = named
    pool = made(ConnectionPool(minconn=1, maxconn=2, dsn=pdsn))
    conn = pool.getconn()
    assert type(conn) is psycopg2.extensions.connection
    psycopg2.extras.register_uuid(conn_or_curs=conn)  # C code that wants the C type
    pool.putconn(conn)


class _AppConnection(psycopg2.extensions.connection):
    pass


class _AppCursor(psycopg2.extensions.cursor):
    pass


def test_connection_factory_and_cursor_factory_are_honoured(made, named):
    # What liberapay's postgres.py passes.
    pdsn, _ = named
    pool = made(
        ConnectionPool(
            minconn=1,
            maxconn=2,
            dsn=pdsn,
            connection_factory=_AppConnection,
            cursor_factory=_AppCursor,
        )
    )
    conn = pool.getconn()
    assert type(conn) is _AppConnection
    assert type(conn.cursor()) is _AppCursor
    pool.putconn(conn)


def test_return_times_is_live_and_ageing_an_entry_expires_the_connection(made, named):
    pdsn, _ = named
    pool = made(ConnectionPool(minconn=0, maxconn=2, idle_timeout=30, dsn=pdsn))
    conn = pool.getconn()
    assert conn not in pool.return_times
    before = time.perf_counter()
    pool.putconn(conn)
    assert before <= pool.return_times[conn] <= time.perf_counter()
    pool.return_times[conn] -= 60
    fresh = pool.getconn()
    assert fresh is not conn
    assert conn.closed
    assert conn not in pool.return_times
    pool.putconn(fresh)


def test_idle_connections_is_live_and_last_in_first_out(made, named):
    pdsn, _ = named
    pool = made(ConnectionPool(minconn=0, maxconn=3, dsn=pdsn))
    a, b, c = pool.getconn(), pool.getconn(), pool.getconn()
    assert set(pool.connections_in_use) == {a, b, c}
    for conn in (b, c, a):
        pool.putconn(conn)
    assert list(pool.idle_connections) == [b, c, a]
    assert len(pool.connections_in_use) == 0
    assert pool.getconn() is a


def test_threads_share_the_pool_without_exceeding_maxconn(made, named):
    pdsn, name = named
    pool = made(ConnectionPool(minconn=0, maxconn=4, dsn=pdsn))
    holders: dict[int, int] = {}
    errors: list[BaseException] = []
    lock = threading.Lock()

    def work() -> None:
        try:
            for _ in range(50):
                conn = pool.getconn()
                with lock:
                    assert id(conn) not in holders, "one connection held twice"
                    holders[id(conn)] = 1
                with conn.cursor() as cur:
                    cur.execute("select 1")
                with lock:
                    del holders[id(conn)]
                pool.putconn(conn)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(backends(pdsn, name)) <= 4
    assert len(pool.connections_in_use) == 0


def test_close_then_getconn_raises_pool_closed(named):
    pdsn, name = named
    pool = ConnectionPool(minconn=2, maxconn=3, dsn=pdsn)
    pool.close()
    wait_for(lambda: backends(pdsn, name) == [])
    with pytest.raises(PoolClosed):
        pool.getconn()


def test_putconn_of_foreign_connection_raises_pool_error(made, named, dsn):
    pdsn, _ = named
    pool = made(ConnectionPool(minconn=1, maxconn=2, dsn=pdsn))
    foreign = psycopg2.connect(dsn)
    try:
        with pytest.raises(PoolError):
            pool.putconn(foreign)
    finally:
        foreign.close()


def quickstart(pool: Any) -> list[tuple[int]]:
    """The usage psycopg2-pool 1.2's docs describe, unchanged."""
    conn = pool.getconn()
    try:
        with conn.cursor() as cursor:
            cursor.execute("SELECT 1")
            rows = cursor.fetchall()
        conn.commit()
    finally:
        pool.putconn(conn)
    pool.clear()
    return rows


def test_12_quickstart_thread_safe_pool(made, named):
    pdsn, _ = named
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pool = made(ThreadSafeConnectionPool(dsn=pdsn))
        assert quickstart(pool) == [(1,)]


def test_12_quickstart_minconn_maxconn(made, named):
    pdsn, _ = named
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pool = made(ConnectionPool(minconn=1, maxconn=10, idle_timeout=600, dsn=pdsn))
        assert quickstart(pool) == [(1,)]


def test_12_quickstart_bare_dsn_runs(made, named):
    # ConnectionPool(dsn=...) is valid 1.2 code (every size keyword defaulted).
    pdsn, _ = named
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        pool = made(ConnectionPool(dsn=pdsn))
        assert quickstart(pool) == [(1,)]
