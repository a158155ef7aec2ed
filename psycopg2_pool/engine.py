"""The key-based engine that every pool of the package runs on, for threads.

:class:`AbstractConnectionPool` is psycopg2.pool's: it drives the
:mod:`.decisions` with one lock, and carries them out: it connects, puts a
client to sleep on a lock of its own (:class:`Waiter`) until it is served,
restores and closes connections outside the lock. Subclasses pick the
policies: what to do when no connection is free, and which to keep.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Hashable
from time import monotonic
from typing import Any

import psycopg2
from psycopg2 import extensions as _ext

from . import _fork
from ._masking import scrubbed, secrets_in
from .decisions import Connection, Decisions
from .errors import PoolError

__all__ = ["FOREVER", "AbstractConnectionPool", "Waiter"]

logger = logging.getLogger("psycopg2_pool")

_IDLE = _ext.TRANSACTION_STATUS_IDLE
_UNKNOWN = _ext.TRANSACTION_STATUS_UNKNOWN
# psycopg2's own view: after PREPARE TRANSACTION libpq says idle but psycopg2
# still thinks a transaction is open (and would not send BEGIN for the next).
_READY = _ext.STATUS_READY

#: Longer than any lock can be told to wait: a timeout this long waits for good.
FOREVER = threading.TIMEOUT_MAX


class Waiter:
    """A client's request for a connection, when none was idle.

    Either the client connects itself in a slot it reserved (``reserved``:
    it holds one count of the pool's ``_pending``), or it waits in line: the
    pool hands a connection over (or an error) under its lock, and the client
    sleeps on a per-client lock outside it. The request is the one record of
    what the pool owes the client, so a client interrupted anywhere (Ctrl-C)
    can give back exactly that (:meth:`AbstractConnectionPool._abandon`).
    """

    __slots__ = ("_signal", "conn", "error", "key", "reserved", "since", "wake")

    def __init__(self, key: Hashable) -> None:
        self.key = key
        self.conn: Connection | None = None
        self.error: BaseException | None = None
        self.reserved = False
        self.since = monotonic()
        self._signal = threading.Lock()
        self._signal.acquire()
        #: Wake the client; a C method, so no interrupt can land inside it.
        self.wake: Callable[[], Any] = self._signal.release

    def serve(self, conn: Connection) -> None:
        self.conn = conn
        self.wake()

    def fail(self, error: BaseException) -> None:
        self.error = error
        self._signal.release()

    def sleep(self, timeout: float | None) -> bool:
        """Wait to be served or failed; False if the timeout passed first."""
        if timeout is None or timeout >= FOREVER:
            return self._signal.acquire()
        return self._signal.acquire(True, max(timeout, 0.0))


class AbstractConnectionPool(Decisions):
    """Generic key-based pooling code, as in psycopg2.pool.

    ``minconn`` connections are opened at once; at most ``maxconn`` (or
    ``minconn`` if larger) are open at any time. Extra positional and keyword
    arguments are passed to :func:`psycopg2.connect`.
    """

    def __init__(self, minconn: int, maxconn: int, *args: Any, **kwargs: Any) -> None:
        self._setup(int(minconn), int(maxconn), args, kwargs)
        for _ in range(self.minconn):
            self._connect()

    def _setup(self, minconn: Any, maxconn: Any, args: Any, kwargs: dict[str, Any]) -> None:
        self._init_state(minconn, maxconn)
        self._args = args
        self._kwargs = kwargs
        # Re-entrant so that code which holds it (legacy subclasses, ``with
        # pool._lock:``) can still call the pool's methods.
        self._mutex = threading.RLock()
        _fork.track(self)

    # -- policies: subclasses override these -----------------------------------

    def _when_empty(self, request: Waiter) -> None:
        """Decide, under the lock, what a client gets when no connection is idle.

        Reserve a slot (:meth:`_reserve`: the client then connects outside
        the lock), put ``request`` in line (:attr:`_waiters`), or raise.
        """
        if len(self._used) + self._pending >= max(self.maxconn, self.minconn):
            orphans = self._take_orphans()
            if not orphans:
                raise PoolError("connection pool exhausted")
            for conn in orphans:
                # Closing sends one Terminate message and waits for nothing.
                self._close_quietly(conn)
        self._reserve(request)

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

    # -- the engine ------------------------------------------------------------

    def _connect(self, key: Hashable | None = None) -> Connection:
        """Create a new connection and assign it to ``key`` if not None."""
        conn = self._new_connection()
        with self._mutex:
            if key is not None:
                self._used[key] = conn
                self._rused[id(conn)] = key
            else:
                self._release(conn)
        return conn

    def _new_connection(self, connect_timeout: float | None = None) -> Connection:
        """Open a connection with the pool's connect() arguments; nothing in the
        pool knows of it yet. (The psycopg_pool-style pools bound the attempt
        by ``connect_timeout``; psycopg2.pool never did.)"""
        try:
            conn: Connection = psycopg2.connect(*self._args, **self._kwargs)
        except psycopg2.Error as exc:
            raise scrubbed(exc, secrets_in((*self._args, self._kwargs))) from None
        return conn

    def _getconn(self, key: Hashable | None = None, timeout: float | None = None) -> Connection:
        """Get a free connection and assign it to ``key`` if not None."""
        # Whatever interrupts a client (Ctrl-C lands after any call) once the
        # pool made it a request, _abandon() undoes; the request records what
        # the pool owes the client.
        request: Waiter | None = None
        mutex = self._mutex
        try:
            # acquire() inside the try, release() in the finally clause, with no
            # call in between where an interrupt could land on a held lock
            # ("with" would do, at twice the cost of this pair).
            try:
                mutex.acquire()
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
                request = self._new_waiter(key)
                self._when_empty(request)
            finally:
                try:  # noqa: SIM105 - suppress() would be a call with the lock held
                    mutex.release()
                except RuntimeError:  # acquire() itself was interrupted: not held
                    pass
            if request.reserved:
                return self._open_for(request, timeout)
            return self._wait(request, timeout)
        except BaseException:
            if request is not None:
                self._abandon(request)
            raise

    def _new_waiter(self, key: Hashable) -> Waiter:
        """A client's request (the async pools' can be awaited)."""
        return Waiter(key)

    def _open_for(self, request: Waiter, timeout: float | None = None) -> Connection:
        """Connect for ``request`` in the slot it reserved (:meth:`_when_empty`).

        ``timeout`` is the client's; here it is not enforced (no legacy pool
        has one): pools whose clients connect themselves bound the attempt.
        """
        key = request.key
        try:
            conn = self._connect(key)
        finally:
            with self._mutex:
                self._unreserve(request)
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

    def _abandon(self, request: Waiter) -> None:
        """A client interrupted (KeyboardInterrupt...) or failing before it got
        its connection: give back what the pool owes it, once.

        The slot it reserved, its place in line, or the connection that came
        meanwhile (unless the checkout took it elsewhere already).
        """
        with self._mutex:
            self._unreserve(request)
            conn = request.conn
            if conn is None:
                self._waiters.pop(request, None)
                return
            request.conn = None
            if self._used.get(request.key) is not conn:
                return
        try:
            self._putconn(conn, request.key)
        except PoolError:  # closed meanwhile: the connection goes with the pool
            self._close_quietly(conn)

    def _outcome(self, waiter: Waiter, served: bool, timeout: float | None) -> Connection:
        """The connection a client woke up with, or the error it must raise."""
        if not served:
            # Served (or failed) just as the time ran out? Only the lock can tell.
            # A client served in time needs no lock: the server noted its wait.
            with self._mutex:
                if waiter.conn is None and waiter.error is None:
                    # Not in line any more if whoever took it out to serve it
                    # was interrupted before it could.
                    self._waiters.pop(waiter, None)
                    waiter.error = self._timeout_error(waiter, timeout)
                    self._note_wait(waiter, monotonic() - waiter.since)
        if waiter.error is not None:
            raise waiter.error
        assert waiter.conn is not None
        return waiter.conn

    def _putconn(self, conn: Any = None, key: Hashable | None = None, close: bool = False) -> None:
        """Put away a connection."""
        # The count of a connection being restored must not outlive an interrupt
        # (Ctrl-C lands after any call): ``restoring`` is set with it, and the
        # finally clause takes it back.
        restoring = False
        mutex = self._mutex
        try:
            try:
                mutex.acquire()
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
                cid = id(conn)
                del self._used[key]
                del self._rused[cid]
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
                healthy = kept = False
                self._pending += 1
                restoring = True
            finally:
                try:  # noqa: SIM105 - suppress() would be a call with the lock held
                    mutex.release()
                except RuntimeError:
                    pass
            healthy = not close and self._restore(conn)
        finally:
            if restoring:
                with self._mutex:
                    self._pending -= 1
                    kept = self._keep_restored(conn, healthy)
        if not kept:
            self._close_quietly(conn)
            self._discarded(conn, broken=not close and not healthy)

    def _settle(self, conn: Connection, close: bool) -> None:
        """Finish a return outside the lock: restore ``conn``, then keep or close it.

        The caller counted ``conn`` in ``_pending`` under the lock.
        """
        healthy = kept = False
        try:
            healthy = not close and self._restore(conn)
        finally:
            with self._mutex:
                self._pending -= 1
                kept = self._keep_restored(conn, healthy)
        if not kept:
            self._close_quietly(conn)
            self._discarded(conn, broken=not close and not healthy)

    def _refill(self) -> None:
        """Open connections back up to ``minconn`` (legacy pools have no workers)."""
        while True:
            counted = False
            try:
                with self._mutex:
                    if self.closed or self._size() >= self.minconn:
                        return
                    self._pending += 1
                    counted = True
                # Through _connect, so that subclasses configure these too.
                conn = self._connect()
            except Exception as exc:
                logger.warning("cannot refill the pool to minconn: %s", exc)
                return
            finally:
                if counted:
                    with self._mutex:
                        self._pending -= 1
            with self._mutex:
                if not self.closed:
                    continue
                if conn in self._pool:
                    self._pool.remove(conn)
            self._close_quietly(conn)
            return

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
