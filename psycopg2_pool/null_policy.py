"""NullPolicy: the rules of the pools that keep no connection idle.

Shared by :class:`~psycopg2_pool.NullConnectionPool` and
:class:`~psycopg2_pool.AsyncNullConnectionPool`, as psycopg_pool's null pools
share theirs: a client that finds room connects itself; one that finds
``max_size`` connections open waits in line; a connection given back goes to
the next client in line or is closed; ``max_size`` 0 means no limit.
"""

from __future__ import annotations

import logging
from typing import Any

from .base import BasePool
from .decisions import Connection
from .engine import Waiter
from .workers import Backoff

__all__ = ["NullPolicy"]

logger = logging.getLogger("psycopg2_pool")


class NullPolicy(BasePool):
    """The null pools' decisions on the shared base (see the module's docstring)."""

    _keep_all = False
    _queue_when_full = False  # max_size 0 means no limit: see _when_empty()

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

    def _when_empty(self, request: Waiter) -> None:
        if self._size() < self._limit:
            self._reserve(request)  # the client connects (psycopg_pool does the same)
            return
        first = not self._waiters
        self._enqueue(request)
        if first:
            # No sweep here: the first client to wait is the only one to look.
            self._reclaim_dropped()

    def _settle_late(self, conn: Connection | None) -> None:
        """What an attempt brings once its client stopped waiting (its slot was
        freed then): a connection goes to a client in line if there is room."""
        if conn is None:
            return
        with self._mutex:
            if not self.closed and self._waiters and self._size() < self._limit:
                self._release(conn)
                return
        self._drop(conn)

    def _replace(self) -> None:
        """A connection was closed rather than handed over: open one for the
        clients waiting, if any (nobody else will)."""
        with self._mutex:
            if self.closed or self._workers is None or not self._waiters:
                return
            if self._size() >= self._limit:
                return
            self._spawn(1, self._add_connection)

    def _file_new(self, conn: Connection, growing: bool) -> None:
        """A connection opened for the longest waiting client: hand it over."""
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

    def _resize(self, min_size: int, max_size: int | None) -> None:
        """Change ``max_size``; ``min_size`` must stay 0."""
        min_size, max_size = self._check_size(min_size, max_size)
        with self._mutex:
            self.maxconn = max_size
