"""psycopg2.pool's classes, drop-in: Simple, Threaded and Persistent.

They hand out raw psycopg2 connections and raise at once when the pool is
exhausted; each is a thin policy over the engine.
"""

from __future__ import annotations

import threading
import warnings
from typing import Any

from .decisions import Connection
from .engine import AbstractConnectionPool

__all__ = ["PersistentConnectionPool", "SimpleConnectionPool", "ThreadedConnectionPool"]


class SimpleConnectionPool(AbstractConnectionPool):
    """A connection pool for use from one thread (it is thread safe all the same)."""

    getconn = AbstractConnectionPool._getconn
    putconn = AbstractConnectionPool._putconn
    closeall = AbstractConnectionPool._closeall


class ThreadedConnectionPool(AbstractConnectionPool):
    """A connection pool shared by threads.

    Unlike psycopg2.pool's, it never connects or rolls back while holding the
    lock the other threads need.
    """

    def __init__(self, minconn: int, maxconn: int, *args: Any, **kwargs: Any) -> None:
        super().__init__(minconn, maxconn, *args, **kwargs)
        self._lock = self._mutex

    getconn = AbstractConnectionPool._getconn

    putconn = AbstractConnectionPool._putconn

    closeall = AbstractConnectionPool._closeall


class _ThreadWatch:
    """Lives in a thread's local storage: its finaliser runs when the thread ends."""

    __slots__ = ("key", "pool")

    def __init__(self, pool: PersistentConnectionPool, key: int) -> None:
        self.pool = pool
        self.key = key

    def __del__(self) -> None:
        # Only note the death here: the thread is being torn down, no I/O now.
        self.pool._dead.append(self.key)


class PersistentConnectionPool(AbstractConnectionPool):
    """A pool that gives each thread its own connection, for as long as it keeps it.

    Removed from psycopg2 in 2.8 and restored here with its 2.7 behaviour. A
    thread that dies holding a connection gives it back: a new thread that is
    handed the same thread id never inherits it or its open transaction.
    """

    def __init__(self, minconn: int, maxconn: int, *args: Any, **kwargs: Any) -> None:
        # stacklevel=1, as psycopg2 2.7 did: the same filters apply to it.
        warnings.warn(
            "deprecated: use ZPsycopgDA.pool implementation", DeprecationWarning, stacklevel=1
        )
        super().__init__(minconn, maxconn, *args, **kwargs)
        self._lock = self._mutex
        self._owners: dict[int, threading.Thread] = {}
        self._dead: list[int] = []
        self._local = threading.local()

    def getconn(self) -> Connection:
        """Return this thread's connection, taking one from the pool if it has none."""
        key = threading.get_ident()
        me = threading.current_thread()
        if self._dead or (key in self._used and self._owners.get(key) is not me):
            self._reclaim(key, me)
        conn = self._getconn(key)
        if self._owners.get(key) is not me:
            self._owners[key] = me
            self._local.watch = _ThreadWatch(self, key)
        return conn

    def putconn(self, conn: Connection | None = None, close: bool = False) -> None:
        """Put away this thread's connection."""
        key = threading.get_ident()
        if self._dead:
            self._reclaim(key, threading.current_thread())
        if not conn:
            conn = self._used[key]
        self._putconn(conn, key, close)
        self._disown(key)

    def closeall(self) -> None:
        """Close all connections, even those in use."""
        self._closeall()

    def _disown(self, key: int) -> None:
        with self._mutex:
            if key not in self._used:
                self._owners.pop(key, None)
                self._local.__dict__.pop("watch", None)

    def _reclaim(self, key: int, me: threading.Thread) -> None:
        """Take back connections held by threads that have ended."""
        with self._mutex:
            dead = set(self._dead)
            self._dead.clear()
            owner = self._owners.get(key)
            if owner is not None and owner is not me:
                dead.add(key)
            stale = []
            for dead_key in dead:
                owner = self._owners.get(dead_key)
                if owner is not None and owner.is_alive() and dead_key != key:
                    continue  # the ident was reused by a live thread that owns it now
                self._owners.pop(dead_key, None)
                conn = self._forget(dead_key)
                if conn is not None:
                    self._pending += 1
                    stale.append(conn)
        for conn in stale:
            self._settle(conn, close=False)
