"""NullConnectionPool: a new connection per checkout, closed on return."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any, Callable

import pytest

from psycopg2_pool import NullConnectionPool
from tests.helpers import app_name, backends, dsn_with, wait_for


@pytest.fixture
def make_pool(dsn: str) -> Iterator[Callable[..., tuple[NullConnectionPool, str, str]]]:
    made: list[NullConnectionPool] = []

    def make(**kwargs: Any) -> tuple[NullConnectionPool, str, str]:
        name = app_name()
        pdsn = dsn_with(dsn, application_name=name)
        kwargs.setdefault("timeout", 3.0)
        pool = NullConnectionPool(pdsn, open=True, **kwargs)
        made.append(pool)
        return pool, pdsn, name

    try:
        yield make
    finally:
        for pool in made:
            pool.close()


def test_each_checkout_is_a_new_backend(make_pool):
    pool, _, _ = make_pool()
    pids = []
    for _ in range(3):
        with pool.connection() as conn:
            pids.append(conn.get_backend_pid())
    assert len(set(pids)) == 3


def test_connection_closed_on_return(make_pool):
    pool, pdsn, name = make_pool()
    conn = pool.getconn()
    real = conn.__wrapped__
    assert len(backends(pdsn, name)) == 1
    pool.putconn(conn)
    assert real.closed
    wait_for(lambda: backends(pdsn, name) == [])
    assert pool.get_stats()["pool_size"] == 0


def test_no_connection_opened_before_checkout(make_pool):
    pool, pdsn, name = make_pool()
    pool.wait(5)
    assert backends(pdsn, name) == []


def test_max_size_caps_concurrency_and_waiter_gets_returned_connection(make_pool):
    pool, pdsn, name = make_pool(max_size=2)
    a = pool.getconn()
    b = pool.getconn()
    pid_b = b.get_backend_pid()
    got: list[int] = []

    def waiter() -> None:
        with pool.connection() as c:
            got.append(c.get_backend_pid())

    t = threading.Thread(target=waiter)
    t.start()
    wait_for(lambda: pool.get_stats()["requests_waiting"] == 1)
    assert len(backends(pdsn, name)) == 2
    pool.putconn(b)
    t.join(5)
    assert got == [pid_b]
    pool.putconn(a)
    wait_for(lambda: backends(pdsn, name) == [])


def test_min_size_not_zero_raises(dsn):
    with pytest.raises(ValueError, match="min_size"):
        NullConnectionPool(dsn, min_size=1, open=False)


def test_autocommit_in_kwargs_gives_autocommit_connections(make_pool):
    pool, _, _ = make_pool(kwargs={"autocommit": True})
    with pool.connection() as conn:
        assert conn.autocommit is True
