"""NullConnectionPool: psycopg_pool's pool that keeps no connection idle.

Every checkout opens a connection and every return closes it, unless a client
is waiting for it; ``max_size`` still caps how many are open at once.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable
from typing import Any

from .engine import Waiter
from .errors import PoolTimeout
from .pool import ConnectionPool
from .workers import Backoff

__all__ = ["NullConnectionPool"]

logger = logging.getLogger("psycopg2_pool")


class NullConnectionPool(ConnectionPool):
    """A pool that opens a connection per checkout and closes it on return.

    Useful behind an external pooler (PgBouncer) or to cap concurrency with
    the pool's API and no idle connections. ``max_size=None`` (the default)
    means no limit.
    """

    _keep_all = False
    _queue_when_full = False  # max_size 0 means no limit: see _when_empty()

    def __init__(self, conninfo: Any = "", *, min_size: int = 0, **kwargs: Any) -> None:
        super().__init__(conninfo, min_size=min_size, **kwargs)

    @staticmethod
    def _check_size(min_size: Any, max_size: Any) -> tuple[int, int]:
        if max_size is None:
            max_size = min_size
        if isinstance(min_size, bool) or not isinstance(min_size, int):
            raise TypeError(f"min_size must be an integer, got {min_size!r}")
        if isinstance(max_size, bool) or not isinstance(max_size, int):
            raise TypeError(f"max_size must be an integer, got {max_size!r}")
        if min_size != 0:
            raise ValueError("null pools must have min_size = 0")
        if max_size < min_size:
            raise ValueError("max_size must be greater or equal than min_size")
        return min_size, max_size

    @property
    def _limit(self) -> float:
        return self.maxconn or float("inf")

    def _start_filling(self) -> None:
        pass  # nothing to keep, nothing to sweep

    def _when_empty(self, key: Hashable) -> Waiter | None:
        if self._size() < self._limit:
            self._pending += 1
            return None  # the client connects (psycopg_pool does the same)
        return self._enqueue(key)

    def _replace(self) -> None:
        """A connection was closed rather than handed over: open one for the
        clients waiting, if any (nobody else will)."""
        with self._mutex:
            if self.closed or self._workers is None or not self._waiters:
                return
            if self._size() >= self._limit:
                return
            self._pending += 1
            self._workers.submit(self._add_connection)

    def _add_connection(self, attempt: Backoff | None = None, growing: bool = False) -> None:
        """Worker task: open a connection for the longest waiting client."""
        try:
            conn = self._new_connection()
        except Exception as exc:
            self._connect_failed(exc, attempt, growing)
            return
        with self._mutex:
            self._pending -= 1
            handed = not self.closed and bool(self._waiters)
            if handed:
                self._release(conn)
        if not handed:
            self._drop(conn)  # its client gave up meanwhile: a null pool keeps nothing

    def _connect_failed(self, exc: Exception, attempt: Backoff | None, growing: bool) -> None:
        with self._mutex:
            abandoned = not self._waiters
            if abandoned:
                self._pending -= 1
        if abandoned:
            # Nobody waits for this connection any more: no retry.
            logger.warning("error connecting in %r: %s", self.name, self._masked(exc))
            return
        super()._connect_failed(exc, attempt, growing)

    def wait(self, timeout: float = 30.0) -> None:
        """Check that a connection can be made, within ``timeout`` seconds."""
        with self._mutex:
            if self.closed:
                raise self._closed_error()
        try:
            conn = self._new_connection(connect_timeout=timeout)
        except Exception as exc:
            self.close()
            raise PoolTimeout(
                f"pool {self.name!r} initialization incomplete after {timeout} sec"
            ) from exc
        self._drop(conn)

    def check(self) -> None:
        """Nothing to check: the pool holds no idle connection."""

    def resize(self, min_size: int, max_size: int | None = None) -> None:
        """Change ``max_size``; ``min_size`` must stay 0."""
        min_size, max_size = self._check_size(min_size, max_size)
        with self._mutex:
            self.maxconn = max_size
