"""NullConnectionPool: psycopg_pool's pool that keeps no connection idle, for threads.

Every checkout opens a connection and every return closes it, unless a client
is waiting for it; ``max_size`` still caps how many are open at once (the
rules are :class:`~psycopg2_pool.null_policy.NullPolicy`'s). A client
connects on a thread of its own, so that its timeout holds whatever libpq does.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from time import monotonic
from typing import Any

from .decisions import Connection
from .engine import FOREVER, Waiter
from .errors import PoolTimeout
from .null_policy import NullPolicy
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


class NullConnectionPool(NullPolicy, ConnectionPool):
    """A pool that opens a connection per checkout and closes it on return.

    Useful behind an external pooler (PgBouncer) or to cap concurrency with
    the pool's API and no idle connections. ``max_size=None`` (the default)
    means no limit.
    """

    def __init__(self, conninfo: Any = "", *, min_size: int = 0, **kwargs: Any) -> None:
        super().__init__(conninfo, min_size=min_size, **kwargs)

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

    def _drop_late(self, conn: Connection | None) -> None:
        if conn is not None:
            self._drop(conn)

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
        self._resize(min_size, max_size)
