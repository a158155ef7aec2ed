"""Misuse: bad arguments, bad returns, calls after close and callbacks that
misbehave get a clear error and leave the pool working.

The legacy classes must fail exactly as psycopg2.pool's do (same exception
class, same message): those cases run side by side with psycopg2.pool.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from time import monotonic
from typing import Any, Callable

import psycopg2
import psycopg2.extensions as ext
import psycopg2.pool
import pytest

import psycopg2_pool
from psycopg2_pool import ConnectionPool, PoolClosed, PoolError, PoolTimeout
from tests.helpers import app_name, backends, dsn_with, wait_for

# -- ConnectionPool: arguments ---------------------------------------------------------

BAD_ARGUMENTS = [
    ({"min_size": -1}, ValueError, "min_size"),
    ({"min_size": 1.5}, TypeError, "min_size"),
    ({"min_size": "2"}, TypeError, "min_size"),
    ({"min_size": 1, "max_size": -1}, ValueError, "max_size"),
    ({"min_size": 1, "max_size": 2.5}, TypeError, "max_size"),
    ({"min_size": 3, "max_size": 1}, ValueError, "max_size"),
    ({"num_workers": 0}, ValueError, "num_workers"),
    ({"num_workers": 1.5}, TypeError, "num_workers"),
    ({"timeout": -1}, ValueError, "timeout"),
    ({"timeout": float("nan")}, TypeError, "timeout"),
    ({"max_waiting": -1}, ValueError, "max_waiting"),
    ({"max_lifetime": -1}, ValueError, "max_lifetime"),
    ({"max_idle": -1}, ValueError, "max_idle"),
    ({"reconnect_timeout": -1}, ValueError, "reconnect_timeout"),
]


@pytest.mark.parametrize(
    "kwargs, error, mentions", BAD_ARGUMENTS, ids=[repr(a[0]) for a in BAD_ARGUMENTS]
)
def test_connection_pool_bad_argument_clear_error(
    dsn: str, kwargs: dict[str, Any], error: type[Exception], mentions: str
) -> None:
    with pytest.raises(error, match=mentions):
        ConnectionPool(dsn, open=False, **kwargs)


@pytest.fixture
def make_pool(dsn: str) -> Iterator[Callable[..., ConnectionPool]]:
    made: list[ConnectionPool] = []

    def make(**kwargs: Any) -> ConnectionPool:
        kwargs.setdefault("min_size", 1)
        kwargs.setdefault("max_size", 2)
        kwargs.setdefault("timeout", 2)
        name = app_name()
        pool = ConnectionPool(dsn_with(dsn, application_name=name), open=True, **kwargs)
        pool.test_name = name  # type: ignore[attr-defined]
        made.append(pool)
        return pool

    yield make
    for pool in made:
        pool.close()


def works(pool: ConnectionPool) -> None:
    """The pool still hands out working connections, and takes them back."""
    before = pool.get_stats()
    with pool.connection(timeout=3) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    after = pool.get_stats()
    assert after["requests_waiting"] == 0
    assert after["pool_size"] >= before["pool_min"]


BAD_RESIZES = [
    ((-1,), ValueError),
    ((3, 1), ValueError),
    ((1.5,), TypeError),
    ((1, "4"), TypeError),
]


@pytest.mark.parametrize("args, error", BAD_RESIZES, ids=[repr(a[0]) for a in BAD_RESIZES])
def test_connection_pool_bad_resize_clear_error_pool_unchanged(
    make_pool: Callable[..., ConnectionPool], args: tuple[Any, ...], error: type[Exception]
) -> None:
    pool = make_pool(min_size=1, max_size=2)
    with pytest.raises(error, match="size"):
        pool.resize(*args)
    assert (pool.min_size, pool.max_size) == (1, 2)
    works(pool)


def test_connection_pool_negative_getconn_timeout_does_not_hang(
    make_pool: Callable[..., ConnectionPool],
) -> None:
    pool = make_pool(min_size=1, max_size=1)
    pool.wait(5)
    held = pool.getconn(timeout=-1)  # an idle connection: no wait needed
    started = monotonic()
    with pytest.raises((PoolTimeout, ValueError)):
        pool.getconn(timeout=-1)
    assert monotonic() - started < 1.0
    pool.putconn(held)
    works(pool)


# -- ConnectionPool: bad returns --------------------------------------------------------


def test_connection_pool_putconn_foreign_connection_raises_pool_error(
    make_pool: Callable[..., ConnectionPool], dsn: str
) -> None:
    pool = make_pool()
    stranger = psycopg2.connect(dsn)
    try:
        before = pool.get_stats()
        with pytest.raises(PoolError, match=r"not checked out|not .*from|foreign|unkeyed"):
            pool.putconn(stranger)
        assert not stranger.closed  # not the pool's to close
        after = pool.get_stats()
        assert (after["pool_size"], after["pool_available"]) == (
            before["pool_size"],
            before["pool_available"],
        )
    finally:
        stranger.close()
    works(pool)


def test_connection_pool_putconn_other_pools_handle_raises_pool_error(
    make_pool: Callable[..., ConnectionPool],
) -> None:
    pool, other = make_pool(), make_pool()
    conn = other.getconn()
    with pytest.raises(PoolError, match=other.name):
        pool.putconn(conn)
    other.putconn(conn)  # still the other pool's, and it takes it back
    works(pool)
    works(other)


def test_connection_pool_putconn_twice_raises_pool_error(
    make_pool: Callable[..., ConnectionPool],
) -> None:
    pool = make_pool()
    conn = pool.getconn()
    pool.putconn(conn)
    with pytest.raises(PoolError, match="returned"):
        pool.putconn(conn)
    works(pool)
    assert pool.get_stats()["pool_size"] <= 2


def test_connection_pool_putconn_real_connection_twice_raises_pool_error(
    make_pool: Callable[..., ConnectionPool],
) -> None:
    pool = make_pool()
    conn = pool.getconn()
    real = conn.__wrapped__
    pool.putconn(real)
    with pytest.raises(PoolError):
        pool.putconn(real)
    works(pool)


def test_connection_pool_putconn_real_connection_twice_leaves_its_next_holder_alone(
    make_pool: Callable[..., ConnectionPool],
) -> None:
    pool = make_pool(min_size=1, max_size=1)
    first = pool.getconn()
    real = first.__wrapped__
    pool.putconn(real)  # given back by the real connection: accepted once
    holder = pool.getconn()
    assert holder.__wrapped__ is real  # the same connection, another client's now
    assert holder.execute("SELECT 1").fetchone() == (1,)
    with pytest.raises(PoolError, match="returned"):
        pool.putconn(real)
    assert holder.get_transaction_status() == ext.TRANSACTION_STATUS_INTRANS
    assert holder.execute("SELECT 2").fetchone() == (2,)
    pool.putconn(holder)
    works(pool)


def test_connection_pool_putconn_none_raises_pool_error(
    make_pool: Callable[..., ConnectionPool],
) -> None:
    pool = make_pool()
    with pytest.raises(PoolError):
        pool.putconn(None)
    works(pool)


def test_connection_pool_putconn_after_close_closes_the_connection(
    make_pool: Callable[..., ConnectionPool], dsn: str
) -> None:
    pool = make_pool()
    conn = pool.getconn()
    real = conn.__wrapped__
    pool.close()
    pool.putconn(conn)  # as psycopg_pool: no error, the connection goes with the pool
    assert real.closed
    wait_for(lambda: not backends(dsn, pool.test_name), message="no server connection left")  # type: ignore[attr-defined]
    with pytest.raises(PoolError):
        pool.putconn(conn)


def test_connection_pool_getconn_after_close_raises_pool_closed(
    make_pool: Callable[..., ConnectionPool],
) -> None:
    pool = make_pool()
    pool.close()
    with pytest.raises(PoolClosed, match="closed"):
        pool.getconn()
    with pytest.raises(PoolClosed, match="closed"), pool.connection():
        pass


def test_connection_pool_handle_used_after_return_raises_pool_error(
    make_pool: Callable[..., ConnectionPool],
) -> None:
    pool = make_pool()
    conn = pool.getconn()
    pool.putconn(conn)
    with pytest.raises(PoolError, match="returned"):
        conn.cursor()
    works(pool)


# -- ConnectionPool: callbacks that misbehave ---------------------------------------------


class Flaky:
    """A callback that misbehaves the first ``times`` calls, then does ``then``."""

    def __init__(
        self,
        times: int,
        bad: Callable[[Any], None],
        then: Callable[[Any], None] = lambda conn: None,
    ) -> None:
        self.times = times
        self.bad = bad
        self.then = then
        self.calls = 0

    def __call__(self, conn: Any) -> None:
        self.calls += 1
        if self.calls <= self.times:
            self.bad(conn)
        else:
            self.then(conn)


def raise_error(conn: Any) -> None:
    raise RuntimeError("callback failed on purpose")


def leave_transaction(conn: Any) -> None:
    conn.cursor().execute("SELECT 1")  # psycopg2 opens a transaction, left open


def assert_clean(conn: Any) -> None:
    real = getattr(conn, "__wrapped__", conn)
    assert real.get_transaction_status() == ext.TRANSACTION_STATUS_IDLE
    assert real.status == ext.STATUS_READY


BAD_CALLBACKS = {"raises": raise_error, "leaves_transaction_open": leave_transaction}


@pytest.mark.parametrize("bad", list(BAD_CALLBACKS))
def test_configure_callback_misbehaving_once_pool_keeps_working(
    make_pool: Callable[..., ConnectionPool], bad: str, caplog: Any
) -> None:
    caplog.set_level(logging.WARNING, logger="psycopg2_pool")
    configure = Flaky(1, BAD_CALLBACKS[bad])
    pool = make_pool(configure=configure, min_size=1, max_size=1, timeout=5)
    with pool.connection(timeout=5) as conn:  # backoff: a second attempt after ~1 s
        assert_clean(conn)
        conn.execute("SELECT 1")
    assert configure.calls >= 2
    assert any(
        "configure" in r.getMessage()
        or "callback" in r.getMessage()
        or "failed on purpose" in r.getMessage()
        for r in caplog.records
    ), "the configure failure was not logged clearly"


@pytest.mark.parametrize("bad", list(BAD_CALLBACKS))
def test_configure_callback_always_misbehaving_clients_get_pool_timeout(
    make_pool: Callable[..., ConnectionPool], bad: str
) -> None:
    pool = make_pool(configure=BAD_CALLBACKS[bad], min_size=1, max_size=1)
    with pytest.raises(PoolTimeout):
        pool.getconn(timeout=0.5)
    assert not pool.closed


@pytest.mark.parametrize("bad", list(BAD_CALLBACKS))
def test_check_callback_misbehaving_once_client_gets_clean_connection(
    make_pool: Callable[..., ConnectionPool], bad: str
) -> None:
    check = Flaky(1, BAD_CALLBACKS[bad])
    pool = make_pool(check=check, min_size=2, max_size=2)
    pool.wait(5)
    with pool.connection(timeout=3) as conn:
        assert_clean(conn)
        conn.execute("SELECT 1")
    works(pool)


def test_check_callback_always_raising_clients_get_pool_timeout(
    make_pool: Callable[..., ConnectionPool],
) -> None:
    pool = make_pool(check=raise_error, min_size=1, max_size=1)
    pool.wait(5)
    with pytest.raises(PoolTimeout):
        pool.getconn(timeout=1)
    assert not pool.closed


def test_check_callback_always_leaving_transaction_open_no_client_gets_it(
    make_pool: Callable[..., ConnectionPool],
) -> None:
    """Either the pool rolls back what the check left open, or it treats the
    connection as failing the check (then the client times out)."""
    pool = make_pool(check=leave_transaction, min_size=1, max_size=1)
    pool.wait(5)
    try:
        conn = pool.getconn(timeout=1)
    except PoolTimeout:
        return
    try:
        assert_clean(conn)
    finally:
        pool.putconn(conn)


@pytest.mark.parametrize("bad", list(BAD_CALLBACKS))
def test_reset_callback_misbehaving_connection_replaced_pool_keeps_working(
    make_pool: Callable[..., ConnectionPool], bad: str
) -> None:
    reset = Flaky(1, BAD_CALLBACKS[bad])
    pool = make_pool(reset=reset, min_size=1, max_size=1)
    with pool.connection() as conn:
        first = conn.get_backend_pid()
    with pool.connection(timeout=5) as conn:
        assert_clean(conn)
        # The connection the reset failed on was not handed out again.
        assert conn.get_backend_pid() != first
        conn.execute("SELECT 1")
    assert reset.calls >= 2


# -- legacy pools: the same errors and messages as psycopg2.pool ------------------------

LEGACY = ["SimpleConnectionPool", "ThreadedConnectionPool"]


def outcome(fn: Callable[[], Any]) -> tuple[str, str] | None:
    """(exception class name, message) of what ``fn`` raised, or None."""
    try:
        fn()
    except Exception as exc:
        return (type(exc).__name__, str(exc))
    return None


def both(kind: str, minconn: Any, maxconn: Any, dsn: str) -> tuple[Any, Any]:
    """A psycopg2.pool pool and ours, built from the same arguments (or the errors)."""
    return (
        outcome(lambda: getattr(psycopg2.pool, kind)(minconn, maxconn, dsn)),
        outcome(lambda: getattr(psycopg2_pool, kind)(minconn, maxconn, dsn)),
    )


LEGACY_SIZES = [(-1, 2), (1.5, 2), ("1", 2), (1, "2"), (None, 2), (3, 1), (0, 0)]


@pytest.mark.parametrize("kind", LEGACY)
@pytest.mark.parametrize("sizes", LEGACY_SIZES, ids=[repr(s) for s in LEGACY_SIZES])
def test_legacy_odd_sizes_fail_as_psycopg2_pool(
    dsn: str, kind: str, sizes: tuple[Any, Any]
) -> None:
    pdsn = dsn_with(dsn, application_name=app_name())
    theirs_pool: list[Any] = []
    ours_pool: list[Any] = []

    def make(module: Any, into: list[Any]) -> None:
        into.append(getattr(module, kind)(sizes[0], sizes[1], pdsn))

    theirs = outcome(lambda: make(psycopg2.pool, theirs_pool))
    ours = outcome(lambda: make(psycopg2_pool, ours_pool))
    for pool in theirs_pool + ours_pool:
        pool.closeall()
    assert ours == theirs


def _legacy_misuse(kind: str, dsn: str, module: Any) -> dict[str, Any]:
    """Each misuse against a fresh pool of ``module``: {case: (class, message) or None}."""
    pdsn = dsn_with(dsn, application_name=app_name())
    results: dict[str, Any] = {}

    def fresh() -> Any:
        return getattr(module, kind)(1, 2, pdsn)

    pool = fresh()
    stranger = psycopg2.connect(dsn)
    results["putconn_foreign"] = outcome(lambda: pool.putconn(stranger))
    stranger.close()
    results["putconn_none"] = outcome(lambda: pool.putconn(None))
    conn = pool.getconn()
    pool.putconn(conn)
    results["putconn_twice"] = outcome(lambda: pool.putconn(conn))
    results["putconn_unknown_key"] = outcome(lambda: pool.putconn(conn, key="nobody"))
    results["still_works"] = outcome(lambda: pool.putconn(pool.getconn()))
    held = pool.getconn()
    pool.closeall()
    results["getconn_after_closeall"] = outcome(pool.getconn)
    results["putconn_after_closeall"] = outcome(lambda: pool.putconn(held))
    results["closeall_twice"] = outcome(pool.closeall)
    return results


@pytest.mark.parametrize("kind", LEGACY)
def test_legacy_misuse_fails_as_psycopg2_pool(dsn: str, kind: str) -> None:
    theirs = _legacy_misuse(kind, dsn, psycopg2.pool)
    ours = _legacy_misuse(kind, dsn, psycopg2_pool)
    assert ours == theirs


@pytest.mark.parametrize("kind", LEGACY)
def test_legacy_misuse_leaves_pool_working(dsn: str, kind: str) -> None:
    pool = getattr(psycopg2_pool, kind)(1, 2, dsn_with(dsn, application_name=app_name()))
    try:
        conn = pool.getconn()
        pool.putconn(conn)
        for bad in (lambda: pool.putconn(None), lambda: pool.putconn(conn)):
            with pytest.raises(PoolError):
                bad()
        with pytest.raises(KeyError):  # as psycopg2.pool
            pool.putconn(conn, key="nobody")
        a, b = pool.getconn(), pool.getconn()
        assert a is not b
        for c in (a, b):
            with c.cursor() as cur:
                cur.execute("SELECT 1")
            pool.putconn(c)
        assert len(pool._pool) + len(pool._used) <= 2
    finally:
        pool.closeall()
