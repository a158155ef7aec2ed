"""AsyncBase: the asyncio pools' I/O on the shared base, on the event loop.

What differs from the threads' pool is how the pool waits and does I/O, not
what it decides (that is :class:`~psycopg2_pool.base.BasePool`'s):

- a client that finds no idle connection is queued by the shared policy
  (``_when_empty``), as an :class:`~psycopg2_pool.async_waiting.AsyncWaiter`
  whose ``serve()``/``fail()`` resolve an asyncio future; the engine's
  ``_wait`` and ``_open_for`` return coroutines here, which ``getconn()``
  awaits (an idle connection is taken synchronously: the engine's lock is
  never held across I/O);
- the pool's workers are :class:`~psycopg2_pool.async_waiting.LoopWorkers`:
  the shared code submits and schedules its tasks (grow, replace, sweep,
  reconnect with backoff) exactly as with threads, and they run on the loop;
- a connection is opened with psycopg2's asynchronous mode
  (:func:`~psycopg2_pool.async_connection.connect`), then filed by the
  shared code, so growth and backoff stay shared;
- a returned connection is restored (abandoned query cancelled, rollback,
  ``reset`` callback) asynchronously, then taken back by the shared code.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import warnings
from collections.abc import Awaitable, Callable, Hashable
from time import monotonic
from types import CoroutineType
from typing import Any, NoReturn, Union, cast

from psycopg2 import extensions as _ext

from . import stats as S
from ._connect_options import split_options
from .async_connection import (
    _AUTOCOMMIT,
    _run,
    abort_query,
    connect,
    discard,
    lend_async,
    maybe_await,
)
from .async_waiting import AsyncWaiter, Filled, LoopWorkers
from .base import BasePool
from .core import ensure_idle
from .decisions import Connection, status_name
from .engine import FOREVER, AbstractConnectionPool, Waiter
from .errors import PoolTimeout
from .workers import Retry, Workers

__all__ = ["AsyncBase", "AsyncConnectionCB"]

logger = logging.getLogger("psycopg2_pool")

AsyncConnectionCB = Callable[[Any], Union[Awaitable[None], None]]

_IDLE = _ext.TRANSACTION_STATUS_IDLE


class AsyncBase(BasePool):
    """The asyncio pools' waiting and I/O (see the module's docstring)."""

    # Set by the pool's __init__; the callbacks may be coroutine functions,
    # which the shared code never sees.
    _aconfigure: AsyncConnectionCB | None
    _acheck: AsyncConnectionCB | None
    _areset: AsyncConnectionCB | None
    _areconnect_failed: Callable[[Any], Any] | None
    _loop: asyncio.AbstractEventLoop | None
    _loop_thread: int
    # A connection (or the error) opened asynchronously, for the engine code
    # that files it: see _new_connection().
    _prepared: Connection | BaseException | None
    _returning: set[asyncio.Task[None]]

    def _make_filled(self) -> Filled:
        return Filled(self._mutex)

    def _warn_open_async(self) -> None:
        warnings.warn(
            f"opening the async pool {type(self).__name__} in the constructor"
            " is deprecated and will not be supported anymore in a future"
            " release. Please use `await pool.open()`, or use the pool as context"
            f" manager using: `async with {type(self).__name__}(...) as pool: `...",
            RuntimeWarning,
            stacklevel=3,
        )

    def _warn_implicit_open(self) -> None:
        # psycopg_pool's async pool gives its constructor warning on first use.
        self._open_implicit = False
        self._warn_open_async()

    def _open(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise RuntimeError(f"{type(self).__name__} open with no running loop") from None
        with self._mutex:
            if self.closed and not self._opened:
                self._loop = loop
                self._loop_thread = threading.get_ident()
        super()._open()

    def _make_workers(self) -> Workers:
        assert self._loop is not None
        return LoopWorkers(self.name, self._loop)

    def _new_waiter(self, key: Hashable) -> Waiter:
        assert self._loop is not None
        return AsyncWaiter(key, self._loop, self._loop_thread)

    def _wait(self, waiter: Waiter, timeout: float | None) -> Any:
        return self._wait_async(cast(AsyncWaiter, waiter), timeout)

    async def _wait_async(self, waiter: AsyncWaiter, timeout: float | None) -> Connection:
        try:
            await waiter.wait(timeout)
        except BaseException as exc:  # cancelled: the engine leaves the queue or gives back
            waiter.interrupt = exc
            with self._mutex:
                if waiter.conn is None:
                    self._stats[S.REQUESTS_ERRORS] += 1
        return super()._wait(waiter, timeout)

    def _open_for(self, request: Waiter, timeout: float | None = None) -> Any:
        return self._open_for_async(request, timeout)

    async def _open_for_async(self, request: Waiter, timeout: float | None) -> Connection:
        # The null pool's clients connect themselves, within their timeout.
        if timeout is not None and timeout >= FOREVER:
            timeout = None
        elif timeout is not None and timeout <= 0:  # no connection is ever ready at once here
            with self._mutex:
                self._unreserve(request)
                raise self._timeout_error(None, timeout)
        deadline = None if timeout is None else monotonic() + timeout
        try:
            conn = await self._new_connection_async(connect_timeout=timeout)
        except BaseException as exc:
            error = None
            with self._mutex:
                self._unreserve(request)
                if deadline is not None and monotonic() >= deadline:
                    error = self._timeout_error(None, timeout)
            if isinstance(exc, Exception):
                self._replace()  # the slot is free again: maybe for a client in line
                if error is not None:
                    raise error from exc
            raise
        self._prepared = conn
        # The engine's filing (not the sync null pool's, which connects on a thread).
        return AbstractConnectionPool._open_for(self, request)

    async def _checked_async(self, conn: Connection, deadline: float, timeout: float) -> Connection:
        """Run the ``check`` callback; try another connection while it fails.

        As in the sync pool: each check is bounded by what is left of the
        client's timeout (a server that stops answering fails the check), a
        connection that fails goes back to the pool, and the client tries
        again at once, then backs off until its deadline.
        """
        check = self._acheck
        assert check is not None
        retry = Retry(deadline)
        while True:
            left = deadline - monotonic()
            if left <= 0:
                # No time left to check it: the connection goes back unused.
                await self._failed_check_async(conn, timed_out=False)
                self._raise_timeout(timeout)
            try:
                await asyncio.wait_for(lend_async(check, conn), left)
                ensure_idle(conn, "check", check)
            except Exception as exc:
                logger.info("connection failed check: %s", self._masked(exc))
                await self._failed_check_async(conn, isinstance(exc, asyncio.TimeoutError))
            except BaseException:
                self._give_back(conn, self._rused.get(id(conn)))
                raise
            else:
                return conn
            delay = retry.next_delay()
            if delay is None:
                self._raise_timeout(timeout)
            if delay:
                await asyncio.sleep(delay)
            conn = await self._next_candidate_async(deadline, timeout)
            if self._roles:
                conn = await self._in_role_async(conn, deadline, timeout)

    async def _in_role_async(self, conn: Connection, deadline: float, timeout: float) -> Connection:
        """The sync pool's ``_in_role``: never hand out a connection whose server
        left the role asked for; it goes, with its siblings, and the client gets
        the next one."""
        while (server := self._left_role(conn)) is not False:
            self._retire_server(server, "at checkout")
            self._discard_checked_out(conn, lost=False)
            conn = await self._next_candidate_async(deadline, timeout)
        return conn

    async def _next_candidate_async(self, deadline: float, timeout: float) -> Connection:
        """The sync pool's ``_next_candidate``: the next connection, in the time left."""
        left = deadline - monotonic()
        if left <= 0:
            self._raise_timeout(timeout)
        try:
            got: Any = self._getconn(self._retry_key(), left)
            conn: Connection = await got if type(got) is CoroutineType else got
        except PoolTimeout:  # counted already
            raise PoolTimeout(
                f"couldn't get a connection from {self.name!r} after {timeout:.2f} sec"
            ) from None
        return conn

    def _raise_timeout(self, timeout: float) -> NoReturn:
        with self._mutex:
            raise self._timeout_error(None, timeout)

    async def _failed_check_async(self, conn: Connection, timed_out: bool) -> None:
        """The sync pool's ``_failed_check``, restoring asynchronously.

        A check cancelled at the deadline may have left a query running: that
        connection is discarded (its query cancelled on the server), not waited for.
        """
        if not self._set_aside(conn, timed_out or conn.isexecuting()):
            return
        # In a task of its own: if this one is cancelled, the return goes on.
        task = asyncio.get_running_loop().create_task(self._restore_failed(conn))
        self._returning.add(task)
        task.add_done_callback(self._returned)
        await asyncio.shield(task)

    async def _restore_failed(self, conn: Connection) -> None:
        try:
            await self._restore_async(conn)
        finally:
            self._file_failed(conn, self._restore(conn))

    def _give_back(self, real: Connection, handle: Any = None) -> asyncio.Task[None]:
        """Restore ``real`` and file it back, in a task that survives cancellation."""
        task = asyncio.get_running_loop().create_task(self._return_async(real, handle))
        self._returning.add(task)
        task.add_done_callback(self._returned)
        return task

    def _returned(self, task: asyncio.Task[None]) -> None:
        self._returning.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error(
                "returning a connection to %r failed", self.name, exc_info=task.exception()
            )

    async def _return_async(self, real: Connection, handle: Any) -> None:
        # ``handle`` is only held: while it is referenced, the sweep never takes
        # the connection for one dropped without being returned.
        try:
            await self._restore_async(real)
        finally:
            self._file_return(real)
            del handle

    def _file_return(self, real: Connection) -> None:
        """The sync pool's return: lifetime, size, waiting clients, stats."""
        # By the handle, claimed already: the real connection is taken back only once.
        handle = self._rused.get(id(real))
        self._take_back(real if handle is None else handle)

    async def _restore_async(self, conn: Connection) -> None:
        """Bring a returned connection back to idle; close it if that fails."""
        try:
            if conn.isexecuting():
                logger.warning("cancelling the query of a returned connection: %r", conn)
                await abort_query(conn)
            status = conn.get_transaction_status()
            if status != _IDLE and not conn.closed and status != _ext.TRANSACTION_STATUS_UNKNOWN:
                logger.warning(
                    "rolling back returned connection (%s): %r", status_name(status), conn
                )
                await _run(conn, "ROLLBACK")
            if self._areset is not None and not conn.closed:
                await lend_async(self._areset, conn)
                await abort_query(conn)
                ensure_idle(conn, "reset", self._areset)
        except Exception as exc:
            logger.warning("error resetting connection: %s", self._masked(exc))
            self._close_quietly(conn)
        except BaseException:
            self._close_quietly(conn)
            raise

    def _restore(self, conn: Connection) -> bool:
        # The sync pool's restore, minus the I/O: done by _restore_async already.
        if conn.closed == 2:  # broken, not closed by its user
            self._lost_server(conn)
        return not conn.closed and conn.get_transaction_status() == _IDLE

    @staticmethod
    def _close_quietly(conn: Connection) -> None:
        # Every close of the pool goes here: stop a query still running first.
        try:
            discard(conn)
        except Exception as exc:  # closing must never fail a caller
            logger.debug("error closing a connection: %s", exc)

    def _new_connection(self, connect_timeout: float | None = None) -> Connection:
        # The sync pool calls this to open a connection; here it was opened
        # asynchronously just before (see _add_connection, _open_for_async).
        prepared, self._prepared = self._prepared, None
        if prepared is None:
            raise RuntimeError("no blocking connect in an async pool")
        if isinstance(prepared, BaseException):
            raise prepared
        return prepared

    def _add_connection(self, attempt: Any = None, growing: bool = False) -> None:
        # Submitted by the shared code to its workers, run on the loop: connect
        # there, then let the shared code file the connection (or back off).
        assert isinstance(self._workers, LoopWorkers)
        self._workers.spawn(self._add_connection_async(attempt, growing))

    async def _add_connection_async(self, attempt: Any, growing: bool) -> None:
        try:
            conn = await self._new_connection_async()
        except Exception as exc:
            self._connect_failed(exc, attempt, growing)
            return
        except BaseException:  # cancelled by close()
            with self._mutex:
                self._pending -= 1
                if growing:
                    self._growing = False
            raise
        self._file_new(conn, growing)

    async def _new_connection_async(self, connect_timeout: float | None = None) -> Connection:
        """Open and configure a connection; nothing in the pool knows of it yet."""
        conninfo = self.conninfo
        if callable(conninfo):
            conninfo = await maybe_await(conninfo())
        kwargs = self.kwargs
        if callable(kwargs):
            kwargs = await maybe_await(kwargs())
        arguments = self._connect_arguments(conninfo, kwargs)
        started = self._connect_attempt()
        try:
            libpq_arguments, options = split_options(arguments)
            dsn = libpq_arguments.pop("dsn")
            conn = await connect(
                dsn,
                connection_factory=self.connection_class,
                timeout=connect_timeout,
                **libpq_arguments,
            )
            if options.cursor_factory is not None:
                conn.cursor_factory = options.cursor_factory
            if options.autocommit:
                # psycopg2's asynchronous connections always autocommit; it is
                # the wrapper that opens transactions, unless told not to.
                _AUTOCOMMIT.add(conn)
        except Exception as exc:
            raise self._connect_error(exc, arguments) from None
        except BaseException:  # cancelled: still an attempt that failed
            self._connect_error(RuntimeError(), arguments)
            raise
        now = monotonic()
        self._connected(now - started)
        if self._aconfigure is not None:
            try:
                await lend_async(self._aconfigure, conn)
                ensure_idle(conn, "configure", self._aconfigure)
            except BaseException:
                self._close_quietly(conn)
                raise
        self._note_birth(conn, now)
        return conn

    def _call_reconnect_failed(self, pool: Any) -> None:
        assert self._areconnect_failed is not None
        result = self._areconnect_failed(pool)
        if asyncio.iscoroutine(result) and isinstance(self._workers, LoopWorkers):
            self._workers.spawn(result)

    def _after_fork(self) -> None:
        # An event loop does not survive fork(): in the child this pool is
        # closed (its inherited connections forgotten, never used).
        AbstractConnectionPool._after_fork(self)
        self._slots.clear()
        self._returning.clear()
        self._filled = Filled(self._mutex)
        self._growing = False
        self._workers = None
        self._opened = True
        self.closed = True
