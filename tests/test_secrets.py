"""No password, however it was given, shows up in a repr, a str, a log record of
the ``psycopg2_pool`` logger (any level) or an exception message.

The test server trusts everyone, so a password is accepted and ignored; a closed
port produces the connection errors whose libpq messages might echo the DSN.
"""

from __future__ import annotations

import logging
import traceback
import warnings
from collections.abc import Iterator
from typing import Any, Callable

import psycopg2
import pytest

import psycopg2_pool
from psycopg2_pool import ConnectionPool, NullConnectionPool, PoolError, ThreadSafeConnectionPool
from psycopg2_pool._embedded import free_port
from tests.helpers import app_name

SECRET = "S3cr3t-Pa55-XYZ"


def parts(dsn: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in dsn.split())


def spellings(dsn: str) -> dict[str, dict[str, Any]]:
    """Ways of giving the password to a ConnectionPool: constructor keywords."""
    p = parts(dsn)
    uri = (
        f"postgresql://{p['user']}:{SECRET}@{p['host']}:{p['port']}/{p['dbname']}"
        f"?application_name={app_name()}"
    )
    return {
        "conninfo": {"conninfo": f"{dsn} password={SECRET} application_name={app_name()}"},
        "conninfo_quoted": {"conninfo": f"{dsn} password='{SECRET}'"},
        "uri": {"conninfo": uri},
        "uri_query": {
            "conninfo": f"postgresql://{p['user']}@{p['host']}:{p['port']}/"
            f"{p['dbname']}?password={SECRET}"
        },
        "kwargs_dict": {"conninfo": dsn, "kwargs": {"password": SECRET}},
        "kwargs_callable": {"conninfo": dsn, "kwargs": lambda: {"password": SECRET}},
        "connect_keyword": {"conninfo": dsn, "password": SECRET},
    }


# Taken from spellings() itself, so that a spelling added there is tested everywhere.
SPELLINGS = list(spellings("host=localhost port=5432 user=u dbname=d"))


def closed_port_dsn() -> str:
    return f"host=127.0.0.1 port={free_port()} user=postgres dbname=postgres"


class Evidence:
    """Every text the package produced that a user could see."""

    def __init__(self, caplog: Any) -> None:
        self.caplog = caplog
        self.texts: list[tuple[str, str]] = []

    def add(self, where: str, text: Any) -> None:
        self.texts.append((where, str(text)))

    def exception(self, where: str, exc: BaseException) -> None:
        self.add(where, "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
        self.add(where + " repr", repr(exc))

    def attempt(self, where: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except Exception as exc:
            self.exception(where, exc)
            return None

    def leaks(self) -> list[str]:
        found = [
            f"{where}: ...{t[max(0, t.find(SECRET) - 80) : t.find(SECRET) + 20]}..."
            for where, t in self.texts
            if SECRET in t
        ]
        for record in self.caplog.records:
            text = record.getMessage()
            if record.exc_info:
                text += "".join(traceback.format_exception(*record.exc_info))
            if record.stack_info:
                text += record.stack_info
            if SECRET in text:
                found.append(f"log {record.levelname} {record.name}: {text[:300]}")
        return found


@pytest.fixture
def evidence(caplog: Any) -> Iterator[Evidence]:
    caplog.set_level(logging.DEBUG, logger="psycopg2_pool")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ev = Evidence(caplog)
        yield ev
    for w in caught:
        ev.add(f"warning {w.category.__name__}", w.message)


def _exercise_connection_pool(pool: ConnectionPool, ev: Evidence, dsn_for_stranger: str) -> None:
    ev.add("repr(pool)", repr(pool))
    ev.add("str(pool)", str(pool))
    ev.add("stats", pool.get_stats())
    conn = ev.attempt("getconn", lambda: pool.getconn(timeout=3))
    if conn is not None:
        ev.add("repr(conn)", repr(conn))
        ev.add("str(conn)", str(conn))
        ev.add("conn.dsn", conn.dsn)
        conn.cursor().execute("SELECT 1")  # left in a transaction: logged when returned
        pool.putconn(conn)
        ev.add("repr(returned conn)", repr(conn))
        ev.attempt("use after return", lambda: conn.cursor())
        ev.attempt("putconn twice", lambda: pool.putconn(conn))
    stranger = psycopg2.connect(dsn_for_stranger)
    ev.attempt("putconn foreign", lambda: pool.putconn(stranger))
    stranger.close()
    ev.attempt("putconn None", lambda: pool.putconn(None))
    held = [ev.attempt("exhaust", lambda: pool.getconn(timeout=2)) for _ in range(2)]
    ev.attempt("timeout", lambda: pool.getconn(timeout=0.2))
    for h in held:
        if h is not None:
            pool.putconn(h)
    pool.close()
    ev.attempt("getconn after close", lambda: pool.getconn(timeout=0.2))
    ev.add("repr(closed pool)", repr(pool))


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_password_not_shown_by_working_connection_pool(
    dsn: str, evidence: Evidence, spelling: str
) -> None:
    kwargs = spellings(dsn)[spelling]
    pool = ConnectionPool(min_size=1, max_size=2, open=True, **kwargs)
    try:
        pool.wait(5)
        _exercise_connection_pool(pool, evidence, dsn)
    finally:
        pool.close()
    assert not evidence.leaks()


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_password_not_shown_by_failing_connection_pool(evidence: Evidence, spelling: str) -> None:
    kwargs = spellings(closed_port_dsn())[spelling]
    pool = ConnectionPool(
        min_size=1,
        max_size=1,
        open=True,
        reconnect_timeout=0.3,
        reconnect_failed=lambda p: evidence.add("reconnect_failed", repr(p)),
        **kwargs,
    )
    try:
        evidence.attempt("getconn", lambda: pool.getconn(timeout=0.5))
        evidence.attempt("wait", lambda: pool.wait(timeout=0.5))
        evidence.add("repr(pool)", repr(pool))
    finally:
        pool.close()
    assert not evidence.leaks()


def test_password_not_shown_by_failing_null_pool(evidence: Evidence) -> None:
    pool = NullConnectionPool(closed_port_dsn(), kwargs={"password": SECRET}, open=True)
    try:
        evidence.attempt("getconn", lambda: pool.getconn(timeout=0.5))
        evidence.attempt("wait", lambda: pool.wait(timeout=0.5))
        evidence.add("repr(pool)", repr(pool))
    finally:
        pool.close()
    assert not evidence.leaks()


def test_password_not_shown_by_1_2_spelling(dsn: str, evidence: Evidence) -> None:
    p = parts(dsn)
    pool = ConnectionPool(
        minconn=1,
        maxconn=2,
        host=p["host"],
        port=p["port"],
        user=p["user"],
        dbname=p["dbname"],
        password=SECRET,
    )
    assert isinstance(pool, ThreadSafeConnectionPool)
    evidence.add("repr", repr(pool))
    evidence.add("str", str(pool))
    a, b = pool.getconn(), pool.getconn()
    evidence.attempt("exhausted", pool.getconn)
    pool.putconn(a)
    pool.putconn(b)
    pool.close()
    evidence.attempt("after close", pool.getconn)
    failing = ConnectionPool(minconn=0, maxconn=1, dsn=f"{closed_port_dsn()} password={SECRET}")
    evidence.add("repr failing", repr(failing))
    evidence.attempt("connect error", failing.getconn)
    failing.close()
    assert not evidence.leaks()


@pytest.mark.parametrize("kind", ["SimpleConnectionPool", "ThreadedConnectionPool"])
@pytest.mark.parametrize("how", ["dsn", "keyword"])
def test_password_not_shown_by_legacy_pools(
    dsn: str, evidence: Evidence, kind: str, how: str
) -> None:
    cls = getattr(psycopg2_pool, kind)

    def make(target: str, minconn: int) -> Any:
        if how == "dsn":
            return cls(minconn, 2, f"{target} password={SECRET}")
        return cls(minconn, 2, target, password=SECRET)

    pool = make(dsn, 1)
    evidence.add("repr", repr(pool))
    conn = pool.getconn()
    evidence.add("repr(conn)", repr(conn))
    evidence.attempt("putconn foreign", lambda: pool.putconn(object()))
    pool.putconn(conn)
    evidence.attempt("putconn twice", lambda: pool.putconn(conn))
    pool.closeall()
    evidence.attempt("getconn after closeall", pool.getconn)
    evidence.attempt("connect error", lambda: make(closed_port_dsn(), 1))
    failing = make(closed_port_dsn(), 0)
    evidence.attempt("connect error on getconn", failing.getconn)
    assert not evidence.leaks()


def test_password_not_shown_when_configure_and_reset_fail(dsn: str, evidence: Evidence) -> None:
    def configure(conn: Any) -> None:
        raise psycopg2.OperationalError(f"configure saw {conn.dsn}")

    def reset(conn: Any) -> None:
        raise RuntimeError(f"reset saw {conn.dsn}")

    pool = ConnectionPool(
        f"{dsn} password={SECRET}",
        min_size=1,
        open=True,
        configure=configure,
        reconnect_timeout=0.3,
    )
    evidence.attempt("getconn", lambda: pool.getconn(timeout=0.5))
    pool.close()
    pool = ConnectionPool(f"{dsn} password={SECRET}", min_size=1, open=True, reset=reset)
    with pool.connection(timeout=5):
        pass
    pool.close()
    assert not evidence.leaks()


def test_pool_error_messages_do_not_echo_conninfo(evidence: Evidence) -> None:
    """A malformed conninfo must not come back whole in an error."""
    for bad in (
        f"host=127.0.0.1 port=notaport password={SECRET}",
        f"postgresql://postgres:{SECRET}@127.0.0.1:notaport/postgres",
        f"password={SECRET} nonsense_option=1",
        # libpq quotes the whole URI in some parse errors.
        f"postgresql://postgres:{SECRET}@[::1/postgres",
    ):
        pool = ConnectionPool(bad, min_size=1, open=True, reconnect_timeout=0.2)
        evidence.attempt("getconn", lambda pool=pool: pool.getconn(timeout=0.5))
        evidence.add("repr", repr(pool))
        pool.close()
    assert not evidence.leaks()


def test_mask_covers_error_types(evidence: Evidence) -> None:
    """PoolError stays the class the user catches even when messages are masked."""
    pool = ConnectionPool(f"{closed_port_dsn()} password={SECRET}", min_size=1, open=True)
    with pytest.raises(PoolError):
        pool.getconn(timeout=0.3)
    pool.close()
    assert not evidence.leaks()


# libpq quotes the whole URI, password included, in some of its parse errors.
MALFORMED_URI = f"postgresql://postgres:{SECRET}@[::1/postgres"


def test_malformed_uri_password_not_shown_by_null_pool(evidence: Evidence) -> None:
    pool = NullConnectionPool(MALFORMED_URI, open=True)
    evidence.attempt("getconn", lambda: pool.getconn(timeout=0.5))
    evidence.attempt("wait", lambda: pool.wait(timeout=0.5))
    pool.close()
    assert not evidence.leaks()


@pytest.mark.parametrize("kind", ["SimpleConnectionPool", "ThreadedConnectionPool"])
def test_malformed_uri_password_not_shown_by_legacy_pools(evidence: Evidence, kind: str) -> None:
    cls = getattr(psycopg2_pool, kind)
    evidence.attempt("constructor", lambda: cls(1, 2, MALFORMED_URI))
    pool = cls(0, 2, MALFORMED_URI)
    evidence.attempt("getconn", pool.getconn)
    assert not evidence.leaks()


def test_malformed_uri_password_not_shown_by_1_2_spelling(evidence: Evidence) -> None:
    evidence.attempt("constructor", lambda: ConnectionPool(minconn=1, dsn=MALFORMED_URI))
    pool = ConnectionPool(minconn=0, dsn=MALFORMED_URI)
    evidence.attempt("getconn", pool.getconn)
    pool.close()
    assert not evidence.leaks()
