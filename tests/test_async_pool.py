"""AsyncConnectionPool and AsyncNullConnectionPool against a real PostgreSQL server.

No pytest-asyncio here: each test runs its coroutine with :func:`run`.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
import time
import warnings
import weakref
from collections import Counter
from collections.abc import Coroutine, Iterator
from typing import Any, Callable, TypeVar

import psycopg2
import psycopg2.errors
import psycopg2.extensions
import pytest

import psycopg2_pool
from psycopg2_pool import (
    AsyncConnectionPool,
    AsyncModeNotSupported,
    AsyncNullConnectionPool,
    PoolClosed,
    PoolError,
    PoolTimeout,
    TooManyRequests,
)
from psycopg2_pool._embedded import free_port
from tests.helpers import (
    STATS_KEYS,
    BlackHole,
    app_name,
    backends,
    dsn_with,
    terminate_backends,
)

T = TypeVar("T")

IDLE = psycopg2.extensions.TRANSACTION_STATUS_IDLE
INTRANS = psycopg2.extensions.TRANSACTION_STATUS_INTRANS
INERROR = psycopg2.extensions.TRANSACTION_STATUS_INERROR


def run(coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
    """Run ``coro`` in a fresh event loop, failing the test if it takes too long."""

    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


async def eventually(predicate: Callable[[], Any], timeout: float = 5.0) -> Any:
    """Await until ``predicate()`` is truthy (it may be sync; it runs on the loop)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {predicate}; last value {value!r}")
        await asyncio.sleep(0.01)


async def in_thread(function: Callable[..., T], *args: Any) -> T:
    """Run a blocking helper (server-side checks) off the loop."""
    return await asyncio.get_running_loop().run_in_executor(None, function, *args)


class Target:
    """A DSN tagged with a fresh application_name, to find a pool's backends."""

    def __init__(self, dsn: str) -> None:
        self.admin_dsn = dsn
        self.name = app_name()
        self.dsn = dsn_with(dsn, application_name=self.name)

    def backends(self) -> list[int]:
        return backends(self.admin_dsn, self.name)

    def activity(self) -> list[tuple[str, str]]:
        conn = psycopg2.connect(self.admin_dsn)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute(
                    "SELECT coalesce(state, ''), query FROM pg_stat_activity"
                    " WHERE application_name = %s",
                    (self.name,),
                )
                return cur.fetchall()
        finally:
            conn.close()


@pytest.fixture
def target(dsn: str) -> Target:
    return Target(dsn)


def make(target: Target, cls: type[Any] = AsyncConnectionPool, **kwargs: Any) -> Any:
    kwargs.setdefault("open", False)
    kwargs.setdefault("timeout", 3.0)
    return cls(target.dsn, **kwargs)


def unreachable_dsn() -> str:
    return f"host=127.0.0.1 port={free_port()} user=postgres dbname=postgres"


def test_public_names():
    from psycopg2_pool import async_pool

    assert psycopg2_pool.AsyncConnectionPool is async_pool.AsyncConnectionPool
    assert issubclass(AsyncNullConnectionPool, AsyncConnectionPool)
    assert issubclass(AsyncModeNotSupported, psycopg2.NotSupportedError)
    for name in ("AsyncConnectionPool", "AsyncNullConnectionPool", "AsyncModeNotSupported"):
        assert name in psycopg2_pool.__all__


def test_sync_and_async_pools_are_siblings():
    """As in psycopg_pool: code that tells a sync pool from an async one by
    isinstance() is told right, and a function typed to take a ConnectionPool
    never gets an async pool."""
    from psycopg2_pool import ConnectionPool, NullConnectionPool
    from psycopg2_pool.base import BasePool

    for cls in (AsyncConnectionPool, AsyncNullConnectionPool):
        assert not issubclass(cls, ConnectionPool)
        assert issubclass(cls, BasePool)
    for cls in (ConnectionPool, NullConnectionPool):
        assert not issubclass(cls, AsyncConnectionPool)
        assert issubclass(cls, BasePool)
    assert issubclass(NullConnectionPool, ConnectionPool)
    assert issubclass(AsyncNullConnectionPool, AsyncConnectionPool)
    assert not issubclass(AsyncNullConnectionPool, NullConnectionPool)
    pool = AsyncConnectionPool("", open=False)
    assert not isinstance(pool, ConnectionPool)


# -- open / close / warnings -------------------------------------------------------


def test_open_wait_close(target):
    async def main() -> None:
        pool = make(target, min_size=2)
        assert pool.closed
        await pool.open(wait=True, timeout=5)
        assert not pool.closed
        assert len(await in_thread(target.backends)) == 2
        await pool.close()
        assert pool.closed
        await eventually(lambda: not target.backends())

    run(main())


def test_async_with_opens_and_closes(target):
    async def main() -> None:
        async with make(target, min_size=1) as pool:
            assert not pool.closed
            async with pool.connection() as conn:
                cur = await conn.execute("select 1")
                assert await cur.fetchone() == (1,)
        assert pool.closed

    run(main())


def test_dropped_open_pool_is_collected_and_its_connections_close(target):
    async def main() -> weakref.ref[Any]:
        pool = make(target, min_size=2)
        await pool.open(wait=True, timeout=5)
        async with pool.connection() as conn:
            await conn.execute("select 1")
        ref = weakref.ref(pool)
        del pool, conn
        gc.collect()
        assert ref() is None
        await eventually(lambda: not target.backends())
        return ref

    run(main())


def test_sync_with_is_refused(target):
    pool = make(target, min_size=1)
    with pytest.raises(TypeError, match="async with"), pool:
        pass


def test_open_without_running_loop_raises(target):
    with pytest.raises(RuntimeError, match="no running loop"), pytest.warns(RuntimeWarning):
        AsyncConnectionPool(target.dsn, open=True)


def test_open_in_constructor_warns_as_psycopg_pool(target):
    async def main() -> None:
        with pytest.warns(RuntimeWarning, match="opening the async pool AsyncConnectionPool"):
            pool = AsyncConnectionPool(target.dsn, min_size=1, open=True)
        await pool.close()

    run(main())


def test_implicit_open_warns_on_first_use_only(target):
    async def main() -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            pool = AsyncConnectionPool(target.dsn, min_size=1)  # open not given
        try:
            with pytest.warns(RuntimeWarning, match=r"await pool.open\(\)"):
                conn = await pool.getconn()
            await pool.putconn(conn)
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                await pool.putconn(await pool.getconn())
        finally:
            await pool.close()

    run(main())


def test_no_warning_with_open_false_or_async_with(target):
    async def main() -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            async with AsyncConnectionPool(target.dsn, min_size=1) as pool:
                await pool.putconn(await pool.getconn())

    run(main())


def test_closed_states_raise_pool_closed(target):
    async def main() -> None:
        pool = make(target, min_size=1)
        with pytest.raises(PoolClosed, match="not open yet"):
            await pool.getconn()
        await pool.open()
        await pool.close()
        with pytest.raises(PoolClosed, match="already closed"):
            await pool.getconn()
        with pytest.raises(PoolClosed):
            await pool.open()

    run(main())


def test_wait_timeout_raises_and_closes():
    async def main() -> None:
        pool = AsyncConnectionPool(unreachable_dsn(), min_size=1, open=False)
        await pool.open()
        started = time.monotonic()
        with pytest.raises(PoolTimeout, match="initialization incomplete"):
            await pool.wait(timeout=0.3)
        assert time.monotonic() - started < 2
        assert pool.closed

    run(main())


# -- checkout and return -----------------------------------------------------------


def test_handles_are_psycopg2_connections_and_die_on_return(target):
    async def main() -> None:
        async with make(target, min_size=1) as pool:
            conn = await pool.getconn()
            assert isinstance(conn, psycopg2.extensions.connection)
            real = conn.__wrapped__
            assert type(real) is psycopg2.extensions.connection
            assert real.async_ == 1
            await pool.putconn(conn)
            with pytest.raises(PoolError, match="returned to the pool"):
                conn.get_backend_pid()
            with pytest.raises(PoolError, match="returned to the pool"):
                await conn.execute("select 1")
            with pytest.raises(PoolError, match="already returned"):
                await pool.putconn(conn)
            with pytest.raises(PoolError):
                await pool.putconn(None)
            with pytest.raises(PoolError):
                await pool.putconn(real)
            assert pool.get_stats()["pool_available"] == 1

    run(main())


def test_putconn_of_another_pools_connection_raises(target):
    async def main() -> None:
        async with make(target, min_size=1) as p1, make(target, min_size=1) as p2:
            conn = await p1.getconn()
            with pytest.raises(PoolError, match="comes from pool"):
                await p2.putconn(conn)
            await p1.putconn(conn)

    run(main())


def test_cursor_api(target):
    async def main() -> None:
        async with make(target, min_size=1) as pool, pool.connection() as conn:
            async with conn.cursor() as cur:
                await cur.execute("select generate_series(1, 5)")
                assert await cur.fetchone() == (1,)
                assert await cur.fetchmany(2) == [(2,), (3,)]
                assert await cur.fetchall() == [(4,), (5,)]
                await cur.execute("select %s", ("a",))
                assert [row async for row in cur] == [("a",)]
                assert cur.description[0].name == "?column?"
                await cur.execute("create temp table t (x int)")
                await cur.executemany("insert into t values (%s)", [(1,), (2,), (3,)])
                assert cur.rowcount == 3
            assert cur.closed
            cur = await conn.execute("select count(*) from t")
            assert await cur.fetchone() == (3,)

    run(main())


# -- transactions -------------------------------------------------------------------


def test_block_commits_on_success_and_rolls_back_on_error(target):
    async def main() -> None:
        async with make(target, min_size=2) as pool:
            async with pool.connection() as conn:
                await conn.execute("create table if not exists async_tx (x text)")
            tag = app_name()
            async with pool.connection() as conn:
                await conn.execute("insert into async_tx values (%s)", (tag,))
                assert conn.get_transaction_status() == INTRANS
                async with pool.connection() as other:  # not visible before commit
                    cur = await other.execute("select count(*) from async_tx where x = %s", (tag,))
                    assert await cur.fetchone() == (0,)
            with pytest.raises(ZeroDivisionError):
                async with pool.connection() as conn:
                    await conn.execute("insert into async_tx values (%s)", (tag + "-no",))
                    1 / 0  # noqa: B018
            async with pool.connection() as conn:
                cur = await conn.execute(
                    "select x from async_tx where x like %s order by x", (tag + "%",)
                )
                assert await cur.fetchall() == [(tag,)]

    run(main())


def test_explicit_commit_rollback_and_failed_transaction(target):
    async def main() -> None:
        async with make(target, min_size=1) as pool, pool.connection() as conn:
            await conn.execute("create temp table t (x int)")
            await conn.commit()
            assert conn.get_transaction_status() == IDLE
            await conn.execute("insert into t values (1)")
            await conn.rollback()
            cur = await conn.execute("select count(*) from t")
            assert await cur.fetchone() == (0,)
            with pytest.raises(psycopg2.errors.SyntaxError):
                await conn.execute("selec 1")
            assert conn.get_transaction_status() == INERROR
            with pytest.raises(psycopg2.errors.InFailedSqlTransaction):
                await conn.execute("select 1")
            await conn.rollback()
            cur = await conn.execute("select 1")
            assert await cur.fetchone() == (1,)

    run(main())


def test_connection_returned_in_transaction_is_rolled_back(target):
    async def main() -> None:
        async with make(target, min_size=1, max_size=1) as pool:
            conn = await pool.getconn()
            await conn.execute("create temp table t (x int)")
            assert conn.get_transaction_status() == INTRANS
            await pool.putconn(conn)
            async with pool.connection() as conn:
                assert conn.get_transaction_status() == IDLE
                with pytest.raises(psycopg2.errors.UndefinedTable):
                    await conn.execute("select * from t")

    run(main())


def test_autocommit(target):
    async def main() -> None:
        async with make(target, min_size=1, max_size=1) as pool, pool.connection() as conn:
            assert conn.autocommit is False
            with pytest.raises(AttributeError, match="set_autocommit"):
                conn.autocommit = True
            await conn.set_autocommit(True)
            await conn.execute("select 1")
            assert conn.get_transaction_status() == IDLE
            await conn.set_autocommit(False)
            await conn.execute("select 1")
            with pytest.raises(psycopg2.ProgrammingError, match="INTRANS"):
                await conn.set_autocommit(True)

    run(main())


def test_autocommit_in_kwargs_gives_autocommit_connections(target):
    async def main() -> None:
        pool = make(target, min_size=1, kwargs={"autocommit": True})
        async with pool, pool.connection() as conn:
            assert conn.autocommit is True
            await conn.execute("select 1")
            assert conn.get_transaction_status() == IDLE  # no BEGIN sent

    run(main())


def test_autocommit_in_kwargs_of_null_pool_gives_autocommit_connections(target):
    async def main() -> None:
        pool = make(target, AsyncNullConnectionPool, autocommit=True)
        async with pool, pool.connection() as conn:
            assert conn.autocommit is True

    run(main())


def test_cursor_factory_in_kwargs_is_the_connections_default(target):
    import psycopg2.extras

    async def main() -> None:
        factory = psycopg2.extras.RealDictCursor
        pool = make(target, min_size=1, kwargs={"cursor_factory": factory})
        async with pool, pool.connection() as conn:
            cur = await conn.execute("select 1 as x")
            assert await cur.fetchone() == {"x": 1}

    run(main())


def test_async_mode_limitations_raise_clearly(target):
    async def main() -> None:
        async with make(target, min_size=1) as pool, pool.connection() as conn:
            for call in (
                lambda: conn.cursor("named"),
                lambda: conn.set_session(readonly=True),
                lambda: conn.set_isolation_level(1),
                lambda: conn.lobject(),
                lambda: conn.tpc_begin("x"),
                lambda: conn.cursor().copy_expert("copy t to stdout", None),
                lambda: conn.cursor().copy_from(None, "t"),
            ):
                with pytest.raises(AsyncModeNotSupported, match="asynchronous"):
                    call()
            with pytest.raises(psycopg2.NotSupportedError):
                conn.set_session(autocommit=True)
            with pytest.raises(TypeError, match="async with"), conn:
                pass

    run(main())


# -- waiting, limits, errors --------------------------------------------------------


def test_idle_connections_are_used_in_turn(target):
    async def main() -> None:
        async with make(target, min_size=4) as pool:
            await pool.wait()
            uses: Counter[int] = Counter()
            for _ in range(8):
                async with pool.connection() as conn:
                    uses[conn.get_backend_pid()] += 1
            assert sorted(uses.values()) == [2, 2, 2, 2]

    run(main())


def test_waiters_are_served_fifo_and_timeout(target):
    async def main() -> None:
        async with make(target, min_size=1, max_size=1, name="ap") as pool:
            await pool.wait()
            holder = await pool.getconn()
            served: list[int] = []

            async def client(i: int) -> None:
                conn = await pool.getconn()
                served.append(i)
                await asyncio.sleep(0.01)
                await pool.putconn(conn)

            tasks = []
            for i in range(5):
                tasks.append(asyncio.create_task(client(i)))
                await eventually(lambda i=i: pool.get_stats()["requests_waiting"] == i + 1)
            with pytest.raises(PoolTimeout, match=r"'ap' after 0\.20 sec"):
                await pool.getconn(timeout=0.2)
            await pool.putconn(holder)
            await asyncio.gather(*tasks)
            assert served == [0, 1, 2, 3, 4]
            stats = pool.get_stats()
            assert stats["requests_errors"] == 1
            assert stats["requests_queued"] == 6

    run(main())


def test_max_waiting_raises_too_many_requests(target):
    async def main() -> None:
        async with make(target, min_size=1, max_size=1, max_waiting=1) as pool:
            holder = await pool.getconn()
            waiting = asyncio.create_task(pool.getconn())
            await eventually(lambda: pool.get_stats()["requests_waiting"] == 1)
            with pytest.raises(TooManyRequests):
                await pool.getconn()
            await pool.putconn(holder)
            await pool.putconn(await waiting)

    run(main())


def test_close_fails_waiting_clients(target):
    async def main() -> None:
        pool = make(target, min_size=1, max_size=1)
        await pool.open(wait=True)
        holder = await pool.getconn()
        waiting = asyncio.create_task(pool.getconn(timeout=10))
        await eventually(lambda: pool.get_stats()["requests_waiting"] == 1)
        await pool.close()
        with pytest.raises(PoolClosed):
            await waiting
        await pool.putconn(holder)  # closed with the pool
        assert holder.__wrapped__ is not None
        await eventually(lambda: not target.backends())

    run(main())


def test_pool_grows_to_max_size_for_waiters(target):
    async def main() -> None:
        async with make(target, min_size=1, max_size=4) as pool:
            await pool.wait()
            conns = [await pool.getconn() for _ in range(4)]
            assert pool.get_stats()["pool_size"] == 4
            with pytest.raises(PoolTimeout):
                await pool.getconn(timeout=0.1)
            for conn in conns:
                await pool.putconn(conn)

    run(main())


def test_connection_failure_is_retried_then_reconnect_failed_called():
    async def main() -> None:
        called: list[Any] = []

        async def failed(pool: Any) -> None:
            called.append(pool)

        pool = AsyncConnectionPool(
            unreachable_dsn(),
            min_size=1,
            open=False,
            reconnect_timeout=0,
            reconnect_failed=failed,
        )
        await pool.open()
        await eventually(lambda: called)
        assert called == [pool]
        stats = pool.get_stats()
        assert stats["connections_errors"] >= 1
        assert stats["pool_size"] == 0
        await pool.close()

    run(main())


def test_closed_reads_true_once_given_back(target):
    async def main() -> None:
        async with make(target, min_size=1) as pool:
            async with pool.connection() as conn:
                assert conn.closed == 0
            assert conn.closed == 1
            async with pool.connection() as again:
                assert again.__wrapped__.closed == 0

    run(main())


@pytest.mark.parametrize("close_returns", [False, True])
def test_close_once_given_back_does_nothing(target, close_returns):
    async def main() -> None:
        async with make(target, min_size=1, close_returns=close_returns) as pool:
            await pool.wait()
            async with pool.connection() as conn:
                pid = conn.get_backend_pid()
            await conn.close()
            assert pool.get_stats()["pool_available"] == 1
            async with pool.connection() as again:
                assert again.get_backend_pid() == pid
                cur = await again.execute("select 1")
                assert await cur.fetchone() == (1,)

    run(main())


# -- callbacks and maintenance ------------------------------------------------------


def test_async_configure_check_and_reset(target):
    async def main() -> None:
        calls: list[str] = []

        async def configure(conn: Any) -> None:
            calls.append("configure")
            await conn.execute("set application_name to %s", (target.name + "-c",))
            await conn.commit()

        async def check(conn: Any) -> None:
            calls.append("check")
            await AsyncConnectionPool.check_connection(conn)

        async def reset(conn: Any) -> None:
            calls.append("reset")
            await conn.execute("reset all")
            await conn.commit()

        async with make(
            target, min_size=1, max_size=1, configure=configure, check=check, reset=reset
        ) as pool:
            await pool.wait()
            async with pool.connection() as conn:
                cur = await conn.execute("show application_name")
                assert await cur.fetchone() == (target.name + "-c",)
                await conn.execute("set search_path to nowhere")
            async with pool.connection() as conn:
                cur = await conn.execute("show search_path")
                assert (await cur.fetchone())[0] != "nowhere"
        assert calls == ["configure", "check", "reset", "check", "reset"]

    run(main())


def test_configure_leaving_a_transaction_is_an_error(target):
    async def main() -> None:
        async def configure(conn: Any) -> None:
            await conn.execute("select 1")  # opens a transaction, never committed

        async with make(target, min_size=1, configure=configure, reconnect_timeout=0) as pool:
            await eventually(lambda: pool.get_stats().get("connections_num", 0) >= 1)
            await asyncio.sleep(0.1)
            assert pool.get_stats()["pool_available"] == 0

    run(main())


def test_check_that_closes_the_connection_gets_it_replaced(target):
    async def main() -> None:
        bad = set()

        async def check(conn: Any) -> None:
            if conn.get_backend_pid() in bad:
                await conn.close()  # a connection failing its check stays, unless closed
                raise psycopg2.OperationalError("bad")

        async with make(target, min_size=1, max_size=1, check=check) as pool:
            await pool.wait()
            async with pool.connection() as conn:
                pid = conn.get_backend_pid()
            bad.add(pid)
            async with pool.connection() as conn:
                assert conn.get_backend_pid() != pid
            assert pool.get_stats()["connections_lost"] == 1

    run(main())


def test_hanging_check_is_bounded_by_the_timeout(target):
    async def main() -> None:
        async def check(conn: Any) -> None:
            await conn.execute("select pg_sleep(30)")

        async with make(target, min_size=1, max_size=1, check=check) as pool:
            await pool.wait()
            started = time.monotonic()
            with pytest.raises(PoolTimeout):
                await pool.getconn(timeout=0.3)
            assert time.monotonic() - started < 2
            # The connection stuck in the check was cancelled on the server and closed.
            await eventually(lambda: all("pg_sleep" not in q for _, q in target.activity()))

    run(main())


def test_leak_timeout_reports_a_connection_held_too_long(target, caplog):
    async def main() -> None:
        async with make(target, min_size=1, max_size=1, leak_timeout=0.05) as pool:
            conn = await pool.getconn()
            await eventually(lambda: "checked out for" in caplog.text)
            await pool.putconn(conn)

    run(main())


def test_check_drain_resize_and_stats(target):
    async def main() -> None:
        async with make(target, min_size=2, max_size=4) as pool:
            await pool.wait()
            pids = set(await in_thread(target.backends))
            await in_thread(terminate_backends, target.admin_dsn, target.name)
            await pool.check()
            await pool.wait()
            assert pool.get_stats()["connections_lost"] == 2
            after_check = set(await in_thread(target.backends))
            assert len(after_check) == 2 and not after_check & pids
            await pool.drain()
            await pool.wait()
            after_drain = set(await in_thread(target.backends))
            assert len(after_drain) == 2 and not after_drain & after_check
            await pool.resize(3, 5)
            assert (pool.min_size, pool.max_size) == (3, 5)
            await pool.wait()
            stats = pool.pop_stats()
            assert STATS_KEYS - {"requests_waiting"} <= set(stats) | {
                "usage_ms",
                "requests_num",
                "requests_queued",
                "requests_wait_ms",
                "requests_errors",
                "returns_bad",
                "connections_errors",
            }
            assert stats["pool_size"] == 3
            assert pool.get_stats().get("connections_num", 0) == 0

    run(main())


def test_check_refills_a_pool_that_fell_below_min_size(target):
    async def main() -> None:
        gave_up: list[Any] = []
        current = {"dsn": unreachable_dsn()}
        pool = AsyncConnectionPool(
            lambda: current["dsn"],
            min_size=2,
            open=False,
            reconnect_timeout=0.2,
            reconnect_failed=gave_up.append,
        )
        async with pool:
            await eventually(lambda: len(gave_up) == 2, timeout=10)
            assert pool.get_stats()["pool_size"] == 0
            current["dsn"] = target.dsn
            await pool.check()
            await eventually(lambda: pool.get_stats()["pool_available"] == 2)
            assert len(await in_thread(target.backends)) == 2

    run(main())


def test_usage_ms_adds_up_blocks_under_a_millisecond(target):
    # Each block is well under 1 ms: rounded down one by one, they would add up to 0.
    async def main() -> dict[str, int]:
        async with make(target, min_size=1) as pool:
            await pool.wait()
            pool.pop_stats()
            surely_used = took = 0.0
            for _ in range(40):
                started = time.monotonic()
                async with pool.connection():
                    inside = time.monotonic()
                    while time.monotonic() < inside + 0.0003:
                        pass
                    surely_used += time.monotonic() - inside
                took += time.monotonic() - started
            stats = pool.get_stats()
            assert int(1000 * surely_used) <= stats["usage_ms"] <= 1000 * took + 1
            return stats

    assert run(main())["requests_num"] == 40


def test_check_connection(target):
    async def main() -> None:
        async with make(target, min_size=1) as pool, pool.connection() as conn:
            await AsyncConnectionPool.check_connection(conn)
            conn.__wrapped__.close()
            with pytest.raises(psycopg2.OperationalError):
                await AsyncConnectionPool.check_connection(conn)
        assert pool.get_stats()["returns_bad"] == 1  # closed by its user

    run(main())


def test_broken_connection_returned_is_replaced(target):
    async def main() -> None:
        async with make(target, min_size=1, max_size=1) as pool:
            async with pool.connection() as conn:
                pid = conn.get_backend_pid()
                await in_thread(terminate_backends, target.admin_dsn, target.name)
                with pytest.raises(psycopg2.OperationalError):
                    await conn.execute("select 1")
            assert pool.get_stats()["returns_bad"] == 1
            async with pool.connection() as conn:
                assert conn.get_backend_pid() != pid

    run(main())


# -- cancellation ------------------------------------------------------------------


def test_cancel_while_waiting_in_queue(target):
    async def main() -> None:
        async with make(target, min_size=1, max_size=1) as pool:
            holder = await pool.getconn()
            waiting = asyncio.create_task(pool.getconn(timeout=10))
            await eventually(lambda: pool.get_stats()["requests_waiting"] == 1)
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            assert pool.get_stats()["requests_waiting"] == 0
            await pool.putconn(holder)
            assert pool.get_stats()["pool_available"] == 1
            conn = await pool.getconn(timeout=0.5)
            await pool.putconn(conn)

    run(main())


def test_cancel_after_being_served_gives_the_connection_back(target):
    async def main() -> None:
        async with make(target, min_size=1, max_size=1) as pool:
            holder = await pool.getconn()
            waiting = asyncio.create_task(pool.getconn(timeout=10))
            await eventually(lambda: pool.get_stats()["requests_waiting"] == 1)
            await pool.putconn(holder)  # serves the waiter, which has not run yet
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            stats = pool.get_stats()
            assert (stats["pool_available"], stats["pool_size"]) == (1, 1)
            conn = await pool.getconn(timeout=0.5)
            await pool.putconn(conn)

    run(main())


def test_cancel_while_connecting_null_pool():
    async def main() -> None:
        hole = BlackHole()
        try:
            dsn = f"host=127.0.0.1 port={hole.port} user=postgres dbname=postgres"
            async with AsyncNullConnectionPool(dsn, max_size=2, open=False, timeout=10) as pool:
                task = asyncio.create_task(pool.getconn())
                await eventually(lambda: hole.accepted)
                await asyncio.sleep(0.05)
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
                stats = pool.get_stats()
                assert stats["pool_size"] == 0, stats
                assert stats["connections_errors"] == 1
                await eventually(lambda: hole.open_clients() == 0)
        finally:
            hole.close()

    run(main())


def test_cancel_while_configuring_closes_the_connection(target):
    async def main() -> None:
        started = asyncio.Event()

        async def configure(conn: Any) -> None:
            started.set()
            await conn.execute("select pg_sleep(30)")

        async with make(target, AsyncNullConnectionPool, configure=configure) as pool:
            task = asyncio.create_task(pool.getconn())
            await started.wait()
            await asyncio.sleep(0.1)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert pool.get_stats()["pool_size"] == 0
            await eventually(lambda: not target.backends())

    run(main())


def test_cancel_mid_query_stops_the_backend_and_keeps_the_connection(target):
    async def main() -> None:
        async with make(target, min_size=1, max_size=1) as pool:
            await pool.wait()
            running = asyncio.Event()

            async def client() -> None:
                async with pool.connection() as conn:
                    await conn.execute("create temp table t (x int)")
                    await conn.execute("insert into t values (1)")
                    running.set()
                    await conn.execute("select pg_sleep(30)")

            task = asyncio.create_task(client())
            await running.wait()
            await eventually(
                lambda: any("pg_sleep" in q and s == "active" for s, q in target.activity())
            )
            started = time.monotonic()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert time.monotonic() - started < 2
            # The backend stopped, and the connection came back idle, rolled back.
            assert all(s == "idle" for s, _ in await in_thread(target.activity))
            assert pool.get_stats()["pool_available"] == 1
            async with pool.connection() as conn:
                assert conn.get_transaction_status() == IDLE
                with pytest.raises(psycopg2.errors.UndefinedTable):
                    await conn.execute("select * from t")
            assert pool.get_stats()["pool_size"] == 1

    run(main())


def test_cancel_mid_query_with_getconn_then_putconn(target):
    async def main() -> None:
        async with make(target, min_size=1, max_size=1) as pool:
            conn = await pool.getconn()
            pid = conn.get_backend_pid()
            task = asyncio.create_task(conn.execute("select pg_sleep(30)"))
            await eventually(
                lambda: any("pg_sleep" in q and s == "active" for s, q in target.activity())
            )
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert conn.__wrapped__.isexecuting()
            await pool.putconn(conn)  # never filed mid-query: cancelled, drained, rolled back
            async with pool.connection() as conn:
                assert conn.get_backend_pid() == pid
                cur = await conn.execute("select 1")
                assert await cur.fetchone() == (1,)

    run(main())


def test_cancel_mid_query_then_reuse_in_same_task(target):
    async def main() -> None:
        async with make(target, min_size=1, max_size=1) as pool, pool.connection() as conn:
            task = asyncio.create_task(conn.execute("select pg_sleep(30)"))
            await asyncio.sleep(0.2)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await conn.rollback()  # drops the abandoned query first
            cur = await conn.execute("select 2")
            assert await cur.fetchone() == (2,)

    run(main())


def test_cancel_while_returning_still_returns(target):
    async def main() -> None:
        resetting = asyncio.Event()

        async def reset(conn: Any) -> None:
            resetting.set()
            await conn.execute("select pg_sleep(0.3)")
            await conn.rollback()

        async with make(target, min_size=1, max_size=1, reset=reset) as pool:
            conn = await pool.getconn()
            await conn.execute("select 1")  # in transaction
            task = asyncio.create_task(pool.putconn(conn))
            await resetting.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            # The return goes on in the background and completes.
            await eventually(lambda: pool.get_stats()["pool_available"] == 1)
            async with pool.connection() as conn:
                assert conn.get_transaction_status() == IDLE
            assert pool.get_stats().get("returns_bad", 0) == 0

    run(main())


def test_cancel_during_block_exit_never_leaves_a_transaction(target):
    async def main() -> None:
        async with make(target, min_size=1, max_size=1) as pool:
            inside = asyncio.Event()

            async def client() -> None:
                async with pool.connection() as conn:
                    await conn.execute("create temp table t (x int)")
                    inside.set()
                    await asyncio.sleep(30)

            for _ in range(3):
                inside.clear()
                task = asyncio.create_task(client())
                await inside.wait()
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
            await eventually(lambda: pool.get_stats()["pool_available"] == 1)
            async with pool.connection() as conn:
                assert conn.get_transaction_status() == IDLE
                with pytest.raises(psycopg2.errors.UndefinedTable):
                    await conn.execute("select * from t")

    run(main())


def test_many_random_cancellations_lose_nothing(target):
    async def main() -> None:
        async with make(target, min_size=2, max_size=3, timeout=10) as pool:
            await pool.wait()

            async def client(i: int) -> None:
                async with pool.connection() as conn:
                    await conn.execute("select pg_sleep(%s)", ((i % 5) * 0.01,))

            tasks = [asyncio.create_task(client(i)) for i in range(40)]
            for i, task in enumerate(tasks):
                if i % 3 == 0:
                    await asyncio.sleep(0.005)
                    task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await eventually(
                lambda: pool.get_stats()["pool_available"] == pool.get_stats()["pool_size"]
            )
            stats = pool.get_stats()
            assert stats["requests_waiting"] == 0
            assert 2 <= stats["pool_size"] <= 3
            conns = [await pool.getconn(timeout=1) for _ in range(3)]
            for conn in conns:
                assert conn.get_transaction_status() == IDLE
                await pool.putconn(conn)

    run(main())


# -- the event loop stays responsive ------------------------------------------------


def test_loop_stays_responsive_under_load(target):
    async def main() -> None:
        async with make(target, min_size=5, max_size=5, timeout=10) as pool:
            await pool.wait()
            gaps: list[float] = []
            stop = False

            async def ticker() -> None:
                last = time.monotonic()
                while not stop:
                    await asyncio.sleep(0.01)
                    now = time.monotonic()
                    gaps.append(now - last)
                    last = now

            async def client() -> None:
                async with pool.connection() as conn:
                    await conn.execute("select pg_sleep(0.05)")

            tick = asyncio.create_task(ticker())
            started = time.monotonic()
            await asyncio.gather(*(client() for _ in range(50)))
            elapsed = time.monotonic() - started
            stop = True
            await tick
            assert elapsed < 2.0  # 10 rounds of 50 ms on 5 connections
            assert len(gaps) > 20
            assert max(gaps) < 0.1, max(gaps)

    run(main())


# -- the null pool ---------------------------------------------------------------


def test_null_pool_keeps_nothing_and_caps_concurrency(target):
    async def main() -> None:
        async with make(target, AsyncNullConnectionPool, max_size=2) as pool:
            await pool.wait()
            assert await in_thread(target.backends) == []
            peak = 0

            async def client() -> None:
                nonlocal peak
                async with pool.connection() as conn:
                    await conn.execute("select pg_sleep(0.05)")
                    peak = max(peak, pool.get_stats()["pool_size"])

            await asyncio.gather(*(client() for _ in range(6)))
            assert peak == 2
            stats = pool.get_stats()
            assert stats["pool_size"] == 0
            assert stats["pool_available"] == 0
            assert stats["requests_queued"] >= 1
            await pool.check()
            await pool.resize(0, 3)
            assert pool.max_size == 3
            with pytest.raises(ValueError):
                await pool.resize(1, 3)
        await eventually(lambda: not target.backends())

    run(main())


@pytest.mark.parametrize("cause", ["expired", "broken", "reset-failed"])
def test_null_pool_waiting_client_served_when_returned_connection_is_closed(target, cause):
    async def reset(conn: Any) -> None:
        raise RuntimeError("reset refuses every connection")

    settings: dict[str, Any] = {
        "expired": {"max_lifetime": 0.2},
        "broken": {},
        "reset-failed": {"reset": reset},
    }[cause]

    async def main() -> None:
        async with make(target, AsyncNullConnectionPool, max_size=1, **settings) as pool:
            conn = await pool.getconn()
            waiting = asyncio.create_task(pool.getconn(timeout=5))
            await eventually(lambda: pool.get_stats()["requests_waiting"] == 1)
            if cause == "expired":
                await asyncio.sleep(0.3)
            elif cause == "broken":
                await in_thread(terminate_backends, target.admin_dsn, target.name)
                with pytest.raises(psycopg2.OperationalError):
                    await conn.execute("select 1")
            await pool.putconn(conn)
            served = await waiting
            cur = await served.execute("select 1")
            assert await cur.fetchone() == (1,)
            await pool.putconn(served)

    run(main())


def test_null_pool_own_connection_attempt_is_bounded_by_the_clients_timeout():
    async def main() -> None:
        hole = BlackHole()
        try:
            dsn = f"host=127.0.0.1 port={hole.port} user=u dbname=d"
            async with AsyncNullConnectionPool(dsn, open=False) as pool:
                started = time.monotonic()
                with pytest.raises(PoolTimeout):
                    async with pool.connection(timeout=1):
                        pass
                assert time.monotonic() - started < 1.5
                stats = pool.get_stats()
                assert stats["requests_errors"] == 1
                assert stats["pool_size"] == 0
        finally:
            hole.close()

    run(main(), timeout=5)


def test_null_pool_connect_timeout_shorter_than_the_clients_still_holds():
    async def main() -> None:
        hole = BlackHole()
        try:
            dsn = f"host=127.0.0.1 port={hole.port} user=u dbname=d connect_timeout=2"
            async with AsyncNullConnectionPool(dsn, open=False) as pool:
                started = time.monotonic()
                with pytest.raises(psycopg2.OperationalError):
                    await pool.getconn(timeout=30)
                assert time.monotonic() - started < 4
        finally:
            hole.close()

    run(main(), timeout=10)


def test_null_pool_wait_on_unreachable_server():
    async def main() -> None:
        pool = AsyncNullConnectionPool(unreachable_dsn(), open=False)
        await pool.open()
        with pytest.raises(PoolTimeout):
            await pool.wait(timeout=1)
        assert pool.closed

    run(main())


def test_null_pool_wait_retries_until_the_server_is_up(private_server):
    async def main() -> None:
        private_server.stop()
        async with AsyncNullConnectionPool(private_server.dsn, open=False) as pool:
            starter = asyncio.get_running_loop().run_in_executor(None, start_later)
            await pool.wait(20)
            await starter
            assert not pool.closed
            assert pool.get_stats()["connections_errors"] >= 1

    def start_later() -> None:
        time.sleep(0.3)
        private_server.start()

    run(main())


def test_null_pool_wait_gives_up_at_its_deadline_and_logs_attempts(caplog):
    caplog.set_level(logging.WARNING, logger="psycopg2_pool")

    async def main() -> None:
        pool = AsyncNullConnectionPool(unreachable_dsn(), password="s3cr3t-pw", open=False)
        await pool.open()
        started = time.monotonic()
        with pytest.raises(PoolTimeout):
            await pool.wait(timeout=2.5)
        assert 2.4 <= time.monotonic() - started < 5
        assert pool.closed

    run(main())
    failures = [r for r in caplog.records if "error connecting" in r.getMessage()]
    assert len(failures) >= 2
    assert "s3cr3t-pw" not in caplog.text


@pytest.fixture
def loop_thread() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield loop
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def test_stats_readable_from_another_thread(target, loop_thread):
    async def opened() -> Any:
        pool = make(target, min_size=1)
        await pool.open(wait=True)
        return pool

    pool = asyncio.run_coroutine_threadsafe(opened(), loop_thread).result(10)
    try:
        assert pool.get_stats()["pool_available"] == 1
    finally:
        asyncio.run_coroutine_threadsafe(pool.close(), loop_thread).result(10)
