"""The pools under gevent: monkey patching plus psycogreen, as ``gunicorn -k gevent`` runs them.

Each test runs a script in a subprocess that patches first
(``gevent.monkey.patch_all()``, then ``psycogreen.gevent.patch_psycopg()``),
then imports psycopg2_pool. Two detectors watch the hub: gevent's own monitor
thread (``max_blocking_time``), whose reports go to stderr and are counted, and
a ticker greenlet that measures how late it wakes.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from psycopg2_pool._embedded import free_port

from .helpers import wait_for

pytest.importorskip("gevent")
pytest.importorskip("psycogreen")

ROOT = Path(__file__).resolve().parent.parent

#: What "blocking the hub" means here: seconds without a greenlet switch.
BLOCKING = 0.25

PRELUDE = f"""
import sys

import gevent

gevent.config.monitor_thread = True
gevent.config.max_blocking_time = {BLOCKING}

from gevent import monkey

monkey.patch_all()
if "--no-psycogreen" not in sys.argv:
    from psycogreen.gevent import patch_psycopg

    patch_psycopg()

import json
import os
import threading
import time

from gevent import events

import psycopg2
import psycopg2_pool

DSN = sys.argv[1]
BLOCKED = []
events.subscribers.append(
    lambda event: BLOCKED.append(event) if isinstance(event, events.EventLoopBlocked) else None
)


class Ticker:
    \"\"\"A greenlet waking every 5 ms; ``worst`` is its longest lateness.\"\"\"

    def __init__(self):
        self.worst = 0.0
        self.ticks = 0
        self._greenlet = gevent.spawn(self._run)
        gevent.sleep(0)

    def _run(self):
        while True:
            start = time.perf_counter()
            gevent.sleep(0.005)
            self.worst = max(self.worst, time.perf_counter() - start - 0.005)
            self.ticks += 1

    def stop(self):
        gevent.sleep(0.02)  # let it wake once more: a lateness counts when it ends
        self._greenlet.kill()
        return self.worst


def native_threads():
    return len(os.listdir("/proc/self/task"))


def report(**results):
    results["blocked"] = len(BLOCKED)
    print(json.dumps(results), flush=True)
"""


def run(dsn: str, body: str, *args: str, timeout: float = 40) -> dict[str, Any]:
    """Run ``body`` after the prelude; the dict it reported. Fails on any stderr."""
    script = PRELUDE + textwrap.dedent(body)
    result = subprocess.run(
        [sys.executable, "-c", script, dsn, *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        timeout=timeout,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr == "", result.stderr
    reported: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return reported


def test_the_detectors_see_a_blocked_hub(dsn: str) -> None:
    """Without psycogreen a query blocks the hub: both detectors must say so
    (else the tests below, which expect silence, would prove nothing)."""
    script = PRELUDE + textwrap.dedent(
        """
        ticker = Ticker()
        conn = psycopg2.connect(DSN)
        conn.cursor().execute("SELECT pg_sleep(0.6)")
        conn.close()
        report(worst=ticker.stop())
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script, dsn, "--no-psycogreen"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        timeout=40,
    )
    assert result.returncode == 0, result.stderr
    reported = json.loads(result.stdout.strip().splitlines()[-1])
    assert reported["blocked"] >= 1
    assert reported["worst"] >= 0.5
    assert "appears to be blocked" in result.stderr


def test_200_greenlets_share_5_connections_without_blocking_the_hub(dsn: str) -> None:
    got = run(
        dsn,
        """
        pool = psycopg2_pool.ConnectionPool(DSN, min_size=5, max_size=5, open=True)
        pool.wait()

        def job():
            with pool.connection() as conn:
                conn.execute("SELECT pg_sleep(0.01)")

        ticker = Ticker()
        start = time.perf_counter()
        gevent.joinall([gevent.spawn(job) for _ in range(200)], raise_error=True)
        elapsed = time.perf_counter() - start
        worst = ticker.stop()
        stats = pool.get_stats()
        pool.close()
        report(elapsed=elapsed, worst=worst, requests=stats["requests_num"],
               connections=stats["connections_num"])
        """,
    )
    ideal = 200 * 0.01 / 5  # 0.4 s; one at a time would take 2 s
    assert got["requests"] == 200
    assert got["connections"] == 5
    assert got["elapsed"] < 3 * ideal
    assert got["worst"] < BLOCKING
    assert got["blocked"] == 0


def test_timeout_raises_pool_timeout_on_time_while_the_hub_runs(dsn: str) -> None:
    got = run(
        dsn,
        """
        pool = psycopg2_pool.ConnectionPool(DSN, min_size=2, max_size=2, open=True)
        pool.wait()
        held = [pool.getconn(), pool.getconn()]
        ticker = Ticker()
        start = time.perf_counter()
        try:
            pool.getconn(timeout=0.5)
        except psycopg2_pool.PoolTimeout:
            error = "PoolTimeout"
        else:
            error = None
        waited = time.perf_counter() - start
        ticks, worst = ticker.ticks, ticker.stop()
        for conn in held:
            pool.putconn(conn)
        pool.close()
        report(error=error, waited=waited, ticks=ticks, worst=worst)
        """,
    )
    assert got["error"] == "PoolTimeout"
    assert 0.45 <= got["waited"] < 1.5
    assert got["ticks"] >= 20  # other greenlets ran all along the wait
    assert got["worst"] < BLOCKING
    assert got["blocked"] == 0


def test_background_workers_are_greenlets(dsn: str) -> None:
    got = run(
        dsn,
        """
        seen = []

        def configure(conn):  # run by the worker that opened the connection
            seen.append((threading.current_thread().name, threading.get_native_id(),
                         isinstance(gevent.getcurrent(), gevent.Greenlet)))

        gevent.sleep(0.01)  # the hub and its monitor thread are up
        before = native_threads()
        pool = psycopg2_pool.ConnectionPool(DSN, min_size=3, name="green", configure=configure,
                                            open=True)
        pool.wait()
        workers = [t for t in threading.enumerate() if t.name.startswith("green-")]
        kinds = sorted({type(t).__module__ for t in workers})
        after = native_threads()
        pool.close()
        report(workers=len(workers), kinds=kinds, before=before, after=after, seen=seen,
               main=threading.get_native_id(), patched=monkey.is_module_patched("threading"))
        """,
    )
    assert got["patched"]
    assert got["workers"] >= 2  # the workers and the scheduler
    assert got["kinds"] == ["gevent.threading"]
    assert got["after"] == got["before"]  # no OS thread for any of them
    assert len(got["seen"]) == 3
    for name, native_id, in_greenlet in got["seen"]:
        assert name.startswith("green-worker-")
        assert native_id == got["main"]  # on the main OS thread, as a greenlet
        assert in_greenlet


def test_close_ends_cleanly_and_fails_a_waiting_greenlet(dsn: str) -> None:
    got = run(
        dsn,
        """
        pool = psycopg2_pool.ConnectionPool(DSN, min_size=1, max_size=1, name="closing", open=True)
        pool.wait()
        held = pool.getconn()
        outcome = []

        def waiter():
            try:
                pool.getconn(timeout=10)
            except psycopg2_pool.PoolClosed:
                outcome.append("PoolClosed")

        waiting = gevent.spawn(waiter)
        gevent.sleep(0.1)
        start = time.perf_counter()
        pool.close()
        took = time.perf_counter() - start
        waiting.join(5)
        left = [t.name for t in threading.enumerate() if t.name.startswith("closing-")]
        report(outcome=outcome, took=took, left=left, closed=pool.closed,
               held_closed=bool(held.closed))
        """,
    )
    assert got["outcome"] == ["PoolClosed"]
    assert got["took"] < 1.0
    assert got["left"] == []
    assert got["closed"]
    assert got["blocked"] == 0


def test_threaded_pool_serves_up_to_maxconn_greenlets_at_once(dsn: str) -> None:
    got = run(
        dsn,
        """
        pool = psycopg2_pool.ThreadedConnectionPool(1, 5, DSN)

        def job():
            conn = pool.getconn()
            try:
                conn.cursor().execute("SELECT pg_sleep(0.3)")
            finally:
                pool.putconn(conn)

        ticker = Ticker()
        start = time.perf_counter()
        gevent.joinall([gevent.spawn(job) for _ in range(5)], raise_error=True)
        elapsed = time.perf_counter() - start
        worst = ticker.stop()
        pool.closeall()
        report(elapsed=elapsed, worst=worst)
        """,
    )
    assert got["elapsed"] < 1.0  # together: 0.3 s and connecting; one by one 1.5 s
    assert got["worst"] < BLOCKING
    assert got["blocked"] == 0


def test_threaded_pool_is_exhausted_by_more_greenlets_as_psycopg2s_is(dsn: str) -> None:
    got = run(
        dsn,
        """
        import psycopg2.pool

        def exhausted(cls):
            pool = cls(1, 3, DSN)
            errors = []

            def job():
                try:
                    conn = pool.getconn()
                except psycopg2.pool.PoolError as exc:
                    errors.append(str(exc))
                    return
                conn.cursor().execute("SELECT pg_sleep(0.2)")
                pool.putconn(conn)

            gevent.joinall([gevent.spawn(job) for _ in range(5)], raise_error=True)
            pool.closeall()
            return errors

        report(ours=exhausted(psycopg2_pool.ThreadedConnectionPool),
               theirs=exhausted(psycopg2.pool.ThreadedConnectionPool))
        """,
    )
    assert got["ours"] == got["theirs"] == ["connection pool exhausted"] * 2


def test_threaded_pool_greenlets_that_retry_all_get_served(dsn: str) -> None:
    got = run(
        dsn,
        """
        pool = psycopg2_pool.ThreadedConnectionPool(1, 5, DSN)
        retries = []

        def getconn():
            while True:
                try:
                    return pool.getconn()
                except psycopg2_pool.PoolError:
                    retries.append(1)
                    gevent.sleep(0.005)

        def job():
            conn = getconn()
            try:
                conn.cursor().execute("SELECT pg_sleep(0.01)")
            finally:
                pool.putconn(conn)

        ticker = Ticker()
        gevent.joinall([gevent.spawn(job) for _ in range(50)], raise_error=True)
        worst = ticker.stop()
        pool.closeall()
        report(retries=len(retries), worst=worst)
        """,
    )
    assert got["retries"] > 0
    assert got["worst"] < BLOCKING
    assert got["blocked"] == 0


PROBE = """

_readme_app = app


def app(environ, start_response):  # the README's app, and two routes for the test
    import json
    import threading

    path = environ.get("PATH_INFO", "/")
    if path == "/slow":
        with pool.connection() as conn:
            conn.execute("SELECT pg_sleep(0.2)")
        body = {}
    elif path == "/probe":
        workers = [t for t in threading.enumerate() if t.name.startswith("web-")]
        body = {
            "kinds": sorted({type(t).__module__ for t in workers}),
            "os_threads": len(os.listdir("/proc/self/task")),
        }
    else:
        return _readme_app(environ, start_response)
    start_response("200 OK", [("Content-Type", "application/json")])
    return [json.dumps(body).encode()]
"""


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=20) as reply:
        return str(reply.read().decode())


def readme_block(heading: str) -> str:
    """The first Python block of the README section under ``heading``."""
    text = (ROOT / "README.md").read_text()
    section = text.split(f"\n{heading}\n", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_readme_app_under_gunicorn_gevent_workers(dsn: str, tmp_path: Path) -> None:
    pytest.importorskip("gunicorn")
    (tmp_path / "app.py").write_text(readme_block("## Under gevent (`gunicorn -k gevent`)") + PROBE)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "gunicorn.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "-k",
                "gevent",
                "--workers",
                "1",
                "--bind",
                f"127.0.0.1:{port}",
                "--no-control-socket",
                "app:app",
            ],
            cwd=tmp_path,
            env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "PSYCOPG2_POOL_DSN": dsn},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:

        def up() -> bool:
            assert process.poll() is None, log.read_text()
            try:
                return bool(get(url + "/"))
            except (urllib.error.URLError, ConnectionError):
                return False

        wait_for(up, timeout=30, interval=0.1, message="gunicorn's gevent worker to answer")
        start = time.perf_counter()
        with ThreadPoolExecutor(20) as executor:
            answers = list(executor.map(lambda _: get(url + "/slow"), range(20)))
        elapsed = time.perf_counter() - start
        probe = json.loads(get(url + "/probe"))
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    output = log.read_text()
    assert len(answers) == 20
    # max_size 10 connections, 20 requests of 0.2 s, in one worker process:
    # about 0.4 s when queries yield to other greenlets, 4 s when they block.
    assert elapsed < 2.0, output
    assert probe["kinds"] == ["gevent.threading"]
    assert probe["os_threads"] <= 2  # the main thread, and at most gevent's own helper
    assert "Traceback" not in output and "Error" not in output, output
