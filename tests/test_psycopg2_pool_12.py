"""Code written for psycopg2-pool 1.2 (minconn/maxconn/idle_timeout spelling)."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any, Callable

import psycopg2
import psycopg2.extensions
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


def test_idle_timeout_closes_connections_above_minconn(made, named):
    pdsn, name = named
    pool = made(ConnectionPool(minconn=1, maxconn=3, idle_timeout=0.2, dsn=pdsn))
    conns = [pool.getconn() for _ in range(3)]
    for c in conns:
        pool.putconn(c)
    assert len(backends(pdsn, name)) == 3
    wait_for(lambda: len(backends(pdsn, name)) == 1, timeout=5)


def test_thread_safe_pool_takes_keywords(made, named):
    pdsn, name = named
    pool = made(ThreadSafeConnectionPool(minconn=2, maxconn=3, dsn=pdsn))
    assert (pool.minconn, pool.maxconn) == (2, 3)
    assert len(backends(pdsn, name)) == 2
    conn = pool.getconn()
    pool.putconn(conn)


def test_with_getconn_commits_and_returns(made, named):
    pdsn, _ = named
    pool = made(ConnectionPool(minconn=1, maxconn=2, dsn=pdsn))
    with pool.getconn() as conn, conn.cursor() as cur:
        cur.execute("create temp table if not exists t12 (x int)")  # session-local
        cur.execute("insert into t12 values (1)")
    # Same backend (LIFO, only one idle): the committed row is there.
    conn2 = pool.getconn()
    with conn2.cursor() as cur:
        cur.execute("select count(*) from t12")
        assert cur.fetchone() == (1,)
    pool.putconn(conn2)
    # Both given back: a third checkout works without 'exhausted'.
    a, b = pool.getconn(), pool.getconn()
    pool.putconn(a)
    pool.putconn(b)


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
    # ConnectionPool(dsn=...) is valid 1.2 code (every size keyword defaulted);
    # without minconn/maxconn/idle_timeout the contract gives it psycopg_pool
    # semantics, but the quickstart must still run unchanged.
    pdsn, _ = named
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        pool = made(ConnectionPool(dsn=pdsn))
        assert quickstart(pool) == [(1,)]
