"""The configure, check and reset callbacks of the psycopg_pool-style pools.

What a callback gets (a handle like the client's, alive while it runs), and
what a failing check costs: the connection goes back to the pool and the
client retries with backoff, never in a loop of checkouts or connections.
"""

from __future__ import annotations

import asyncio
import gc
import time
import uuid
import warnings
from collections.abc import Coroutine, Iterator
from typing import Any, Callable, TypeVar

import psycopg2
import psycopg2.extensions
import psycopg2.extras
import pytest

from psycopg2_pool import (
    AsyncConnectionPool,
    ConnectionPool,
    NullConnectionPool,
    PoolError,
    PoolTimeout,
)
from tests.helpers import app_name, backends, dsn_with, wait_for

T = TypeVar("T")

IDLE = psycopg2.extensions.TRANSACTION_STATUS_IDLE


@pytest.fixture
def make_pool(dsn: str) -> Iterator[Callable[..., ConnectionPool]]:
    """``make_pool(**kwargs)``: an open pool, filled to ``min_size``; closed after."""
    made: list[ConnectionPool] = []

    def make(**kwargs: Any) -> ConnectionPool:
        kwargs.setdefault("min_size", 1)
        pool = ConnectionPool(dsn_with(dsn, application_name=app_name()), open=True, **kwargs)
        made.append(pool)
        pool.wait(5)
        return pool

    try:
        yield make
    finally:
        for pool in made:
            pool.close()


def run(coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


def always_fail(conn: Any) -> None:
    raise RuntimeError("check failed on purpose")


class FailFor:
    """A check that fails for the connections whose backend pid it was given."""

    def __init__(self) -> None:
        self.pids: set[int] = set()
        self.calls = 0

    def __call__(self, conn: Any) -> None:
        self.calls += 1
        if conn.get_backend_pid() in self.pids:
            raise RuntimeError("check failed on purpose")


# -- a failing check ---------------------------------------------------------------


def test_check_that_always_fails_opens_no_new_connections(make_pool):
    pool = make_pool(min_size=2, max_size=4, check=always_fail)
    with pytest.raises(PoolTimeout):
        pool.getconn(timeout=1)
    assert pool.get_stats()["connections_num"] <= 4


def test_check_that_always_fails_is_retried_with_backoff(make_pool):
    calls: list[float] = []

    def check(conn: Any) -> None:
        calls.append(time.monotonic())
        raise RuntimeError("check failed on purpose")

    pool = make_pool(check=check)
    with pytest.raises(PoolTimeout, match=r"after 1\.50 sec"):
        pool.getconn(timeout=1.5)
    # At once, then after about 1 s; the next pause would end past the deadline.
    assert 2 <= len(calls) <= 4
    assert calls[1] - calls[0] < 0.5


def test_check_that_fails_once_is_retried_at_once(make_pool):
    failures = [RuntimeError("check failed on purpose")]

    def check(conn: Any) -> None:
        if failures:
            raise failures.pop()

    pool = make_pool(check=check)
    started = time.monotonic()
    with pool.connection(timeout=5) as conn:
        assert time.monotonic() - started < 0.5
        assert conn.execute("select 1").fetchone() == (1,)


def test_connection_failing_check_stays_in_the_pool_and_another_is_tried_at_once(make_pool):
    bad: list[int] = []
    calls = []

    def check(conn: Any) -> None:
        pid = conn.get_backend_pid()
        calls.append(pid)
        if not bad:
            bad.append(pid)  # the first one checked fails, now and every time
        if pid in bad:
            raise RuntimeError("check failed on purpose")

    pool = make_pool(min_size=2, max_size=2, check=check)
    for _ in range(3):
        started = time.monotonic()
        with pool.connection(timeout=5) as conn:
            assert conn.get_backend_pid() not in bad
        assert time.monotonic() - started < 0.5  # no backoff: the other was tried at once
    assert calls[0] == bad[0] != calls[1]  # the first request tried the other one next
    stats = pool.get_stats()
    assert stats["connections_num"] == 2
    assert stats["pool_available"] == 2
    assert "connections_lost" not in stats


@pytest.mark.parametrize("state", ["INTRANS", "INERROR"])
def test_connection_left_in_a_transaction_by_a_failing_check_goes_back_clean(make_pool, state):
    def check(conn: Any) -> None:
        if state == "INERROR":
            conn.execute("select * from no_such_table")
        conn.execute("select 1")
        raise RuntimeError("check failed on purpose")

    pool = make_pool(min_size=1, max_size=1, check=check)
    with pytest.raises(PoolTimeout):
        pool.getconn(timeout=0.5)
    [conn] = pool._pool
    assert conn.get_transaction_status() == IDLE
    assert pool.get_stats()["connections_num"] == 1


def test_check_that_closes_the_connection_gets_it_replaced(make_pool):
    bad: set[int] = set()

    def check(conn: Any) -> None:
        if conn.get_backend_pid() in bad:
            conn.close()
            raise RuntimeError("check failed on purpose")

    pool = make_pool(min_size=1, max_size=1, check=check)
    with pool.connection() as conn:
        pid = conn.get_backend_pid()
    bad.add(pid)
    with pool.connection(timeout=5) as conn:
        assert conn.get_backend_pid() != pid
    assert pool.get_stats()["connections_lost"] == 1


def test_null_pool_closes_a_connection_failing_check(dsn):
    name = app_name()
    with NullConnectionPool(dsn_with(dsn, application_name=name), check=always_fail) as pool:
        with pytest.raises(PoolTimeout):
            pool.getconn(timeout=1.5)
        assert pool.get_stats()["pool_available"] == 0
        wait_for(lambda: not backends(dsn, name), message="the null pool's connections closed")


def test_check_with_no_time_left_leaves_the_connection_unharmed(make_pool):
    check = FailFor()
    pool = make_pool(min_size=1, max_size=1, check=check)
    with pool.connection() as conn:
        pid = conn.get_backend_pid()
    for _ in range(20):
        with pytest.raises(PoolTimeout):
            pool.getconn(timeout=0)
    with pool.connection() as conn:
        assert conn.get_backend_pid() == pid
    assert pool.get_stats()["connections_num"] == 1


def test_async_check_that_always_fails_opens_no_new_connections(dsn):
    async def check(conn: Any) -> None:
        raise RuntimeError("check failed on purpose")

    async def main() -> dict[str, int]:
        name = app_name()
        async with AsyncConnectionPool(
            dsn_with(dsn, application_name=name), min_size=2, max_size=4, check=check, open=False
        ) as pool:
            await pool.wait(5)
            with pytest.raises(PoolTimeout):
                await pool.getconn(timeout=1)
            return pool.get_stats()

    assert run(main())["connections_num"] <= 4


def test_async_connection_failing_check_stays_in_the_pool(dsn):
    bad: list[int] = []
    calls: list[int] = []

    async def check(conn: Any) -> None:
        pid = conn.get_backend_pid()
        calls.append(pid)
        if not bad:
            bad.append(pid)  # the first one checked fails, now and every time
        if pid in bad:
            await conn.execute("select 1")  # left in a transaction, rolled back on return
            raise RuntimeError("check failed on purpose")

    async def main() -> None:
        name = app_name()
        async with AsyncConnectionPool(
            dsn_with(dsn, application_name=name), min_size=2, max_size=2, check=check, open=False
        ) as pool:
            await pool.wait(5)
            pids = set(backends(dsn, name))
            async with pool.connection(timeout=5) as conn:
                assert conn.get_backend_pid() == calls[1] != bad[0]
            stats = pool.get_stats()
            assert stats["connections_num"] == 2
            assert stats["pool_available"] == 2
            assert "connections_lost" not in stats
            assert set(backends(dsn, name)) == pids

    run(main())


@pytest.mark.filterwarnings("error::RuntimeWarning")
@pytest.mark.parametrize("timeout", [0.0, 1e-6, 1e-4, 1e-3, 0.05])
def test_async_check_running_at_the_deadline_leaves_no_coroutine_unawaited(dsn, timeout):
    async def check(conn: Any) -> None:
        await asyncio.sleep(1)

    async def main() -> None:
        async with AsyncConnectionPool(dsn, min_size=1, check=check, open=False) as pool:
            await pool.wait(5)
            for _ in range(5):
                with pytest.raises(PoolTimeout):
                    await pool.getconn(timeout=timeout)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run(main())
        gc.collect()
    unawaited = [str(w.message) for w in caught if "never awaited" in str(w.message)]
    assert not unawaited


# -- what the callbacks get --------------------------------------------------------


@pytest.mark.parametrize("role", ["configure", "check", "reset"])
def test_sync_callback_gets_a_connection_with_execute(make_pool, role):
    seen: list[Any] = []

    def callback(conn: Any) -> None:
        assert isinstance(conn, psycopg2.extensions.connection)
        cur = conn.execute("select %s + %s", (1, 2))
        assert isinstance(cur, psycopg2.extensions.cursor)
        seen.append(cur.fetchone())
        conn.rollback()

    pool = make_pool(**{role: callback})
    with pool.connection():
        pass
    assert seen and all(row == (3,) for row in seen)


@pytest.mark.parametrize("role", ["configure", "check", "reset"])
def test_sync_callback_connection_is_dead_once_the_callback_returned(make_pool, role):
    kept: list[Any] = []
    pool = make_pool(**{role: kept.append})
    with pool.connection():
        pass
    assert kept
    with pytest.raises(PoolError, match="returned to the pool"):
        kept[0].execute("select 1")
    assert kept[0].closed


@pytest.mark.parametrize("role", ["configure", "check", "reset"])
def test_async_callback_connection_is_dead_once_the_callback_returned(dsn, role):
    kept: list[Any] = []

    async def callback(conn: Any) -> None:
        kept.append(conn)

    async def main() -> None:
        pool = AsyncConnectionPool(dsn, min_size=1, open=False, **{role: callback})
        async with pool, pool.connection():
            pass

    run(main())
    assert kept
    with pytest.raises(PoolError, match="returned to the pool"):
        kept[0].cursor()


def test_with_block_in_a_callback_commits_and_leaves_the_connection_open(make_pool):
    def configure(conn: Any) -> None:
        with conn as same:
            same.execute("select set_config('application_name', 'configured', false)")

    pool = make_pool(configure=configure)
    with pool.connection() as conn:
        assert conn.execute("show application_name").fetchone() == ("configured",)


def test_register_composite_in_configure(make_pool, dsn):
    tname = f"p2p_comp_{uuid.uuid4().hex[:8]}"
    admin = psycopg2.connect(dsn)
    admin.autocommit = True
    admin.cursor().execute(f"create type {tname} as (a int, b text)")
    try:

        def configure(conn: Any) -> None:
            psycopg2.extras.register_composite(tname, conn)
            conn.commit()  # the lookup query opened a transaction

        pool = make_pool(configure=configure)
        with pool.connection() as conn:
            row = conn.execute(f"select (1, 'x')::{tname}").fetchone()[0]
            assert (row.a, row.b) == (1, "x")
    finally:
        admin.cursor().execute(f"drop type {tname}")
        admin.close()
