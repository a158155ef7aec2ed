"""Leak detection: ``leak_timeout`` reports connections kept out too long, and a
handle dropped without being given back returns its connection to the pool."""

from __future__ import annotations

import gc
import logging
import warnings
from collections.abc import Iterator
from time import sleep
from typing import Any, Callable

import psycopg2.extensions as ext
import pytest

from psycopg2_pool import ConnectionPool
from tests.helpers import app_name, backends, dsn_with, wait_for

LEAK_TIMEOUT = 0.2
# A dropped handle is found by the pool's periodic maintenance, which runs at
# least every 5 s: how long a test waits for it to come back.
RECLAIM_SECONDS = 5.0 + 2.0
# A short max_idle makes that maintenance run more often (max_idle / 4).
FAST_SWEEP = 2.0
NAMES: dict[int, str] = {}  # id(pool) -> its application_name


@pytest.fixture
def make_pool(dsn: str) -> Iterator[Callable[..., ConnectionPool]]:
    made: list[ConnectionPool] = []

    def make(**kwargs: Any) -> ConnectionPool:
        kwargs.setdefault("min_size", 1)
        kwargs.setdefault("max_size", 1)
        kwargs.setdefault("timeout", 2)
        name = app_name()
        pool = ConnectionPool(dsn_with(dsn, application_name=name), open=True, **kwargs)
        NAMES[id(pool)] = name
        made.append(pool)
        pool.wait(10)
        return pool

    yield make
    for pool in made:
        pool.close()


def leak_records(caplog: Any) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name.startswith("psycopg2_pool")
        and r.levelno >= logging.WARNING
        and __file__ in _full_text(r)
    ]


def _full_text(record: logging.LogRecord) -> str:
    text = record.getMessage()
    if record.exc_text:
        text += record.exc_text
    if record.stack_info:
        text += record.stack_info
    return text


def test_leak_timeout_logs_a_warning_with_the_getconn_stack(
    make_pool: Callable[..., ConnectionPool], caplog: Any
) -> None:
    caplog.set_level(logging.DEBUG, logger="psycopg2_pool")
    pool = make_pool(leak_timeout=LEAK_TIMEOUT)
    conn = pool.getconn(); getconn_line = _line()  # noqa: E702  # fmt: skip
    try:
        records = wait_for(
            lambda: leak_records(caplog), timeout=LEAK_TIMEOUT + 3, message="a leak warning"
        )
        text = _full_text(records[0])
        assert f'"{__file__}", line {getconn_line}' in text or (
            f"{__file__}:{getconn_line}" in text
        ), text
    finally:
        pool.putconn(conn)


def test_leak_timeout_warns_only_once_per_checkout(
    make_pool: Callable[..., ConnectionPool], caplog: Any
) -> None:
    caplog.set_level(logging.DEBUG, logger="psycopg2_pool")
    pool = make_pool(leak_timeout=LEAK_TIMEOUT)
    conn = pool.getconn()
    try:
        wait_for(lambda: leak_records(caplog), timeout=LEAK_TIMEOUT + 3, message="a leak warning")
        sleep(LEAK_TIMEOUT * 4)
        assert len(leak_records(caplog)) == 1
    finally:
        pool.putconn(conn)


def test_leak_timeout_quiet_for_connections_returned_in_time(
    make_pool: Callable[..., ConnectionPool], caplog: Any
) -> None:
    caplog.set_level(logging.DEBUG, logger="psycopg2_pool")
    pool = make_pool(leak_timeout=LEAK_TIMEOUT)
    for _ in range(5):
        with pool.connection() as conn:
            conn.execute("SELECT 1")
    sleep(LEAK_TIMEOUT * 3)
    assert not leak_records(caplog)
    assert pool.get_stats()["pool_available"] == 1


def _drop_unreturned(pool: ConnectionPool) -> int:
    """Check out a connection, open a transaction on it, drop the handle: its pid."""
    conn = pool.getconn()
    cur = conn.execute("CREATE TEMP TABLE p2p_leaked (x int)")
    cur.execute("SELECT pg_backend_pid()")
    pid: int = cur.fetchone()[0]
    cur.close()
    return pid


def test_unreturned_handle_garbage_collected_gives_its_connection_back(
    make_pool: Callable[..., ConnectionPool], dsn: str
) -> None:
    pool = make_pool()
    pid = _drop_unreturned(pool)
    assert pool.get_stats()["pool_available"] == 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()
    wait_for(
        lambda: pool.get_stats()["pool_available"] == 1,
        timeout=RECLAIM_SECONDS,
        message="the dropped connection back in the pool",
    )
    with pool.connection(timeout=1) as conn:
        assert conn.get_backend_pid() == pid  # the same connection, not a new one
        assert conn.get_transaction_status() == ext.TRANSACTION_STATUS_IDLE
        cur = conn.execute("SELECT to_regclass('pg_temp.p2p_leaked')")
        assert cur.fetchone()[0] is None, "the dropped connection was not rolled back"


def test_unreturned_handle_garbage_collected_emits_resource_warning(
    make_pool: Callable[..., ConnectionPool],
) -> None:
    pool = make_pool(max_idle=FAST_SWEEP)
    _drop_unreturned(pool)
    with pytest.warns(ResourceWarning):
        gc.collect()
        # The warning may come from the pool's own thread just after the collection.
        wait_for(lambda: pool.get_stats()["pool_available"] == 1, timeout=RECLAIM_SECONDS)


def test_unreturned_handles_leak_no_server_connection(
    make_pool: Callable[..., ConnectionPool], dsn: str
) -> None:
    pool = make_pool(min_size=1, max_size=3, timeout=RECLAIM_SECONDS, max_idle=FAST_SWEEP)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        for _ in range(6):
            _drop_unreturned(pool)
            gc.collect()
    # Six connections dropped from a pool of at most three: each came back.
    with pool.connection(timeout=3) as conn:
        conn.execute("SELECT 1")
    assert len(backends(dsn, NAMES[id(pool)])) <= 3


def _line() -> int:
    import sys

    return sys._getframe(1).f_lineno
