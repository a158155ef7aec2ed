"""Small tools the test suite shares: unique application names, DSN editing,
looking at (or killing) a pool's server backends through pg_stat_activity, and
a TCP server that never answers."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from typing import Callable, TypeVar

import psycopg2
from psycopg2.extensions import make_dsn

T = TypeVar("T")


def app_name() -> str:
    """A fresh application_name, so a test can find exactly its own backends."""
    return f"p2p-test-{uuid.uuid4().hex[:8]}"


def dsn_with(dsn: str, **params: object) -> str:
    """Return ``dsn`` with libpq parameters added or replaced (key=value form)."""
    return make_dsn(dsn, **params)


def _admin_connection(dsn: str) -> psycopg2.extensions.connection:
    # A short-lived side connection, tagged so it never counts as a test's backend.
    conn = psycopg2.connect(dsn_with(dsn, application_name="p2p-test-admin"))
    conn.autocommit = True
    return conn


def backends(dsn: str, application_name: str) -> list[int]:
    """Pids of the server backends connected with ``application_name``, sorted.

    Uses its own connection, which is left out of the result.
    """
    conn = _admin_connection(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT pid FROM pg_stat_activity"
                " WHERE application_name = %s AND pid <> pg_backend_pid()"
                " ORDER BY pid",
                (application_name,),
            )
            return [row[0] for row in cur.fetchall()]
    finally:
        conn.close()


def terminate_backends(dsn: str, application_name: str, wait: bool = True) -> list[int]:
    """Kill every backend connected with ``application_name`` (pg_terminate_backend).

    Returns the pids that were signalled. With ``wait`` (the default), returns
    only once the server no longer lists them, so the kill has taken effect.
    """
    targets = backends(dsn, application_name)
    if not targets:
        return []
    conn = _admin_connection(dsn)
    try:
        with conn.cursor() as cur:
            # Signal only the pids listed above (a function in WHERE could run on any row).
            cur.execute(
                "SELECT pid FROM unnest(%s::int[]) AS pid WHERE pg_terminate_backend(pid)",
                (targets,),
            )
            killed = sorted(row[0] for row in cur.fetchall())
    finally:
        conn.close()
    if wait and killed:
        wait_for(
            lambda: not set(killed) & set(backends(dsn, application_name)),
            message=f"backends {killed} of {application_name!r} still listed after terminate",
        )
    return killed


def wait_for(
    predicate: Callable[[], T],
    timeout: float = 5.0,
    interval: float = 0.01,
    message: str | None = None,
) -> T:
    """Call ``predicate`` until it returns something truthy, and return that.

    Raises AssertionError if it is still falsy after ``timeout`` seconds; the
    error shows ``message`` (or the predicate) and the last value it returned.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            what = message or getattr(predicate, "__name__", repr(predicate))
            raise AssertionError(
                f"timed out after {timeout}s waiting for {what}; last value: {value!r}"
            )
        time.sleep(interval)


#: Every key psycopg_pool 3.3's get_stats() can report.
STATS_KEYS = {
    "pool_min",
    "pool_max",
    "pool_size",
    "pool_available",
    "requests_waiting",
    "usage_ms",
    "requests_num",
    "requests_queued",
    "requests_wait_ms",
    "requests_errors",
    "returns_bad",
    "connections_num",
    "connections_ms",
    "connections_errors",
    "connections_lost",
}


class BlackHole:
    """A TCP server that accepts connections and never says a word."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)

    def open_clients(self) -> int:
        """How many accepted connections the client side has not closed."""
        count = 0
        for conn in self.accepted:
            conn.setblocking(False)
            try:
                data = conn.recv(1024)
                while data:  # the startup packet, then EOF if closed
                    data = conn.recv(1024)
            except BlockingIOError:
                count += 1
            except OSError:
                pass
        return count

    def close(self) -> None:
        self.sock.close()
        for conn in self.accepted:
            conn.close()
