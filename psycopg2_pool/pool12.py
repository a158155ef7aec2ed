"""psycopg2-pool 1.2's pool, as a policy on the engine: ThreadSafeConnectionPool.

It hands out the psycopg2 connections themselves, reuses the most recently
returned one first, closes connections idle for more than ``idle_timeout``
when the pool is next used, and raises at once when ``maxconn`` are out. Its
documented internals (``idle_connections``, ``connections_in_use``,
``return_times``) are the pool's live state, as they were in 1.2.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Hashable, Iterator, Set
from contextlib import suppress
from time import perf_counter
from typing import Any, NoReturn

from psycopg2 import extensions as _ext

from ._masking import mask_dsn
from .decisions import Connection
from .engine import AbstractConnectionPool, Waiter
from .errors import NotFromThisPool, PoolClosed, PoolExhausted

__all__ = ["ThreadSafeConnectionPool", "spelled_v12"]

_IDLE = _ext.TRANSACTION_STATUS_IDLE
_READY = _ext.STATUS_READY
# Keywords that only psycopg2-pool 1.2 code passes.
_V12_KEYWORDS = frozenset(("minconn", "maxconn", "idle_timeout"))


def spelled_v12(args: tuple[Any, ...], kwargs: dict[str, Any], facade: frozenset[str]) -> bool:
    """Whether a ``ConnectionPool(...)`` call is psycopg2-pool 1.2 code.

    1.2's positional sizes say so (``ConnectionPool(0, 10)``: psycopg_pool's
    first argument is a conninfo string), and so do 1.2's own keywords, and
    so does a call made only of connect() keywords (``ConnectionPool(dsn=...)``,
    ``ConnectionPool(host=..., dbname=...)``), which psycopg_pool would reject:
    its connection settings go in ``conninfo`` and ``kwargs``. ``facade`` is
    the set of psycopg_pool's keywords.
    """
    if args:
        first = args[0]
        return isinstance(first, (int, float)) and not isinstance(first, bool)
    if _V12_KEYWORDS.intersection(kwargs):
        return True
    return bool(kwargs) and not facade.intersection(kwargs)


def _check_size(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")


class _InUse(Set[Connection]):
    """``connections_in_use``: a live, read-only view of the checked-out connections.

    1.2 kept them in a ``WeakSet``; here the pool holds them, and takes back
    the ones their holder dropped (see :meth:`ThreadSafeConnectionPool.getconn`).
    """

    __slots__ = ("_pool",)

    def __init__(self, pool: ThreadSafeConnectionPool) -> None:
        self._pool = pool

    def __contains__(self, conn: object) -> bool:
        key = self._pool._rused.get(id(conn))
        return key is not None and self._pool._used.get(key) is conn

    def __iter__(self) -> Iterator[Connection]:
        with self._pool._mutex:
            return iter(list(self._pool._used.values()))

    def __len__(self) -> int:
        return len(self._pool._used)

    def __repr__(self) -> str:
        return f"<connections in use: {len(self)}>"


class ThreadSafeConnectionPool(AbstractConnectionPool):
    """psycopg2-pool 1.2's pool (``ConnectionPool(minconn=..., maxconn=...)`` too).

    ``minconn`` connections are opened at once. :meth:`getconn` hands out the
    psycopg2 connection itself, the most recently returned first; a client
    that finds none idle opens one itself, unless ``maxconn`` are out: then
    it raises at once :class:`PoolExhausted` ("connection pool exhausted"),
    a :class:`PoolError` and a ``psycopg2.OperationalError``. A connection
    stays checked out until :meth:`putconn` (``with conn:`` only ends its
    transaction, as psycopg2 does); one that its holder drops without
    ``putconn`` is taken back when the pool next opens a connection.
    Connections idle for more than ``idle_timeout`` seconds are closed when
    the pool is next used, as in 1.2 (no background thread).

    Unlike 1.2, ``maxconn`` is really enforced, every method is thread safe,
    ``putconn`` of a connection the pool did not hand out raises
    :class:`PoolError`, and :meth:`close` closes the pool.
    """

    def __init__(
        self,
        minconn: int = 1,
        maxconn: float = math.inf,
        idle_timeout: float = 600,
        **connect_kwargs: Any,
    ) -> None:
        _check_size("minconn", minconn, 0)
        if maxconn != math.inf:
            _check_size("maxconn", maxconn, 1)
            if maxconn < minconn:
                raise ValueError(f"maxconn must be at least minconn: {maxconn} < {minconn}")
        if (
            isinstance(idle_timeout, bool)
            or not isinstance(idle_timeout, (int, float))
            or math.isnan(idle_timeout)
        ):
            raise TypeError(f"idle_timeout must be a number of seconds, got {idle_timeout!r}")
        if idle_timeout < 0:
            raise ValueError(f"idle_timeout must be zero or more: {idle_timeout}")
        connect_kwargs.setdefault("dsn", "")
        self.idle_timeout = idle_timeout
        self.connect_kwargs = connect_kwargs
        self._setup(minconn, maxconn, (), connect_kwargs)
        #: The idle connections, last in first out (the most recently returned is last).
        self.idle_connections: deque[Connection] = deque()
        self._pool = self.idle_connections
        self._keep_idle = self._pool.append
        #: When each idle connection went idle, on :func:`time.perf_counter`'s
        #: clock. Lowering an entry ages the connection, as in 1.2.
        self.return_times: dict[Connection, float] = {}
        #: The connections checked out (a live view).
        self.connections_in_use: Set[Connection] = _InUse(self)
        #: 1.2's lock attribute: ``with pool.lock:`` holds the pool still.
        self.lock = self._mutex
        # With idle_timeout 0, 1.2 closes a returned connection when minconn
        # are idle already; otherwise it keeps every one.
        self._keep_all = bool(idle_timeout)
        for _ in range(minconn):
            self._connect()

    def __repr__(self) -> str:
        return (
            f"<{type(self).__module__}.{type(self).__name__}"
            f" minconn={self.minconn} maxconn={self.maxconn} at 0x{id(self):x}>"
        )

    @property
    def dsn(self) -> str:
        """The connection string, its password masked."""
        return mask_dsn(self.connect_kwargs.get("dsn", ""))

    # -- checkout ----------------------------------------------------------------

    def getconn(self) -> Connection:
        """Check out a connection: an idle one if any, else a new one.

        Idle connections found broken, or idle for more than ``idle_timeout``
        seconds, are closed and skipped.
        """
        while True:
            conn = self._getconn()
            # The entry belongs to the connection this client now holds: no
            # other thread reads or writes it until the connection is returned.
            idle_since = self.return_times.pop(conn, None)
            if idle_since is None or self._usable(conn, idle_since):
                return conn
            with self._mutex:
                self._forget(self._rused[id(conn)])
            self._close_quietly(conn)

    def _usable(self, conn: Connection, idle_since: float) -> bool:
        """Whether an idle connection may be handed out: open, idle, not too old."""
        if conn.closed or conn.get_transaction_status() != _IDLE:
            return False
        return not self.idle_timeout or idle_since >= perf_counter() - self.idle_timeout

    def _when_empty(self, request: Waiter) -> None:
        # Before opening one more, take back what holders dropped: 1.2 held
        # checked-out connections weakly, so a dropped one never counted.
        if self._used:
            for conn in self._take_orphans():
                self._close_quietly(conn)
        if len(self._used) + self._pending >= self.maxconn:
            raise PoolExhausted("connection pool exhausted")
        self._reserve(request)

    def _refuse(self) -> NoReturn:
        raise self._closed_error()

    def _closed_error(self) -> PoolClosed:
        return PoolClosed("connection pool is closed")

    def _unkeyed_error(self, conn: Any) -> NotFromThisPool:
        return NotFromThisPool(
            "can't return this connection: it was not checked out of this pool,"
            " or was already returned"
        )

    # -- return ------------------------------------------------------------------

    def putconn(self, conn: Connection) -> None:
        """Give a connection back; it is rolled back first if a transaction is open.

        Then idle connections past ``idle_timeout`` are closed, and new ones
        opened if fewer than ``minconn`` are left.
        """
        expired: list[Connection] = []
        closed = discard = restoring = healthy = kept = False
        # A connection counted while it is rolled back is taken back in the
        # finally clause, whatever interrupts the caller (see engine._putconn).
        try:
            with self._mutex:
                if self.closed:
                    closed = True
                else:
                    cid = id(conn)
                    key = self._rused.get(cid)
                    if key is None or self._used.get(key) is not conn:
                        raise self._unkeyed_error(conn)
                    now = perf_counter()
                    if self.idle_timeout:
                        expired = self._take_expired(now - self.idle_timeout)
                    status = conn.get_transaction_status() if not conn.closed else None
                    del self._used[key]
                    del self._rused[cid]
                    if status is None or status == _ext.TRANSACTION_STATUS_UNKNOWN:
                        discard = True  # broken: 1.2 discards it
                    elif not self._keep_all and len(self._pool) >= self.minconn:
                        discard = True
                    elif status != _IDLE or conn.status != _READY:
                        self._pending += 1  # rolled back outside the lock, then kept
                        restoring = True
                    else:
                        self._pool.append(conn)
                        self.return_times[conn] = now
            if restoring:
                healthy = self._restore(conn)
        finally:
            if restoring:
                with self._mutex:
                    self._pending -= 1
                    kept = self._keep_restored(conn, healthy)
        if closed or discard or (restoring and not kept):
            self._close_quietly(conn)
        for old in expired:
            self._close_quietly(old)
        self._refill()

    def _take_expired(self, cutoff: float) -> list[Connection]:
        """Under the lock: take the idle connections that went idle before ``cutoff``.

        The oldest are first in line; an entry missing from ``return_times``
        stops the scan, as in 1.2.
        """
        expired = []
        idle = self.idle_connections
        while idle:
            since = self.return_times.get(idle[0])
            if since is None or since >= cutoff:
                break
            old = idle.popleft()
            del self.return_times[old]
            expired.append(old)
        return expired

    def _release(self, conn: Connection, key: Hashable | None = None) -> None:
        # No client ever waits here: a returned connection goes idle.
        if key is not None:
            del self._used[key]
            del self._rused[id(conn)]
        self._pool.append(conn)
        self.return_times[conn] = perf_counter()

    def _discarded(self, conn: Connection, broken: bool) -> None:
        self._refill()

    # -- housekeeping ------------------------------------------------------------

    def clear(self) -> None:
        """Close every idle connection, whatever ``minconn`` and ``idle_timeout`` say."""
        with self._mutex:
            idle = list(self._pool)
            self._pool.clear()
            self.return_times.clear()
        for conn in idle:
            self._close_quietly(conn)

    def close(self) -> None:
        """Close the pool and all its connections, in use or not.

        A later :meth:`getconn` raises :class:`PoolClosed`; a connection given
        back afterwards is closed. Closing a closed pool does nothing.
        """
        with self._mutex:
            if self.closed:
                return
            self.return_times.clear()
        with suppress(PoolClosed):  # closed by another thread meanwhile
            self._closeall()

    def _after_fork(self) -> None:
        super()._after_fork()
        self.return_times.clear()
        self.lock = self._mutex
