"""AsyncConnectionPool and AsyncNullConnectionPool: psycopg_pool 3.3's asyncio pools on psycopg2.

They are :class:`~psycopg2_pool.ConnectionPool` and
:class:`~psycopg2_pool.NullConnectionPool` with their blocking points made
awaitable; the waiting queue, sizing, lifetime, maintenance and statistics
are the sync pools' own code, run on the event loop:

- a client that finds no idle connection is queued by the sync policy
  (``_when_empty``), as an :class:`AsyncWaiter` whose ``serve()``/``fail()``
  resolve an asyncio future; the engine's ``_wait`` and ``_open_for`` return
  coroutines, which ``getconn()`` awaits (the fast path, an idle connection,
  is taken synchronously: the engine's lock is never held across I/O);
- the pool's "workers" are :class:`_LoopWorkers`: the sync pool submits and
  schedules its tasks (grow, replace, sweep, reconnect with backoff) exactly
  as with threads, and they run as callbacks and tasks on the loop;
- a connection is opened with psycopg2's asynchronous mode
  (:func:`~psycopg2_pool.async_connection.connect`); the sync pool's
  ``_add_connection`` then files it, so growth and backoff stay shared;
- a returned connection is restored (abandoned query cancelled, rollback,
  ``reset`` callback) asynchronously, then given to the sync ``putconn``.

The public methods that do I/O or wait are coroutines, as in psycopg_pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import traceback
import warnings
from collections.abc import Awaitable, Callable, Coroutine, Hashable
from time import monotonic
from types import CoroutineType, TracebackType
from typing import Any, NoReturn, TypeVar, Union, cast

import psycopg2
from psycopg2 import extensions as _ext

from . import stats as S
from ._connect_options import split_options
from .async_connection import (
    _AUTOCOMMIT,
    AsyncPooledConnection,
    _run,
    abort_query,
    connect,
    discard,
    lend_async,
    maybe_await,
)
from .engine import FOREVER, AbstractConnectionPool, Connection, Waiter, status_name
from .errors import PoolTimeout
from .null_pool import NullConnectionPool
from .pool import ConnectionPool, _ensure_idle
from .workers import Backoff, Retry, Task, WeakCall, Workers
from .wrapper import RETURNED

__all__ = ["AsyncConnectionPool", "AsyncNullConnectionPool"]

logger = logging.getLogger("psycopg2_pool")

AsyncConnectionCB = Callable[[Any], Union[Awaitable[None], None]]
AsyncConninfoParam = Union[str, Callable[[], Union[str, Awaitable[str]]]]
AsyncKwargsParam = Union[
    dict[str, Any], Callable[[], Union[dict[str, Any], Awaitable[dict[str, Any]]]]
]
_P = TypeVar("_P", bound="AsyncConnectionPool")

_IDLE = _ext.TRANSACTION_STATUS_IDLE


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class AsyncWaiter(Waiter):
    """A client's place in the queue, woken through an asyncio future.

    The engine serves (or fails) it under its lock, from the loop or from any
    thread; the client awaits :meth:`wait` on the loop, then lets the engine's
    own ``_wait`` settle the outcome (served, timed out, interrupted).
    """

    __slots__ = ("_future", "_loop", "_thread", "interrupt")

    def __init__(self, key: Hashable, loop: asyncio.AbstractEventLoop, thread: int) -> None:
        self.key = key
        self.conn: Connection | None = None
        self.error: BaseException | None = None
        self._loop = loop
        self._thread = thread
        self._future: asyncio.Future[None] = loop.create_future()
        self.interrupt: BaseException | None = None
        self.reserved = False
        self.since = monotonic()
        self.wake = self._wake

    def serve(self, conn: Connection) -> None:
        self.conn = conn
        self._wake()

    def fail(self, error: BaseException) -> None:
        self.error = error
        self._wake()

    def _wake(self) -> None:
        if threading.get_ident() == self._thread:
            _wake(self._future)
        else:
            # RuntimeError: the loop is closed, nobody is waiting any more.
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(_wake, self._future)

    async def wait(self, timeout: float | None) -> None:
        """Wait until served, failed, or ``timeout`` seconds passed."""
        fut = self._future
        if fut.done():
            return
        timer = None if timeout is None else self._loop.call_later(max(timeout, 0.0), _wake, fut)
        try:
            await fut
        finally:
            if timer is not None:
                timer.cancel()

    def sleep(self, timeout: float | None) -> bool:
        # The engine's _wait calls this once the awaiting is over: it never blocks.
        if self.interrupt is not None:
            raise self.interrupt
        return self.conn is not None or self.error is not None


class _LoopWorkers(Workers):
    """The pool's workers as event loop callbacks and tasks: no thread.

    The sync pool submits and schedules its maintenance tasks here as it does
    to its worker threads; a task that needs I/O spawns a coroutine.
    """

    def __init__(self, name: str, loop: asyncio.AbstractEventLoop) -> None:
        # No super().__init__(): it would start threads.
        self.name = name
        self._loop = loop
        self._thread = threading.get_ident()
        self._stopping = False
        self._handles: set[asyncio.TimerHandle] = set()
        self._running: set[asyncio.Task[Any]] = set()

    def _call(self, callback: Callable[..., object], *args: Any) -> None:
        if threading.get_ident() == self._thread:
            callback(*args)
        else:
            self._loop.call_soon_threadsafe(callback, *args)

    def submit(self, method: Callable[..., object], *args: Any) -> None:
        self.post(WeakCall(method, args))

    def post(self, task: Task) -> None:
        self._call(self._loop.call_soon, self._run, task)

    def schedule(self, delay: float, method: Callable[..., object], *args: Any) -> None:
        self._call(self._schedule, delay, WeakCall(method, args))

    # Connects never block the loop: an alarm can be an ordinary timer.
    alarm = schedule

    def _schedule(self, delay: float, task: Task) -> None:
        if self._stopping:
            return
        holder: list[asyncio.TimerHandle] = []

        def fire() -> None:
            self._handles.discard(holder[0])
            self._run(task)

        holder.append(self._loop.call_later(delay, fire))
        self._handles.add(holder[0])

    def _run(self, task: Task) -> None:
        if self._stopping:
            return
        try:
            task()
        except Exception:  # a failing task must not go unnoticed, nor stop the others
            logger.exception("task %r failed in pool %r", task, self.name)

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` as a task of the pool (on the loop thread)."""
        if self._stopping:
            coro.close()
            return
        task = self._loop.create_task(coro)
        self._running.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._running.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("task failed in pool %r", self.name, exc_info=task.exception())

    def stop(self, timeout: float) -> None:
        """Stop taking tasks and cancel the timers; see :meth:`join` for the running ones."""
        self.signal_stop()

    def signal_stop(self) -> None:
        self._stopping = True
        with contextlib.suppress(RuntimeError):  # the loop is closed already
            self._call(self._cancel_timers)

    def _cancel_timers(self) -> None:
        for handle in self._handles:
            handle.cancel()
        self._handles.clear()

    async def join(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for the running tasks, then cancel them."""
        running = set(self._running)
        if not running:
            return
        _, late = await asyncio.wait(running, timeout=timeout)
        if late:
            logger.warning("%s tasks of pool %r still running: cancelled", len(late), self.name)
            for task in late:
                task.cancel()
            await asyncio.wait(late)


class _Filled(threading.Condition):
    """The sync pool's "filled" condition, which also wakes awaiting ``wait()`` calls."""

    def __init__(self, lock: Any) -> None:
        super().__init__(lock)
        self._futures: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    def future(self, loop: asyncio.AbstractEventLoop) -> asyncio.Future[None]:
        """Under the lock: a future resolved at the next :meth:`notify_all`."""
        fut: asyncio.Future[None] = loop.create_future()
        self._futures.append((loop, fut))
        return fut

    def notify_all(self) -> None:
        super().notify_all()
        futures, self._futures = self._futures, []
        for loop, fut in futures:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_wake, fut)


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
        try:
            await self.handle.__aexit__(exc_type, exc, tb)
        finally:
            self.pool._usage_seconds += monotonic() - self.started

    def __enter__(self) -> NoReturn:
        raise TypeError("use 'async with pool.connection() as conn' with an async pool")

    def __exit__(self, *exc: object) -> None:  # pragma: no cover - __enter__ raises
        pass


# The public coroutines below override blocking methods of the sync pool with
# the same names, as psycopg_pool's async pool mirrors its sync one: mypy sees
# incompatible overrides there, by design.


class AsyncConnectionPool(ConnectionPool):
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
            cast(Any, conninfo),
            connection_class=connection_class,
            kwargs=cast(Any, kwargs),
            min_size=min_size,
            max_size=max_size,
            open=False,
            name=name,
            close_returns=close_returns,
            timeout=timeout,
            max_waiting=max_waiting,
            max_lifetime=max_lifetime,
            max_idle=max_idle,
            reconnect_timeout=reconnect_timeout,
            num_workers=num_workers,
            leak_timeout=leak_timeout,
            **connect_kwargs,
        )
        # The callbacks may be coroutine functions: the sync pool never sees them.
        self._aconfigure = configure
        self._acheck = check
        self._areset = reset
        self._areconnect_failed = reconnect_failed
        if reconnect_failed is not None:
            self._reconnect_failed = self._call_reconnect_failed
        self._handle_class = cast(Any, AsyncPooledConnection.for_pool(self))
        self._new_handle = self._handle_class.__new__
        self._filled = _Filled(self._mutex)
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

    # -- opening and closing --------------------------------------------------------

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

    async def open(self, wait: bool = False, timeout: float = 30.0) -> None:  # type: ignore[override]
        """Open the pool: start filling it to ``min_size`` on the running loop.

        Opening an open pool does nothing; a closed pool cannot be opened again.
        With ``wait``, wait until ``min_size`` connections are ready (see :meth:`wait`).
        """
        self._open()
        if wait:
            await self.wait(timeout)

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
        return _LoopWorkers(self.name, self._loop)

    def _new_waiter(self, key: Hashable) -> Waiter:
        assert self._loop is not None
        return AsyncWaiter(key, self._loop, self._loop_thread)

    async def wait(self, timeout: float = 30.0) -> None:  # type: ignore[override]
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
                fut = cast(_Filled, self._filled).future(loop)
            remaining = deadline - monotonic()
            if remaining <= 0:
                await self.close()
                raise PoolTimeout(
                    f"pool {self.name!r} initialization incomplete after {timeout} sec"
                )
            timer = loop.call_later(remaining, _wake, fut)
            try:
                await fut
            finally:
                timer.cancel()
        logger.info("pool %r is ready to use", self.name)

    async def close(self, timeout: float = 5.0) -> None:  # type: ignore[override]
        """Close the pool: waiting and new clients get :class:`PoolClosed`.

        Idle connections are closed now; connections in use are closed when
        they are given back. Wait up to ``timeout`` seconds for the pool's tasks.
        """
        workers = self._workers
        super().close(timeout)
        if isinstance(workers, _LoopWorkers):
            await workers.join(timeout)
        if self._returning:
            await asyncio.wait(set(self._returning), timeout=timeout)

    def __enter__(self) -> NoReturn:
        raise TypeError(f"use 'async with {type(self).__name__}(...) as pool'")

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

    # -- checkout -----------------------------------------------------------------

    def connection(self, timeout: float | None = None) -> _AsyncConnectionContext:  # type: ignore[override]
        """Async context manager: a connection for the ``async with`` block.

        Wait up to ``timeout`` (default: the pool's) for one. At the end of the
        block commit, or roll back if it raised, and give the connection back.
        """
        return _AsyncConnectionContext(self, timeout)

    async def getconn(self, timeout: float | None = None) -> Any:  # type: ignore[override]
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
        if self._acheck is not None:
            conn = await self._checked_async(conn, deadline, timeout)
        handle: Any = self._rused[id(conn)]
        handle.__wrapped__ = conn
        if self.leak_timeout is not None:
            self._checkouts[id(handle)] = (monotonic(), traceback.format_stack()[:-1])
        return handle

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
                _ensure_idle(conn, "check", check)
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
            left = deadline - monotonic()
            if left <= 0:
                self._raise_timeout(timeout)
            try:
                got: Any = self._getconn(self._retry_key(), left)
                conn = await got if type(got) is CoroutineType else got
            except PoolTimeout:  # counted already
                raise PoolTimeout(
                    f"couldn't get a connection from {self.name!r} after {timeout:.2f} sec"
                ) from None

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

    # -- return -------------------------------------------------------------------

    async def putconn(self, conn: Any) -> None:  # type: ignore[override]
        """Give back a connection: the handle, or the real connection it wraps.

        A connection is taken back by its real object only once in its life.
        """
        real, handle = self._claim(conn)
        if real.closed or (real.get_transaction_status() == _IDLE and self._areset is None):
            self._file_return(real)  # nothing to restore: no I/O, no task
            return
        # Restore in a task of its own: if this one is cancelled, the return goes on.
        await asyncio.shield(self._give_back(real, handle))

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
        super().putconn(real if handle is None else handle)

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
                _ensure_idle(conn, "reset", self._areset)
        except Exception as exc:
            logger.warning("error resetting connection: %s", self._masked(exc))
            self._close_quietly(conn)
        except BaseException:
            self._close_quietly(conn)
            raise

    def _restore(self, conn: Connection) -> bool:
        # The sync pool's restore, minus the I/O: done by _restore_async already.
        return not conn.closed and conn.get_transaction_status() == _IDLE

    @staticmethod
    def _close_quietly(conn: Connection) -> None:
        # Every close of the pool goes here: stop a query still running first.
        try:
            discard(conn)
        except Exception as exc:  # closing must never fail a caller
            logger.debug("error closing a connection: %s", exc)

    # -- connecting ---------------------------------------------------------------

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
        # Submitted by the sync pool to its workers, run on the loop: connect
        # there, then let the sync code file the connection (or back off).
        assert isinstance(self._workers, _LoopWorkers)
        self._workers.spawn(self._add_connection_async(attempt, growing))

    async def _add_connection_async(self, attempt: Any, growing: bool) -> None:
        try:
            self._prepared = await self._new_connection_async()
        except Exception as exc:
            self._prepared = exc
        except BaseException:  # cancelled by close()
            with self._mutex:
                self._pending -= 1
                if growing:
                    self._growing = False
            raise
        super()._add_connection(attempt, growing)

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
                _ensure_idle(conn, "configure", self._aconfigure)
            except BaseException:
                self._close_quietly(conn)
                raise
        self._note_birth(conn, now)
        return conn

    def _call_reconnect_failed(self, pool: Any) -> None:
        assert self._areconnect_failed is not None
        result = self._areconnect_failed(pool)
        if asyncio.iscoroutine(result) and isinstance(self._workers, _LoopWorkers):
            self._workers.spawn(result)

    async def reconnect_failed(self) -> None:
        """Called when reconnection failed for longer than ``reconnect_timeout``."""
        if self._areconnect_failed is not None:
            await maybe_await(self._areconnect_failed(self))

    # -- maintenance ----------------------------------------------------------------

    async def check(self) -> None:  # type: ignore[override]
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
            life = self._lives.get(id(conn))
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
    async def check_connection(conn: Any) -> None:  # type: ignore[override]
        """Raise if ``conn`` does not answer a trivial query; use it as ``check=``."""
        conn = getattr(conn, "__wrapped__", conn)
        if conn is RETURNED or conn.closed:
            raise psycopg2.OperationalError("the connection is closed")
        if conn.isexecuting():
            await abort_query(conn)
        # Outside any transaction: psycopg2's asynchronous connections autocommit.
        await _run(conn, "SELECT 1")

    def _after_fork(self) -> None:
        # An event loop does not survive fork(): in the child this pool is
        # closed (its inherited connections forgotten, never used).
        AbstractConnectionPool._after_fork(self)
        self._lives.clear()
        self._checkouts.clear()
        self._leaks_reported.clear()
        self._returning.clear()
        self._filled = _Filled(self._mutex)
        self._growing = False
        self._workers = None
        self._opened = True
        self.closed = True

    async def drain(self) -> None:  # type: ignore[override]
        """Replace every connection: idle ones now, the others when given back."""
        super().drain()

    async def resize(self, min_size: int, max_size: int | None = None) -> None:  # type: ignore[override]
        """Change ``min_size`` and ``max_size`` while the pool runs."""
        super().resize(min_size, max_size)


class AsyncNullConnectionPool(AsyncConnectionPool, NullConnectionPool):
    """An asyncio pool that opens a connection per checkout and closes it on return.

    :class:`~psycopg2_pool.NullConnectionPool`'s policies on the async pool.
    """

    def __init__(
        self, conninfo: AsyncConninfoParam = "", *, min_size: int = 0, **kwargs: Any
    ) -> None:
        kwargs["close_returns"] = False  # giving back closes already
        super().__init__(conninfo, min_size=min_size, **kwargs)

    async def wait(self, timeout: float = 30.0) -> None:  # type: ignore[override]
        """Check that a connection can be made, trying for up to ``timeout`` seconds.

        Failed attempts are logged and retried with exponential backoff, each
        bounded by the time left; the connection made is closed at once. At
        the deadline close the pool and raise :class:`PoolTimeout`.
        """
        if self._open_implicit:
            self._warn_implicit_open()
        with self._mutex:
            if self.closed:
                raise self._closed_error()
        logger.info("waiting for pool %r initialization", self.name)
        deadline = monotonic() + timeout
        backoff = Backoff(timeout)
        error: Exception | None = None
        while (left := deadline - monotonic()) > 0:
            try:
                conn = await self._new_connection_async(connect_timeout=left)
            except Exception as exc:
                error = exc
                logger.warning("error connecting in %r: %s", self.name, self._masked(exc))
            else:
                self._drop(conn)
                logger.info("pool %r is ready to use", self.name)
                return
            delay = backoff.next_delay(monotonic())
            if delay is None:
                break
            await asyncio.sleep(min(delay, deadline - monotonic()))
            with self._mutex:
                if self.closed:
                    raise self._closed_error()
        await self.close()
        raise PoolTimeout(
            f"pool {self.name!r} initialization incomplete after {timeout} sec"
        ) from error

    async def check(self) -> None:  # type: ignore[override]
        """Nothing to check: the pool holds no idle connection."""

    async def resize(self, min_size: int, max_size: int | None = None) -> None:  # type: ignore[override]
        """Change ``max_size``; ``min_size`` must stay 0."""
        NullConnectionPool.resize(self, min_size, max_size)
