"""NullConnectionPool: psycopg_pool's pool that keeps no connection idle.

Every checkout opens a connection and every return closes it, unless a client
is waiting for it; ``max_size`` still caps how many are open at once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from time import monotonic
from typing import Any

from .engine import FOREVER, Connection, Waiter
from .errors import PoolTimeout
from .pool import ConnectionPool
from .workers import Backoff

__all__ = ["NullConnectionPool"]

logger = logging.getLogger("psycopg2_pool")


class _Attempt:
    """A connection attempt on a thread of its own, which its client may stop waiting for.

    Whoever comes second, the thread with the outcome or the client giving
    up, learns it from :meth:`finish` or :meth:`give_up`. Every outcome but
    a connection received in time goes to ``late`` (the connection, or None
    for a failure), once.
    """

    __slots__ = ("_arrived", "_lock", "conn", "error", "late", "state")

    def __init__(self, late: Callable[[Connection | None], None]) -> None:
        self.late = late
        self._lock = threading.Lock()
        self._arrived = threading.Lock()
        self._arrived.acquire()
        self.state = "running"
        self.conn: Connection | None = None
        self.error: BaseException | None = None

    def finish(self, conn: Connection | None, error: BaseException | None) -> None:
        """The thread: hand the outcome over, or to ``late`` if the client has gone."""
        with self._lock:
            gone = self.state == "abandoned"
            if not gone:
                self.state = "done"
                self.conn, self.error = conn, error
        if gone:
            self.late(conn)
        else:
            self._arrived.release()

    def wait(self, timeout: float) -> Connection | None:
        """The client: the connection, or None if ``timeout`` seconds passed first.

        Raise the attempt's error (after telling ``late``, with None). An
        interrupted client leaves the outcome to ``late``.
        """
        try:
            self._arrived.acquire(True, max(timeout, 0.0))
        except BaseException:
            if not self.give_up():
                self.late(self.conn)
            raise
        if self.give_up():
            return None
        if self.error is not None:
            self.late(None)
            raise self.error
        return self.conn

    def give_up(self) -> bool:
        """The client: stop waiting; False if the outcome is here already."""
        with self._lock:
            if self.state == "done":
                return False
            self.state = "abandoned"
            return True


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

    def _when_empty(self, request: Waiter) -> None:
        if self._size() < self._limit:
            self._reserve(request)  # the client connects (psycopg_pool does the same)
            return
        first = not self._waiters
        self._enqueue(request)
        if first:
            # No sweep here: the first client to wait is the only one to look.
            self._reclaim_dropped()

    def _open_for(self, request: Waiter, timeout: float | None = None) -> Connection:
        """Connect for ``request`` (its slot is reserved), within the client's ``timeout``.

        The client's slot is freed when it stops waiting; a connection that
        arrives later goes to a client in line if there is room, or is closed.
        """
        if timeout is None or timeout >= FOREVER:
            return super()._open_for(request)
        if timeout <= 0:  # no connection is ever ready at once here
            with self._mutex:
                self._unreserve(request)
                raise self._timeout_error(None, timeout)
        try:
            conn = self._connect_within(timeout, self._settle_late)
        except Exception:
            with self._mutex:
                self._unreserve(request)
            self._replace()  # the slot is free again: maybe for a client in line
            raise
        with self._mutex:
            self._unreserve(request)
            if conn is None:
                raise self._timeout_error(None, timeout)
            if not self.closed:
                cid = id(conn)
                self._used[request.key] = conn
                self._rused[cid] = request.key
                return conn
        self._drop(conn)
        raise self._closed_error()

    def _connect_within(
        self, timeout: float, late: Callable[[Connection | None], None]
    ) -> Connection | None:
        """A new connection, or None if ``timeout`` seconds passed first.

        libpq bounds an attempt only in whole seconds per address tried, and a
        server that accepts and never answers holds it that long, or for good:
        the attempt runs on a thread of its own, and the caller stops waiting
        for it at its deadline. What the attempt brings after that goes to ``late``.
        """
        attempt = _Attempt(late)
        threading.Thread(
            target=self._run_attempt,
            args=(attempt, timeout),
            name=f"{self.name}-connect",
            daemon=True,
        ).start()
        return attempt.wait(timeout)

    def _run_attempt(self, attempt: _Attempt, timeout: float) -> None:
        """The attempt's thread: connect, then hand the outcome over."""
        conn: Connection | None = None
        error: BaseException | None = None
        try:
            # libpq gives up a little after the caller did, so that this thread ends.
            conn = self._new_connection(connect_timeout=timeout + 1.0)
        except BaseException as exc:
            error = exc
        attempt.finish(conn, error)

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

    def _drop_late(self, conn: Connection | None) -> None:
        if conn is not None:
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
        """Check that a connection can be made, trying for up to ``timeout`` seconds.

        Failed attempts are logged and retried with exponential backoff, each
        bounded by the time left; the connection made is closed at once. At
        the deadline close the pool and raise :class:`PoolTimeout`.
        """
        with self._mutex:
            if self.closed:
                raise self._closed_error()
        logger.info("waiting for pool %r initialization", self.name)
        deadline = monotonic() + timeout
        backoff = Backoff(timeout)
        error: Exception | None = None
        while (left := deadline - monotonic()) > 0:
            try:
                conn = self._connect_within(left, self._drop_late)
            except Exception as exc:
                error = exc
                logger.warning("error connecting in %r: %s", self.name, self._masked(exc))
            else:
                if conn is not None:
                    self._drop(conn)
                    logger.info("pool %r is ready to use", self.name)
                    return
                break  # no answer within the time left
            delay = backoff.next_delay(monotonic())
            if delay is None:
                break
            with self._filled:  # woken early by close()
                self._filled.wait_for(lambda: self.closed, min(delay, deadline - monotonic()))
            if self.closed:
                raise self._closed_error()
        self.close()
        raise PoolTimeout(
            f"pool {self.name!r} initialization incomplete after {timeout} sec"
        ) from error

    def check(self) -> None:
        """Nothing to check: the pool holds no idle connection."""

    def resize(self, min_size: int, max_size: int | None = None) -> None:
        """Change ``max_size``; ``min_size`` must stay 0."""
        min_size, max_size = self._check_size(min_size, max_size)
        with self._mutex:
            self.maxconn = max_size
