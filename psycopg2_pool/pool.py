"""ConnectionPool: psycopg_pool 3.3's pool for threads, and psycopg2-pool 1.2's, on the engine.

Clients wait in line and are served first come, first served, blocking on a
lock of their own; background worker threads open connections, replace
broken or expired ones and close the ones that stayed idle too long (see
:mod:`.base` and the layers under it). Called with psycopg2-pool 1.2's
arguments, ``ConnectionPool(...)`` makes a
:class:`~psycopg2_pool.ThreadSafeConnectionPool` instead.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable
from contextlib import suppress
from functools import partial
from time import monotonic
from types import TracebackType
from typing import Any, TypeVar

import psycopg2
from psycopg2 import extensions as _ext

from . import stats as S
from .base import BasePool
from .core import ConnectionCB, ConninfoParam, KwargsParam, ensure_idle
from .decisions import Connection
from .engine import FOREVER, Waiter
from .errors import PoolError, PoolTimeout
from .pool12 import ThreadSafeConnectionPool, spelled_v12
from .roles import READ_ONLY_SQL_TRANSACTION
from .workers import Retry
from .wrapper import PooledConnection, end_block, lend

__all__ = ["ConnectionPool"]

logger = logging.getLogger("psycopg2_pool")

_P = TypeVar("_P", bound="ConnectionPool")

_IDLE = _ext.TRANSACTION_STATUS_IDLE
_QUEUED = S.REQUESTS_QUEUED


class _ConnectionContext:
    """What ``pool.connection()`` returns: checks out on enter, gives back on exit."""

    __slots__ = ("handle", "pool", "started", "timeout")

    pool: ConnectionPool
    timeout: float | None

    def __enter__(self) -> PooledConnection:
        self.handle = self.pool.getconn(self.timeout)
        self.started = monotonic()
        return self.handle

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # PooledConnection.__exit__, without going through the handle: the
        # pool's own map finds the connection for less than wrapt would.
        pool = self.pool
        try:
            conn = pool._used.get(self.handle)
            if conn is None:
                return  # given back inside the block already
            if (
                exc_type is not None
                and pool._roles
                and getattr(exc, "pgcode", None) == READ_ONLY_SQL_TRANSACTION
            ):
                pool._read_only_error(conn)
            end_block(pool, self.handle, conn, exc_type is None)
        finally:
            # Approximate under concurrency, as in psycopg_pool: no lock for a duration sum.
            pool._usage_seconds += monotonic() - self.started


# A context is made on every ``with pool.connection()``: without an __init__
# frame, filled in by connection() itself.
_new_context = object.__new__


class ConnectionPool(BasePool):
    """A psycopg_pool-style pool of psycopg2 connections.

    ``with pool.connection() as conn:`` checks a connection out, commits (or
    rolls back) at the end of the block and gives it back. Clients that find
    no connection wait in line for up to ``timeout`` seconds while background
    workers open more, up to ``max_size``. Called with psycopg2-pool 1.2's
    keywords (``minconn``, ``maxconn``, ``idle_timeout``) it behaves as that
    package did: see :class:`ThreadSafeConnectionPool`.
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        if cls is ConnectionPool and spelled_v12(args, kwargs, _FACADE_KEYWORDS):
            # Built whole here: not being a ConnectionPool, it gets no __init__ call.
            return ThreadSafeConnectionPool(*args, **kwargs)
        return super().__new__(cls)

    def __init__(
        self,
        conninfo: ConninfoParam = "",
        *,
        connection_class: type[Connection] = Connection,
        kwargs: KwargsParam | None = None,
        min_size: int = 4,
        max_size: int | None = None,
        open: bool | None = None,
        configure: ConnectionCB | None = None,
        check: ConnectionCB | None = None,
        reset: ConnectionCB | None = None,
        name: str | None = None,
        close_returns: bool = False,
        timeout: float = 30.0,
        max_waiting: int = 0,
        max_lifetime: float = 60 * 60.0,
        max_idle: float = 10 * 60.0,
        reconnect_timeout: float = 5 * 60.0,
        reconnect_failed: Callable[[ConnectionPool], None] | None = None,
        num_workers: int = 3,
        leak_timeout: float | None = None,
        **connect_kwargs: Any,
    ) -> None:
        super().__init__(
            conninfo,
            connection_class=connection_class,
            kwargs=kwargs,
            min_size=min_size,
            max_size=max_size,
            configure=configure,
            check=check,
            reset=reset,
            name=name,
            close_returns=close_returns,
            timeout=timeout,
            max_waiting=max_waiting,
            max_lifetime=max_lifetime,
            max_idle=max_idle,
            reconnect_timeout=reconnect_timeout,
            reconnect_failed=reconnect_failed,
            num_workers=num_workers,
            leak_timeout=leak_timeout,
            connect_kwargs=connect_kwargs,
        )
        if open is None:
            open = self._open_implicit = True
            self._update_plain_checkout()
        if open:
            self._open()

    def _make_handle_class(self) -> type[PooledConnection]:
        return PooledConnection.for_pool(self)

    def open(self, wait: bool = False, timeout: float = 30.0) -> None:
        """Open the pool: start the workers that fill it to ``min_size``.

        Opening an open pool does nothing; a closed pool cannot be opened again.
        With ``wait``, block until ``min_size`` connections are ready (see :meth:`wait`).
        """
        self._open()
        if wait:
            self.wait(timeout)

    def wait(self, timeout: float = 30.0) -> None:
        """Block until the pool holds ``min_size`` connections.

        On timeout close the pool and raise :class:`PoolTimeout`: use it at start
        to fail fast when the database is unreachable.
        """
        with self._mutex:
            if self.closed:
                raise self._closed_error()
        logger.info("waiting for pool %r initialization", self.name)
        with self._filled:
            ready = self._filled.wait_for(
                lambda: self.closed or len(self._pool) >= self.minconn, timeout
            )
            closed = self.closed
        if closed:
            raise self._closed_error()
        if not ready:
            self.close()
            raise PoolTimeout(f"pool {self.name!r} initialization incomplete after {timeout} sec")
        logger.info("pool %r is ready to use", self.name)

    def __enter__(self: _P) -> _P:
        self._open_implicit = False
        self._update_plain_checkout()
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def connection(self, timeout: float | None = None) -> _ConnectionContext:
        """Context manager: a connection for the ``with`` block.

        Wait up to ``timeout`` (default: the pool's) for one. At the end of the
        block commit, or roll back if it raised, and give the connection back.
        """
        context: _ConnectionContext = _new_context(_ConnectionContext)
        context.pool = self
        context.timeout = timeout
        return context

    def getconn(self, timeout: float | None = None) -> PooledConnection:
        """Check a connection out; wait up to ``timeout`` seconds for one.

        Give it back with :meth:`putconn` (or use it as a context manager):
        a connection never given back is lost to the pool.
        """
        if timeout is None:
            timeout = self.timeout
        handle: PooledConnection | None = None
        waiter: Waiter | None = None
        called = 0.0  # when a client that waits called: its deadline runs from there
        # Interrupted anywhere (Ctrl-C lands after any call), the checkout gives
        # back what it got: "with" takes the lock with no gap before its block,
        # and whatever it took is in ``handle`` or ``waiter`` (or, taken by the
        # engine for a handle still empty, found by the dropped-handle scan).
        try:
            # The engine's two common paths, inlined: a call less on each checkout
            # is measurable. Whatever else can happen (the pool is closed, growing,
            # limited in waiters...) goes the engine's way further down. Looking
            # before the lock is only a hint: it is checked again under the lock.
            if self._pool:
                mutex = self._mutex
                try:  # the lock as in the engine's _getconn
                    mutex.acquire()
                    if self._pool and not self.closed:
                        # An idle connection: the handle can wrap it as it is made,
                        # which costs wrapt a third less than setting __wrapped__ after.
                        idle = self._pool
                        conn = idle.pop()
                        if len(idle) < self._idle_low:
                            self._idle_low = len(idle)  # see _shrink
                        cid = id(conn)
                        if self._wrap_at_birth:
                            handle = self._handle_class(conn)
                        else:
                            handle = self._new_handle(self._handle_class)
                            handle.__wrapped__ = conn
                        self._used[handle] = conn
                        self._rused[cid] = handle
                        self._requests += 1
                finally:
                    try:  # noqa: SIM105 - suppress() would be a call with the lock held
                        mutex.release()
                    except RuntimeError:
                        pass
            elif self._waiters and self._queue_when_full:
                mutex = self._mutex
                try:
                    mutex.acquire()
                    if (
                        self._waiters
                        and not self._pool
                        and not self.closed
                        and len(self._used) + self._pending >= self.maxconn
                        and timeout > 0
                        and not self.max_waiting
                    ):
                        # Full and others in line already: whoever came first
                        # decided on growth and dropped handles; just queue.
                        self._requests += 1
                        waiter = Waiter(self._new_handle(self._handle_class))
                        self._waiters[waiter] = None
                        self._stats[_QUEUED] += 1
                finally:
                    try:  # noqa: SIM105 - suppress() would be a call with the lock held
                        mutex.release()
                    except RuntimeError:
                        pass
            if waiter is not None:
                called = waiter.since
                # The engine's _wait, inlined for the same reason.
                served = waiter._signal.acquire(True, timeout if timeout < FOREVER else -1)
                got = waiter.conn
                conn = got if served and got is not None else self._outcome(waiter, served, timeout)
            elif handle is None:
                called = monotonic()
                conn = self._getconn(None, timeout)
            if handle is None:
                # Served by whoever gave a connection back: the key it was given to
                # is this client's (still empty) handle.
                waited: Any = waiter.key if waiter is not None else self._rused[id(conn)]
                waited.__wrapped__ = conn
                handle = waited
            if self._plain_checkout and conn.get_transaction_status() == _IDLE:
                return handle
            return self._prepare(conn, handle, timeout, called)
        except BaseException:
            self._checkout_failed(handle, waiter)
            raise

    def _checkout_failed(self, handle: PooledConnection | None, waiter: Waiter | None) -> None:
        """A checkout raised (or was interrupted) before the client got its
        handle: give back what it had got, if anything."""
        if waiter is not None:
            self._abandon(waiter)
        elif handle is not None and handle in self._used:
            with suppress(PoolError):
                self.putconn(handle)

    def _prepare(
        self, conn: Connection, handle: PooledConnection, timeout: float, called: float
    ) -> PooledConnection:
        """The checkout steps only some pools need: warning, check, leak tracking.

        They run in what is left of the client's ``timeout`` since it ``called``
        (0.0 if it was served without waiting).
        """
        if self._open_implicit:
            self._warn_implicit_open()
        deadline = (called or monotonic()) + timeout
        first = conn
        conn = self._cleaned(conn, deadline, timeout)
        if self._suspect_before:
            conn = self._trusted(conn, deadline, timeout)
        if self._roles:
            conn = self._in_role(conn, deadline, timeout)
        if self._check is not None:
            conn = self._checked(conn, deadline, timeout)
        if conn is not first:
            # A replacement: its handle is the empty key the engine made for it.
            replacement: Any = self._rused[id(conn)]
            replacement.__wrapped__ = conn
            handle = replacement
        if self.leak_timeout is not None:
            slot = self._slots.get(id(conn))
            if slot is not None:
                slot.checked_out(monotonic(), traceback.format_stack()[:-2])
        return handle

    def _checked(self, conn: Connection, deadline: float, timeout: float) -> Connection:
        """Run the ``check`` callback; try another connection while it fails.

        Each check is bounded by what is left of the client's timeout: a server
        that stops answering makes the check fail, not hang. A connection that
        fails goes back to the pool (see :meth:`_failed_check`); the client
        tries the next one at once, then backs off (1 s, 2 s, 4 s... until its
        deadline), as psycopg_pool does, so that a check that keeps failing
        never turns into a loop of checkouts, or of new connections.
        """
        check = self._check
        assert check is not None
        retry = Retry(deadline)
        while True:
            left = deadline - monotonic()
            if left <= 0:
                # No time left to check it: the connection goes back unused.
                self._failed_check(conn, timed_out=False)
                with self._mutex:
                    raise self._timeout_error(None, timeout)
            try:
                self._bounded(partial(lend, check, conn), conn, left)
                ensure_idle(conn, "check", check)
            except Exception as exc:
                logger.info("connection failed check: %s", self._masked(exc))
                self._failed_check(conn, timed_out=isinstance(exc, TimeoutError))
            except BaseException:
                # Interrupted (KeyboardInterrupt...): keep the connection, stop trying.
                self._failed_check(conn, timed_out=False)
                raise
            else:
                return conn
            delay = retry.next_delay()
            if delay is None:
                with self._mutex:
                    raise self._timeout_error(None, timeout)
            if delay:
                with self._filled:  # woken early if the pool closes
                    self._filled.wait_for(lambda: self.closed, delay)
            conn = self._cleaned(self._next_candidate(deadline, timeout), deadline, timeout)
            if self._suspect_before:
                conn = self._trusted(conn, deadline, timeout)
            if self._roles:
                conn = self._in_role(conn, deadline, timeout)

    def _failed_check(self, conn: Connection, timed_out: bool) -> None:
        """Take back a connection that failed the check at checkout.

        Broken (or timed out: the watchdog broke it), it is discarded and
        replaced, and counted lost. Otherwise it is restored (rolled back,
        ``reset``) and kept, but handed out last: the check may have failed
        for this connection alone.
        """
        if self._discarded_at_check(conn, timed_out):
            return
        # Counted while it is restored; the finally clause takes the count
        # back whatever interrupts the client (see engine._putconn).
        restoring = healthy = False
        try:
            with self._mutex:
                self._forget_connection(conn)
                self._pending += 1
                restoring = True
            healthy = self._restore(conn)
        finally:
            if restoring:
                self._file_failed(conn, healthy)

    def check(self) -> None:
        """Check the idle connections now; replace those that fail.

        A pool below ``min_size`` (its reconnection attempts gave up, say)
        starts growing back to it.
        """
        with self._mutex:
            conns = list(self._pool)
            self._pool.clear()
            self._pending += len(conns)
            self._grow_to_min_size()
        now = monotonic()
        for conn in conns:
            life = self._slots.get(id(conn))
            ok = life is not None and life.expires > now
            if ok:
                try:
                    self._bounded(partial(self.check_connection, conn), conn, self.timeout)
                except Exception as exc:
                    ok = False
                    logger.warning("discarding broken connection: %s", self._masked(exc))
                    with self._mutex:
                        self._stats[S.CONNECTIONS_LOST] += 1
            with self._mutex:
                self._pending -= 1
                if ok and not self.closed:
                    self._release(conn)
                    continue
            self._drop(conn)
            self._replace()

    @staticmethod
    def check_connection(conn: Any) -> None:
        """Raise if ``conn`` does not answer a trivial query; use it as ``check=``."""
        conn = getattr(conn, "__wrapped__", conn)
        if conn.closed:
            raise psycopg2.OperationalError("the connection is closed")
        autocommit = conn.autocommit
        if not autocommit:
            conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT 1")
        finally:
            if not autocommit and not conn.closed:
                conn.autocommit = False

    # The shared return itself, not a method that calls it: a call less on the
    # hot path. Its docstring is this method's.
    putconn = BasePool._take_back

    def close(self, timeout: float = 5.0) -> None:
        """Close the pool: waiting and new clients get :class:`PoolClosed`.

        Idle connections are closed now; connections in use are closed when
        they are given back. Wait up to ``timeout`` seconds for the workers.
        """
        self._shut(timeout)

    def drain(self) -> None:
        """Replace every connection: idle ones now, the others when given back."""
        self._drain()

    def resize(self, min_size: int, max_size: int | None = None) -> None:
        """Change ``min_size`` and ``max_size`` while the pool runs."""
        self._resize(min_size, max_size)


_FACADE_KEYWORDS = frozenset(
    name
    for name in ConnectionPool.__init__.__code__.co_varnames[
        1 : ConnectionPool.__init__.__code__.co_argcount
        + ConnectionPool.__init__.__code__.co_kwonlyargcount
    ]
)
