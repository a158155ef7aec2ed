"""What the checkout and return paths promise: one round of the pool's lock
each, and no logging at all, whatever the logger's level."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from psycopg2_pool import ConnectionPool, ThreadedConnectionPool
from tests.helpers import wait_for


class CountingLock:
    """Stands in for a pool's lock: the same lock underneath, with the rounds
    taken by one thread (the test's) counted. Workers keep using it unseen."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self._counted = threading.get_ident()
        self.rounds = 0

    def acquire(self, *args: Any, **kwargs: Any) -> bool:
        got: bool = self._inner.acquire(*args, **kwargs)
        if got and threading.get_ident() == self._counted:
            self.rounds += 1
        return got

    def release(self) -> None:
        self._inner.release()

    def __enter__(self) -> CountingLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def take(self) -> int:
        """The rounds counted since the last call."""
        rounds, self.rounds = self.rounds, 0
        return rounds


def count_lock_rounds(pool: Any) -> CountingLock:
    lock = CountingLock(pool._mutex)
    pool._mutex = lock
    return lock


@pytest.fixture
def pool(dsn: str) -> Iterator[ConnectionPool]:
    with ConnectionPool(dsn, min_size=2, timeout=5) as pool:
        pool.wait(10)
        yield pool


def test_getconn_takes_the_lock_once(pool: ConnectionPool) -> None:
    lock = count_lock_rounds(pool)
    conn = pool.getconn()
    assert lock.take() == 1
    pool.putconn(conn)


def test_putconn_takes_the_lock_once(pool: ConnectionPool) -> None:
    conn = pool.getconn()
    lock = count_lock_rounds(pool)
    pool.putconn(conn)
    assert lock.take() == 1


def test_with_block_takes_the_lock_once_each_way(pool: ConnectionPool) -> None:
    lock = count_lock_rounds(pool)
    with pool.connection() as conn:
        assert lock.take() == 1
        conn.execute("SELECT 1")
    assert lock.take() == 1


def test_handing_over_to_a_waiting_client_takes_the_lock_once(dsn: str) -> None:
    with ConnectionPool(dsn, min_size=1, timeout=5) as pool:
        pool.wait(10)
        held = pool.getconn()
        served: list[Any] = []
        client = threading.Thread(target=lambda: served.append(pool.getconn()))
        client.start()
        wait_for(lambda: pool.get_stats()["requests_waiting"] == 1)
        lock = count_lock_rounds(pool)
        pool.putconn(held)
        client.join(5)
        assert lock.take() == 1
        assert len(served) == 1
        pool.putconn(served[0])


def test_legacy_getconn_and_putconn_take_the_lock_once_each(dsn: str) -> None:
    pool = ThreadedConnectionPool(1, 2, dsn)
    try:
        lock = count_lock_rounds(pool)
        conn = pool.getconn()
        assert lock.take() == 1
        pool.putconn(conn)
        assert lock.take() == 1
    finally:
        pool.closeall()


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def debug_records() -> Iterator[list[logging.LogRecord]]:
    """Every record the package logs meanwhile, from this thread, at DEBUG and up."""
    logger = logging.getLogger("psycopg2_pool")
    handler, level = Records(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler.records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def _mine(records: list[logging.LogRecord]) -> list[str]:
    me = threading.get_ident()
    return [record.getMessage() for record in records if record.thread == me]


def test_checkout_and_return_log_nothing(
    pool: ConnectionPool, debug_records: list[logging.LogRecord]
) -> None:
    for _ in range(3):
        conn = pool.getconn()
        pool.putconn(conn)
        with pool.connection() as conn:
            conn.execute("SELECT 1")
    assert _mine(debug_records) == []


def test_legacy_checkout_and_return_log_nothing(
    dsn: str, debug_records: list[logging.LogRecord]
) -> None:
    pool = ThreadedConnectionPool(1, 2, dsn)
    try:
        for _ in range(3):
            pool.putconn(pool.getconn())
    finally:
        pool.closeall()
    assert _mine(debug_records) == []


def test_a_pool_opened_by_with_checks_out_without_extra_steps(dsn: str) -> None:
    # The extra steps (check, leak tracking, the implicit-open warning) live in
    # _prepare; a pool that needs none of them must not pay for the call.
    with ConnectionPool(dsn, min_size=1) as pool:
        pool.wait(10)
        prepared: list[Any] = []
        pool._prepare = lambda conn, handle, timeout: prepared.append(handle) or handle  # type: ignore[method-assign]
        with pool.connection():
            pass
        pool.putconn(pool.getconn())
        assert prepared == []


def test_a_pool_with_a_check_still_runs_it_at_checkout(dsn: str) -> None:
    checked: list[Any] = []
    with ConnectionPool(dsn, min_size=1, check=checked.append) as pool:
        pool.wait(10)
        with pool.connection():
            pass
    assert len(checked) == 1
