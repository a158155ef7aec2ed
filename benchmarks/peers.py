"""One adapter per pool under test, all with the same small interface, and the
connection classes that make every pool's connections alike and counted.

An adapter's ``make(dsn, min_size, max_size)`` builds the pool and waits until
``min_size`` connections are open; afterwards ``acquire()`` / ``release(conn)``
are the pool's own bound methods wherever possible (no adapter frame on the
timed path), and ``connection()`` is the pool's context manager for the pools
measured in their ``with`` form.

Every connection is in autocommit mode, set once when it is opened, so that
``SELECT 1`` is one round trip for every pool and the no-pool baseline alike and
no pool pays for a ROLLBACK on return. Every opened connection appends a
timestamp to :data:`OPENED`: that is how the scenarios count connections.
"""

from __future__ import annotations

import collections
import functools
import operator
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Callable, ClassVar, cast

import psycopg2
import psycopg2.extensions
import psycopg2.pool

# perf_counter_ns() of every connection opened in this process, by any pool.
OPENED: list[int] = []


class CountedConnection(psycopg2.extensions.connection):
    """A psycopg2 connection in autocommit mode that records its opening."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.autocommit = True
        OPENED.append(time.perf_counter_ns())


def psycopg2_connect(dsn: str) -> CountedConnection:
    conn: CountedConnection = psycopg2.connect(dsn, connection_factory=CountedConnection)
    return conn


@functools.cache
def counted_psycopg3_class() -> type[Any]:
    """The psycopg 3 twin of :class:`CountedConnection` (imported only when used)."""
    import psycopg

    class CountedConnection3(psycopg.Connection):
        @classmethod
        def connect(cls, *args: Any, **kwargs: Any) -> Any:
            conn = super().connect(*args, **kwargs)
            OPENED.append(time.perf_counter_ns())
            return conn

    return CountedConnection3


class Adapter:
    """A pool as the scenarios see it; subclasses fill in ``make``."""

    key: ClassVar[str]  # the name used on the command line and in results
    label: ClassVar[str]  # the name shown in tables
    family: ClassVar[str] = "peer"  # "ours", "peer" or "baseline"
    driver: ClassVar[str] = "psycopg2"  # or "psycopg" (3)
    raises_when_empty: ClassVar[bool] = False
    thread_safe: ClassVar[bool] = True
    uses_with: ClassVar[bool] = False  # measured as ``with adapter.connection() as conn``
    # Run in a process whose sys.path starts with the pool's own install directory.
    isolated: ClassVar[bool] = False
    retried: ClassVar[bool] = False  # a raising pool behind a retry loop
    grows: ClassVar[bool] = True  # can open connections beyond min_size (S5, S6)
    # Clients in the contended scenarios, if not the scenario's own number.
    client_threads: ClassVar[int | None] = None
    # The exception the pool raises when it is exhausted (raising pools only).
    pool_error: type[Exception] = psycopg2.pool.PoolError
    # Set by ``make``.
    acquire: Callable[[], Any]
    release: Callable[[Any], None]
    connection: Callable[[], AbstractContextManager[Any]]
    # Checkout that gives up after the seconds given: pools whose every call takes
    # a timeout (S7's threads timing out together), else None.
    acquire_within: Callable[[float], Any] | None = None
    pool: Any = None

    def make(self, dsn: str, min_size: int, max_size: int) -> None:
        raise NotImplementedError

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()


def _getconn_within(pool: Any, seconds: float) -> Any:
    """``getconn(timeout=seconds)``, for pools whose every checkout takes a timeout."""
    return pool.getconn(timeout=seconds)


def _prefill(adapter: Adapter, count: int) -> None:
    """Open ``count`` connections in a lazy pool by holding that many at once."""
    held = [adapter.acquire() for _ in range(count)]
    for conn in held:
        adapter.release(conn)


# -- psycopg2.pool -------------------------------------------------------------


class Psycopg2Simple(Adapter):
    key = "psycopg2-simple"
    label = "psycopg2.pool Simple"
    raises_when_empty = True
    thread_safe = False  # psycopg2 documents it for single-threaded use only

    def make(self, dsn: str, min_size: int, max_size: int) -> None:
        self.pool = psycopg2.pool.SimpleConnectionPool(
            min_size, max_size, dsn, connection_factory=CountedConnection
        )
        self.acquire, self.release = self.pool.getconn, self.pool.putconn

    def close(self) -> None:
        self.pool.closeall()


class Psycopg2Threaded(Psycopg2Simple):
    key = "psycopg2-threaded"
    label = "psycopg2.pool Threaded"
    thread_safe = True

    def make(self, dsn: str, min_size: int, max_size: int) -> None:
        self.pool = psycopg2.pool.ThreadedConnectionPool(
            min_size, max_size, dsn, connection_factory=CountedConnection
        )
        self.acquire, self.release = self.pool.getconn, self.pool.putconn


# -- psycopg_pool 3.3 over psycopg 3 ---------------------------------------------


class PsycopgPool(Adapter):
    key = "psycopg_pool"
    label = "psycopg_pool getconn"
    driver = "psycopg"

    def make(self, dsn: str, min_size: int, max_size: int) -> None:
        import psycopg_pool

        self.pool = psycopg_pool.ConnectionPool(
            dsn,
            min_size=min_size,
            max_size=max_size,
            connection_class=counted_psycopg3_class(),
            kwargs={"autocommit": True},
            open=True,
        )
        self.pool.wait(timeout=60)
        self.acquire, self.release = self.pool.getconn, self.pool.putconn
        self.connection = self.pool.connection
        self.acquire_within = functools.partial(_getconn_within, self.pool)


class PsycopgPoolWith(PsycopgPool):
    key = "psycopg_pool-with"
    label = "psycopg_pool with"
    uses_with = True


# -- psycopg2-pool 1.2 (loaded from its own directory, in its own process) ------


class Psycopg2Pool12(Adapter):
    key = "psycopg2-pool-1.2"
    label = "psycopg2-pool 1.2"
    raises_when_empty = True
    isolated = True  # it has our import name

    def make(self, dsn: str, min_size: int, max_size: int) -> None:
        import psycopg2_pool

        # 1.2 has no ThreadedConnectionPool: seeing one means sys.path found ours.
        if hasattr(psycopg2_pool, "ThreadedConnectionPool"):
            raise RuntimeError(f"expected psycopg2-pool 1.2, imported {psycopg2_pool.__file__}")
        self.pool_error = psycopg2_pool.PoolError
        self.pool = psycopg2_pool.ThreadSafeConnectionPool(
            minconn=min_size, maxconn=max_size, dsn=dsn, connection_factory=CountedConnection
        )
        self.acquire, self.release = self.pool.getconn, self.pool.putconn

    def close(self) -> None:
        self.pool.clear()


# -- DBUtils and SQLAlchemy ---------------------------------------------------------


class DBUtilsPooledDB(Adapter):
    """``mincached=min, maxcached=max, maxconnections=max, blocking=True``."""

    key = "dbutils"
    label = "DBUtils PooledDB"

    def make(self, dsn: str, min_size: int, max_size: int) -> None:
        from dbutils.pooled_db import PooledDB

        self.pool = PooledDB(
            psycopg2,
            mincached=min_size,
            maxcached=max_size,
            maxconnections=max_size,
            blocking=True,
            dsn=dsn,
            connection_factory=CountedConnection,
        )
        self.acquire, self.release = self.pool.connection, operator.methodcaller("close")


class SQLAlchemyQueuePool(Adapter):
    """``QueuePool(pool_size=max, max_overflow=0)``, ``min`` connections opened up front."""

    key = "sqlalchemy"
    label = "SQLAlchemy QueuePool"

    def make(self, dsn: str, min_size: int, max_size: int) -> None:
        from sqlalchemy.pool import QueuePool

        def creator() -> Any:
            return psycopg2_connect(dsn)

        self.pool = QueuePool(creator, pool_size=max_size, max_overflow=0, timeout=30)
        self.acquire, self.release = self.pool.connect, operator.methodcaller("close")
        _prefill(self, min_size)

    def close(self) -> None:
        self.pool.dispose()


# -- baselines --------------------------------------------------------------------


class NoPool(Adapter):
    """No pool: each thread opens one connection on first use and keeps it."""

    key = "no-pool"
    label = "no pool (1 conn/thread)"
    family = "baseline"

    def make(self, dsn: str, min_size: int, max_size: int) -> None:
        local = threading.local()
        self._conns: list[Any] = []

        def acquire() -> Any:
            try:
                return local.conn
            except AttributeError:
                local.conn = self._connect(dsn)
                self._conns.append(local.conn)
                return local.conn

        self.acquire, self.release = acquire, _do_nothing

    def _connect(self, dsn: str) -> Any:
        return psycopg2_connect(dsn)

    def close(self) -> None:
        for conn in self._conns:
            conn.close()


class NoPoolEightThreads(NoPool):
    """8 threads with a connection each: what 8 connections do without any pool."""

    key = "no-pool-8"
    label = "no pool, 8 threads"
    client_threads = 8


class NoPoolPsycopg3(NoPool):
    key = "no-pool-psycopg3"
    label = "no pool, psycopg 3"
    driver = "psycopg"

    def _connect(self, dsn: str) -> Any:
        return counted_psycopg3_class().connect(dsn, autocommit=True)


class BareFifo(Adapter):
    """The least a fair pool can do: a fixed set of connections, a lock, a FIFO
    line of waiters. No handle, no checks, no stats, no growth, no timeout:
    the floor under S1-S4, not a pool anyone should use."""

    key = "bare-fifo"
    label = "bare FIFO pool (no handle)"
    family = "baseline"
    grows = False

    def make(self, dsn: str, min_size: int, max_size: int) -> None:
        idle = [psycopg2_connect(dsn) for _ in range(max_size)]
        self._conns = list(idle)
        line: collections.deque[list[Any]] = collections.deque()
        mutex = threading.Lock()

        def acquire() -> Any:
            with mutex:
                if idle:
                    return idle.pop()
                waiter: list[Any] = [threading.Lock(), None]
                waiter[0].acquire()
                line.append(waiter)
            waiter[0].acquire()
            return waiter[1]

        def release(conn: Any) -> None:
            with mutex:
                if line:
                    waiter = line.popleft()
                    waiter[1] = conn
                    waiter[0].release()
                else:
                    idle.append(conn)

        def acquire_within(seconds: float) -> Any:
            # Only S7 gives up waiting: a waiter that times out leaves the line
            # itself, so the path above stays what S1-S4 measure.
            with mutex:
                if idle:
                    return idle.pop()
                waiter: list[Any] = [threading.Lock(), None]
                waiter[0].acquire()
                line.append(waiter)
            if waiter[0].acquire(timeout=seconds):
                return waiter[1]
            with mutex:
                if waiter[1] is not None:  # served as the wait ran out
                    return waiter[1]
                line.remove(waiter)  # near the front: the oldest waiters time out first
            raise TimeoutError(f"no connection within {seconds} s")

        self.acquire, self.release, self.acquire_within = acquire, release, acquire_within

    def close(self) -> None:
        for conn in self._conns:
            conn.close()


class BareFifoHandle(BareFifo):
    """The bare FIFO pool plus the least our contract asks of a handle: a wrapt
    proxy made for each checkout, found again on return, and dead afterwards,
    and cursors that refuse every use once their handle went back.

    The floor under any pool that hands out such handles (ours does).
    """

    key = "bare-fifo-handle"
    label = "bare FIFO pool + wrapt handle"

    def make(self, dsn: str, min_size: int, max_size: int) -> None:
        super().make(dsn, min_size, max_size)
        acquire, release = self.acquire, self.release
        handle_class = _handle_class()
        in_use: dict[Any, Any] = {}

        def acquire_handle() -> Any:
            conn = acquire()
            handle = handle_class(conn)
            in_use[handle] = conn
            return handle

        def release_handle(handle: Any) -> None:
            conn = in_use.pop(handle)
            handle.__wrapped__ = DEAD
            release(conn)

        self.acquire, self.release = acquire_handle, release_handle
        self.acquire_within = None  # the bare pool's would hand out no handle


class _Dead:
    """What a bare handle wraps once returned: every use fails."""

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError("returned to the pool")


DEAD = _Dead()

Cursor = psycopg2.extensions.cursor

#: The cursor methods that reach the connection or its results: a bare
#: handle's cursor checks, before each, that its handle is still checked out.
_CURSOR_USES = (
    "execute", "executemany", "callproc", "mogrify", "fetchone", "fetchmany", "fetchall",
    "scroll", "copy_from", "copy_to", "copy_expert", "cast", "nextset", "close",
    "__next__", "__enter__", "__exit__",
)  # fmt: skip

#: One checked subclass per cursor class asked for, made on first use.
_checked_cursor_classes: dict[type[Cursor], type[Cursor]] = {}


def _checked(method: Callable[..., Any]) -> Callable[..., Any]:
    """``method``, refused once the cursor's handle went back to the pool."""

    def use(self: Any, *args: Any, **kwargs: Any) -> Any:
        if self._handle.__wrapped__ is DEAD:
            raise RuntimeError("returned to the pool")
        return method(self, *args, **kwargs)

    return use


_connection_of: Any = vars(Cursor)["connection"]


def _checked_connection(self: Any) -> Any:
    if self._handle.__wrapped__ is DEAD:
        raise RuntimeError("returned to the pool")
    return _connection_of.__get__(self)


def _checked_cursor_class(factory: type[Cursor]) -> type[Cursor]:
    """The subclass of ``factory`` whose every use first checks the cursor's handle."""
    checked = _checked_cursor_classes.get(factory)
    if checked is None:
        namespace: dict[str, Any] = {
            name: _checked(getattr(factory, name))
            for name in _CURSOR_USES
            if hasattr(factory, name)
        }
        namespace["__slots__"] = ("_handle",)
        namespace["connection"] = property(_checked_connection)
        checked = _checked_cursor_classes[factory] = type(
            f"Checked{factory.__name__}", (factory,), namespace
        )
    return checked


@functools.cache
def _handle_class() -> type[Any]:
    import wrapt

    class Handle(wrapt.BaseObjectProxy[Any]):
        # A key of the in-use map: it hashes as itself, not as the connection.
        __hash__ = object.__hash__
        __eq__ = object.__eq__
        __wrapped_setattr_fixups__ = staticmethod(int)

        def cursor(
            self,
            name: str | None = None,
            cursor_factory: type[Cursor] | None = None,
            **options: Any,
        ) -> Cursor:
            """A cursor of the class asked for, checked: dead once this handle went back."""
            conn = self.__wrapped__
            factory = cursor_factory or conn.cursor_factory or Cursor
            cur: Any = conn.cursor(name, _checked_cursor_class(factory), **options)
            cur._handle = self
            return cast(Cursor, cur)

    return Handle


class ConnectPerRequest(Adapter):
    key = "connect-per-request"
    label = "connect per request"
    family = "baseline"

    def make(self, dsn: str, min_size: int, max_size: int) -> None:
        self.acquire = lambda: psycopg2_connect(dsn)
        self.release = operator.methodcaller("close")

    def close(self) -> None:
        pass


def _do_nothing(conn: Any) -> None:
    pass


# -- ours ---------------------------------------------------------------------------


class OursLegacy(Adapter):
    key = "ours-legacy"
    label = "ours ThreadedConnectionPool"
    family = "ours"
    raises_when_empty = True

    def make(self, dsn: str, min_size: int, max_size: int) -> None:
        from psycopg2_pool import ThreadedConnectionPool

        self.pool = ThreadedConnectionPool(
            min_size, max_size, dsn, connection_factory=CountedConnection
        )
        self.acquire, self.release = self.pool.getconn, self.pool.putconn

    def close(self) -> None:
        self.pool.closeall()


class OursPool(Adapter):
    key = "ours"
    label = "ours ConnectionPool getconn"
    family = "ours"

    def make(self, dsn: str, min_size: int, max_size: int) -> None:
        from psycopg2_pool import ConnectionPool

        self.pool = ConnectionPool(
            dsn,
            min_size=min_size,
            max_size=max_size,
            connection_class=CountedConnection,
            open=True,
        )
        self.pool.wait(timeout=60)
        self.acquire, self.release = self.pool.getconn, self.pool.putconn
        self.connection = self.pool.connection
        self.acquire_within = functools.partial(_getconn_within, self.pool)


class OursPoolWith(OursPool):
    key = "ours-with"
    label = "ours ConnectionPool with"
    uses_with = True


# -- the retry loop a caller of a raising pool has to write --------------------------


class Retrying(Adapter):
    """A raising pool behind the loop its callers write: on PoolError sleep and retry.

    The first retry only yields (``sleep(0)``), later ones sleep 1 ms. Every
    PoolError is recorded in ``retry_times``; nothing is swallowed silently.
    """

    def __init__(self, inner: Adapter) -> None:
        self.inner = inner
        self.retry_times: list[int] = []

    def make(self, dsn: str, min_size: int, max_size: int) -> None:
        self.inner.make(dsn, min_size, max_size)
        getconn, error, retried = self.inner.acquire, self.inner.pool_error, self.retry_times

        def acquire() -> Any:
            pause = 0.0
            while True:
                try:
                    return getconn()
                except error:
                    retried.append(time.perf_counter_ns())
                    time.sleep(pause)
                    pause = 0.001

        self.acquire, self.release = acquire, self.inner.release

    def close(self) -> None:
        self.inner.close()


def retrying(inner_class: type[Adapter]) -> type[Adapter]:
    """A :class:`Retrying` adapter class for a pool that raises when it is empty."""

    class RetryingPool(Retrying):
        key = f"{inner_class.key}+retry"
        label = f"{inner_class.label} + retry"
        family = inner_class.family
        isolated = inner_class.isolated
        driver = inner_class.driver
        retried = True

        def __init__(self) -> None:
            super().__init__(inner_class())

    return RetryingPool


ADAPTERS: dict[str, type[Adapter]] = {
    cls.key: cls
    for cls in (
        OursLegacy,
        OursPool,
        OursPoolWith,
        Psycopg2Simple,
        Psycopg2Threaded,
        PsycopgPool,
        PsycopgPoolWith,
        Psycopg2Pool12,
        DBUtilsPooledDB,
        SQLAlchemyQueuePool,
        NoPool,
        NoPoolEightThreads,
        NoPoolPsycopg3,
        BareFifo,
        BareFifoHandle,
        ConnectPerRequest,
    )
}
for _raising in [cls for cls in ADAPTERS.values() if cls.raises_when_empty and cls.thread_safe]:
    _retry = retrying(_raising)
    ADAPTERS[_retry.key] = _retry


@contextmanager
def opened(adapter: Adapter, dsn: str, min_size: int, max_size: int) -> Iterator[Adapter]:
    adapter.make(dsn, min_size, max_size)
    try:
        yield adapter
    finally:
        adapter.close()
