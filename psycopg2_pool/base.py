"""BasePool: what ConnectionPool and AsyncConnectionPool share.

Everything that decides without waiting: opening and closing, the queue of
clients (who is served first, ``max_waiting``, when to grow), taking a
connection back (its lifetime, its role, to a waiting client or idle),
draining, resizing and fork. The two pools are siblings over it, as in
psycopg_pool: each adds the public methods that wait, blocking or awaitable.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable
from time import monotonic
from typing import Any, cast

from psycopg2 import extensions as _ext

from . import stats as S
from .decisions import Connection
from .engine import Waiter
from .errors import ConnectionReturned, NotFromThisPool, PoolClosed, PoolError, TooManyRequests
from .upkeep import Upkeep
from .workers import Workers
from .wrapper import RETURNED

__all__ = ["BasePool"]

logger = logging.getLogger("psycopg2_pool")

_IDLE = _ext.TRANSACTION_STATUS_IDLE
_READY = _ext.STATUS_READY


class BasePool(Upkeep):
    """The base of the psycopg_pool-style pools (see the module's docstring)."""

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

    def _getkey(self) -> Hashable:
        # Called under the lock for every request: the place to count them, and
        # to note how few idle connections are left once it takes one.
        # The key is the (still empty) handle the client will get.
        self._requests += 1
        idle_left = max(len(self._pool) - 1, 0)
        if idle_left < self._idle_low:
            self._idle_low = idle_left
        handle: Hashable = self._new_handle(self._handle_class)
        return handle

    def _when_empty(self, request: Waiter) -> None:
        first = not self._waiters
        self._enqueue(request)
        if first and self._size() >= self.maxconn:
            self._reclaim_dropped()
        self._grow()

    def _enqueue(self, request: Waiter) -> None:
        """Under the lock: put a client in line, unless ``max_waiting`` are there already."""
        if self.max_waiting and len(self._waiters) >= self.max_waiting:
            self._stats[S.REQUESTS_ERRORS] += 1
            raise TooManyRequests(
                f"the pool {self.name!r} has already {len(self._waiters)} requests waiting"
            )
        self._waiters[request] = None
        self._stats[S.REQUESTS_QUEUED] += 1

    def _take_back(self, conn: Any) -> None:
        """Give back a connection: the handle, or the real connection it wraps.

        A connection is taken back by its real object only once in its life.
        """
        # ConnectionPool.putconn is this very function; the asyncio pool calls
        # it once the connection is restored. A connection ready for reuse is
        # filed without I/O; anything else is restored or closed, the
        # engine's way.
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
        life = self._slots.get(id(real))
        now = monotonic()
        close = life is None or life.expires <= now
        if life is not None:
            life.idle_since = now
            life.stack = None  # a checkout noted for leak reports ends here
            if life.verified < self._suspect_before and not close:
                close = not self._verify(real, life)
            if life.off_role is not None and not close and not real.closed and life.off_role(real):
                close = True
                self._retire_server(life.server, "on return")
        if not close and not self._always_settle:
            # The common case, decided without I/O under the lock: the engine
            # gives the connection to the longest waiting client, or keeps it
            # idle. Anything else (closing, rolling back...) goes the engine's
            # way below.
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
                    self._release(real, handle)
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
            life = self._slots.get(id(conn))
            if life is not None:
                if life.given_back_raw:
                    raise ConnectionReturned(
                        "this connection was already returned to the pool by the real"
                        " connection once: it is checked out again now, maybe by another"
                        " client; give back the handle getconn() returned"
                    )
                life.given_back_raw = True
            cast(Any, handle).__wrapped__ = RETURNED
        return conn, handle

    def _unkeyed_error(self, conn: Any) -> PoolError:
        return NotFromThisPool(
            f"can't return connection to pool {self.name!r}: it was not checked out of it,"
            " or was already returned"
        )

    def _shut(self, timeout: float) -> None:
        """Close the pool (see ``close()``); wait up to ``timeout`` seconds for
        the workers (the asyncio pool's stop at once: it awaits them after)."""
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

    def _drain(self) -> None:
        """Replace every connection: idle ones now, the others when given back."""
        with self._mutex:
            idle = list(self._pool)
            self._pool.clear()
            for life in self._slots.values():
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

    def _resize(self, min_size: int, max_size: int | None) -> None:
        """Change ``min_size`` and ``max_size`` while the pool runs."""
        min_size, max_size = self._check_size(min_size, max_size)
        logger.info("resizing %r to min_size=%s max_size=%s", self.name, min_size, max_size)
        with self._mutex:
            self.minconn = min_size
            self.maxconn = max_size
            grow = 0 if self.closed else max(0, min_size - self._size())
            for _ in range(grow):
                self._spawn(1, self._add_connection)

    def _after_fork(self) -> None:
        super()._after_fork()
        self._slots.clear()
        self._filled = self._make_filled()
        self._growing = False
        if self._workers is not None:
            # The parent's threads do not exist here: start the child's own.
            self._workers = self._make_workers()
            self._start_filling()
