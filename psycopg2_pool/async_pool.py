"""AsyncConnectionPool: psycopg_pool 3.3's asyncio pool on psycopg2.

The sibling of :class:`~psycopg2_pool.ConnectionPool` over the shared
:class:`~psycopg2_pool.base.BasePool`, as in psycopg_pool: the same
parameters, decisions and statistics, with the public methods that do I/O or
wait made coroutines (:mod:`.async_base` holds how it waits and does I/O).
"""

from __future__ import annotations

import asyncio
import logging
import traceback
from collections.abc import Awaitable, Callable
from time import monotonic
from types import CoroutineType, TracebackType
from typing import Any, NoReturn, TypeVar, Union, cast

import psycopg2
from psycopg2 import extensions as _ext

from . import stats as S
from .async_base import AsyncBase, AsyncConnectionCB
from .async_connection import AsyncPooledConnection, _run, abort_query, maybe_await
from .async_waiting import Filled, LoopWorkers, wake
from .decisions import Connection
from .errors import PoolTimeout
from .roles import READ_ONLY_SQL_TRANSACTION
from .wrapper import RETURNED

__all__ = ["AsyncConnectionPool"]

logger = logging.getLogger("psycopg2_pool")

AsyncConninfoParam = Union[str, Callable[[], Union[str, Awaitable[str]]]]
AsyncKwargsParam = Union[
    dict[str, Any], Callable[[], Union[dict[str, Any], Awaitable[dict[str, Any]]]]
]
_P = TypeVar("_P", bound="AsyncConnectionPool")

_IDLE = _ext.TRANSACTION_STATUS_IDLE


class _AsyncConnectionContext:
    """What ``pool.connection()`` returns: checks out on enter, gives back on exit."""

    __slots__ = ("handle", "pool", "started", "timeout")

    def __init__(self, pool: AsyncConnectionPool, timeout: float | None) -> None:
        self.pool = pool
        self.timeout = timeout

    async def __aenter__(self) -> Any:
        self.handle = await self.pool.getconn(self.timeout)
        self.started = monotonic()
        return self.handle

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        pool = self.pool
        try:
            if (
                exc_type is not None
                and pool._roles
                and getattr(exc, "pgcode", None) == READ_ONLY_SQL_TRANSACTION
            ):
                conn = pool._used.get(self.handle)
                if conn is not None:  # not given back inside the block already
                    pool._read_only_error(conn)
            await self.handle.__aexit__(exc_type, exc, tb)
        finally:
            pool._usage_seconds += monotonic() - self.started

    def __enter__(self) -> NoReturn:
        raise TypeError("use 'async with pool.connection() as conn' with an async pool")

    def __exit__(self, *exc: object) -> None:  # pragma: no cover - __enter__ raises
        pass


class AsyncConnectionPool(AsyncBase):
    """A psycopg_pool-style asyncio pool of psycopg2 asynchronous connections.

    ``async with pool.connection() as conn:`` checks a connection out,
    commits (or rolls back) at the end of the block and gives it back; the
    connection never blocks the event loop. Same parameters as
    :class:`~psycopg2_pool.ConnectionPool`; ``configure``, ``check``,
    ``reset``, ``reconnect_failed``, and callable ``conninfo`` / ``kwargs``
    may be coroutine functions.
    """

    def __init__(
        self,
        conninfo: AsyncConninfoParam = "",
        *,
        connection_class: type[Connection] = Connection,
        kwargs: AsyncKwargsParam | None = None,
        min_size: int = 4,
        max_size: int | None = None,
        open: bool | None = None,
        configure: AsyncConnectionCB | None = None,
        check: AsyncConnectionCB | None = None,
        reset: AsyncConnectionCB | None = None,
        name: str | None = None,
        close_returns: bool = False,
        timeout: float = 30.0,
        max_waiting: int = 0,
        max_lifetime: float = 60 * 60.0,
        max_idle: float = 10 * 60.0,
        reconnect_timeout: float = 5 * 60.0,
        reconnect_failed: Callable[[Any], Any] | None = None,
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
            configure=None,
            check=None,
            reset=None,
            name=name,
            close_returns=close_returns,
            timeout=timeout,
            max_waiting=max_waiting,
            max_lifetime=max_lifetime,
            max_idle=max_idle,
            reconnect_timeout=reconnect_timeout,
            reconnect_failed=None,
            num_workers=num_workers,
            leak_timeout=leak_timeout,
            connect_kwargs=connect_kwargs,
        )
        # The callbacks may be coroutine functions: the sync pool never sees them.
        self._aconfigure = configure
        self._acheck = check
        self._areset = reset
        self._areconnect_failed = reconnect_failed
        if reconnect_failed is not None:
            self._reconnect_failed = self._call_reconnect_failed
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        # A connection (or the error) opened asynchronously, for the sync code
        # that files it: see _new_connection().
        self._prepared: Connection | BaseException | None = None
        self._returning: set[asyncio.Task[None]] = set()

        if open:
            self._warn_open_async()
        if open is None:
            open = self._open_implicit = True
        if open:
            self._open()

    def _make_handle_class(self) -> type[AsyncPooledConnection]:
        return AsyncPooledConnection.for_pool(self)

    async def open(self, wait: bool = False, timeout: float = 30.0) -> None:
        """Open the pool: start filling it to ``min_size`` on the running loop.

        Opening an open pool does nothing; a closed pool cannot be opened again.
        With ``wait``, wait until ``min_size`` connections are ready (see :meth:`wait`).
        """
        self._open()
        if wait:
            await self.wait(timeout)

    async def wait(self, timeout: float = 30.0) -> None:
        """Wait until the pool holds ``min_size`` connections.

        On timeout close the pool and raise :class:`PoolTimeout`.
        """
        if self._open_implicit:
            self._warn_implicit_open()
        deadline = monotonic() + timeout
        logger.info("waiting for pool %r initialization", self.name)
        loop = asyncio.get_running_loop()
        while True:
            with self._mutex:
                if self.closed:
                    raise self._closed_error()
                if len(self._pool) >= self.minconn:
                    break
                fut = cast(Filled, self._filled).future(loop)
            remaining = deadline - monotonic()
            if remaining <= 0:
                await self.close()
                raise PoolTimeout(
                    f"pool {self.name!r} initialization incomplete after {timeout} sec"
                )
            timer = loop.call_later(remaining, wake, fut)
            try:
                await fut
            finally:
                timer.cancel()
        logger.info("pool %r is ready to use", self.name)

    async def close(self, timeout: float = 5.0) -> None:
        """Close the pool: waiting and new clients get :class:`PoolClosed`.

        Idle connections are closed now; connections in use are closed when
        they are given back. Wait up to ``timeout`` seconds for the pool's tasks.
        """
        workers = self._workers
        self._shut(timeout)
        if isinstance(workers, LoopWorkers):
            await workers.join(timeout)
        if self._returning:
            await asyncio.wait(set(self._returning), timeout=timeout)

    def __enter__(self) -> NoReturn:
        raise TypeError(f"use 'async with {type(self).__name__}(...) as pool'")

    def __exit__(self, *exc: object) -> None:  # pragma: no cover - __enter__ raises
        pass

    async def __aenter__(self: _P) -> _P:
        self._open_implicit = False
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def connection(self, timeout: float | None = None) -> _AsyncConnectionContext:
        """Async context manager: a connection for the ``async with`` block.

        Wait up to ``timeout`` (default: the pool's) for one. At the end of the
        block commit, or roll back if it raised, and give the connection back.
        """
        return _AsyncConnectionContext(self, timeout)

    async def getconn(self, timeout: float | None = None) -> Any:
        """Check a connection out; wait up to ``timeout`` seconds for one.

        Give it back with :meth:`putconn` (or use it with ``async with``).
        """
        if self._open_implicit:
            self._warn_implicit_open()
        if timeout is None:
            timeout = self.timeout
        deadline = monotonic() + timeout
        got: Any = self._getconn(None, timeout)
        conn: Connection = await got if type(got) is CoroutineType else got
        if self._roles:
            conn = await self._in_role_async(conn, deadline, timeout)
        if self._acheck is not None:
            conn = await self._checked_async(conn, deadline, timeout)
        handle: Any = self._rused[id(conn)]
        handle.__wrapped__ = conn
        if self.leak_timeout is not None:
            slot = self._slots.get(id(conn))
            if slot is not None:
                slot.checked_out(monotonic(), traceback.format_stack()[:-1])
        return handle

    async def putconn(self, conn: Any) -> None:
        """Give back a connection: the handle, or the real connection it wraps.

        A connection is taken back by its real object only once in its life.
        """
        real, handle = self._claim(conn)
        if real.closed or (real.get_transaction_status() == _IDLE and self._areset is None):
            self._file_return(real)  # nothing to restore: no I/O, no task
            return
        # Restore in a task of its own: if this one is cancelled, the return goes on.
        await asyncio.shield(self._give_back(real, handle))

    async def reconnect_failed(self) -> None:
        """Called when reconnection failed for longer than ``reconnect_timeout``."""
        if self._areconnect_failed is not None:
            await maybe_await(self._areconnect_failed(self))

    async def check(self) -> None:
        """Check the idle connections now; replace those that fail.

        A pool below ``min_size`` (its reconnection attempts gave up, say)
        starts growing back to it.
        """
        with self._mutex:
            conns = list(self._pool)
            self._pool.clear()
            self._pending += len(conns)
            self._grow_to_min_size()
        for conn in conns:
            life = self._slots.get(id(conn))
            ok = life is not None and life.expires > monotonic()
            if ok:
                try:
                    await self.check_connection(conn)
                except BaseException as exc:
                    ok = False
                    logger.warning("discarding broken connection: %s", self._masked(exc))
                    with self._mutex:
                        self._stats[S.CONNECTIONS_LOST] += 1
                    if not isinstance(exc, Exception):
                        with self._mutex:
                            self._pending -= 1
                        self._drop(conn)
                        self._replace()
                        raise
            with self._mutex:
                self._pending -= 1
                if ok and not self.closed:
                    self._release(conn)
                    continue
            self._drop(conn)
            self._replace()

    @staticmethod
    async def check_connection(conn: Any) -> None:
        """Raise if ``conn`` does not answer a trivial query; use it as ``check=``."""
        conn = getattr(conn, "__wrapped__", conn)
        if conn is RETURNED or conn.closed:
            raise psycopg2.OperationalError("the connection is closed")
        if conn.isexecuting():
            await abort_query(conn)
        # Outside any transaction: psycopg2's asynchronous connections autocommit.
        await _run(conn, "SELECT 1")

    async def drain(self) -> None:
        """Replace every connection: idle ones now, the others when given back."""
        self._drain()

    async def resize(self, min_size: int, max_size: int | None = None) -> None:
        """Change ``min_size`` and ``max_size`` while the pool runs."""
        self._resize(min_size, max_size)
