"""Cursors made through a handle die with it: none reaches the next client's connection."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from typing import Any, Callable

import psycopg2
import psycopg2.extensions
import psycopg2.extras
import pytest

from psycopg2_pool import ConnectionPool
from psycopg2_pool.errors import ConnectionReturned
from tests.helpers import app_name, dsn_with

_IDLE = psycopg2.extensions.TRANSACTION_STATUS_IDLE


@pytest.fixture
def pool(dsn: str) -> Iterator[ConnectionPool]:
    # One connection: whatever the next client gets is the one a stale cursor knew.
    with ConnectionPool(dsn_with(dsn, application_name=app_name()), min_size=1, timeout=5) as pool:
        pool.wait(5)
        yield pool


@pytest.fixture
def table(dsn: str) -> Iterator[str]:
    name = f"p2p_c_{uuid.uuid4().hex[:8]}"
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    conn.cursor().execute(f"create table {name} (who text)")
    try:
        yield name
    finally:
        conn.cursor().execute("set lock_timeout = '2s'")
        conn.cursor().execute(f"drop table {name}")
        conn.close()


CURSORS: dict[str, Callable[[Any], Any]] = {
    "plain": lambda conn: conn.cursor(),
    "named": lambda conn: conn.cursor("stale_named"),
    "named with hold": lambda conn: conn.cursor("stale_held", withhold=True),
    "scrollable named": lambda conn: conn.cursor("stale_scroll", scrollable=True),
    "DictCursor": lambda conn: conn.cursor(cursor_factory=psycopg2.extras.DictCursor),
    "NamedTupleCursor": lambda conn: conn.cursor(cursor_factory=psycopg2.extras.NamedTupleCursor),
    "execute()": lambda conn: conn.execute("select 1"),
    "with block": lambda conn: conn.cursor().__enter__(),
}


@pytest.mark.parametrize("make_cursor", CURSORS.values(), ids=CURSORS.keys())
def test_cursor_kept_after_return_cannot_execute(pool: ConnectionPool, make_cursor: Any) -> None:
    with pool.connection() as conn:
        cur = make_cursor(conn)
        if cur.name is not None:
            cur.execute("select generate_series(1, 3)")
    with pytest.raises(ConnectionReturned):
        cur.execute("select 1")


@pytest.mark.parametrize(
    "use",
    [
        lambda cur: cur.fetchone(),
        lambda cur: cur.fetchmany(2),
        lambda cur: cur.fetchall(),
        lambda cur: next(iter(cur)),
        lambda cur: list(cur),
        lambda cur: cur.executemany("select %s", [(1,), (2,)]),
        lambda cur: cur.callproc("now"),
        lambda cur: cur.mogrify("select %s", (1,)),
        lambda cur: cur.scroll(0, "absolute"),
        lambda cur: cur.copy_expert("copy (select 1) to stdout", None),
        lambda cur: cur.close(),
        lambda cur: cur.__exit__(None, None, None),
        lambda cur: cur.connection,
    ],
    ids=[
        "fetchone",
        "fetchmany",
        "fetchall",
        "next",
        "iteration",
        "executemany",
        "callproc",
        "mogrify",
        "scroll",
        "copy_expert",
        "close",
        "__exit__",
        "connection",
    ],
)
def test_every_use_of_a_stale_cursor_raises(pool: ConnectionPool, use: Any) -> None:
    with pool.connection() as conn:
        cur = conn.cursor()
        cur.execute("select generate_series(1, 3)")
    with pytest.raises(ConnectionReturned):
        use(cur)


def test_stale_cursor_never_writes_inside_the_next_clients_transaction(
    pool: ConnectionPool, table: str, dsn: str
) -> None:
    with pool.connection() as conn:
        stale = conn.cursor()
    with pool.connection() as conn:
        conn.execute(f"insert into {table} values ('next client')")
        with pytest.raises(ConnectionReturned):
            stale.execute(f"insert into {table} values ('stale cursor')")
    check = psycopg2.connect(dsn)
    try:
        with check.cursor() as cur:
            cur.execute(f"select who from {table}")
            assert cur.fetchall() == [("next client",)]
    finally:
        check.close()


def test_stale_cursor_cannot_see_the_next_clients_settings(pool: ConnectionPool) -> None:
    with pool.connection() as conn:
        stale = conn.cursor()
    with pool.connection() as conn:
        conn.execute("set local application_name = 'the next client'")
        with pytest.raises(ConnectionReturned):
            stale.execute("show application_name")


def test_cursors_work_as_psycopg2_cursors_while_checked_out(pool: ConnectionPool) -> None:
    with pool.connection() as conn:
        cur = conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor)
        assert isinstance(cur, psycopg2.extras.RealDictCursor)
        cur.execute("select 1 as a")
        assert cur.fetchall() == [{"a": 1}]
        assert cur.connection is conn.__wrapped__
        with conn.cursor() as plain:
            plain.execute("select %s", (2,))
            assert plain.fetchone() == (2,)
        assert plain.closed


def test_cursor_factory_function_still_works(pool: ConnectionPool) -> None:
    def factory(conn: Any, name: Any = None) -> Any:
        return psycopg2.extensions.cursor(conn, name)

    with pool.connection() as conn:
        cur = conn.cursor(cursor_factory=factory)
        cur.execute("select 1")
        assert cur.fetchone() == (1,)


def test_connection_used_while_idle_is_rolled_back_before_checkout(
    pool: ConnectionPool, caplog: pytest.LogCaptureFixture
) -> None:
    with pool.connection() as conn:
        raw = conn.__wrapped__  # a raw reference, kept after return
    raw.cursor().execute("select 1")  # opens a transaction on the idle connection
    assert raw.get_transaction_status() != _IDLE
    with caplog.at_level(logging.WARNING, logger="psycopg2_pool"), pool.connection() as conn:
        assert conn.__wrapped__ is raw
        assert conn.get_transaction_status() == _IDLE
    assert "at checkout: rolled back" in caplog.text


def test_connection_broken_while_idle_is_replaced_at_checkout(pool: ConnectionPool) -> None:
    with pool.connection() as conn:
        raw = conn.__wrapped__
    raw.close()
    with pool.connection() as conn:
        assert conn.__wrapped__ is not raw
        assert conn.execute("select 1").fetchone() == (1,)
