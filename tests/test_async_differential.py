"""The same async script against psycopg_pool's AsyncConnectionPool (psycopg 3) and ours.

Every step records what a caller can observe (results, transaction states,
exception class names, statistics); the two traces must be equal.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from typing import Any, Callable

import pytest

psycopg = pytest.importorskip("psycopg")
psycopg_pool = pytest.importorskip("psycopg_pool")

import psycopg2.extensions  # noqa: E402

from psycopg2_pool import (  # noqa: E402
    AsyncConnectionPool,
    AsyncNullConnectionPool,
    PoolError,
)
from tests.helpers import app_name, dsn_with  # noqa: E402

#: Counters whose values are deterministic in the scripts below (timings are not).
COUNTED = (
    "requests_num",
    "requests_queued",
    "requests_errors",
    "returns_bad",
    "connections_lost",
)
MEASURES = ("pool_min", "pool_max", "pool_size", "pool_available", "requests_waiting")


@dataclass
class Impl:
    name: str
    pool: type[Any]
    null_pool: type[Any]
    status: Callable[[Any], int]


OURS = Impl(
    "ours",
    AsyncConnectionPool,
    AsyncNullConnectionPool,
    lambda conn: int(conn.get_transaction_status()),
)
THEIRS = Impl(
    "psycopg_pool",
    psycopg_pool.AsyncConnectionPool,
    psycopg_pool.AsyncNullConnectionPool,
    lambda conn: int(conn.info.transaction_status),
)

# psycopg 3's TransactionStatus values are libpq's, as are psycopg2's.
assert int(psycopg.pq.TransactionStatus.INTRANS) == psycopg2.extensions.TRANSACTION_STATUS_INTRANS


class Trace:
    def __init__(self) -> None:
        self.steps: list[tuple[Any, ...]] = []

    def add(self, *step: Any) -> None:
        self.steps.append(step)

    async def call(self, label: str, coro: Any, putconn: bool = False) -> Any:
        """Await ``coro``; record its exception class name (or "ok")."""
        try:
            result = await coro
        except Exception as exc:
            name = type(exc).__name__
            if putconn and isinstance(exc, (ValueError, PoolError)):
                # Documented difference (API.md): psycopg_pool raises ValueError
                # for a connection it did not hand out, we raise PoolError.
                name = "rejected"
            self.add(label, "raises", name)
            return None
        self.add(label, "ok")
        return result

    def stats(self, label: str, stats: dict[str, int], skip: tuple[str, ...] = ()) -> None:
        self.add(
            label,
            {k: stats.get(k, 0) for k in COUNTED},
            {k: stats[k] for k in MEASURES if k not in skip},
            sorted(k for k in stats if k not in MEASURES),
        )


async def script(impl: Impl, dsn: str, table: str) -> list[tuple[Any, ...]]:
    t = Trace()
    pool = impl.pool(dsn, min_size=2, max_size=3, open=False, timeout=2.0, name="diff")
    unopened = impl.pool(dsn, open=False)  # its stats differ: see test_requests_num_...
    await t.call("getconn before open", unopened.getconn())
    async with pool:
        await pool.wait(timeout=5)
        t.stats("opened", pool.get_stats())

        async with pool.connection() as conn:
            cur = await conn.execute("select %s::int + 1, %s::text", (1, "a"))
            t.add("select", await cur.fetchone(), impl.status(conn))
            await conn.execute(f"create table {table} (x int primary key)")
        async with pool.connection() as conn:
            await conn.execute(f"insert into {table} values (1)")
            t.add("insert in block", impl.status(conn))
        try:
            async with pool.connection() as conn:
                await conn.execute(f"insert into {table} values (2)")
                raise ValueError("boom")
        except ValueError:
            t.add("block raised")
        async with pool.connection() as conn:
            cur = await conn.execute(f"select x from {table} order by x")
            t.add("committed rows", await cur.fetchall())

            await t.call("syntax error", conn.execute("selec 1"))
            t.add("after error", impl.status(conn))
            await t.call("in failed transaction", conn.execute("select 1"))
            await conn.rollback()
            t.add("after rollback", impl.status(conn))
            await t.call("unique violation", conn.execute(f"insert into {table} values (1)"))
            await conn.rollback()
            async with conn.cursor() as cur:
                await cur.execute("select generate_series(1, 4)")
                t.add("cursor", await cur.fetchone(), await cur.fetchmany(2), await cur.fetchall())
            await conn.commit()
            t.add("after commit", impl.status(conn))

        # Returned mid-transaction: rolled back by the pool.
        conn = await pool.getconn()
        await conn.execute(f"insert into {table} values (3)")
        await pool.putconn(conn)
        await t.call("put twice", pool.putconn(conn), putconn=True)
        async with pool.connection() as conn:
            cur = await conn.execute(f"select count(*) from {table}")
            t.add("after rollback on return", await cur.fetchone(), impl.status(conn))
        t.stats("after transactions", pool.pop_stats())

        # Exhaustion, timeout, a waiter served.
        held = []
        for i in range(3):
            held.append(await pool.getconn())
            t.stats(f"held {i}", pool.get_stats())
        await t.call("timeout", pool.getconn(timeout=0.2))
        # psycopg_pool leaves a timed-out client in its queue until a connection
        # comes back (requests_waiting says 1 here): see test_requests_waiting_...
        t.stats("timed out", pool.get_stats(), skip=("requests_waiting",))
        waiting = asyncio.create_task(pool.getconn(timeout=5))
        await asyncio.sleep(0.05)  # the task queues itself at its first step
        t.stats("one waiting", pool.get_stats(), skip=("requests_waiting",))
        await pool.putconn(held.pop())
        held.append(await waiting)

        # Cancelled while waiting.
        waiting = asyncio.create_task(pool.getconn(timeout=5))
        while pool.get_stats()["requests_waiting"] == 0:
            await asyncio.sleep(0.01)
        waiting.cancel()
        try:
            await waiting
        except asyncio.CancelledError:
            t.add("waiter cancelled")
        for conn in held:
            await pool.putconn(conn)
        t.stats("after waiting", pool.pop_stats())

        # A connection closed by its user is replaced.
        async with pool.connection() as conn:
            await conn.close()
        await pool.check()
        await pool.resize(1, 2)
        t.add("resized", pool.min_size, pool.max_size)
        await t.call("bad resize", pool.resize(3, 2))
        await pool.drain()
        await pool.wait()
        # After drain() psycopg_pool reopens every connection it closed, even above
        # min_size (to shrink later); the sync pool's policy reopens up to min_size.
        t.stats("end", pool.get_stats(), skip=("pool_size", "pool_available"))

        async with pool.connection() as conn:
            await conn.execute(f"drop table {table}")
    t.add("closed", pool.closed)
    await t.call("getconn after close", pool.getconn())
    await t.call("putconn None", pool.putconn(None), putconn=True)
    return t.steps


async def max_waiting_script(impl: Impl, dsn: str) -> list[tuple[Any, ...]]:
    t = Trace()
    async with impl.pool(dsn, min_size=1, max_size=1, max_waiting=1, open=False) as pool:
        await pool.wait()
        held = await pool.getconn()
        waiting = asyncio.create_task(pool.getconn(timeout=5))
        while pool.get_stats()["requests_waiting"] == 0:
            await asyncio.sleep(0.01)
        await t.call("too many", pool.getconn(timeout=1))
        await pool.putconn(held)
        await pool.putconn(await waiting)
        t.stats("end", pool.get_stats())
    return t.steps


async def null_script(impl: Impl, dsn: str) -> list[tuple[Any, ...]]:
    t = Trace()
    async with impl.null_pool(dsn, max_size=2, open=False, timeout=2.0) as pool:
        await pool.wait()
        t.stats("opened", pool.get_stats())
        held = [await pool.getconn() for _ in range(2)]
        t.stats("two out", pool.get_stats())
        await t.call("timeout", pool.getconn(timeout=0.2))
        for conn in held:
            await pool.putconn(conn)
        async with pool.connection() as conn:
            cur = await conn.execute("select 1")
            t.add("select", await cur.fetchone())
        t.stats("end", pool.get_stats())
        await t.call("bad resize", pool.resize(1, 2))
    return t.steps


def run_both(make: Callable[[Impl, str], Any], dsn: str) -> tuple[list[Any], list[Any]]:
    traces = []
    for impl in (THEIRS, OURS):
        pdsn = dsn_with(dsn, application_name=app_name())
        traces.append(asyncio.run(asyncio.wait_for(make(impl, pdsn), 60)))
    return traces[0], traces[1]


def assert_same(theirs: list[Any], ours: list[Any]) -> None:
    for i, (a, b) in enumerate(zip(theirs, ours)):
        assert a == b, f"step {i}: psycopg_pool {a!r} != ours {b!r}"
    assert len(theirs) == len(ours)


def test_main_script(dsn):
    table = f"diff_{uuid.uuid4().hex[:8]}"
    theirs, ours = run_both(lambda impl, d: script(impl, d, table + impl.name[:4]), dsn)
    assert_same(theirs, ours)


def test_max_waiting(dsn):
    assert_same(*run_both(max_waiting_script, dsn))


def test_null_pool(dsn):
    assert_same(*run_both(null_script, dsn))


async def closed_stats_script(impl: Impl, dsn: str) -> list[tuple[Any, ...]]:
    t = Trace()
    pool = impl.pool(dsn, open=False)
    await t.call("getconn before open", pool.getconn())
    # pool_size: psycopg_pool reports min_size before any connection exists; ours
    # reports the connections there are (none).
    t.stats("stats", pool.get_stats(), skip=("pool_size",))
    return t.steps


def test_requests_num_on_a_closed_pool(dsn):
    assert_same(*run_both(closed_stats_script, dsn))


async def timed_out_waiting_script(impl: Impl, dsn: str) -> list[tuple[Any, ...]]:
    t = Trace()
    async with impl.pool(dsn, min_size=1, max_size=1, open=False) as pool:
        await pool.wait()
        held = await pool.getconn()
        await t.call("timeout", pool.getconn(timeout=0.1))
        t.stats("timed out", pool.get_stats())
        await pool.putconn(held)
    return t.steps


def test_a_timed_out_client_leaves_the_queue_at_once(dsn):
    # A deliberate difference: psycopg_pool keeps a timed-out client in its queue
    # (and in requests_waiting, and against max_waiting) until a connection comes
    # back; ours removes it when it gives up. Everything else must match.
    theirs, ours = run_both(timed_out_waiting_script, dsn)
    assert theirs[-1][2]["requests_waiting"] == 1
    assert ours[-1][2]["requests_waiting"] == 0
    theirs[-1][2]["requests_waiting"] = 0
    assert_same(theirs, ours)
