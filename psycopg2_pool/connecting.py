"""Connecting: how a pool opens connections, and when it opens more.

A connection is opened by a worker in a slot counted beforehand in
``_pending`` (so that the pool never exceeds ``max_size``), configured, given
its :class:`~psycopg2_pool.slot.Slot`, then filed like a returned one. Growth
opens one connection at a time while clients wait; a failed attempt is
retried with backoff for up to ``reconnect_timeout``.
"""

from __future__ import annotations

import logging
import math
import os
import random
from collections.abc import Callable
from time import monotonic
from typing import Any

import psycopg2
from psycopg2 import extensions as _ext

from . import stats as S
from ._connect_options import split_options
from ._masking import scrubbed, secrets_in
from .core import PoolCore, ensure_idle
from .decisions import Connection
from .roles import ROLE_RETRY, role_test
from .slot import Slot
from .workers import Backoff, WeakCall
from .wrapper import lend

__all__ = ["Connecting"]

logger = logging.getLogger("psycopg2_pool")


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


class Connecting(PoolCore):
    """Opening connections and growing the pool (see the module's docstring)."""

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
                ensure_idle(conn, "configure", self._configure)
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
        # Several hosts: the ones that failed lately last (see hosts.py).
        self._hosts.plan(arguments, monotonic())
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
        if self._hosts.several:
            self._hosts.failed(str(exc), monotonic())
        return scrubbed(exc, self._secrets + secrets_in((arguments,)))

    def _note_birth(self, conn: Connection, now: float) -> None:
        # Up to 10% earlier than max_lifetime, so that connections made
        # together do not all expire together.
        expires = now + self.max_lifetime * (1.0 - 0.1 * random.random())
        life = self._slots[id(conn)] = Slot(expires, now)
        if self._roles:
            life.off_role = role_test(conn)
        hosts = self._hosts
        if life.off_role is not None or hosts.several:
            life.server = (conn.info.host, conn.info.port)
        if hosts.several:
            hosts.landed(conn, now)
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
        self._file_new(conn, growing)

    def _file_new(self, conn: Connection, growing: bool) -> None:
        """A connection just opened in a slot counted in ``_pending``: give it
        to a waiting client or keep it idle; go on growing if still needed."""
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
                attempt = Backoff(self.reconnect_timeout, *ROLE_RETRY)
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

    def _grow_if_still_needed(self) -> None:
        with self._mutex:
            if not self.closed and self._waiters and self._size() < self.maxconn:
                self._start_growing()
            else:
                self._growing = False

    def _replace(self) -> None:
        """Open a connection to make up for one closed, if the pool needs it."""
        with self._mutex:
            if self.closed or self._workers is None:
                return
            size = self._size()
            if size < self.minconn or (self._waiters and size < self.maxconn):
                self._spawn(1, self._add_connection)
