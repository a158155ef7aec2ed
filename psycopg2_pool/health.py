"""Health: never hand out a connection that is dead, in a transaction or off its role.

What the pool checks, and when: at checkout (rolled back if found in a
transaction; probed if it may be dead since the pool saw a sibling die; its
server's role; the user's ``check`` callback, driven by each pool), on return
(probed if suspect; its role) and in the background (idle connections whose
server end closed). A connection that fails is closed and replaced, and a
server that left its role has all its connections retired, not one at a time.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from time import monotonic
from typing import Any, Literal

import psycopg2
from psycopg2 import extensions as _ext

from . import stats as S
from ._watchdog import readable_fds, run_bounded, socket_alive
from .connecting import Connecting
from .decisions import Connection, status_name
from .errors import PoolTimeout
from .roles import writes
from .slot import Slot

__all__ = ["Health"]

logger = logging.getLogger("psycopg2_pool")

_IDLE = _ext.TRANSACTION_STATUS_IDLE
_UNKNOWN = _ext.TRANSACTION_STATUS_UNKNOWN
_READY = _ext.STATUS_READY


class Health(Connecting):
    """Checking connections and retiring the bad ones (see the module's docstring)."""

    def _cleaned(self, conn: Connection, deadline: float, timeout: float) -> Connection:
        """Never hand out a connection inside a transaction, whatever put it there.

        Returned connections are rolled back, so one found in a transaction was
        used while idle, through a reference kept after its return: roll it
        back, or replace it if that fails.
        """
        while conn.get_transaction_status() != _IDLE or conn.status != _READY:
            logger.warning(
                "connection of %r found in status %s at checkout: rolled back",
                self.name,
                status_name(conn.get_transaction_status()),
            )
            try:
                conn.rollback()
            except psycopg2.Error:
                self._discard_checked_out(conn, lost=True)
                conn = self._next_candidate(deadline, timeout)
        return conn

    def _trusted(self, conn: Connection, deadline: float, timeout: float) -> Connection:
        """Probe ``conn`` if it is suspect; replace it while it turns out dead."""
        while True:
            life = self._slots.get(id(conn))
            if life is None or life.verified >= self._suspect_before:
                return conn
            if socket_alive(conn):
                life.verified = monotonic()
                return conn
            self._discard_checked_out(conn, lost=True)
            conn = self._next_candidate(deadline, timeout)

    def _in_role(self, conn: Connection, deadline: float, timeout: float) -> Connection:
        """Never hand out a connection whose server left the role asked for.

        It is closed and so are its siblings on the same server (see
        :meth:`_retire_server`); the client gets the next one.
        """
        while (server := self._left_role(conn)) is not False:
            self._retire_server(server, "at checkout")
            self._discard_checked_out(conn, lost=False)
            conn = self._cleaned(self._next_candidate(deadline, timeout), deadline, timeout)
        return conn

    def _left_role(self, conn: Connection) -> tuple[str, int] | Literal[False] | None:
        """The server ``conn`` is on if that server left the role asked for
        (None if unknown), or False if it did not."""
        life = self._slots.get(id(conn))
        if life is None or life.off_role is None or conn.closed or not life.off_role(conn):
            return False
        return life.server

    def _retire_server(self, server: tuple[str, int] | None, seen: str) -> None:
        """A connection to ``server`` no longer has the role its pool asked for:
        neither do its siblings, though they have not heard yet.

        PostgreSQL tells a connection of a role change only when it next
        answers a query, so an idle sibling looks as it was: close the idle
        ones now, and the ones in use when they come back. New connections go
        where libpq finds the role asked for.
        """
        if server is None:
            return
        with self._mutex:
            idle = []
            for conn in self._pool:
                life = self._slots.get(id(conn))
                if life is not None and life.server == server and life.off_role is not None:
                    idle.append(conn)
            for conn in idle:
                self._pool.remove(conn)
            in_use = 0
            for conn in self._used.values():
                life = self._slots.get(id(conn))
                if (
                    life is not None
                    and life.server == server
                    and life.off_role is not None
                    and life.expires > 0.0
                ):
                    life.expires = 0.0  # closed when given back
                    in_use += 1
        if idle or in_use:
            logger.warning(
                "server %s:%s of %r changed role (seen %s): closing its %d idle connections,"
                " and %d in use when they come back",
                server[0],
                server[1],
                self.name,
                seen,
                len(idle),
                in_use,
            )
        for conn in idle:
            self._drop(conn)
            self._replace()

    def _read_only_error(self, conn: Connection) -> None:
        """A write on ``conn`` failed with SQLSTATE 25006 (read-only transaction).

        In a pool that wants a writable server, retire its server's connections
        if the server turned read-only: it says so (PostgreSQL 14+), or cannot
        say. A read-only transaction the client asked for itself changes nothing.
        """
        life = self._slots.get(id(conn))
        off_role = None if life is None else life.off_role
        if conn.closed or life is None or off_role is None or not writes(off_role):
            return
        if off_role(conn) or conn.get_parameter_status("in_hot_standby") is None:
            life.expires = 0.0
            self._retire_server(life.server, "by a read-only error")

    def _next_candidate(self, deadline: float, timeout: float) -> Connection:
        """After a connection was turned down at checkout: the next one, in the time left.

        Still the same request: it is not counted again, and a timeout names
        the client's own ``timeout``.
        """
        left = deadline - monotonic()
        if left <= 0:
            with self._mutex:
                raise self._timeout_error(None, timeout)
        try:
            return self._getconn(self._retry_key(), left)
        except PoolTimeout:  # counted already
            raise PoolTimeout(
                f"couldn't get a connection from {self.name!r} after {timeout:.2f} sec"
            ) from None

    def _retry_key(self) -> Any:
        """The key for another try within one request: :meth:`_getkey`, minus
        counting the request again."""
        with self._mutex:
            idle_left = max(len(self._pool) - 1, 0)
            if idle_left < self._idle_low:
                self._idle_low = idle_left  # see _shrink
        return self._new_handle(self._handle_class)

    def _discard_checked_out(self, conn: Connection, lost: bool) -> None:
        if lost:
            self._lost_server(conn)
        with self._mutex:
            self._forget_connection(conn)
            if lost:
                self._stats[S.CONNECTIONS_LOST] += 1
        self._drop(conn)
        if lost:
            self._saw_death()
        self._replace()

    def _saw_death(self) -> None:
        """A connection turned out dead: distrust the older ones until probed."""
        with self._mutex:
            self._suspect_before = monotonic()
            self._update_plain_checkout()
            workers = self._workers
        if workers is not None:
            workers.submit(self._probe_idle)

    def _probe_idle(self) -> None:
        """Find idle connections whose server end has gone, without a round trip.

        An idle connection has nothing to read unless the server closed it (or
        sent a notification): only the readable ones are looked at closer.
        """
        with self._mutex:
            idle = [(conn, conn.fileno()) for conn in self._pool if not conn.closed]
        readable = set(readable_fds([fd for _, fd in idle]))
        if not readable:
            return
        with self._mutex:
            suspects = [conn for conn, fd in idle if fd in readable and conn in self._pool]
            for conn in suspects:
                self._pool.remove(conn)
            self._pending += len(suspects)
        dead = 0
        for conn in suspects:
            alive = socket_alive(conn)
            with self._mutex:
                self._pending -= 1
                if alive and not self.closed:
                    self._release(conn)
                    continue
                if not alive:
                    dead += 1
                    self._stats[S.CONNECTIONS_LOST] += 1
            if not alive:
                self._lost_server(conn)
            self._drop(conn)
            self._replace()
        if dead:
            logger.warning("discarded %s idle connections of %r found dead", dead, self.name)
            with self._mutex:
                self._suspect_before = monotonic()
                self._update_plain_checkout()

    def _verify(self, conn: Connection, life: Slot) -> bool:
        """Probe a returned suspect connection; count it lost if it is dead."""
        if socket_alive(conn):
            life.verified = monotonic()
            return True
        self._lost_server(conn)
        with self._mutex:
            self._stats[S.CONNECTIONS_LOST] += 1
        return False

    def _restore(self, conn: Connection) -> bool:
        if conn.closed == 2:  # broken, not closed by its user
            self._lost_server(conn)
        return super()._restore(conn)

    def _lost_server(self, conn: Connection) -> None:
        """``conn`` broke (outside the lock): of several hosts, leave its server.

        A server that hangs (TCP up, no answers) breaks only the connections
        clients bound in time; the idle ones look alive and would each cost a
        client its bound too. So with several hosts to go to, the server is
        tried last for a while (see hosts.py) and its idle connections are
        closed; their replacements try the other hosts first.
        """
        life = self._slots.get(id(conn))
        server = None if life is None else life.server
        if server is None or not self._hosts.several:
            return
        self._hosts.lost(server, monotonic())
        with self._mutex:
            idle = []
            for other in self._pool:
                slot = self._slots.get(id(other))
                if slot is not None and slot.server == server and other is not conn:
                    idle.append(other)
            for other in idle:
                self._pool.remove(other)
        if idle:
            logger.warning(
                "a connection of %r to %s:%s broke: closing its %d idle siblings,"
                " new connections try the other hosts first",
                self.name,
                server[0],
                server[1],
                len(idle),
            )
        for other in idle:
            self._drop(other)
            self._replace()

    def _discarded_at_check(self, conn: Connection, timed_out: bool) -> bool:
        """Discard (and replace) a connection that failed the check broken."""
        if timed_out or conn.closed or conn.get_transaction_status() == _UNKNOWN:
            self._discard_checked_out(conn, lost=True)
            return True
        return False

    def _set_aside(self, conn: Connection, timed_out: bool) -> bool:
        """For the async pool's check: :meth:`_failed_check` up to the restore.

        Discard ``conn`` if it is broken and return False; otherwise count it
        as pending, to be restored and given to :meth:`_file_failed`.
        """
        if self._discarded_at_check(conn, timed_out):
            return False
        with self._mutex:
            self._forget_connection(conn)
            self._pending += 1
        return True

    def _file_failed(self, conn: Connection, healthy: bool) -> None:
        """After :meth:`_set_aside` and a restore: keep ``conn`` if it can serve again."""
        with self._mutex:
            self._pending -= 1
            kept = self._keep_failed(conn, healthy)
        if not kept:
            self._drop(conn)
            self._replace()

    def _keep_failed(self, conn: Connection, healthy: bool) -> bool:
        """Under the lock, after a restore: keep a connection that failed the
        check if it can serve again, handed out last."""
        life = self._slots.get(id(conn))
        kept = (
            healthy
            and not self.closed
            and life is not None
            and life.expires > monotonic()
            and bool(self._waiters or self._keep_all or len(self._pool) < self.minconn)
        )
        if kept:
            # To a waiting client, or among the idle ones at the end clients
            # take from last (whichever end returns go to).
            if self._waiters:
                self._release(conn)
            else:
                self._pool.insert(0, conn)
        return kept

    def _bounded(self, call: Callable[[], None], conn: Connection, seconds: float) -> None:
        workers = self._workers
        if workers is None:
            call()
        else:
            # An alarm, not a task: the workers may all be stuck connecting.
            run_bounded(call, conn, seconds, workers.alarm)

    def _discarded(self, conn: Connection, broken: bool) -> None:
        self._slots.pop(id(conn), None)
        if broken:
            with self._mutex:
                self._stats[S.RETURNS_BAD] += 1
            logger.warning("discarding broken connection returned to %r", self.name)
            self._saw_death()
        self._replace()
