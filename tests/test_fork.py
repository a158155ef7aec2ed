"""os.fork() with an open pool: the child never uses the parent's connections,
and nothing the child does (closing its pool, garbage collecting it, exiting)
ends the parent's sessions.

psycopg2 sends a Terminate message when it closes a connection, even one it
inherited through fork, over the socket it shares with the parent: the server
then ends the parent's session.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import select
import signal
import warnings
from collections.abc import Iterator
from time import monotonic, sleep
from typing import Any, Callable

import psycopg2
import pytest

from psycopg2_pool import ConnectionPool, PoolError, ThreadedConnectionPool
from tests.helpers import app_name, backends, dsn_with, wait_for

pytestmark = [
    pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork()"),
    # Python 3.12+ warns about forking a process that has threads: we mean to.
    pytest.mark.filterwarnings("ignore:.*fork.*:DeprecationWarning"),
]

CHILD_SECONDS = 15.0
IDLE = 2


def in_child(fn: Callable[[], Any]) -> dict[str, Any]:
    """Run ``fn`` in a forked child; return what it returned (JSON) or its error.

    The child leaves with os._exit, so no finaliser or atexit hook of this
    process runs there unless ``fn`` runs it. A child that hangs is killed.
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 0
        try:
            os.close(read_end)
            try:
                result: Any = {"result": fn()}
            except BaseException as exc:
                result = {
                    "error": f"{type(exc).__module__}.{type(exc).__name__}: {exc}",
                    "is_pool_error": isinstance(exc, PoolError),
                }
            os.write(write_end, json.dumps(result, default=repr).encode())
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(write_end)
    chunks = []
    deadline = monotonic() + CHILD_SECONDS
    try:
        while monotonic() < deadline:
            ready, _, _ = select.select([read_end], [], [], 0.1)
            if ready:
                chunk = os.read(read_end, 65536)
                if not chunk:
                    break
                chunks.append(chunk)
    finally:
        os.close(read_end)
    while True:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return {"error": "child hung (killed)"}
        sleep(0.02)
    if not chunks:
        return {"error": "child reported nothing"}
    return json.loads(b"".join(chunks))


def query_pid(conn: Any) -> int:
    real = getattr(conn, "__wrapped__", conn)
    with real.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        pid: int = cur.fetchone()[0]
    real.rollback()
    return pid


class Subject:
    """A pool of either kind, with IDLE idle connections and one held by the parent."""

    def __init__(self, kind: str, dsn: str) -> None:
        self.kind = kind
        self.name = app_name()
        self.dsn = dsn
        pdsn = dsn_with(dsn, application_name=self.name)
        self.pool: Any
        if kind == "threaded":
            self.pool = ThreadedConnectionPool(IDLE + 1, 5, pdsn)
        else:
            self.pool = ConnectionPool(pdsn, min_size=IDLE + 1, max_size=5, open=True, timeout=2)
            self.pool.wait(10)
        self.held = self.pool.getconn()
        query_pid(self.held)
        wait_for(lambda: len(backends(dsn, self.name)) == IDLE + 1, message="pool filled")
        self.parent_pids = set(backends(dsn, self.name))

    def child_getconn(self) -> int:
        conn = self.pool.getconn() if self.kind == "threaded" else self.pool.getconn(timeout=3)
        return query_pid(conn)

    def close(self) -> None:
        if self.kind == "threaded":
            self.pool.closeall()
        else:
            self.pool.close(timeout=1)

    def parent_connections_answer(self) -> list[str]:
        """SELECT 1 on the connection the parent holds and on every idle one."""
        problems = []
        conns = [self.held]
        for _ in range(IDLE):
            conns.append(self.pool.getconn())
        for conn in conns:
            try:
                query_pid(conn)
            except psycopg2.Error as exc:
                problems.append(f"{type(exc).__name__}: {str(exc).strip()}")
        for conn in conns:
            self.pool.putconn(conn)
        return problems


@pytest.fixture(params=["threaded", "connection_pool"])
def subject(request: Any, dsn: str) -> Iterator[Subject]:
    subject = Subject(request.param, dsn)
    yield subject
    with contextlib.suppress(Exception):
        subject.close()


def test_fork_child_getconn_never_gets_a_parent_connection(subject: Subject) -> None:
    outcome = in_child(subject.child_getconn)
    if "error" in outcome:
        # Acceptable: the pool refuses to work in the child, with a clear PoolError.
        assert outcome.get("is_pool_error"), outcome["error"]
        assert "fork" in outcome["error"].lower(), outcome["error"]
    else:
        assert outcome["result"] not in subject.parent_pids, (
            f"the child got backend {outcome['result']}, one of the parent's"
            f" {sorted(subject.parent_pids)}"
        )


def test_fork_parent_connections_survive_child_using_pool(subject: Subject) -> None:
    in_child(subject.child_getconn)
    assert not subject.parent_connections_answer()


def test_fork_parent_connections_survive_child_closing_pool(subject: Subject) -> None:
    outcome = in_child(subject.close)
    assert "error" not in outcome, outcome
    assert not subject.parent_connections_answer()


def test_fork_parent_connections_survive_child_garbage_collecting_pool(
    subject: Subject,
) -> None:
    def drop_everything() -> None:
        # Forget the pool and the parent's connections, as a child that only
        # wanted to run something else would, and let the collector run.
        subject.pool = None
        subject.held = None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gc.collect()

    outcome = in_child(drop_everything)
    assert "error" not in outcome, outcome
    # The parent still has its references: the child's copies were the ones dropped.
    assert not subject.parent_connections_answer()


def test_fork_parent_connections_survive_child_exit(subject: Subject) -> None:
    outcome = in_child(lambda: None)
    assert "error" not in outcome, outcome
    assert not subject.parent_connections_answer()
