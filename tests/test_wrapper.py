"""The handles ConnectionPool hands out: psycopg2 connections that die on return."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any, Callable

import psycopg2
import psycopg2.errors
import psycopg2.extensions
import psycopg2.extras
import pytest

from psycopg2_pool import ConnectionPool, PoolError
from tests.helpers import app_name, dsn_with


@pytest.fixture
def make_pool(dsn: str) -> Iterator[Callable[..., ConnectionPool]]:
    made: list[ConnectionPool] = []

    def make(**kwargs: Any) -> ConnectionPool:
        kwargs.setdefault("min_size", 1)
        kwargs.setdefault("timeout", 2.0)
        pool = ConnectionPool(dsn_with(dsn, application_name=app_name()), open=True, **kwargs)
        pool.wait(5)
        made.append(pool)
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
    name = f"p2p_w_{uuid.uuid4().hex[:8]}"
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    conn.cursor().execute(f"create table {name} (x int)")
    try:
        yield name
    finally:
        # A failed test may leave a pool connection holding a lock on it.
        conn.cursor().execute("set lock_timeout = '2s'")
        conn.cursor().execute(f"drop table {name}")
        conn.close()


def count_from_outside(dsn: str, table: str) -> int:
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(f"select count(*) from {table}")
            return cur.fetchone()[0]
    finally:
        conn.close()


def test_handle_is_a_psycopg2_connection(pool):
    with pool.connection() as conn:
        assert isinstance(conn, psycopg2.extensions.connection)


def test_wrapped_is_the_real_connection(pool):
    with pool.connection() as conn:
        assert type(conn.__wrapped__) is psycopg2.extensions.connection
        assert conn.__wrapped__.get_backend_pid() == conn.get_backend_pid()


def test_execute_returns_a_cursor(pool):
    with pool.connection() as conn:
        cur = conn.execute("select %s + %s", (1, 2))
        assert isinstance(cur, psycopg2.extensions.cursor)
        assert cur.fetchone() == (3,)


def test_with_getconn_commits_and_returns(table, pool, dsn):
    with pool.getconn() as conn:
        conn.execute(f"insert into {table} values (1)")
    assert count_from_outside(dsn, table) == 1
    assert pool.get_stats()["pool_available"] == 1


def test_with_getconn_rolls_back_on_exception(table, pool, dsn):
    with pytest.raises(ZeroDivisionError), pool.getconn() as conn:
        conn.execute(f"insert into {table} values (1)")
        raise ZeroDivisionError
    assert count_from_outside(dsn, table) == 0
    assert pool.get_stats()["pool_available"] == 1


def block(pool: ConnectionPool, form: str) -> Any:
    """The two ``with`` forms: they must end a block the same way."""
    return pool.connection() if form == "connection" else pool.getconn()


FORMS = pytest.mark.parametrize("form", ["connection", "getconn"])


@FORMS
def test_block_whose_commit_fails_raises_and_gives_the_connection_back(table, pool, dsn, form):
    with block(pool, form) as conn:
        conn.execute(f"alter table {table} add unique (x) deferrable initially deferred")
    with pytest.raises(psycopg2.errors.UniqueViolation), block(pool, form) as conn:
        conn.execute(f"insert into {table} values (1), (1)")
    assert pool.get_stats()["pool_available"] == 1
    assert count_from_outside(dsn, table) == 0
    with block(pool, form) as conn:
        assert conn.execute("select 1").fetchone() == (1,)


@FORMS
def test_block_whose_rollback_fails_raises_the_clients_error(pool, dsn, form, caplog):
    admin = psycopg2.connect(dsn)
    admin.autocommit = True
    try:
        with pytest.raises(ZeroDivisionError), block(pool, form) as conn:
            conn.execute("select 1")
            admin.cursor().execute("select pg_terminate_backend(%s)", (conn.get_backend_pid(),))
            raise ZeroDivisionError
    finally:
        admin.close()
    assert "error ignored in rollback" in caplog.text
    with block(pool, form) as conn:  # the dead connection was not handed out again
        assert conn.execute("select 1").fetchone() == (1,)


@FORMS
def test_block_given_back_or_closed_inside_ends_quietly(pool, form):
    with block(pool, form) as conn:
        pool.putconn(conn)
    assert pool.get_stats()["pool_available"] == 1
    with block(pool, form) as conn:
        conn.execute("select 1")
        conn.__wrapped__.close()
    with block(pool, form) as conn:  # replaced
        assert conn.execute("select 1").fetchone() == (1,)


@pytest.mark.parametrize(
    "use",
    [
        lambda c: c.cursor(),
        lambda c: c.execute("select 1"),
        lambda c: c.commit(),
        lambda c: c.autocommit,
        lambda c: c.get_backend_pid(),
        lambda c: setattr(c, "autocommit", True),
    ],
    ids=["cursor", "execute", "commit", "getattr", "method", "setattr"],
)
def test_use_after_return_raises_returned_to_the_pool(pool, use):
    conn = pool.getconn()
    pool.putconn(conn)
    with pytest.raises(PoolError, match="returned to the pool"):
        use(conn)


@FORMS
def test_closed_reads_true_once_given_back(pool, form):
    with block(pool, form) as conn:
        assert conn.closed == 0
    assert conn.closed == 1  # closed to its holder...
    with pool.connection() as again:  # ...while the pooled connection serves on
        assert again.__wrapped__.closed == 0
        assert again.execute("select 1").fetchone() == (1,)


def test_closed_reads_true_after_the_pool_closed_during_the_block(make_pool):
    pool = make_pool()
    with pool.connection() as conn:
        real = conn.__wrapped__
        pool.close()
    assert conn.closed
    assert real.closed


@pytest.mark.parametrize("close_returns", [False, True])
def test_close_once_given_back_does_nothing(make_pool, close_returns):
    pool = make_pool(close_returns=close_returns)
    with pool.connection() as conn:
        pid = conn.get_backend_pid()
    conn.close()
    conn.close()
    assert pool.get_stats()["pool_available"] == 1
    with pool.connection() as again:
        assert again.get_backend_pid() == pid
        assert again.execute("select 1").fetchone() == (1,)


def test_old_handle_cannot_touch_new_holders_connection(table, pool, dsn):
    old = pool.getconn()
    real = old.__wrapped__
    pool.putconn(old)
    new = pool.getconn()
    assert new.__wrapped__ is real  # the same server connection, now someone else's
    new.execute(f"insert into {table} values (1)")
    with pytest.raises(PoolError, match="returned to the pool"):
        old.execute(f"insert into {table} values (2)")
    with pytest.raises(PoolError, match="returned to the pool"):
        old.rollback()
    with pytest.raises(PoolError, match="returned to the pool"):
        old.autocommit = True
    assert new.get_transaction_status() == psycopg2.extensions.TRANSACTION_STATUS_INTRANS
    assert new.autocommit is False
    assert new.execute(f"select x from {table}").fetchall() == [(1,)]
    new.commit()
    pool.putconn(new)
    assert count_from_outside(dsn, table) == 1


def test_putconn_accepts_the_handle(pool):
    conn = pool.getconn()
    pool.putconn(conn)
    assert pool.get_stats()["pool_available"] == 1
    with pytest.raises(PoolError, match="returned to the pool"):
        conn.cursor()


def test_putconn_accepts_the_real_connection(pool):
    conn = pool.getconn()
    pool.putconn(conn.__wrapped__)
    assert pool.get_stats()["pool_available"] == 1
    with pytest.raises(PoolError, match="returned to the pool"):
        conn.cursor()


def test_register_uuid_with_handle(pool):
    with pool.connection() as conn:
        psycopg2.extras.register_uuid(conn_or_curs=conn)
        u = uuid.uuid4()
        assert conn.execute("select %s::uuid", (u,)).fetchone()[0] == u


def test_register_hstore_with_handle(pool, dsn):
    admin = psycopg2.connect(dsn)
    admin.autocommit = True
    admin.cursor().execute("create extension if not exists hstore")
    admin.close()
    with pool.connection() as conn:
        psycopg2.extras.register_hstore(conn)
        assert conn.execute("select 'a=>1'::hstore").fetchone()[0] == {"a": "1"}


def test_register_json_with_handle(pool):
    with pool.connection() as conn:
        psycopg2.extras.register_json(conn, loads=lambda s: ("custom", s))
        assert conn.execute("""select '{"a": 1}'::json""").fetchone()[0] == ("custom", '{"a": 1}')


def test_register_composite_with_handle(pool, dsn):
    tname = f"p2p_comp_{uuid.uuid4().hex[:8]}"
    admin = psycopg2.connect(dsn)
    admin.autocommit = True
    admin.cursor().execute(f"create type {tname} as (a int, b text)")
    try:
        with pool.connection() as conn:
            caster = psycopg2.extras.register_composite(tname, conn)
            row = conn.execute(f"select (1, 'x')::{tname}").fetchone()[0]
            assert row == caster.type(1, "x")
    finally:
        admin.cursor().execute(f"drop type {tname}")
        admin.close()


def test_register_range_with_handle(pool, dsn):
    tname = f"p2p_rng_{uuid.uuid4().hex[:8]}"
    admin = psycopg2.connect(dsn)
    admin.autocommit = True
    admin.cursor().execute(f"create type {tname} as range (subtype = float8)")
    try:
        with pool.connection() as conn:
            caster = psycopg2.extras.register_range(tname, "P2PRange", conn)
            value = conn.execute(f"select '[1.5,2.5)'::{tname}").fetchone()[0]
            assert isinstance(value, caster.range)
            assert (value.lower, value.upper) == (1.5, 2.5)
    finally:
        admin.cursor().execute(f"drop type {tname}")
        admin.close()


def test_register_type_unicode_with_handle(pool):
    with pool.connection() as conn:
        psycopg2.extensions.register_type(psycopg2.extensions.UNICODE, conn)
        assert conn.execute("select 'é'::text").fetchone()[0] == "é"


def test_register_uuid_in_configure(make_pool):
    pool = make_pool(configure=lambda c: psycopg2.extras.register_uuid(conn_or_curs=c))
    with pool.connection() as conn:
        u = uuid.uuid4()
        assert conn.execute("select %s::uuid", (u,)).fetchone()[0] == u


def test_handle_from_another_pool_is_refused(make_pool):
    a = make_pool()
    b = make_pool()
    conn = a.getconn()
    with pytest.raises(PoolError):
        b.putconn(conn)
    # Still usable and still a's.
    assert conn.execute("select 1").fetchone() == (1,)
    a.putconn(conn)
    assert a.get_stats()["pool_available"] == 1
    assert b.get_stats()["pool_available"] == 1
