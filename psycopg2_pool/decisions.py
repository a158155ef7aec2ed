"""Decisions: the engine's rules, with no I/O, no thread and no event loop.

Given the pool's state and an event (a client asks and no connection is idle,
a connection comes back ready for reuse, a restored one is to be kept or
not), the methods here decide what happens: hand this connection to that
client, put the client in line, reserve it a slot to connect in, take back
connections their holder dropped, refuse with this error. They never block
and never do I/O; the driver (:mod:`.engine` for threads, with the asyncio
pools' :mod:`.async_base` on top) calls them under its lock and carries the
decision out: it connects, sleeps or awaits, closes. Their one effect outside
the state is a client's ``wake()``, which the driver supplied with the
request (a lock released, a future resolved).

The state is ``psycopg2.pool``'s, under its names (subclasses in the wild
read them): ``_pool`` (idle), ``_used`` (key -> connection in use),
``_rused`` (id(connection) -> key), and the limit ``minconn``/``maxconn``.
"""

from __future__ import annotations

import logging
import sys
from collections import OrderedDict
from collections.abc import Callable, Hashable, MutableSequence
from time import monotonic
from typing import Any, NoReturn, Protocol

from psycopg2 import extensions as _ext

from .errors import PoolError

__all__ = [
    "AutoKey",
    "Connection",
    "Decisions",
    "Request",
    "held_only_by",
    "status_name",
    "unreferenced_keys",
]

logger = logging.getLogger("psycopg2_pool")

Connection = _ext.connection

_STATUS_NAMES = {
    _ext.TRANSACTION_STATUS_IDLE: "IDLE",
    _ext.TRANSACTION_STATUS_ACTIVE: "ACTIVE",
    _ext.TRANSACTION_STATUS_INTRANS: "INTRANS",
    _ext.TRANSACTION_STATUS_INERROR: "INERROR",
    _ext.TRANSACTION_STATUS_UNKNOWN: "UNKNOWN",
}


def status_name(status: int) -> str:
    """libpq's name for a transaction status, for messages."""
    return _STATUS_NAMES.get(status, str(status))


class AutoKey:
    """A key the pool makes for itself.

    It is equal only to itself, so it can never collide with a key a caller
    chose: psycopg2.pool numbered its own keys 1, 2, 3... and ``getconn()``
    followed by ``getconn(key=1)`` returned the same connection twice.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return f"<auto key at 0x{id(self):x}>"


_new_key = object.__new__


class Request(Protocol):
    """A client's request for a connection, as the decisions see it.

    The driver makes it (a lock to sleep on, a future to await) when no
    connection is idle; the decisions reserve it a slot (``reserved``), or
    put it in line and later serve it (``conn``, then ``wake()``) or fail it
    (``error``).
    """

    key: Hashable
    conn: Connection | None
    error: BaseException | None
    reserved: bool
    since: float
    wake: Callable[[], Any]

    def fail(self, error: BaseException) -> None: ...


class Decisions:
    """The engine's decisions on its state (see the module's docstring).

    Every method is called with the driver's lock held.
    """

    minconn: Any
    maxconn: Any
    closed: bool

    #: ``_getkey()`` always returns a key not in use, so a new key needs no
    #: lookup. A subclass that overrides ``_getkey`` (some reuse keys, e.g.
    #: thread ids) loses this unless it says so itself.
    _fresh_keys = True
    #: Keep every healthy returned connection (and let idle ones time out),
    #: rather than only up to ``minconn`` idle ones.
    _keep_all = False
    #: Restore every returned connection outside the lock, even idle ones.
    _always_settle = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "_getkey" in cls.__dict__ and "_fresh_keys" not in cls.__dict__:
            cls._fresh_keys = False

    def _init_state(self, minconn: Any, maxconn: Any) -> None:
        """The state of a pool of at most ``maxconn`` connections, none open yet."""
        self.minconn = minconn
        self.maxconn = maxconn
        self.closed = False
        # Idle connections: clients take the last one (pop()). Returned ones are
        # appended, so the most recently returned goes out first; the
        # psycopg_pool-style pools put them in at the other end instead.
        self._pool: MutableSequence[Connection] = []
        #: Keep a connection idle (subclasses that change ``_pool`` bind it again).
        self._keep_idle: Callable[[Connection], object] = self._pool.append
        self._used: dict[Hashable, Connection] = {}  # key -> connection in use
        self._rused: dict[int, Hashable] = {}  # id(connection) -> key
        self._keys = 0
        # Connections counted against the limit while they are opened, rolled
        # back or closed outside the lock.
        self._pending = 0
        # The clients in line, first come first: an ordered dict, so that one
        # that leaves (timed out, cancelled) costs O(1), not a scan of the line.
        self._waiters: OrderedDict[Request, None] = OrderedDict()

    def _reserve(self, request: Request) -> None:
        """Under the lock: count a slot for ``request``, which will connect."""
        # Both or neither: no interrupt can land between two plain stores.
        self._pending += 1
        request.reserved = True

    def _unreserve(self, request: Request) -> None:
        """Under the lock: give back the slot ``request`` reserved, once."""
        if request.reserved:
            request.reserved = False
            self._pending -= 1

    def _getkey(self) -> Hashable:
        """Return a new unique key.

        Called under the lock for each request without a key, just before the
        client takes an idle connection (if there is one).
        """
        return _new_key(AutoKey)

    def _closed_error(self) -> PoolError:
        return PoolError("connection pool is closed")

    def _refuse(self) -> NoReturn:
        """Under the lock: turn a client of a closed pool away."""
        raise self._closed_error()

    def _unkeyed_error(self, conn: Any) -> PoolError:
        return PoolError("trying to put unkeyed connection")

    def _note_wait(self, waiter: Request, seconds: float) -> None:
        """Called under the lock when a waiting client is served or gives up."""

    def _timeout_error(self, waiter: Request | None, timeout: float | None) -> PoolError:
        return PoolError("connection pool exhausted")

    def _forget(self, key: Hashable) -> Connection | None:
        """Under the lock: stop tracking the connection held by ``key``."""
        conn = self._used.pop(key, None)
        if conn is not None:
            self._rused.pop(id(conn), None)
        return conn

    def _release(self, conn: Connection, key: Hashable | None = None) -> None:
        """Under the lock: give ``conn`` to the longest waiting client, or keep it idle.

        The one place that decides who gets a connection ready for reuse. With
        ``key``, the client holding it under ``key`` gives it back: its entries
        go in the same run of plain stores, so that an interrupt (it lands
        only at a call) never leaves it half given back.
        """
        cid = id(conn)
        if key is not None:
            del self._used[key]
        if self._waiters:
            # The first in line, taken out with no call (popitem() would be
            # one): an interrupt lands only at a call, never half way here.
            for waiter in self._waiters:  # noqa: B007 - the first one
                break
            del self._waiters[waiter]
            wkey = waiter.key
            waiter.conn = conn
            self._used[wkey] = conn
            self._rused[cid] = wkey
            waiter.wake()
            self._note_wait(waiter, monotonic() - waiter.since)
        else:
            if key is not None:
                del self._rused[cid]
            self._keep_idle(conn)

    def _keep_restored(self, conn: Connection, healthy: bool) -> bool:
        """Under the lock: file a restored connection, if it is to be kept."""
        kept = (
            healthy
            and not self.closed
            and bool(self._waiters or self._keep_all or len(self._pool) < self.minconn)
        )
        if kept:
            self._release(conn)
        return kept

    def _take_orphans(self) -> list[Connection]:
        """Under the lock: take back connections their holder can no longer return.

        A connection checked out under an automatic key that nothing outside the
        pool references any more (its holder dropped it, or its thread died) is
        lost to everyone: forget it and return it to the caller.
        """
        keys = unreferenced_keys(self._used, on_key=False)
        if keys:
            logger.warning("reclaiming %d connections dropped without being returned", len(keys))
        return [conn for key in keys if (conn := self._forget(key)) is not None]

    def _size(self) -> int:
        """Under the lock: connections open or being opened."""
        return len(self._pool) + len(self._used) + self._pending


def unreferenced_keys(used: dict[Hashable, Any], *, on_key: bool) -> list[Hashable]:
    """The keys of ``used`` whose key (or connection) nothing else references.

    Only automatic keys count for connections: a caller's own key can fetch its
    connection again at any time. The number of references the pool itself
    holds is measured on a probe built the same way, so no interpreter detail
    is hard-coded here.
    """
    probe_used: dict[Hashable, Any] = {AutoKey(): object()}
    # The facade's id(conn) -> key map holds each key once more.
    probe_rused = {0: next(iter(probe_used))}
    baseline = _reference_counts(probe_used, on_key)[0][1]
    probe_rused.clear()
    return [key for key, refs in _reference_counts(used, on_key) if refs <= baseline]


def held_only_by(used: dict[Hashable, Any], keys: list[Hashable]) -> list[Hashable]:
    """Of ``keys``, those whose connection nothing but ``used`` references.

    Measured against a probe as :func:`unreferenced_keys` is.
    """
    probe: dict[Hashable, Any] = {AutoKey(): object()}
    baseline = _value_counts(probe, list(probe))[0]
    return [key for key, refs in zip(keys, _value_counts(used, keys)) if refs <= baseline]


def _value_counts(used: dict[Hashable, Any], keys: list[Hashable]) -> list[int]:
    return [sys.getrefcount(used[key]) for key in keys]


def _reference_counts(used: dict[Hashable, Any], on_key: bool) -> list[tuple[Hashable, int]]:
    counts = []
    for key, conn in used.items():
        if on_key:
            counts.append((key, sys.getrefcount(key)))
        elif type(key) is AutoKey:
            counts.append((key, sys.getrefcount(conn)))
    return counts
