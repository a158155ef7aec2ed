"""psycopg2 connections for asyncio: psycopg2's asynchronous mode, awaited as psycopg 3.

psycopg2 opened with ``async_=True`` never blocks: a query is sent, and
``conn.poll()`` says whether the socket must become readable or writable
before it can go on. Here those waits are the event loop's own readiness
callbacks (``add_reader`` / ``add_writer``), so a query costs no thread.

psycopg2's asynchronous connections are always in autocommit mode: the
wrappers below open (``BEGIN``) and end (``COMMIT`` / ``ROLLBACK``)
transactions themselves, so that code written for psycopg 3's
``AsyncConnection`` keeps its transaction semantics. What the asynchronous
mode cannot do raises :class:`AsyncModeNotSupported`.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import ipaddress
import logging
import socket
import threading
import weakref
from collections.abc import Iterable
from time import monotonic
from types import TracebackType
from typing import TYPE_CHECKING, Any, NoReturn, Protocol

import psycopg2
import wrapt
from psycopg2 import extensions as _ext
from psycopg2 import sql as _sql

from .decisions import status_name
from .errors import ConnectionReturned
from .wrapper import RETURNED


class AsyncOwner(Protocol):
    """What an asyncio handle needs of the pool it comes from."""

    name: str
    close_returns: bool

    async def putconn(self, conn: Any) -> None: ...


__all__ = [
    "AsyncConnection",
    "AsyncCursor",
    "AsyncModeNotSupported",
    "AsyncPooledConnection",
    "abort_query",
    "connect",
    "discard",
    "lend_async",
    "wait_ready",
]

logger = logging.getLogger("psycopg2_pool")

Connection = _ext.connection

_POLL_OK = _ext.POLL_OK
_POLL_READ = _ext.POLL_READ
_POLL_WRITE = _ext.POLL_WRITE
_IDLE = _ext.TRANSACTION_STATUS_IDLE
_INTRANS = _ext.TRANSACTION_STATUS_INTRANS
_INERROR = _ext.TRANSACTION_STATUS_INERROR

#: Real connections switched to autocommit with ``await conn.set_autocommit(True)``.
#: The state belongs to the server connection, so it survives checkouts, as in psycopg 3.
_AUTOCOMMIT: weakref.WeakSet[Connection] = weakref.WeakSet()

#: id(connection) -> the cursor of a query abandoned by a cancelled task, kept
#: alive until the query is dropped (see _execute). The cursor holds the
#: connection, so the id cannot be reused meanwhile.
_PARKED: dict[int, Any] = {}


class AsyncModeNotSupported(psycopg2.NotSupportedError):
    """psycopg2's asynchronous mode, which the async pools run on, cannot do this."""


def _unsupported(what: str, hint: str = "") -> NoReturn:
    raise AsyncModeNotSupported(
        f"{what} is not available on psycopg2's asynchronous connections"
        f" (used by the async pools){': ' + hint if hint else ''}"
    )


# -- waiting on the socket ------------------------------------------------------


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


async def wait_ready(conn: Connection, deadline: float | None = None) -> None:
    """Drive ``conn.poll()`` until the current operation is complete.

    The socket waits are the event loop's readiness callbacks. Errors of the
    operation (a failed query...) are raised from here. With ``deadline``
    (a ``time.monotonic()`` value), raise ``OperationalError`` once it passed.
    """
    loop = asyncio.get_running_loop()
    while True:
        state = conn.poll()
        if state == _POLL_OK:
            return
        fd = conn.fileno()
        fut = loop.create_future()
        timer = None
        if deadline is not None:
            remaining = deadline - monotonic()
            if remaining <= 0:
                raise psycopg2.OperationalError("connection timeout expired")
            timer = loop.call_later(remaining, _wake, fut)
        if state == _POLL_READ:
            loop.add_reader(fd, _wake, fut)
            try:
                await fut
            finally:
                loop.remove_reader(fd)
        elif state == _POLL_WRITE:
            loop.add_writer(fd, _wake, fut)
            try:
                await fut
            finally:
                loop.remove_writer(fd)
        else:  # pragma: no cover - psycopg2 returns no other state
            raise psycopg2.OperationalError(f"unexpected poll() state: {state}")
        if timer is not None:
            timer.cancel()


async def abort_query(conn: Connection) -> None:
    """Stop a query that nobody waits for any more (its task was cancelled).

    The server is asked to cancel it (``conn.cancel()``, run in a thread: it
    opens a connection of its own), then its result is read and dropped, so
    the connection can run the next command. A no-op if nothing is running.
    """
    if conn.closed or not conn.isexecuting():
        _PARKED.pop(id(conn), None)
        return
    loop = asyncio.get_running_loop()
    try:
        await loop.run_in_executor(None, conn.cancel)
    except psycopg2.Error as exc:
        logger.debug("cancel of an abandoned query failed: %s", exc)
    while not conn.closed and conn.isexecuting():
        # QueryCanceled, most likely: the result we are dropping anyway.
        with contextlib.suppress(psycopg2.Error):
            await wait_ready(conn)
    _PARKED.pop(id(conn), None)


def discard(conn: Connection) -> None:
    """Close ``conn``; if a query still runs on it, cancel it on the server first.

    (A backend busy with a query would not notice the client going away.)
    The cancel runs in a thread of its own: this never blocks the loop.
    """
    _PARKED.pop(id(conn), None)
    if conn.closed:
        return
    if not conn.isexecuting():
        conn.close()
        return

    def cancel_and_close() -> None:
        try:
            conn.cancel()
        except psycopg2.Error as exc:
            logger.debug("cancel before close failed: %s", exc)
        finally:
            conn.close()

    threading.Thread(target=cancel_and_close, name="psycopg2_pool-cancel", daemon=True).start()


async def _execute(conn: Connection, cur: Any, query: Any, params: Any = None) -> None:
    """Send ``query`` on ``cur`` and wait for its result.

    If the task is cancelled meanwhile, the cursor is kept alive until the
    query is dropped (:func:`abort_query`): psycopg2 cannot read the result of
    a query whose cursor was garbage collected, and the next command on the
    connection would get it instead of its own.
    """
    cur.execute(query, params)
    try:
        await wait_ready(conn)
    except BaseException:
        if conn.isexecuting():
            _PARKED[id(conn)] = cur
        raise


async def _run(conn: Connection, command: str) -> None:
    """Run a command whose result nobody reads (BEGIN, COMMIT...)."""
    cur = conn.cursor()
    await _execute(conn, cur, command)
    cur.close()


async def _settled(conn: Connection) -> Connection:
    """``conn``, after dropping what an interrupted task left running on it."""
    if conn.isexecuting():
        await abort_query(conn)
    return conn


# -- connecting -----------------------------------------------------------------


def _is_numeric_host(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


async def _resolve_hosts(params: dict[str, str]) -> dict[str, str]:
    """Resolve the host names of ``params`` on the loop (libpq would block on DNS).

    Each name is expanded into all its addresses (as libpq would try them),
    passed as ``hostaddr`` while ``host`` keeps the name (for TLS checks).
    """
    hosts = params.get("host")
    if not hosts or params.get("hostaddr"):
        return params
    names = hosts.split(",")
    if all(not n or n.startswith(("/", "@")) or _is_numeric_host(n) for n in names):
        return params
    ports = params.get("port", "").split(",")
    loop = asyncio.get_running_loop()
    new_hosts: list[str] = []
    new_addrs: list[str] = []
    new_ports: list[str] = []
    for i, name in enumerate(names):
        port = ports[i] if len(ports) == len(names) else (ports[0] if ports else "")
        if not name or name.startswith(("/", "@")) or _is_numeric_host(name):
            addrs = [""]
        else:
            try:
                infos = await loop.getaddrinfo(name, None, type=socket.SOCK_STREAM)
            except OSError:
                return params  # let libpq report it
            addrs = list(dict.fromkeys(str(info[4][0]) for info in infos))
        for addr in addrs:
            new_hosts.append(name)
            new_addrs.append(addr)
            new_ports.append(port)
    params = dict(params, host=",".join(new_hosts), hostaddr=",".join(new_addrs))
    if any(new_ports):
        params["port"] = ",".join(new_ports)
    return params


async def connect(
    dsn: str = "",
    *,
    connection_factory: Any = None,
    timeout: float | None = None,
    **kwargs: Any,
) -> Connection:
    """Open a psycopg2 asynchronous connection without blocking the loop.

    ``timeout`` and ``connect_timeout`` in the DSN (libpq does not enforce it
    in asynchronous mode), whichever is shorter, bound the whole attempt. The
    connection is closed if the attempt fails or the task is cancelled.
    """
    params = _ext.parse_dsn(_ext.make_dsn(dsn, **kwargs))
    params = await _resolve_hosts(params)
    if params.get("connect_timeout"):
        try:
            seconds = float(params["connect_timeout"])
        except ValueError:
            seconds = 0.0
        if seconds > 0:  # 0 (or less) means no limit, as for libpq
            seconds = max(seconds, 2.0)
            timeout = seconds if timeout is None else min(timeout, seconds)
    deadline = None if timeout is None or timeout <= 0 else monotonic() + timeout
    factory = connection_factory if connection_factory is not None else Connection
    conn: Connection = psycopg2.connect(
        _ext.make_dsn(**params), connection_factory=factory, async_=True
    )
    try:
        await wait_ready(conn, deadline)
    except psycopg2.OperationalError:
        if deadline is None or monotonic() < deadline:
            conn.close()
            raise
        # Out of time: name the host it was on, as libpq does (a pool then
        # tries that host last next time: see hosts.py).
        where = _trying(conn)
        conn.close()
        raise psycopg2.OperationalError(f"{where} failed: timeout expired") from None
    except BaseException:
        conn.close()
        raise
    return conn


def _trying(conn: Connection) -> str:
    """The server a connection still being made is trying, in libpq's words."""
    try:
        host, port = conn.info.host, conn.info.port
    except psycopg2.Error:  # pragma: no cover - libpq always knows
        return "connection"
    if not host or host.startswith(("/", "@")):
        return f'connection to server on socket "{host}/.s.PGSQL.{port}"'
    return f'connection to server at "{host}", port {port}'


# -- cursors --------------------------------------------------------------------


def _with_check(owner: Any, cur: Any) -> Connection:
    """The real connection behind cursor ``cur``, if its handle is still checked out."""
    conn = owner.__wrapped__
    if conn is RETURNED:
        raise ConnectionReturned(
            "this connection was returned to the pool: get a new one from the pool"
        )
    real: Connection = cur.connection
    return real


class AsyncCursor:
    """A psycopg2 cursor awaited as psycopg 3's ``AsyncCursor``.

    ``await cur.execute(query, params)``, then ``await cur.fetchone()``,
    ``fetchmany()``, ``fetchall()`` or ``async for row in cur``. Other
    attributes (``description``, ``rowcount``, ``query``, ``mogrify()``...)
    are the psycopg2 cursor's.
    """

    __slots__ = ("__weakref__", "_cur", "_owner", "_rowcount")

    def __init__(self, owner: AsyncConnection, cur: Any) -> None:
        self._owner = owner
        self._cur = cur
        self._rowcount: int | None = None

    def __repr__(self) -> str:
        return f"<{type(self).__module__}.{type(self).__name__} at 0x{id(self):x}>"

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cur, name)

    @property
    def connection(self) -> AsyncConnection:
        """The connection (handle) this cursor belongs to."""
        return self._owner

    @staticmethod
    async def _begin(conn: Connection) -> None:
        """Make ``conn`` ready for a command: in a transaction, unless in autocommit."""
        if conn.isexecuting():
            await abort_query(conn)
        if conn.get_transaction_status() == _IDLE and conn not in _AUTOCOMMIT:
            await _run(conn, "BEGIN")

    async def execute(self, query: Any, params: Any = None, **_: Any) -> AsyncCursor:
        """Run ``query``; inside a transaction unless the connection is in autocommit."""
        conn = _with_check(self._owner, self._cur)
        await self._begin(conn)
        if isinstance(query, _sql.Composable):
            query = query.as_string(conn)
        self._rowcount = None
        await _execute(conn, self._cur, query, params)
        return self

    async def executemany(
        self, query: Any, params_seq: Iterable[Any], *, returning: bool = False
    ) -> None:
        """Run ``query`` once per parameter set (psycopg2 has no async executemany).

        Afterwards ``rowcount`` is the total of the rows affected, as in psycopg 3.
        """
        total = 0
        for params in params_seq:
            await self.execute(query, params)
            if self._cur.rowcount > 0:
                total += self._cur.rowcount
        self._rowcount = total

    @property
    def rowcount(self) -> int:
        """Rows produced or affected by the last execute (all of them after executemany)."""
        if self._rowcount is not None:
            return self._rowcount
        count: int = self._cur.rowcount
        return count

    async def callproc(self, procname: str, parameters: Any = None) -> Any:
        """Call a stored procedure (psycopg2's ``callproc``), awaited."""
        conn = _with_check(self._owner, self._cur)
        await self._begin(conn)
        result = self._cur.callproc(procname, parameters)
        try:
            await wait_ready(conn)
        except BaseException:
            if conn.isexecuting():
                _PARKED[id(conn)] = self._cur
            raise
        return result

    async def fetchone(self) -> Any:
        return self._cur.fetchone()

    async def fetchmany(self, size: int = 0) -> list[Any]:
        rows: list[Any] = self._cur.fetchmany(size or self._cur.arraysize)
        return rows

    async def fetchall(self) -> list[Any]:
        rows: list[Any] = self._cur.fetchall()
        return rows

    async def scroll(self, value: int, mode: str = "relative") -> None:
        self._cur.scroll(value, mode)

    def _close(self) -> None:
        # While a query abandoned by a cancelled task runs, psycopg2 refuses to
        # close its cursor: it is parked until the query is dropped.
        if not self._cur.connection.isexecuting():
            self._cur.close()

    async def close(self) -> None:
        self._close()

    def __aiter__(self) -> AsyncCursor:
        return self

    async def __anext__(self) -> Any:
        row = self._cur.fetchone()
        if row is None:
            raise StopAsyncIteration
        return row

    async def __aenter__(self) -> AsyncCursor:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._close()

    def __iter__(self) -> NoReturn:
        raise TypeError("use 'async for row in cursor' on an async cursor")

    def __enter__(self) -> NoReturn:
        raise TypeError("use 'async with conn.cursor() as cur' on an async cursor")

    def __exit__(self, *exc: object) -> None:  # pragma: no cover - __enter__ raises
        pass

    # What psycopg2's asynchronous mode cannot do.

    def copy_from(self, *args: Any, **kwargs: Any) -> NoReturn:
        _unsupported("COPY (copy_from)")

    def copy_to(self, *args: Any, **kwargs: Any) -> NoReturn:
        _unsupported("COPY (copy_to)")

    def copy_expert(self, *args: Any, **kwargs: Any) -> NoReturn:
        _unsupported("COPY (copy_expert)")

    def copy(self, *args: Any, **kwargs: Any) -> NoReturn:
        _unsupported("COPY (cursor.copy)")

    def stream(self, *args: Any, **kwargs: Any) -> NoReturn:
        _unsupported("cursor.stream()", "fetch the rows with fetchmany()")


# -- connections ----------------------------------------------------------------


if TYPE_CHECKING:
    _Proxy = wrapt.BaseObjectProxy[Any]
else:
    _Proxy = wrapt.BaseObjectProxy


def _readable_only(name: str) -> Any:
    """A session setting psycopg2's async mode can read but not change."""

    def get(self: Any) -> Any:
        return getattr(self.__wrapped__, name)

    def refuse(self: Any, value: Any) -> NoReturn:
        _unsupported(f"setting {name}")

    return property(get, refuse)


class AsyncConnection(_Proxy):
    """A psycopg2 asynchronous connection awaited as psycopg 3's ``AsyncConnection``.

    It proxies the real connection (``conn.__wrapped__``); ``await
    conn.execute()``, ``conn.cursor()``, ``await conn.commit()`` and
    ``rollback()``, ``await conn.set_autocommit()`` and ``async with conn:``
    work as in psycopg 3. The pool's ``configure``, ``check`` and ``reset``
    callbacks get one of these; clients get an :class:`AsyncPooledConnection`.
    """

    # Identity, not the wrapped connection's: handles are the pool's keys.
    __hash__ = object.__hash__
    __eq__ = object.__eq__
    __ne__ = object.__ne__

    # See PooledConnection: the cheapest hook for wrapt to call.
    __wrapped_setattr_fixups__ = staticmethod(int)

    def cursor(self, name: str | None = None, cursor_factory: Any = None, **kwargs: Any) -> Any:
        """A new :class:`AsyncCursor` (``async with conn.cursor() as cur``)."""
        if name is not None:
            _unsupported("a named (server-side) cursor")
        if kwargs.get("scrollable") or kwargs.get("withhold"):
            _unsupported("a scrollable or WITH HOLD cursor")
        real = self.__wrapped__
        cur = (
            real.cursor() if cursor_factory is None else real.cursor(cursor_factory=cursor_factory)
        )
        return AsyncCursor(self, cur)

    async def execute(self, query: Any, params: Any = None, **kwargs: Any) -> AsyncCursor:
        """Run ``query`` on a new cursor and return it, as psycopg 3 does."""
        cur: AsyncCursor = self.cursor()
        return await cur.execute(query, params, **kwargs)

    async def commit(self) -> None:
        """Commit the transaction the wrapper opened, if any."""
        conn = await _settled(self.__wrapped__)
        if conn.get_transaction_status() != _IDLE:
            await _run(conn, "COMMIT")

    async def rollback(self) -> None:
        """Roll back the transaction the wrapper opened, if any."""
        conn = await _settled(self.__wrapped__)
        if conn.get_transaction_status() != _IDLE:
            await _run(conn, "ROLLBACK")

    @property
    def autocommit(self) -> bool:
        """Whether commands run outside transactions (``await set_autocommit()`` changes it)."""
        conn = self.__wrapped__
        if conn is RETURNED:
            raise ConnectionReturned(
                "this connection was returned to the pool: get a new one from the pool"
            )
        return conn in _AUTOCOMMIT

    @autocommit.setter
    def autocommit(self, value: bool) -> NoReturn:
        raise AttributeError(
            "'autocommit' is read-only on async connections:"
            " please use 'await .set_autocommit()' instead"
        )

    async def set_autocommit(self, value: bool) -> None:
        """Switch autocommit on or off (only outside a transaction)."""
        conn = await _settled(self.__wrapped__)
        status = conn.get_transaction_status()
        if status != _IDLE:
            raise psycopg2.ProgrammingError(
                f"can't change 'autocommit' now: connection in transaction status"
                f" {status_name(status)}"
            )
        if value:
            _AUTOCOMMIT.add(conn)
        else:
            _AUTOCOMMIT.discard(conn)

    async def cancel_safe(self) -> None:
        """Ask the server to cancel the running query, without blocking the loop."""
        conn = self.__wrapped__
        await asyncio.get_running_loop().run_in_executor(None, conn.cancel)

    async def close(self) -> None:
        """Close the connection (cancelling on the server a query left running)."""
        discard(self.__wrapped__)

    async def __aenter__(self) -> Any:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Commit (or roll back on an exception), then close, as psycopg 3 does."""
        try:
            await self._end_transaction(exc_type)
        finally:
            discard(self.__wrapped__)

    async def _end_transaction(self, exc_type: type[BaseException] | None) -> None:
        if self.__wrapped__.closed:
            return
        if exc_type is None:
            await self.commit()
        else:
            try:
                await self.rollback()
            except Exception as exc2:  # keep the client's own exception
                logger.warning("error ignored in rollback on %r: %s", self, exc2)

    def __enter__(self) -> NoReturn:
        raise TypeError("use 'async with' on an async connection")

    def __exit__(self, *exc: object) -> None:  # pragma: no cover - __enter__ raises
        pass

    def __reduce_ex__(self, protocol: Any) -> Any:
        raise TypeError("an async connection cannot be pickled")

    # What psycopg2's asynchronous mode cannot do.

    def set_session(self, *args: Any, **kwargs: Any) -> NoReturn:
        _unsupported("set_session()", "run 'SET TRANSACTION ...' as the first command")

    def set_isolation_level(self, level: Any) -> NoReturn:
        _unsupported("set_isolation_level()", "run 'SET TRANSACTION ISOLATION LEVEL ...'")

    async def set_read_only(self, value: Any) -> NoReturn:
        _unsupported("set_read_only()", "run 'SET TRANSACTION READ ONLY'")

    async def set_deferrable(self, value: Any) -> NoReturn:
        _unsupported("set_deferrable()", "run 'SET TRANSACTION DEFERRABLE'")

    def set_client_encoding(self, encoding: Any) -> NoReturn:
        _unsupported("set_client_encoding()", "run \"SET client_encoding TO '...'\"")

    def lobject(self, *args: Any, **kwargs: Any) -> NoReturn:
        _unsupported("large objects (lobject())")

    def reset(self, *args: Any, **kwargs: Any) -> NoReturn:
        _unsupported("reset()", "use rollback()")

    def tpc_begin(self, *args: Any, **kwargs: Any) -> NoReturn:
        _unsupported("two-phase commit (tpc_*)")

    tpc_prepare = tpc_commit = tpc_rollback = tpc_recover = tpc_begin

    def transaction(self, *args: Any, **kwargs: Any) -> NoReturn:
        _unsupported("conn.transaction()", "use commit() and rollback(), or 'async with'")

    def pipeline(self, *args: Any, **kwargs: Any) -> NoReturn:
        _unsupported("pipeline mode")

    isolation_level = _readable_only("isolation_level")
    readonly = _readable_only("readonly")
    deferrable = _readable_only("deferrable")


class AsyncPooledConnection(AsyncConnection):
    """An asynchronous psycopg2 connection checked out of an :class:`AsyncConnectionPool`.

    Leaving ``async with conn:`` commits (or rolls back on an exception) and
    gives it back to the pool. Once given back, using it raises ``PoolError``.
    """

    _self_pool: AsyncOwner

    @classmethod
    def for_pool(cls, pool: AsyncOwner) -> type[AsyncPooledConnection]:
        """The handle class of ``pool``."""
        # Weakly: a handle kept after its return must not keep its pool alive.
        namespace = {"_self_pool": weakref.proxy(pool), "__module__": cls.__module__}
        return type(cls.__name__, (cls,), namespace)

    async def close(self) -> None:
        """Close the connection, or give it back if the pool has ``close_returns``.

        On a handle already given back, do nothing: the connection is no
        longer this handle's to close.
        """
        conn = self.__wrapped__
        if conn is RETURNED:
            return
        if self._self_pool.close_returns:
            await self._self_pool.putconn(self)
        else:
            discard(conn)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Commit (or roll back on an exception) and give the connection back."""
        if self.__wrapped__ is RETURNED:
            return  # given back inside the block already
        try:
            await self._end_transaction(exc_type)
        finally:
            await self._self_pool.putconn(self)


async def lend_async(callback: Any, conn: Connection) -> None:
    """Call a pool callback with an :class:`AsyncConnection` on ``conn``, dead once it returns.

    The callback is called here, not by the caller: a coroutine cancelled
    before it started (a check whose time ran out) then leaves no coroutine
    of the callback's never awaited.
    """
    wrapper = AsyncConnection(conn)
    try:
        await maybe_await(callback(wrapper))
    finally:
        wrapper.__wrapped__ = RETURNED


async def maybe_await(result: Any) -> Any:
    """``await`` the result of a callback if it is awaitable (async callbacks)."""
    if inspect.isawaitable(result):
        return await result
    return result
