"""The key-based engine that every pool of the package runs on.

It owns the idle connections, the connections in use by key, the size limit
and the hand-over of returned connections to waiting clients. Subclasses pick
the policies: what to do when no connection is free, and which to keep.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Hashable
from time import monotonic
from typing import Any

import psycopg2
from psycopg2 import extensions as _ext

from .errors import PoolError

logger = logging.getLogger("psycopg2_pool")

Connection = _ext.connection

_IDLE = _ext.TRANSACTION_STATUS_IDLE
_UNKNOWN = _ext.TRANSACTION_STATUS_UNKNOWN


class AutoKey:
    """A key the pool makes for itself.

    It is equal only to itself, so it can never collide with a key a caller
    chose: psycopg2.pool numbered its own keys 1, 2, 3... and ``getconn()``
    followed by ``getconn(key=1)`` returned the same connection twice.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return f"<auto key at 0x{id(self):x}>"


_new_key = object.__new__


class Waiter:
    """A client's place in the queue for a connection.

    The pool hands a connection over (or an error) under its lock; the client
    sleeps on a per-client lock outside it.
    """

    __slots__ = ("_signal", "conn", "error", "key")

    def __init__(self, key: Hashable) -> None:
        self.key = key
        self.conn: Connection | None = None
        self.error: BaseException | None = None
        self._signal = threading.Lock()
        self._signal.acquire()

    def serve(self, conn: Connection) -> None:
        self.conn = conn
        self._signal.release()

    def fail(self, error: BaseException) -> None:
        self.error = error
        self._signal.release()

    def sleep(self, timeout: float | None) -> bool:
        """Wait to be served or failed; False if the timeout passed first."""
        if timeout is None:
            return self._signal.acquire()
        return self._signal.acquire(timeout=max(timeout, 0.0))


class AbstractConnectionPool:
    """Generic key-based pooling code, as in psycopg2.pool.

    ``minconn`` connections are opened at once; at most ``maxconn`` (or
    ``minconn`` if larger) are open at any time. Extra positional and keyword
    arguments are passed to :func:`psycopg2.connect`.
    """

    minconn: Any
    maxconn: Any
    closed: bool

    def __init__(self, minconn: int, maxconn: int, *args: Any, **kwargs: Any) -> None:
        self._setup(int(minconn), int(maxconn), args, kwargs)
        for _ in range(self.minconn):
            self._connect()

    def _setup(self, minconn: Any, maxconn: Any, args: Any, kwargs: dict[str, Any]) -> None:
        self.minconn = minconn
        self.maxconn = maxconn
        self.closed = False
        self._args = args
        self._kwargs = kwargs
        # The names below are psycopg2.pool's: subclasses in the wild read them.
        self._pool: list[Connection] = []  # idle; the most recently returned is last
        self._used: dict[Hashable, Connection] = {}  # key -> connection in use
        self._rused: dict[int, Hashable] = {}  # id(connection) -> key
        self._keys = 0
        # Re-entrant so that code which holds it (legacy subclasses, ``with
        # pool._lock:``) can still call the pool's methods.
        self._mutex = threading.RLock()
        # Connections counted against the limit while they are opened, rolled
        # back or closed outside the lock.
        self._pending = 0
        self._waiters: deque[Waiter] = deque()

    # -- policies: subclasses override these -----------------------------------

    def _when_empty(self, key: Hashable) -> Waiter | None:
        """Decide, under the lock, what a client gets when no connection is idle.

        Return None after reserving a slot (the client then connects outside the
        lock), return a queued :class:`Waiter`, or raise.
        """
        if len(self._used) + self._pending >= max(self.maxconn, self.minconn):
            raise PoolError("connection pool exhausted")
        self._pending += 1
        return None

    #: Keep every healthy returned connection (and let idle ones time out),
    #: rather than only up to ``minconn`` idle ones.
    _keep_all = False
    #: Restore every returned connection outside the lock, even idle ones.
    _always_settle = False

    def _restore(self, conn: Connection) -> bool:
        """Bring a returned connection back to idle, outside the lock.

        Return False if it cannot be used again.
        """
        if conn.closed:
            return False
        status = conn.get_transaction_status()
        if status == _UNKNOWN:
            return False
        if status != _IDLE:
            try:
                conn.rollback()
            except psycopg2.Error as exc:
                logger.warning("rollback of a returned connection failed: %s", exc)
                return False
        return True

    def _discarded(self, conn: Connection, broken: bool) -> None:
        """Called outside the lock after a returned connection was closed."""
        if broken:
            self._refill()

    def _closed_error(self) -> PoolError:
        return PoolError("connection pool is closed")

    def _unkeyed_error(self, conn: Any) -> PoolError:
        return PoolError("trying to put unkeyed connection")

    # -- the engine ------------------------------------------------------------

    def _connect(self, key: Hashable | None = None) -> Connection:
        """Create a new connection and assign it to ``key`` if not None."""
        conn: Connection = psycopg2.connect(*self._args, **self._kwargs)
        with self._mutex:
            if key is not None:
                self._used[key] = conn
                self._rused[id(conn)] = key
            else:
                self._pool.append(conn)
        return conn

    def _getkey(self) -> Hashable:
        """Return a new unique key."""
        return _new_key(AutoKey)

    def _getconn(self, key: Hashable | None = None, timeout: float | None = None) -> Connection:
        """Get a free connection and assign it to ``key`` if not None."""
        # acquire/release rather than ``with``: this is the hot path.
        mutex = self._mutex
        mutex.acquire()
        try:
            if self.closed:
                raise self._closed_error()
            if key is None:
                key = self._getkey()
            conn = self._used.get(key)
            if conn is not None:
                return conn
            if self._pool:
                conn = self._pool.pop()
                self._used[key] = conn
                self._rused[id(conn)] = key
                return conn
            waiter = self._when_empty(key)
        finally:
            mutex.release()
        if waiter is None:
            return self._open_for(key)
        return self._wait(waiter, timeout)

    def _open_for(self, key: Hashable) -> Connection:
        """Connect for ``key`` in a slot reserved by :meth:`_when_empty`."""
        try:
            conn = self._connect(key)
        finally:
            with self._mutex:
                self._pending -= 1
        with self._mutex:
            if not self.closed:
                return conn
            # The pool was closed while we were connecting: as if it came first.
            self._forget(key)
        conn.close()
        raise self._closed_error()

    def _wait(self, waiter: Waiter, timeout: float | None) -> Connection:
        """Sleep until ``waiter`` is served; give up after ``timeout`` seconds."""
        started = monotonic()
        try:
            served = waiter.sleep(timeout)
        except BaseException:
            # Interrupted (KeyboardInterrupt...): leave the queue, or give back
            # what arrived meanwhile, so that no connection is lost.
            with self._mutex:
                if waiter.conn is None:
                    if waiter in self._waiters:
                        self._waiters.remove(waiter)
                    raise
            self._putconn(waiter.conn, waiter.key)
            raise
        with self._mutex:
            if not served and waiter.conn is None and waiter.error is None:
                self._waiters.remove(waiter)
                waiter.error = self._timeout_error(waiter, timeout)
            self._note_wait(waiter, monotonic() - started)
        if waiter.error is not None:
            raise waiter.error
        assert waiter.conn is not None
        return waiter.conn

    def _note_wait(self, waiter: Waiter, seconds: float) -> None:
        """Called under the lock after a client waited (served or not)."""

    def _timeout_error(self, waiter: Waiter, timeout: float | None) -> PoolError:
        return PoolError("connection pool exhausted")

    def _forget(self, key: Hashable) -> Connection | None:
        """Under the lock: stop tracking the connection held by ``key``."""
        conn = self._used.pop(key, None)
        if conn is not None:
            self._rused.pop(id(conn), None)
        return conn

    def _release(self, conn: Connection) -> None:
        """Under the lock: give ``conn`` to the longest waiting client, or keep it idle."""
        if self._waiters:
            waiter = self._waiters.popleft()
            self._used[waiter.key] = conn
            self._rused[id(conn)] = waiter.key
            waiter.serve(conn)
        else:
            self._pool.append(conn)

    def _putconn(self, conn: Any = None, key: Hashable | None = None, close: bool = False) -> None:
        """Put away a connection."""
        mutex = self._mutex
        mutex.acquire()
        try:
            if self.closed:
                raise self._closed_error()
            if key is None:
                key = self._rused.get(id(conn))
                if key is None:
                    raise self._unkeyed_error(conn)
            elif conn is None:
                conn = self._used.get(key)
                if conn is None:
                    raise PoolError(f"no connection is held by key {key!r}")
            del self._used[key]
            del self._rused[id(conn)]
            if (
                not close
                and not self._always_settle
                and not conn.closed
                and conn.get_transaction_status() == _IDLE
            ):
                # The common case, decided without I/O.
                if self._waiters or self._keep_all or len(self._pool) < self.minconn:
                    if self._waiters:
                        self._release(conn)
                    else:
                        self._pool.append(conn)
                    return
                close = True
            self._pending += 1
        finally:
            mutex.release()
        self._settle(conn, close)

    def _settle(self, conn: Connection, close: bool) -> None:
        """Finish a return outside the lock: restore ``conn``, then keep or close it."""
        healthy = kept = False
        try:
            healthy = not close and self._restore(conn)
        finally:
            with self._mutex:
                self._pending -= 1
                kept = (
                    healthy
                    and not self.closed
                    and bool(self._waiters or self._keep_all or len(self._pool) < self.minconn)
                )
                if kept:
                    self._release(conn)
            if not kept:
                self._close_quietly(conn)
        if not kept:
            self._discarded(conn, broken=not close and not healthy)

    def _refill(self) -> None:
        """Open connections back up to ``minconn`` (legacy pools have no workers)."""
        while True:
            with self._mutex:
                if self.closed or self._size() >= self.minconn:
                    return
                self._pending += 1
            try:
                # Through _connect, so that subclasses configure these too.
                conn = self._connect()
            except Exception as exc:
                logger.warning("cannot refill the pool to minconn: %s", exc)
                return
            finally:
                with self._mutex:
                    self._pending -= 1
            with self._mutex:
                if not self.closed:
                    continue
                if conn in self._pool:
                    self._pool.remove(conn)
            self._close_quietly(conn)
            return

    def _size(self) -> int:
        """Under the lock: connections open or being opened."""
        return len(self._pool) + len(self._used) + self._pending

    @staticmethod
    def _close_quietly(conn: Connection) -> None:
        try:
            conn.close()
        except Exception as exc:  # closing must never fail a caller
            logger.debug("error closing a connection: %s", exc)

    def _closeall(self) -> None:
        """Close all connections, including those in use.

        Code still holding a connection will fail when it uses it next.
        """
        with self._mutex:
            if self.closed:
                raise self._closed_error()
            self.closed = True
            conns = self._pool + list(self._used.values())
            waiters = list(self._waiters)
            self._waiters.clear()
        for waiter in waiters:
            waiter.fail(self._closed_error())
        for conn in conns:
            self._close_quietly(conn)
