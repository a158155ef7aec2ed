"""The side-by-side harness of the legacy-pool tests: scripted calls run against a
reference pool and ours, and everything a caller can observe, compared step by step."""

from __future__ import annotations

import os
import queue
import socket
import threading
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any, Callable, Union

import psycopg2
import psycopg2.extensions
import pytest
from psycopg2.extensions import connection, parse_dsn

from tests.helpers import app_name, backends, dsn_with, wait_for

#: What one call looked like to its caller: ("conn", label, transaction status),
#: ("returns", value) or ("raises", exception class, message).
Outcome = tuple[Any, ...]

#: A connection named by the step number whose getconn returned it, or by its label.
ConnRef = Union[int, str]

IDLE = psycopg2.extensions.TRANSACTION_STATUS_IDLE
EXHAUSTED = "connection pool exhausted"
CLOSED = "connection pool is closed"
UNKEYED = "trying to put unkeyed connection"
DEPRECATION = "deprecated: use ZPsycopgDA.pool implementation"


# --- threads that run calls on request --------------------------------------------


class Actor:
    """A long-lived thread running the calls handed to it, one at a time.

    PersistentConnectionPool keys connections by thread, so a script that says
    "thread T1 calls getconn" needs T1 to stay alive between its calls.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._calls: queue.Queue[tuple[Callable[[], Any], queue.Queue[Any]] | None]
        self._calls = queue.Queue()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            item = self._calls.get()
            if item is None:
                return
            function, reply = item
            try:
                reply.put((True, function()))
            except BaseException as exc:  # handed back to the caller, never lost
                reply.put((False, exc))

    def run(self, function: Callable[[], Any], timeout: float = 20.0) -> Any:
        reply: queue.Queue[Any] = queue.Queue(maxsize=1)
        self._calls.put((function, reply))
        ok, value = reply.get(timeout=timeout)
        if not ok:
            raise value
        return value

    def stop(self) -> None:
        self._calls.put(None)
        self._thread.join(5)


# --- one pool and what its caller sees ----------------------------------------------


class Side:
    """A pool under test (ours or a reference), with its own application_name."""

    def __init__(
        self,
        dsn: str,
        make_pool: Callable[[str], Any],
        errors: dict[type[BaseException], type[BaseException]] | None = None,
    ) -> None:
        self.base_dsn = dsn
        self.app = app_name()
        self.dsn = dsn_with(dsn, application_name=self.app)
        # Exception classes to report as others: psycopg2 2.7.7 had its own PoolError,
        # where ours must raise today's psycopg2.pool.PoolError.
        self.errors = errors or {}
        self.seen: list[connection] = []
        self.returned: dict[int, connection] = {}
        self.step = 0
        self.actors: dict[str, Actor] = {}
        self._foreign: connection | None = None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            self.pool = make_pool(self.dsn)
        self.warnings = [(w.category, str(w.message)) for w in caught]

    def label(self, conn: connection) -> str:
        for index, known in enumerate(self.seen):
            if known is conn:
                return f"C{index}"
        self.seen.append(conn)
        return f"C{len(self.seen) - 1}"

    def conn(self, ref: ConnRef) -> connection:
        if isinstance(ref, int):
            return self.returned[ref]
        return self.seen[int(ref[1:])]

    def outcome(self, call: Callable[[], Any]) -> Outcome:
        try:
            result = call()
        except Exception as exc:
            return ("raises", self.errors.get(type(exc), type(exc)), str(exc))
        if isinstance(result, connection):
            self.returned[self.step] = result
            return ("conn", self.label(result), result.info.transaction_status)
        return ("returns", result)

    def foreign(self) -> connection:
        """A connection the pool never handed out (not counted as the pool's)."""
        if self._foreign is None:
            self._foreign = psycopg2.connect(dsn_with(self.dsn, application_name=app_name()))
        return self._foreign

    def actor(self, name: str) -> Actor:
        if name not in self.actors:
            self.actors[name] = Actor(name)
        return self.actors[name]

    def snapshot(self) -> tuple[bool, list[bool]]:
        """The pool's ``closed`` attribute and which handed-out connections are closed."""
        return bool(self.pool.closed), [bool(conn.closed) for conn in self.seen]

    def server_connections(self) -> int:
        return len(backends(self.base_dsn, self.app))

    def close(self) -> None:
        try:
            if not self.pool.closed:
                self.pool.closeall()
        finally:
            for conn in [*self.seen, *([self._foreign] if self._foreign else [])]:
                conn.close()
            for actor in self.actors.values():
                actor.stop()


def reference_open_connections(pool: Any) -> int:
    """How many server connections a psycopg2.pool (2.7 or 2.9) holds, from its state."""
    conns = {id(conn): conn for conn in [*pool._pool, *pool._used.values()]}
    return sum(1 for conn in conns.values() if not conn.closed)


# --- steps --------------------------------------------------------------------------


@dataclass(frozen=True)
class Get:
    """``getconn()``, ``getconn(key)`` or ``getconn(key=key)``."""

    key: Any = None
    keyword: bool = False

    def run(self, side: Side) -> Outcome:
        if self.keyword:
            return side.outcome(lambda: side.pool.getconn(key=self.key))
        if self.key is None:
            return side.outcome(side.pool.getconn)
        return side.outcome(lambda: side.pool.getconn(self.key))


@dataclass(frozen=True)
class Put:
    """``putconn(conn, ...)`` with only the arguments given, by keyword or position."""

    conn: ConnRef
    key: Any = None
    close: bool | None = None
    positional: bool = False

    def run(self, side: Side) -> Outcome:
        conn = side.conn(self.conn)
        if self.positional:
            args: list[Any] = [conn]
            if self.key is not None or self.close is not None:
                args.append(self.key)
            if self.close is not None:
                args.append(self.close)
            return side.outcome(lambda: side.pool.putconn(*args))
        kwargs: dict[str, Any] = {}
        if self.key is not None:
            kwargs["key"] = self.key
        if self.close is not None:
            kwargs["close"] = self.close
        return side.outcome(lambda: side.pool.putconn(conn, **kwargs))


@dataclass(frozen=True)
class PutForeign:
    """``putconn()`` of a connection that did not come from the pool."""

    def run(self, side: Side) -> Outcome:
        return side.outcome(lambda: side.pool.putconn(side.foreign()))


@dataclass(frozen=True)
class Begin:
    """Run a query on a handed-out connection, leaving its transaction open."""

    conn: ConnRef

    def run(self, side: Side) -> Outcome:
        conn = side.conn(self.conn)

        def query() -> int:
            with conn.cursor() as cur:
                cur.execute("SELECT 1")
            return conn.info.transaction_status

        return side.outcome(query)


@dataclass(frozen=True)
class CloseAll:
    def run(self, side: Side) -> Outcome:
        return side.outcome(side.pool.closeall)


@dataclass(frozen=True)
class Attributes:
    """The public attributes: ``(minconn, maxconn, closed)`` and their types."""

    def run(self, side: Side) -> Outcome:
        pool = side.pool
        values = (pool.minconn, pool.maxconn, pool.closed)
        return ("returns", values, tuple(type(value) for value in values))


@dataclass(frozen=True)
class PersistentPut:
    """PersistentConnectionPool's ``putconn()``, ``putconn(conn)``, ``putconn(close=...)``."""

    conn: ConnRef | None = None
    close: bool | None = None
    positional: bool = False

    def run(self, side: Side) -> Outcome:
        conn = None if self.conn is None else side.conn(self.conn)
        args: list[Any] = []
        kwargs: dict[str, Any] = {}
        if self.positional:
            args = [conn] if self.close is None else [conn, self.close]
        else:
            if conn is not None:
                kwargs["conn"] = conn
            if self.close is not None:
                kwargs["close"] = self.close
        return side.outcome(lambda: side.pool.putconn(*args, **kwargs))


@dataclass(frozen=True)
class In:
    """Run ``step`` in the named long-lived thread of each side."""

    thread: str
    step: Any

    def run(self, side: Side) -> Outcome:
        outcome: Outcome = side.actor(self.thread).run(lambda: self.step.run(side))
        return outcome


Step = Union[Get, Put, PutForeign, Begin, CloseAll, Attributes, PersistentPut, In]


# --- comparing ----------------------------------------------------------------------


def check_state(reference: Side, ours: Side, where: str, history: str = "") -> None:
    """Same ``closed`` flags, and as many server connections as the reference holds."""
    assert ours.snapshot() == reference.snapshot(), (
        f"{where}: (pool.closed, [conn.closed...]) is {ours.snapshot()} for psycopg2_pool,"
        f" {reference.snapshot()} for the reference{history}"
    )
    expected = reference_open_connections(reference.pool)
    last: list[int] = []

    def settled() -> bool:
        last[:] = [reference.server_connections(), ours.server_connections()]
        return last == [expected, expected]

    try:
        wait_for(settled, timeout=5)
    except AssertionError:
        pytest.fail(
            f"{where}: server connections (reference, psycopg2_pool) are {tuple(last)},"
            f" expected {expected} each{history}"
        )


def compare_step(
    reference: Side, ours: Side, step: Step, number: int, history: str = ""
) -> Outcome:
    reference.step = ours.step = number
    expected = step.run(reference)
    observed = step.run(ours)
    where = f"step {number}: {step}"
    assert observed == expected, (
        f"{where}: psycopg2_pool gave {observed}, the reference {expected}{history}"
    )
    check_state(reference, ours, where, history)
    return observed


def compare(reference: Side, ours: Side, steps: list[Step]) -> list[Outcome]:
    """Run ``steps`` on both sides; fail at the first observable difference."""
    assert ours.warnings == reference.warnings, "the constructors warned differently"
    check_state(reference, ours, "after the constructor")
    return [compare_step(reference, ours, step, number) for number, step in enumerate(steps, 1)]


# --- the server ---------------------------------------------------------------------


def terminate_backend(dsn: str, pid: int) -> None:
    """pg_terminate_backend(pid), returning once the server no longer lists it."""
    admin = psycopg2.connect(dsn_with(dsn, application_name="p2p-test-admin"))
    try:
        admin.autocommit = True
        with admin.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(%s)", (pid,))

        def gone() -> bool:
            with admin.cursor() as cur:
                cur.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,))
                row = cur.fetchone()
                return row is not None and row[0] == 0

        wait_for(gone, timeout=5, message=f"backend {pid} to exit")
    finally:
        admin.close()


def query_one(dsn: str, query: str, params: tuple[Any, ...] = ()) -> Any:
    admin = psycopg2.connect(dsn_with(dsn, application_name="p2p-test-admin"))
    try:
        admin.autocommit = True
        with admin.cursor() as cur:
            cur.execute(query, params)
            row = cur.fetchone() if cur.description else None
            return None if row is None else row[0]
    finally:
        admin.close()


@contextmanager
def scratch_table(dsn: str) -> Iterator[str]:
    """A fresh table ``(id int primary key)``, dropped afterwards."""
    name = f"p2p_test_{uuid.uuid4().hex[:10]}"
    query_one(dsn, f"CREATE TABLE {name} (id int PRIMARY KEY)")
    try:
        yield name
    finally:
        query_one(dsn, f"SET lock_timeout = '5s'; DROP TABLE IF EXISTS {name}")


# --- a relay that stalls on purpose --------------------------------------------------


class _Link:
    def __init__(self) -> None:
        self.flowing = threading.Event()
        self.flowing.set()
        self.client_spoke_while_held = threading.Event()

    def hold(self) -> None:
        """Keep the server's replies on this link from reaching the client."""
        self.flowing.clear()

    def release(self) -> None:
        self.flowing.set()


class StallingRelay:
    """A TCP relay in front of the test server that can stall on purpose.

    With ``stall_new`` set, new connections are accepted but never answered, so
    ``psycopg2.connect()`` hangs until libpq's connect_timeout. ``link_for(conn)``
    gives the link of an established connection, whose replies ``hold()`` keeps back.
    """

    def __init__(self, dsn: str) -> None:
        params = parse_dsn(dsn)
        host = params.get("host", "")
        port = int(params.get("port", 5432))
        if not host or "," in host:
            pytest.skip("the relay needs a single host in the test DSN")
        if host.startswith("/"):
            self._upstream: Any = f"{host}/.s.PGSQL.{port}"
            self._family = socket.AF_UNIX
        else:
            self._upstream = (host, port)
            self._family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._dsn = dsn
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.port: int = self._listener.getsockname()[1]
        self.stall_new = False
        self.stalled = threading.Event()
        self._running = True
        self._lock = threading.Lock()
        self._links: dict[int, _Link] = {}
        self._sockets: list[socket.socket] = []
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def dsn(self, **params: Any) -> str:
        return dsn_with(self._dsn, host="127.0.0.1", hostaddr="127.0.0.1", port=self.port, **params)

    def link_for(self, conn: connection) -> _Link:
        with socket.socket(fileno=os.dup(conn.fileno())) as sock:
            port = sock.getsockname()[1]
        with self._lock:
            return self._links[port]

    def _accept(self) -> None:
        while self._running:
            try:
                client, address = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            client.settimeout(None)
            with self._lock:
                self._sockets.append(client)
            if self.stall_new:
                self.stalled.set()  # keep it open, never read from it
                continue
            try:
                upstream = socket.socket(self._family, socket.SOCK_STREAM)
                upstream.connect(self._upstream)
            except OSError:
                client.close()
                continue
            link = _Link()
            with self._lock:
                self._sockets.append(upstream)
                self._links[address[1]] = link
                for args in ((client, upstream, link, True), (upstream, client, link, False)):
                    thread = threading.Thread(target=self._pump, args=args, daemon=True)
                    self._threads.append(thread)
                    thread.start()

    def _pump(self, source: socket.socket, target: socket.socket, link: _Link, up: bool) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                if up and not link.flowing.is_set():
                    link.client_spoke_while_held.set()
                if not up:
                    link.flowing.wait()
                target.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, target):
                with suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._running = False
        with self._lock:
            links = list(self._links.values())
            sockets = list(self._sockets)
        for link in links:
            link.release()
        for sock in sockets:
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        self._listener.close()
        for thread in self._threads:
            thread.join(5)
