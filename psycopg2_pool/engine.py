"""The key-based engine that every pool of the package runs on.

It owns the idle connections, the connections in use by key, the size limit
and the hand-over of returned connections to waiting clients. Subclasses pick
the policies: what to do when no connection is free, and which to keep.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections import deque
from collections.abc import Hashable, MutableSequence
from time import monotonic
from typing import Any, NoReturn

import psycopg2
from psycopg2 import extensions as _ext

from . import _fork
from ._masking import scrubbed, secrets_in
from .errors import PoolError

logger = logging.getLogger("psycopg2_pool")

Connection = _ext.connection

_IDLE = _ext.TRANSACTION_STATUS_IDLE
_UNKNOWN = _ext.TRANSACTION_STATUS_UNKNOWN
# psycopg2's own view: after PREPARE TRANSACTION libpq says idle but psycopg2
# still thinks a transaction is open (and would not send BEGIN for the next).
_READY = _ext.STATUS_READY
_STATUS_NAMES = {
    _ext.TRANSACTION_STATUS_IDLE: "IDLE",
    _ext.TRANSACTION_STATUS_ACTIVE: "ACTIVE",
    _ext.TRANSACTION_STATUS_INTRANS: "INTRANS",
    _ext.TRANSACTION_STATUS_INERROR: "INERROR",
    _ext.TRANSACTION_STATUS_UNKNOWN: "UNKNOWN",
}


def status_name(status: int) -> str:
    """libpq's name for a transaction status, for messages."""
    return _STATUS_NAMES.get(status, str(status))


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

#: Longer than any lock can be told to wait: a timeout this long waits for good.
FOREVER = threading.TIMEOUT_MAX


class Waiter:
    """A client's place in the queue for a connection.

    The pool hands a connection over (or an error) under its lock; the client
    sleeps on a per-client lock outside it.
    """

    __slots__ = ("_signal", "conn", "error", "key", "since")

    def __init__(self, key: Hashable) -> None:
        self.key = key
        self.conn: Connection | None = None
        self.error: BaseException | None = None
        self.since = monotonic()
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
        if timeout is None or timeout >= FOREVER:
            return self._signal.acquire()
        return self._signal.acquire(True, max(timeout, 0.0))


class AbstractConnectionPool:
    """Generic key-based pooling code, as in psycopg2.pool.

    ``minconn`` connections are opened at once; at most ``maxconn`` (or
    ``minconn`` if larger) are open at any time. Extra positional and keyword
    arguments are passed to :func:`psycopg2.connect`.
    """

    minconn: Any
    maxconn: Any
    closed: bool

    #: ``_getkey()`` always returns a key not in use, so a new key needs no
    #: lookup. A subclass that overrides ``_getkey`` (some reuse keys, e.g.
    #: thread ids) loses this unless it says so itself.
    _fresh_keys = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "_getkey" in cls.__dict__ and "_fresh_keys" not in cls.__dict__:
            cls._fresh_keys = False

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
        # Idle connections: clients take the last one (pop()). Returned ones are
        # appended, so the most recently returned goes out first; the
        # psycopg_pool-style pools put them in at the other end instead.
        self._pool: MutableSequence[Connection] = []
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
        _fork.track(self)

    # -- policies: subclasses override these -----------------------------------

    def _when_empty(self, key: Hashable) -> Waiter | None:
        """Decide, under the lock, what a client gets when no connection is idle.

        Return None after reserving a slot (the client then connects outside the
        lock), return a queued :class:`Waiter`, or raise.
        """
        if len(self._used) + self._pending >= max(self.maxconn, self.minconn):
            orphans = self._take_orphans()
            if not orphans:
                raise PoolError("connection pool exhausted")
            for conn in orphans:
                # Closing sends one Terminate message and waits for nothing.
                self._close_quietly(conn)
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
        if status != _IDLE or conn.status != _READY:
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

    def _refuse(self) -> NoReturn:
        """Under the lock: turn a client of a closed pool away."""
        raise self._closed_error()

    def _unkeyed_error(self, conn: Any) -> PoolError:
        return PoolError("trying to put unkeyed connection")

    # -- the engine ------------------------------------------------------------

    def _connect(self, key: Hashable | None = None) -> Connection:
        """Create a new connection and assign it to ``key`` if not None."""
        try:
            conn: Connection = psycopg2.connect(*self._args, **self._kwargs)
        except psycopg2.Error as exc:
            raise scrubbed(exc, secrets_in((*self._args, self._kwargs))) from None
        with self._mutex:
            if key is not None:
                self._used[key] = conn
                self._rused[id(conn)] = key
            else:
                self._release(conn)
        return conn

    def _getkey(self) -> Hashable:
        """Return a new unique key.

        Called under the lock for each request without a key, just before the
        client takes an idle connection (if there is one).
        """
        return _new_key(AutoKey)

    def _getconn(self, key: Hashable | None = None, timeout: float | None = None) -> Connection:
        """Get a free connection and assign it to ``key`` if not None."""
        # acquire/release rather than ``with``: this is the hot path.
        mutex = self._mutex
        mutex.acquire()
        try:
            if self.closed:
                self._refuse()
            if key is None:
                key = self._getkey()
                if not self._fresh_keys and key in self._used:
                    return self._used[key]
            elif key in self._used:
                return self._used[key]
            if self._pool:
                conn = self._pool.pop()
                self._used[key] = conn
                self._rused[id(conn)] = key
                return conn
            waiter = self._when_empty(key)
        finally:
            mutex.release()
        if waiter is None:
            return self._open_for(key, timeout)
        return self._wait(waiter, timeout)

    def _open_for(self, key: Hashable, timeout: float | None = None) -> Connection:
        """Connect for ``key`` in a slot reserved by :meth:`_when_empty`.

        ``timeout`` is the client's; here it is not enforced (no legacy pool
        has one): pools whose clients connect themselves bound the attempt.
        """
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
        try:
            served = waiter.sleep(timeout)
        except BaseException:
            self._abandon(waiter)
            raise
        return self._outcome(waiter, served, timeout)

    def _abandon(self, waiter: Waiter) -> None:
        """An interrupted client (KeyboardInterrupt...) leaves the queue, or gives
        back what arrived meanwhile, so that no connection is lost."""
        with self._mutex:
            if waiter.conn is None:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
                return
        self._putconn(waiter.conn, waiter.key)

    def _outcome(self, waiter: Waiter, served: bool, timeout: float | None) -> Connection:
        """The connection a client woke up with, or the error it must raise."""
        if not served:
            # Served (or failed) just as the time ran out? Only the lock can tell.
            # A client served in time needs no lock: the server noted its wait.
            with self._mutex:
                if waiter.conn is None and waiter.error is None:
                    self._waiters.remove(waiter)
                    waiter.error = self._timeout_error(waiter, timeout)
                    self._note_wait(waiter, monotonic() - waiter.since)
        if waiter.error is not None:
            raise waiter.error
        assert waiter.conn is not None
        return waiter.conn

    def _note_wait(self, waiter: Waiter, seconds: float) -> None:
        """Called under the lock when a waiting client is served or gives up."""

    def _timeout_error(self, waiter: Waiter | None, timeout: float | None) -> PoolError:
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
            self._note_wait(waiter, monotonic() - waiter.since)
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
                and conn.status == _READY
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

    def _take_orphans(self) -> list[Connection]:
        """Under the lock: take back connections their holder can no longer return.

        A connection checked out under an automatic key that nothing outside the
        pool references any more (its holder dropped it, or its thread died) is
        lost to everyone: forget it and return it to the caller.
        """
        keys = unreferenced_keys(self._used, on_key=False)
        if keys:
            logger.warning("reclaiming %d connections dropped without being returned", len(keys))
        return [conn for key in keys if (conn := self._forget(key)) is not None]

    def _after_fork(self) -> None:
        """In a forked child: forget the parent's connections without closing them."""
        for conn in [*self._pool, *self._used.values()]:
            _fork.disarm(conn)
        old = self._mutex
        self._mutex = threading.RLock()  # another thread may have held it at the fork
        if getattr(self, "_lock", None) is old:
            self._lock = self._mutex
        self._pool.clear()
        self._used.clear()
        self._rused.clear()
        self._waiters.clear()
        self._pending = 0

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
            conns = [*self._pool, *self._used.values()]
            # Under the lock, so that a waiter timing out now finds the error.
            for waiter in self._waiters:
                waiter.fail(self._closed_error())
            self._waiters.clear()
        for conn in conns:
            self._close_quietly(conn)


def unreferenced_keys(used: dict[Hashable, Any], *, on_key: bool) -> list[Hashable]:
    """The keys of ``used`` whose key (or connection) nothing else references.

    Only automatic keys count for connections: a caller's own key can fetch its
    connection again at any time. The number of references the pool itself
    holds is measured on a probe built the same way, so no interpreter detail
    is hard-coded here.
    """
    probe_used: dict[Hashable, Any] = {AutoKey(): object()}
    # The facade's id(conn) -> key map holds each key once more.
    probe_rused = {0: next(iter(probe_used))}
    baseline = _reference_counts(probe_used, on_key)[0][1]
    probe_rused.clear()
    return [key for key, refs in _reference_counts(used, on_key) if refs <= baseline]


def _reference_counts(used: dict[Hashable, Any], on_key: bool) -> list[tuple[Hashable, int]]:
    counts = []
    for key, conn in used.items():
        if on_key:
            counts.append((key, sys.getrefcount(key)))
        elif type(key) is AutoKey:
            counts.append((key, sys.getrefcount(conn)))
    return counts
