"""ConnectionPool: psycopg_pool 3.3's pool, and psycopg2-pool 1.2's, on the engine.

Clients wait in line and are served first come, first served; background
workers open connections, replace broken or expired ones and close the ones
that stayed idle too long.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import random
import threading
import traceback
import warnings
from collections import Counter, deque
from collections.abc import Callable, Hashable
from contextlib import suppress
from functools import partial
from time import monotonic
from types import TracebackType
from typing import Any, NoReturn, TypeVar, Union, cast

import psycopg2
from psycopg2 import extensions as _ext

from . import stats as S
from ._connect_options import split_options
from ._masking import mask_text, scrubbed, secrets_in
from ._watchdog import readable_fds, run_bounded, socket_alive
from .engine import (
    FOREVER,
    AbstractConnectionPool,
    Connection,
    Waiter,
    held_only_by,
    status_name,
    unreferenced_keys,
)
from .errors import (
    ConnectionReturned,
    NotFromThisPool,
    PoolClosed,
    PoolError,
    PoolTimeout,
    TooManyRequests,
)
from .pool12 import ThreadSafeConnectionPool, spelled_v12
from .workers import Backoff, Retry, WeakCall, Workers
from .wrapper import RETURNED, PooledConnection, end_block, lend

__all__ = ["ConnectionPool"]

logger = logging.getLogger("psycopg2_pool")

ConnectionCB = Callable[[Any], None]
ConninfoParam = Union[str, Callable[[], str]]
KwargsParam = Union[dict[str, Any], Callable[[], dict[str, Any]]]
_P = TypeVar("_P", bound="ConnectionPool")

_IDLE = _ext.TRANSACTION_STATUS_IDLE
_UNKNOWN = _ext.TRANSACTION_STATUS_UNKNOWN
_QUEUED = S.REQUESTS_QUEUED
_READY = _ext.STATUS_READY
_names = itertools.count(1)


class _Life:
    """What the pool remembers about one of its connections."""

    __slots__ = ("expires", "given_back_raw", "idle_since", "off_role", "server", "verified")

    def __init__(self, expires: float, now: float) -> None:
        self.expires = expires
        self.idle_since = now
        self.verified = now  # last known to work: made, or probed, then
        # putconn() took it back by the real connection once: never again.
        self.given_back_raw = False
        #: For a connection made with a target_session_attrs: tells, from the
        #: parameters the server reports, that it no longer has the role asked.
        self.off_role: Callable[[Connection], bool] | None = None
        self.server: tuple[str, int] | None = None  # (host, port) it is on


# The roles libpq picks a server by (target_session_attrs), told again from
# what PostgreSQL 14+ reports to the client when it changes: in_hot_standby and
# default_transaction_read_only. A C call each, no round trip. An older server
# reports neither (None): nothing is concluded then.
def _writable_no_more(conn: Connection) -> bool:
    status = conn.get_parameter_status
    return status("default_transaction_read_only") == "on" or status("in_hot_standby") == "on"


def _primary_no_more(conn: Connection) -> bool:
    return conn.get_parameter_status("in_hot_standby") == "on"


def _standby_no_more(conn: Connection) -> bool:
    return conn.get_parameter_status("in_hot_standby") == "off"


def _read_only_no_more(conn: Connection) -> bool:
    status = conn.get_parameter_status
    return status("default_transaction_read_only") == "off" and status("in_hot_standby") == "off"


_ROLE_TESTS: dict[str, Callable[[Connection], bool]] = {
    "read-write": _writable_no_more,
    "primary": _primary_no_more,
    "standby": _standby_no_more,
    "read-only": _read_only_no_more,
}

#: Reconnection delays of a pool whose connections have a role to keep: the
#: first and the longest (seconds).
_ROLE_RETRY = (0.1, 0.4)

#: SQLSTATE read_only_sql_transaction: a write reached a read-only server.
READ_ONLY_SQL_TRANSACTION = "25006"


def _role_test(conn: Connection) -> Callable[[Connection], bool] | None:
    """What tells that ``conn`` left the role its target_session_attrs asked for.

    ``prefer-standby`` settles for a primary when no standby answers: only a
    connection made to a standby is watched (for a promotion).
    """
    try:
        wanted = conn.get_dsn_parameters().get("target_session_attrs") or "any"
    except psycopg2.Error:  # pragma: no cover - a connection just made
        return None
    if wanted == "prefer-standby":
        wanted = "standby" if conn.get_parameter_status("in_hot_standby") == "on" else "any"
    return _ROLE_TESTS.get(wanted)


def _asks_for_a_role(conninfo: Any, kwargs: Any, connect_kwargs: dict[str, Any]) -> bool:
    """Whether connections made from these arguments may have a role to keep.

    Decided once, when the pool is made; a callable conninfo or kwargs may ask
    for one at any connect, so it counts as asking.
    """
    if callable(conninfo) or callable(kwargs):
        return True
    arguments = {**connect_kwargs, **(kwargs or {})}
    if "target_session_attrs" in arguments:
        return arguments["target_session_attrs"] not in (None, "", "any")
    if os.environ.get("PGTARGETSESSIONATTRS", "any") not in ("", "any"):
        return True
    try:
        params = _ext.parse_dsn(conninfo or "")
    except psycopg2.ProgrammingError:
        return False  # connect() reports the bad conninfo itself
    if "service" in params or "PGSERVICE" in os.environ:
        return True  # a service file may ask for one
    return bool(params.get("target_session_attrs", "any") != "any")


def _ensure_idle(conn: Connection, role: str, function: Any) -> None:
    """Raise if a callback left ``conn`` inside a transaction."""
    status = conn.get_transaction_status()
    if status != _IDLE or conn.status != _READY:
        raise psycopg2.ProgrammingError(
            f"connection left in status {status_name(status)}"
            f" by {role} function {function!r}: discarded"
        )


def _bounds_connects(arguments: dict[str, Any]) -> bool:
    """Whether the user set how long a connect() with ``arguments`` may take.

    In the keywords, the conninfo or the environment; a service file may set
    it too, so a named service counts as set.
    """
    if "connect_timeout" in arguments or os.environ.keys() & {"PGCONNECT_TIMEOUT", "PGSERVICE"}:
        return True
    try:
        params = _ext.parse_dsn(arguments.get("dsn") or "")
    except psycopg2.ProgrammingError:
        return True  # connect() reports the bad conninfo itself
    return "connect_timeout" in params or "service" in params


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")
    return value


def _check_seconds(name: str, value: Any, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise TypeError(f"{name} must be a number of seconds, got {value!r}")
    if value < 0 or (positive and value == 0):
        raise ValueError(f"{name} must be {'positive' if positive else 'zero or more'}: {value}")
    return float(value)


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


class ConnectionPool(AbstractConnectionPool):
    """A psycopg_pool-style pool of psycopg2 connections.

    ``with pool.connection() as conn:`` checks a connection out, commits (or
    rolls back) at the end of the block and gives it back. Clients that find
    no connection wait in line for up to ``timeout`` seconds while background
    workers open more, up to ``max_size``. Called with psycopg2-pool 1.2's
    keywords (``minconn``, ``maxconn``, ``idle_timeout``) it behaves as that
    package did: see :class:`ThreadSafeConnectionPool`.
    """

    _keep_all = True
    _fresh_keys = True
    #: Idle connections. Clients take the last one, as from the engine's list,
    #: but returned ones go in at the front: the last is the one idle longest,
    #: so every connection is used in turn and kept warm, as in psycopg_pool.
    _pool: deque[Connection]
    #: Hand out the most recently returned connection first instead (LIFO).
    _newest_first = False
    #: A client that finds the pool at ``max_size`` with others already in
    #: line just joins the line (growth and the dropped-handle scan were
    #: decided by the first).
    _queue_when_full = True

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
        min_size, max_size = self._check_size(min_size, max_size)
        self._setup(min_size, max_size, (), {})
        self._pool = deque()
        # Keep a connection idle: bound once, this is the hot path. The deque
        # is never replaced, only emptied and refilled.
        self._keep_idle = self._pool.append if self._newest_first else self._pool.appendleft
        # The fewest idle connections since the last shrink (see _shrink).
        self._idle_low = min_size
        self.closed = True
        self._opened = False
        self._open_implicit = False

        self.conninfo = conninfo
        self.kwargs = kwargs
        self._connect_kwargs = connect_kwargs
        if not callable(kwargs):
            # psycopg 3 options psycopg2 cannot honour fail here, not in a worker.
            split_options({**connect_kwargs, **(kwargs or {})})
        self.connection_class = connection_class
        self._configure = configure
        self._check = check
        self._reset = reset
        self._reconnect_failed = reconnect_failed
        self.name = name if name else f"pool-{next(_names)}"
        self.close_returns = bool(close_returns)
        self.timeout = _check_seconds("timeout", timeout)
        self.max_waiting = _check_int("max_waiting", max_waiting, 0)
        self.max_lifetime = _check_seconds("max_lifetime", max_lifetime, positive=True)
        self.max_idle = _check_seconds("max_idle", max_idle, positive=True)
        self.reconnect_timeout = _check_seconds("reconnect_timeout", reconnect_timeout)
        self.num_workers = _check_int("num_workers", num_workers, 1)
        self.leak_timeout = (
            None if leak_timeout is None else _check_seconds("leak_timeout", leak_timeout)
        )
        # id(handle) -> (checked out at, stack), kept only with leak_timeout.
        self._checkouts: dict[int, tuple[float, list[str]]] = {}
        self._leaks_reported: set[int] = set()

        # A reset callback must run on every return: no fast path then.
        self._always_settle = reset is not None
        self._stats: Counter[str] = Counter()
        self._requests = 0  # requests_num, kept apart: it is counted on the hot path
        # requests_wait_ms and usage_ms, summed in seconds: rounding each wait
        # down to whole milliseconds would report waits under 1 ms as none.
        self._wait_seconds = 0.0
        self._usage_seconds = 0.0
        self._handle_class = PooledConnection.for_pool(self)
        self._new_handle = self._handle_class.__new__
        self._wrap_at_birth = False
        self._lives: dict[int, _Life] = {}
        self._growing = False
        self._connect_time = 0.0  # seconds a connection takes to open, on average
        self._filled = threading.Condition(self._mutex)
        self._workers: Workers | None = None
        self._secrets = self._find_secrets()

        if open is None:
            open = self._open_implicit = True
        # Nothing to do on checkout beyond handing the connection over.
        # Connections last verified before this may be dead: the pool saw one die.
        self._suspect_before = 0.0
        # Connections may have a role to keep (target_session_attrs): tested
        # at checkout and return. Decided once: other pools pay nothing for it.
        self._roles = _asks_for_a_role(conninfo, kwargs, connect_kwargs)
        self._update_plain_checkout()
        if open:
            self._open()

    # -- properties and presentation ---------------------------------------------------

    @property
    def min_size(self) -> int:
        """The number of connections the pool keeps open even when idle."""
        return int(self.minconn)

    @property
    def max_size(self) -> Any:
        """The most connections the pool opens at once."""
        return self.maxconn

    def __repr__(self) -> str:
        return f"<{type(self).__module__}.{type(self).__name__} {self.name!r} at 0x{id(self):x}>"

    def _find_secrets(self) -> tuple[str, ...]:
        sources = [self._connect_kwargs, self.conninfo, self.kwargs]
        return secrets_in(source for source in sources if not callable(source))

    def _masked(self, error: BaseException) -> str:
        return mask_text(str(error), self._secrets)

    @staticmethod
    def _check_size(min_size: Any, max_size: Any) -> tuple[int, int]:
        _check_int("min_size", min_size, 0)
        if max_size is None:
            max_size = min_size
        _check_int("max_size", max_size, 0)
        if max_size < min_size:
            raise ValueError(
                f"max_size must be greater or equal than min_size: {max_size} < {min_size}"
            )
        if min_size == max_size == 0:
            raise ValueError("if min_size is 0 max_size must be greater than 0")
        return min_size, max_size

    # -- opening and closing --------------------------------------------------------

    def open(self, wait: bool = False, timeout: float = 30.0) -> None:
        """Open the pool: start the workers that fill it to ``min_size``.

        Opening an open pool does nothing; a closed pool cannot be opened again.
        With ``wait``, block until ``min_size`` connections are ready (see :meth:`wait`).
        """
        self._open()
        if wait:
            self.wait(timeout)

    def _open(self) -> None:
        with self._mutex:
            if not self.closed:
                return
            if self._opened:
                raise PoolClosed("pool has already been opened/closed and cannot be reused")
            self.closed = False
            self._opened = True
            self._workers = self._make_workers()
            self._start_filling()
        logger.info("pool %r opened", self.name)

    def _make_workers(self) -> Workers:
        """The threads (or, for the async pools, loop tasks) that keep the pool."""
        return Workers(self.name, self.num_workers)

    def _start_filling(self) -> None:
        """Under the lock, on open: ask the workers for ``min_size`` connections."""
        assert self._workers is not None
        for _ in range(self.minconn):
            self._spawn(1, self._add_connection)
        self._workers.schedule(self._sweep_interval(), self._sweep)
        self._workers.schedule(self.max_idle, self._shrink)

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

    def close(self, timeout: float = 5.0) -> None:
        """Close the pool: waiting and new clients get :class:`PoolClosed`.

        Idle connections are closed now; connections in use are closed when
        they are given back. Wait up to ``timeout`` seconds for the workers.
        """
        with self._mutex:
            if self.closed:
                return
            self.closed = True
            # Failed under the lock: a client whose timeout runs out from now
            # on finds its answer there, and does not look for itself in line.
            for waiter in self._waiters:
                waiter.fail(PoolClosed(f"the pool {self.name!r} is closed"))
            self._waiters.clear()
            idle = list(self._pool)
            self._pool.clear()
            workers, self._workers = self._workers, None
            self._filled.notify_all()
        if workers is not None:
            workers.stop(timeout)
        for conn in idle:
            self._drop(conn)
        logger.info("pool %r closed", self.name)

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

    def __del__(self) -> None:
        # Dropped without close(): the workers hold the pool weakly (see
        # WeakCall), so it gets here. Its idle connections close as they are
        # freed with it; its threads are told to end, and nothing waits here.
        workers = getattr(self, "_workers", None)
        if workers is not None and not getattr(self, "closed", True):
            workers.signal_stop()

    def _refuse(self) -> NoReturn:
        self._requests += 1  # psycopg_pool counts refused requests too
        raise self._closed_error()

    def _closed_error(self) -> PoolError:
        if self._opened:
            return PoolClosed(f"the pool {self.name!r} is already closed")
        return PoolClosed(f"the pool {self.name!r} is not open yet")

    # -- checkout -----------------------------------------------------------------

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
                        self._waiters.append(waiter)
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
                conn = waiter.conn  # type: ignore[assignment]
                if not served or conn is None:
                    conn = self._outcome(waiter, served, timeout)
            elif handle is None:
                called = monotonic()
                conn = self._getconn(None, timeout)
            if handle is None:
                # Served by whoever gave a connection back: the key it was given to
                # is this client's (still empty) handle.
                waited: PooledConnection = (
                    waiter.key if waiter is not None else self._rused[id(conn)]  # type: ignore[assignment]
                )
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
            handle = self._rused[id(conn)]  # type: ignore[assignment]
            handle.__wrapped__ = conn
        if self.leak_timeout is not None:
            self._checkouts[id(handle)] = (monotonic(), traceback.format_stack()[:-2])
        return handle

    def _cleaned(self, conn: Connection, deadline: float, timeout: float) -> Connection:
        """Never hand out a connection inside a transaction, whatever put it there.

        Returned connections are rolled back, so one found in a transaction was
        used while idle, through a reference kept after its return: roll it
        back, or replace it if that fails.
        """
        while conn.get_transaction_status() != _IDLE or conn.status != _READY:
            logger.warning(
                "connection of %r found in status %s at checkout: rolled back",
                self.name,
                status_name(conn.get_transaction_status()),
            )
            try:
                conn.rollback()
            except psycopg2.Error:
                self._discard_checked_out(conn, lost=True)
                conn = self._next_candidate(deadline, timeout)
        return conn

    def _getkey(self) -> Hashable:
        # Called under the lock for every request: the place to count them, and
        # to note how few idle connections are left once it takes one.
        # The key is the (still empty) handle the client will get.
        self._requests += 1
        idle_left = max(len(self._pool) - 1, 0)
        if idle_left < self._idle_low:
            self._idle_low = idle_left
        return self._new_handle(self._handle_class)

    def _update_plain_checkout(self) -> None:
        # One flag for getconn(): anything to do beyond handing the connection over?
        self._plain_checkout = not (
            self._open_implicit
            or self._check
            or self.leak_timeout is not None
            or self._suspect_before
            or self._roles
        )

    def _warn_implicit_open(self) -> None:
        self._open_implicit = False
        self._update_plain_checkout()
        warnings.warn(
            f"the default for the {type(self).__name__} 'open' parameter will become"
            " 'False' in a future release. Please use open={True|False} explicitly,"
            f" or use the pool as context manager using: `with {type(self).__name__}(...)"
            " as pool: ...`",
            DeprecationWarning,
            stacklevel=3,
        )

    def _when_empty(self, request: Waiter) -> None:
        first = not self._waiters
        self._enqueue(request)
        if first and self._size() >= self.maxconn:
            self._reclaim_dropped()
        self._grow()

    def _reclaim_dropped(self) -> None:
        """Under the lock, as the first client starts waiting on a full pool:
        take back the connections whose handle was dropped.

        Only for the first in line: the scan costs a pass over every checkout,
        too much to pay on each request of a pool that is busy for long; the
        sweep (where there is one) looks again within a second.
        """
        if self._workers is None:
            return
        dropped = self._take_dropped_handles()
        if dropped:
            self._spawn(len(dropped), self._settle_dropped, dropped)

    def _enqueue(self, request: Waiter) -> None:
        """Under the lock: put a client in line, unless ``max_waiting`` are there already."""
        if self.max_waiting and len(self._waiters) >= self.max_waiting:
            self._stats[S.REQUESTS_ERRORS] += 1
            raise TooManyRequests(
                f"the pool {self.name!r} has already {len(self._waiters)} requests waiting"
            )
        self._waiters.append(request)
        self._stats[S.REQUESTS_QUEUED] += 1

    def _note_wait(self, waiter: Waiter, seconds: float) -> None:
        self._wait_seconds += seconds

    def _timeout_error(self, waiter: Waiter | None, timeout: float | None) -> PoolError:
        self._stats[S.REQUESTS_ERRORS] += 1
        return PoolTimeout(f"couldn't get a connection from {self.name!r} after {timeout:.2f} sec")

    def _grow(self) -> None:
        """Under the lock: open one more connection if allowed and not already doing so."""
        size = self._size()
        if self._growing or size >= self.maxconn or self._workers is None:
            return
        # The flag goes up last: a second growth is harmless, a flag that
        # stays up with nothing to bring it down (an interrupt) stops growth.
        if size < self.minconn or not self._connect_time:
            self._start_growing()
        else:
            # A spike of short requests is served by the connections coming
            # back before a new one could arrive: look again after about one
            # connect time, and open one only if clients are still waiting.
            self._workers.schedule(self._connect_time, self._grow_if_still_needed)
        self._growing = True

    def _grow_to_min_size(self) -> None:
        """Under the lock: if below ``min_size``, grow back to it (one at a time)."""
        if self._size() < self.minconn:
            self._grow()

    def _start_growing(self) -> None:
        self._spawn(1, self._add_connection, None, True)
        logger.info("growing pool %r to %s", self.name, self._size())

    def _spawn(self, count: int, method: Callable[..., object], *args: Any) -> None:
        """Under the lock: run ``method(*args)`` on a worker, which takes back the
        ``count`` connections counted in ``_pending`` for it here.

        Both or neither, whatever interrupts the caller: an interrupt lands
        only after a call, and the one call after the count posts the task.
        """
        workers = self._workers
        assert workers is not None
        task = WeakCall(method, args)
        self._pending += count
        workers.post(task)

    def _grow_if_still_needed(self) -> None:
        with self._mutex:
            if not self.closed and self._waiters and self._size() < self.maxconn:
                self._start_growing()
            else:
                self._growing = False

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
                _ensure_idle(conn, "check", check)
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
        restoring = healthy = kept = False
        try:
            with self._mutex:
                self._forget_connection(conn)
                self._pending += 1
                restoring = True
            healthy = self._restore(conn)
        finally:
            if restoring:
                with self._mutex:
                    self._pending -= 1
                    kept = self._keep_failed(conn, healthy)
        if not kept:
            self._drop(conn)
            self._replace()

    def _discarded_at_check(self, conn: Connection, timed_out: bool) -> bool:
        """Discard (and replace) a connection that failed the check broken."""
        if timed_out or conn.closed or conn.get_transaction_status() == _UNKNOWN:
            self._discard_checked_out(conn, lost=True)
            return True
        return False

    def _forget_connection(self, conn: Connection) -> None:
        """Under the lock: stop tracking ``conn``, whichever key holds it."""
        key = self._rused.get(id(conn))
        if key is not None:
            self._forget(key)

    def _set_aside(self, conn: Connection, timed_out: bool) -> bool:
        """For the async pool's check: :meth:`_failed_check` up to the restore.

        Discard ``conn`` if it is broken and return False; otherwise count it
        as pending, to be restored and given to :meth:`_file_failed`.
        """
        if self._discarded_at_check(conn, timed_out):
            return False
        with self._mutex:
            self._forget_connection(conn)
            self._pending += 1
        return True

    def _file_failed(self, conn: Connection, healthy: bool) -> None:
        """After :meth:`_set_aside` and a restore: keep ``conn`` if it can serve again."""
        with self._mutex:
            self._pending -= 1
            kept = self._keep_failed(conn, healthy)
        if not kept:
            self._drop(conn)
            self._replace()

    def _keep_failed(self, conn: Connection, healthy: bool) -> bool:
        """Under the lock, after a restore: keep a connection that failed the
        check if it can serve again, handed out last."""
        life = self._lives.get(id(conn))
        kept = (
            healthy
            and not self.closed
            and life is not None
            and life.expires > monotonic()
            and bool(self._waiters or self._keep_all or len(self._pool) < self.minconn)
        )
        if kept:
            # To a waiting client, or among the idle ones at the end clients
            # take from last (whichever end returns go to).
            if self._waiters:
                self._release(conn)
            else:
                self._pool.insert(0, conn)
        return kept

    def _bounded(self, call: Callable[[], None], conn: Connection, seconds: float) -> None:
        workers = self._workers
        if workers is None:
            call()
        else:
            # An alarm, not a task: the workers may all be stuck connecting.
            run_bounded(call, conn, seconds, workers.alarm)

    def _trusted(self, conn: Connection, deadline: float, timeout: float) -> Connection:
        """Probe ``conn`` if it is suspect; replace it while it turns out dead."""
        while True:
            life = self._lives.get(id(conn))
            if life is None or life.verified >= self._suspect_before:
                return conn
            if socket_alive(conn):
                life.verified = monotonic()
                return conn
            self._discard_checked_out(conn, lost=True)
            conn = self._next_candidate(deadline, timeout)

    def _in_role(self, conn: Connection, deadline: float, timeout: float) -> Connection:
        """Never hand out a connection whose server left the role asked for.

        It is closed and so are its siblings on the same server (see
        :meth:`_retire_server`); the client gets the next one.
        """
        while True:
            life = self._lives.get(id(conn))
            if life is None or life.off_role is None or conn.closed or not life.off_role(conn):
                return conn
            self._retire_server(life.server, "at checkout")
            self._discard_checked_out(conn, lost=False)
            conn = self._cleaned(self._next_candidate(deadline, timeout), deadline, timeout)

    def _retire_server(self, server: tuple[str, int] | None, seen: str) -> None:
        """A connection to ``server`` no longer has the role its pool asked for:
        neither do its siblings, though they have not heard yet.

        PostgreSQL tells a connection of a role change only when it next
        answers a query, so an idle sibling looks as it was: close the idle
        ones now, and the ones in use when they come back. New connections go
        where libpq finds the role asked for.
        """
        if server is None:
            return
        with self._mutex:
            idle = []
            for conn in self._pool:
                life = self._lives.get(id(conn))
                if life is not None and life.server == server:
                    idle.append(conn)
            for conn in idle:
                self._pool.remove(conn)
            in_use = 0
            for conn in self._used.values():
                life = self._lives.get(id(conn))
                if life is not None and life.server == server and life.expires > 0.0:
                    life.expires = 0.0  # closed when given back
                    in_use += 1
        if idle or in_use:
            logger.warning(
                "server %s:%s of %r changed role (seen %s): closing its %d idle connections,"
                " and %d in use when they come back",
                server[0],
                server[1],
                self.name,
                seen,
                len(idle),
                in_use,
            )
        for conn in idle:
            self._drop(conn)
            self._replace()

    def _read_only_error(self, conn: Connection) -> None:
        """A write on ``conn`` failed with SQLSTATE 25006 (read-only transaction).

        In a pool that wants a writable server, retire its server's connections
        if the server turned read-only: it says so (PostgreSQL 14+), or cannot
        say. A read-only transaction the client asked for itself changes nothing.
        """
        life = self._lives.get(id(conn))
        if (
            conn.closed
            or life is None
            or life.off_role not in (_writable_no_more, _primary_no_more)
        ):
            return
        if life.off_role(conn) or conn.get_parameter_status("in_hot_standby") is None:
            life.expires = 0.0
            self._retire_server(life.server, "by a read-only error")

    def _next_candidate(self, deadline: float, timeout: float) -> Connection:
        """After a connection was turned down at checkout: the next one, in the time left.

        Still the same request: it is not counted again, and a timeout names
        the client's own ``timeout``.
        """
        left = deadline - monotonic()
        if left <= 0:
            with self._mutex:
                raise self._timeout_error(None, timeout)
        try:
            return self._getconn(self._retry_key(), left)
        except PoolTimeout:  # counted already
            raise PoolTimeout(
                f"couldn't get a connection from {self.name!r} after {timeout:.2f} sec"
            ) from None

    def _retry_key(self) -> PooledConnection:
        """The key for another try within one request: :meth:`_getkey`, minus
        counting the request again."""
        with self._mutex:
            idle_left = max(len(self._pool) - 1, 0)
            if idle_left < self._idle_low:
                self._idle_low = idle_left  # see _shrink
        return self._new_handle(self._handle_class)

    def _discard_checked_out(self, conn: Connection, lost: bool) -> None:
        with self._mutex:
            self._forget_connection(conn)
            if lost:
                self._stats[S.CONNECTIONS_LOST] += 1
        self._drop(conn)
        if lost:
            self._saw_death()
        self._replace()

    def _saw_death(self) -> None:
        """A connection turned out dead: distrust the older ones until probed."""
        with self._mutex:
            self._suspect_before = monotonic()
            self._update_plain_checkout()
            workers = self._workers
        if workers is not None:
            workers.submit(self._probe_idle)

    def _probe_idle(self) -> None:
        """Find idle connections whose server end has gone, without a round trip.

        An idle connection has nothing to read unless the server closed it (or
        sent a notification): only the readable ones are looked at closer.
        """
        with self._mutex:
            idle = [(conn, conn.fileno()) for conn in self._pool if not conn.closed]
        readable = set(readable_fds([fd for _, fd in idle]))
        if not readable:
            return
        with self._mutex:
            suspects = [conn for conn, fd in idle if fd in readable and conn in self._pool]
            for conn in suspects:
                self._pool.remove(conn)
            self._pending += len(suspects)
        dead = 0
        for conn in suspects:
            alive = socket_alive(conn)
            with self._mutex:
                self._pending -= 1
                if alive and not self.closed:
                    self._release(conn)
                    continue
                if not alive:
                    dead += 1
                    self._stats[S.CONNECTIONS_LOST] += 1
            self._drop(conn)
            self._replace()
        if dead:
            logger.warning("discarded %s idle connections of %r found dead", dead, self.name)
            with self._mutex:
                self._suspect_before = monotonic()
                self._update_plain_checkout()

    # -- return -------------------------------------------------------------------

    def putconn(self, conn: Any) -> None:
        """Give back a connection: the handle, or the real connection it wraps.

        A connection is taken back by its real object only once in its life.
        """
        if type(conn) is self._handle_class:
            # _claim(), inlined for the common case: this is the hot path. The
            # pool's own map finds the connection for less than wrapt would.
            real = self._used.get(conn)
            if real is None:
                raise ConnectionReturned("this connection was already returned to the pool")
            conn.__wrapped__ = RETURNED
            handle = conn
        else:
            real, handle = self._claim(conn)
        if self.leak_timeout is not None:
            self._checkouts.pop(id(handle), None)
            self._leaks_reported.discard(id(handle))
        life = self._lives.get(id(real))
        now = monotonic()
        close = life is None or life.expires <= now
        if life is not None:
            life.idle_since = now
            if life.verified < self._suspect_before and not close:
                close = not self._verify(real, life)
            if life.off_role is not None and not close and not real.closed and life.off_role(real):
                close = True
                self._retire_server(life.server, "on return")
        if not close and not self._always_settle:
            # The engine's common case, inlined: a connection ready for reuse
            # goes to the longest waiting client, or back among the idle ones.
            # Anything else (closing, rolling back...) goes the engine's way.
            # Plain stores from taking the handle's entry out to filing the
            # connection: an interrupt (it lands only after a call) cannot
            # leave it half done.
            cid = id(real)
            mutex = self._mutex
            try:  # the lock as in the engine's _getconn
                mutex.acquire()
                if (
                    (self._waiters or self._keep_all)
                    and not self.closed
                    and not real.closed
                    and real.get_transaction_status() == _IDLE
                    and real.status == _READY
                ):
                    if handle not in self._used:
                        raise ConnectionReturned("this connection was already returned to the pool")
                    del self._used[handle]
                    if self._waiters:
                        # The engine's _release, inlined.
                        waiter = self._waiters[0]
                        del self._waiters[0]
                        key = waiter.key
                        waiter.conn = real
                        self._used[key] = real
                        self._rused[cid] = key
                        waiter.wake()
                        self._wait_seconds += now - waiter.since
                    else:
                        del self._rused[cid]
                        self._keep_idle(real)
                    return
            finally:
                try:  # noqa: SIM105 - suppress() would be a call with the lock held
                    mutex.release()
                except RuntimeError:
                    pass
        try:
            self._putconn(real, handle, close)
        except KeyError:
            # Another thread gave the same handle back at the same moment.
            raise ConnectionReturned("this connection was already returned to the pool") from None
        except PoolClosed:
            # Closed meanwhile: the connection goes with the pool.
            with self._mutex:
                self._forget_connection(real)
            self._drop(real)

    def _verify(self, conn: Connection, life: _Life) -> bool:
        """Probe a returned suspect connection; count it lost if it is dead."""
        if socket_alive(conn):
            life.verified = monotonic()
            return True
        with self._mutex:
            self._stats[S.CONNECTIONS_LOST] += 1
        return False

    def _claim(self, conn: Any) -> tuple[Connection, Any]:
        """Check that ``conn`` (handle or real connection) is out of this pool.

        Kill its handle and return the real connection and the handle.

        A real connection does not say which checkout it comes from: once it is
        out again, a late second return of it would look just like its new
        holder's. So it is taken back raw only once in its life; then only
        through its handle.
        """
        if type(conn) is self._handle_class:
            real = self._used.get(conn)
            if real is None:
                raise ConnectionReturned("this connection was already returned to the pool")
            conn.__wrapped__ = RETURNED
            return real, conn
        owner = getattr(type(conn), "_self_pool", None)
        if owner is not None:
            raise NotFromThisPool(
                f"can't return connection to pool {self.name!r}: it comes from pool {owner.name!r}"
            )
        with self._mutex:
            handle = self._rused.get(id(conn))
            if type(handle) is not self._handle_class:
                raise self._unkeyed_error(conn)
            life = self._lives.get(id(conn))
            if life is not None:
                if life.given_back_raw:
                    raise ConnectionReturned(
                        "this connection was already returned to the pool by the real"
                        " connection once: it is checked out again now, maybe by another"
                        " client; give back the handle getconn() returned"
                    )
                life.given_back_raw = True
            handle.__wrapped__ = RETURNED
        return conn, handle

    def _unkeyed_error(self, conn: Any) -> PoolError:
        return NotFromThisPool(
            f"can't return connection to pool {self.name!r}: it was not checked out of it,"
            " or was already returned"
        )

    def _release(self, conn: Connection) -> None:
        if self._waiters:
            super()._release(conn)
        else:
            self._keep_idle(conn)

    def _restore(self, conn: Connection) -> bool:
        if conn.closed:
            return False
        status = conn.get_transaction_status()
        if status != _IDLE and status != _ext.TRANSACTION_STATUS_UNKNOWN:
            logger.warning("rolling back returned connection (%s): %r", status_name(status), conn)
        if not super()._restore(conn):
            return False
        if self._reset is not None:
            try:
                lend(self._reset, conn)
                _ensure_idle(conn, "reset", self._reset)
            except Exception as exc:
                logger.warning("error resetting connection: %s", self._masked(exc))
                return False
        return True

    def _discarded(self, conn: Connection, broken: bool) -> None:
        self._lives.pop(id(conn), None)
        if broken:
            with self._mutex:
                self._stats[S.RETURNS_BAD] += 1
            logger.warning("discarding broken connection returned to %r", self.name)
            self._saw_death()
        self._replace()

    def _replace(self) -> None:
        """Open a connection to make up for one closed, if the pool needs it."""
        with self._mutex:
            if self.closed or self._workers is None:
                return
            size = self._size()
            if size < self.minconn or (self._waiters and size < self.maxconn):
                self._spawn(1, self._add_connection)

    def _drop(self, conn: Connection) -> None:
        self._lives.pop(id(conn), None)
        self._close_quietly(conn)

    # -- connecting ---------------------------------------------------------------

    def _connect(self, key: Hashable | None = None) -> Connection:
        conn = self._new_connection()
        with self._mutex:
            if key is not None:
                self._used[key] = conn
                self._rused[id(conn)] = key
            else:
                self._release(conn)
        return conn

    def _new_connection(self, connect_timeout: float | None = None) -> Connection:
        """Open and configure a connection; nothing in the pool knows of it yet."""
        conninfo = self.conninfo() if callable(self.conninfo) else self.conninfo
        kwargs = self.kwargs() if callable(self.kwargs) else self.kwargs
        arguments = self._connect_arguments(conninfo, kwargs, connect_timeout)
        started = self._connect_attempt()
        try:
            libpq_arguments, options = split_options(arguments)
            conn: Connection = psycopg2.connect(
                connection_factory=self.connection_class,
                cursor_factory=options.cursor_factory,
                **libpq_arguments,
            )
            if options.autocommit:
                conn.autocommit = True
        except Exception as exc:
            raise self._connect_error(exc, arguments) from None
        now = monotonic()
        self._connected(now - started)
        if self._configure is not None:
            try:
                lend(self._configure, conn)
                _ensure_idle(conn, "configure", self._configure)
            except BaseException:
                self._close_quietly(conn)
                raise
        self._note_birth(conn, now)
        return conn

    def _connect_arguments(
        self, conninfo: Any, kwargs: Any, connect_timeout: float | None = None
    ) -> dict[str, Any]:
        """The keywords of one connect() call, from the resolved conninfo and kwargs."""
        arguments = {**self._connect_kwargs, **(kwargs or {})}
        arguments.setdefault("dsn", conninfo or "")
        if not _bounds_connects(arguments):
            if connect_timeout is not None:
                # A caller's own deadline: libpq counts whole seconds, never less than asked.
                arguments["connect_timeout"] = max(math.ceil(connect_timeout), 1)
            elif math.isfinite(self.reconnect_timeout):
                # libpq would wait for ever on a network that went silent, holding
                # a worker (or a client) all along. No attempt outlasts the time
                # the pool gives reconnecting (libpq's minimum is 2 seconds).
                arguments["connect_timeout"] = max(math.ceil(self.reconnect_timeout), 2)
        return arguments

    def _connect_attempt(self) -> float:
        """Count an attempt to connect; return when it started."""
        with self._mutex:
            self._stats[S.CONNECTIONS_NUM] += 1
        return monotonic()

    def _connect_error(self, exc: BaseException, arguments: dict[str, Any]) -> BaseException:
        """Count a failed attempt; the error to raise, its passwords masked."""
        with self._mutex:
            self._stats[S.CONNECTIONS_ERRORS] += 1
        return scrubbed(exc, self._secrets + secrets_in((arguments,)))

    def _note_birth(self, conn: Connection, now: float) -> None:
        # Up to 10% earlier than max_lifetime, so that connections made
        # together do not all expire together.
        expires = now + self.max_lifetime * (1.0 - 0.1 * random.random())
        life = self._lives[id(conn)] = _Life(expires, now)
        if self._roles:
            life.off_role = _role_test(conn)
            if life.off_role is not None:
                life.server = (conn.info.host, conn.info.port)
        # wrapt's constructor reads the connection's __module__: cheap if its
        # class is a Python one, an exception each time for psycopg2's own.
        self._wrap_at_birth = any("__module__" in vars(k) for k in type(conn).__mro__)

    def _connected(self, seconds: float) -> None:
        """Account for a connection made in ``seconds``."""
        with self._mutex:
            self._stats[S.CONNECTIONS_MS] += int(1000.0 * seconds)
            # A moving average: what waiting for a new connection costs now.
            previous = self._connect_time
            self._connect_time = seconds if not previous else 0.7 * previous + 0.3 * seconds

    def _add_connection(self, attempt: Backoff | None = None, growing: bool = False) -> None:
        """Worker task: open a connection in a slot already counted in ``_pending``."""
        try:
            conn = self._new_connection()
        except Exception as exc:
            self._connect_failed(exc, attempt, growing)
            return
        with self._mutex:
            self._pending -= 1
            if self.closed:
                late = True
            else:
                late = False
                self._release(conn)
                self._filled.notify_all()
                if growing:
                    size = self._size()
                    if size < self.minconn or (self._waiters and size < self.maxconn):
                        self._spawn(1, self._add_connection, None, True)
                    else:
                        self._growing = False
        if late:
            self._drop(conn)
        else:
            logger.info("adding new connection to the pool %r", self.name)

    def _connect_failed(self, exc: Exception, attempt: Backoff | None, growing: bool) -> None:
        logger.warning("error connecting in %r: %s", self.name, self._masked(exc))
        if attempt is None:
            if self._roles:
                # A failover leaves no server of the role asked for until a
                # standby is promoted, seconds later: look again often.
                attempt = Backoff(self.reconnect_timeout, *_ROLE_RETRY)
            else:
                attempt = Backoff(self.reconnect_timeout)
        delay = attempt.next_delay(monotonic())
        with self._mutex:
            if self.closed or self._workers is None:
                self._pending -= 1
                return
            if delay is not None:
                workers = self._workers
                workers.schedule(delay, self._add_connection, attempt, growing)
                return
            self._pending -= 1
            if growing:
                self._growing = False
        logger.warning(
            "reconnection attempt in pool %r failed after %s sec",
            self.name,
            self.reconnect_timeout,
        )
        if self._reconnect_failed is not None:
            self._reconnect_failed(self)

    # -- maintenance ----------------------------------------------------------------

    def _sweep_interval(self) -> float:
        period = min(self.max_idle, self.max_lifetime) / 4
        if self.leak_timeout is not None:
            period = min(period, self.leak_timeout / 2)
        # At least every second: the sweep also spots idle connections whose
        # server went away (one select() call), so that the pool refills soon.
        return min(max(period, 0.02), 1.0)

    def _sweep(self) -> None:
        """Periodic task: close expired idle connections, find dead and leaked ones."""
        now = monotonic()
        closing = []
        with self._mutex:
            if self.closed or self._workers is None:
                return
            size = self._size()
            keep = []
            # Left to right: in a pool that reuses the newest first, the
            # connection that idled longest comes first (see _idled_out).
            for conn in self._pool:
                life = self._lives.get(id(conn))
                if life is None or life.expires <= now or self._idled_out(life, now, size):
                    closing.append(conn)
                    size -= 1
                else:
                    keep.append(conn)
            if closing:
                # In place: _keep_idle is bound to this deque.
                self._pool.clear()
                self._pool.extend(keep)
            dropped = self._take_dropped_handles()
            self._pending += len(dropped)  # until _settle has restored each
            if self._suspect_before and all(
                life.verified >= self._suspect_before for life in self._lives.values()
            ):
                self._suspect_before = 0.0
                self._update_plain_checkout()
            self._workers.schedule(self._sweep_interval(), self._sweep)
        if closing:
            logger.info("closing %s idle or expired connections in %r", len(closing), self.name)
        for conn in closing:
            self._drop(conn)
        for _ in closing:
            self._replace()
        self._settle_dropped(dropped)
        self._probe_idle()
        if self.leak_timeout is not None:
            self._report_leaks(now)

    def _idled_out(self, life: _Life, now: float, size: int) -> bool:
        """Under the lock: close this idle connection for having idled too long?

        Not here: connections used in turn are never idle for long, and
        :meth:`_shrink` takes the surplus away one at a time instead.
        """
        return False

    def _shrink(self) -> None:
        """Periodic task, every ``max_idle``: close one connection if one was not needed.

        If idle connections were left over at every moment of the last period
        (the fewest seen stayed above zero) and the pool is above ``min_size``,
        close the one idle longest. One per period, as psycopg_pool does, so a
        pool shrinks gradually after a peak or a :meth:`resize` down.
        """
        surplus = None
        with self._mutex:
            if self.closed or self._workers is None:
                return
            fewest = self._idle_low
            if fewest > 0 and self._pool and self._size() > self.minconn:
                surplus = self._pool.pop()
                size = self._size()
            # A new period starts: getconn() lowers this as it takes connections.
            self._idle_low = len(self._pool)
            self._workers.schedule(self.max_idle, self._shrink)
        if surplus is not None:
            logger.info(
                "pool %r: at least %s connections stayed idle for %s sec; closing one, %s left",
                self.name,
                fewest,
                self.max_idle,
                size,
            )
            self._drop(surplus)

    def _settle_dropped(self, conns: list[Connection]) -> None:
        for conn in conns:
            warnings.warn(
                f"a connection of pool {self.name!r} was dropped without being returned:"
                " it was rolled back and taken back",
                ResourceWarning,
                stacklevel=1,
            )
            self._settle(conn, close=False)

    def _take_dropped_handles(self) -> list[Connection]:
        """Under the lock: connections whose handle nothing references any more.

        They are no longer checked out; the caller counts them in ``_pending``
        until :meth:`_settle_dropped` has restored them.
        """
        dropped = []
        empty = []
        for handle in unreferenced_keys(self._used, on_key=True):
            try:
                handle.__wrapped__  # type: ignore[attr-defined]  # noqa: B018
            except (AttributeError, ValueError):  # wrapt's word for "not set yet"
                empty.append(handle)
            else:
                dropped.append(handle)
        # A handle not handed over yet is normal while getconn() is between the
        # engine and the client (which then holds the connection); one whose
        # connection nothing holds either belongs to a checkout interrupted
        # there (Ctrl-C), and nobody will ever take it.
        dropped += held_only_by(self._used, empty)
        conns = []
        for handle in dropped:
            conn = self._forget(handle)
            cast(PooledConnection, handle).__wrapped__ = RETURNED
            self._checkouts.pop(id(handle), None)
            if conn is not None:
                conns.append(conn)
        return conns

    def _report_leaks(self, now: float) -> None:
        """Log, once each, connections checked out for longer than ``leak_timeout``."""
        assert self.leak_timeout is not None
        for key, (since, stack) in list(self._checkouts.items()):
            if now - since >= self.leak_timeout and key not in self._leaks_reported:
                self._leaks_reported.add(key)
                logger.warning(
                    "a connection of pool %r has been checked out for %.1f sec"
                    " (leak_timeout=%s); it was checked out at:\n%s",
                    self.name,
                    now - since,
                    self.leak_timeout,
                    "".join(stack),
                )

    def _after_fork(self) -> None:
        super()._after_fork()
        self._lives.clear()
        self._checkouts.clear()
        self._leaks_reported.clear()
        self._filled = threading.Condition(self._mutex)
        self._growing = False
        if self._workers is not None:
            # The parent's threads do not exist here: start the child's own.
            self._workers = self._make_workers()
            self._start_filling()

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
            life = self._lives.get(id(conn))
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

    def drain(self) -> None:
        """Replace every connection: idle ones now, the others when given back."""
        with self._mutex:
            idle = list(self._pool)
            self._pool.clear()
            for life in self._lives.values():
                life.expires = 0.0
        for conn in idle:
            self._drop(conn)
        # As psycopg_pool does: a new connection for each one closed, even above
        # min_size (the surplus idles out later).
        with self._mutex:
            if self.closed or self._workers is None:
                return
            for _ in idle:
                if self._size() >= self.maxconn:
                    break
                self._spawn(1, self._add_connection)

    def resize(self, min_size: int, max_size: int | None = None) -> None:
        """Change ``min_size`` and ``max_size`` while the pool runs."""
        min_size, max_size = self._check_size(min_size, max_size)
        logger.info("resizing %r to min_size=%s max_size=%s", self.name, min_size, max_size)
        with self._mutex:
            self.minconn = min_size
            self.maxconn = max_size
            grow = 0 if self.closed else max(0, min_size - self._size())
            for _ in range(grow):
                self._spawn(1, self._add_connection)

    # -- statistics ---------------------------------------------------------------

    def get_stats(self) -> dict[str, int]:
        """Counters since the last :meth:`pop_stats`, and the pool's current sizes."""
        with self._mutex:
            return self._measures(
                dict(self._stats), self._requests, self._wait_seconds, self._usage_seconds
            )

    def pop_stats(self) -> dict[str, int]:
        """Like :meth:`get_stats`, then reset the counters to zero."""
        with self._mutex:
            counters, self._stats = self._stats, Counter()
            requests, self._requests = self._requests, 0
            wait, self._wait_seconds = self._wait_seconds, 0.0
            usage, self._usage_seconds = self._usage_seconds, 0.0
            return self._measures(dict(counters), requests, wait, usage)

    def _measures(
        self, stats: dict[str, int], requests: int, wait: float, usage: float
    ) -> dict[str, int]:
        if requests:
            stats[S.REQUESTS_NUM] = requests
        if wait:
            stats[S.REQUESTS_WAIT_MS] = int(1000.0 * wait)
        if usage:
            stats[S.USAGE_MS] = int(1000.0 * usage)
        stats[S.POOL_MIN] = self.min_size
        stats[S.POOL_MAX] = self.maxconn if math.isfinite(self.maxconn) else 0
        stats[S.POOL_SIZE] = self._size()
        stats[S.POOL_AVAILABLE] = len(self._pool)
        stats[S.REQUESTS_WAITING] = len(self._waiters)
        return stats


_FACADE_KEYWORDS = frozenset(
    name
    for name in ConnectionPool.__init__.__code__.co_varnames[
        1 : ConnectionPool.__init__.__code__.co_argcount
        + ConnectionPool.__init__.__code__.co_kwonlyargcount
    ]
)
