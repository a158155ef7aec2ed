"""``with conn.transaction():`` on the sync handles, as psycopg 3 runs it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any, Callable

import psycopg2
import psycopg2.extensions
import pytest

from psycopg2_pool import ConnectionPool
from tests.helpers import app_name, dsn_with

IDLE = psycopg2.extensions.TRANSACTION_STATUS_IDLE
INTRANS = psycopg2.extensions.TRANSACTION_STATUS_INTRANS

AUTOCOMMIT = pytest.mark.parametrize("autocommit", [False, True], ids=["tx", "autocommit"])


@pytest.fixture
def make_pool(dsn: str) -> Iterator[Callable[..., ConnectionPool]]:
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


@pytest.fixture
def pool(make_pool: Callable[..., ConnectionPool]) -> ConnectionPool:
    return make_pool()


@pytest.fixture
def table(dsn: str) -> Iterator[str]:
    name = f"p2p_tx_{uuid.uuid4().hex[:8]}"
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    conn.cursor().execute(f"create table {name} (x int)")
    try:
        yield name
    finally:
        conn.cursor().execute("set lock_timeout = '2s'")
        conn.cursor().execute(f"drop table {name}")
        conn.close()


def rows_seen_from_outside(dsn: str, table: str) -> list[int]:
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(f"select x from {table} order by x")
            return [row[0] for row in cur.fetchall()]
    finally:
        conn.close()


@AUTOCOMMIT
def test_block_commits_at_its_end(pool, table, dsn, autocommit):
    with pool.connection() as conn:
        conn.autocommit = autocommit
        with conn.transaction():
            conn.execute(f"insert into {table} values (1)")
            assert conn.get_transaction_status() == INTRANS
        assert conn.get_transaction_status() == IDLE
        assert rows_seen_from_outside(dsn, table) == [1]
        conn.autocommit = False


@AUTOCOMMIT
def test_block_that_raises_rolls_back_and_reraises(pool, table, dsn, autocommit):
    with pool.connection() as conn:
        conn.autocommit = autocommit
        with pytest.raises(ZeroDivisionError), conn.transaction():
            conn.execute(f"insert into {table} values (1)")
            raise ZeroDivisionError
        assert conn.get_transaction_status() == IDLE
        conn.autocommit = False
    assert rows_seen_from_outside(dsn, table) == []


@AUTOCOMMIT
def test_nested_block_that_raises_rolls_back_to_its_savepoint(pool, table, dsn, autocommit):
    with pool.connection() as conn:
        conn.autocommit = autocommit
        with conn.transaction():
            conn.execute(f"insert into {table} values (1)")
            with pytest.raises(ZeroDivisionError), conn.transaction() as inner:
                assert inner.savepoint_name
                conn.execute(f"insert into {table} values (2)")
                raise ZeroDivisionError
            with conn.transaction():
                conn.execute(f"insert into {table} values (3)")
        conn.autocommit = False
    assert rows_seen_from_outside(dsn, table) == [1, 3]


def test_nested_block_as_first_statement_still_sets_a_savepoint(pool, table, dsn):
    # psycopg2 sends BEGIN only with the first statement: the inner block comes first.
    with pool.connection() as conn, conn.transaction():
        with pytest.raises(ZeroDivisionError), conn.transaction():
            conn.execute(f"insert into {table} values (1)")
            raise ZeroDivisionError
        conn.execute(f"insert into {table} values (2)")
    assert rows_seen_from_outside(dsn, table) == [2]


def test_block_inside_an_open_transaction_releases_a_savepoint_and_commits_nothing(
    pool, table, dsn
):
    with pool.connection() as conn:
        conn.execute(f"insert into {table} values (1)")
        with conn.transaction() as tx:
            assert tx.savepoint_name
            conn.execute(f"insert into {table} values (2)")
        assert conn.get_transaction_status() == INTRANS
        assert rows_seen_from_outside(dsn, table) == []
        conn.rollback()
    assert rows_seen_from_outside(dsn, table) == []


def test_force_rollback_rolls_back_a_block_that_ends_normally(pool, table, dsn):
    with pool.connection() as conn:
        with conn.transaction(force_rollback=True):
            conn.execute(f"insert into {table} values (1)")
        assert conn.get_transaction_status() == IDLE
    assert rows_seen_from_outside(dsn, table) == []


def test_named_savepoint_is_set_in_an_outer_block(pool, table, dsn):
    with pool.connection() as conn:
        with conn.transaction(savepoint_name="mine") as tx:
            assert tx.savepoint_name == "mine"
            conn.execute(f"insert into {table} values (1)")
            conn.execute("rollback to savepoint mine")  # exists
        assert conn.get_transaction_status() == IDLE
    assert rows_seen_from_outside(dsn, table) == []


def test_transaction_in_a_configure_callback(make_pool):
    def configure(conn: Any) -> None:
        with conn.transaction():
            conn.execute("select set_config('application_name', 'configured', false)")

    pool = make_pool(configure=configure)
    with pool.connection() as conn:
        assert conn.execute("show application_name").fetchone() == ("configured",)
