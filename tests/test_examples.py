"""The examples in examples/, each run as a subprocess against the test server."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from psycopg2_pool._embedded import free_port

from .helpers import app_name, backends, dsn_with, wait_for

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def env_for(dsn: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PSYCOPG2_POOL_DSN"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    if dsn is not None:
        env["PSYCOPG2_POOL_DSN"] = dsn
    return env


def run_example(name: str, *args: str, dsn: str | None = None) -> str:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env=env_for(dsn),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_wsgi_threaded(dsn: str) -> None:
    out = run_example(
        "wsgi_threaded.py", dsn_with(dsn, password="secret"), "--port", "0", "--check", "12"
    )
    assert "using server: " in out and "password=********" in out and "secret" not in out
    assert "12 of 12 requests answered" in out
    match = re.search(r"served by (\d+) server connections", out)
    assert match and 1 <= int(match.group(1)) <= 4
    stats = json.loads(out.split("pool stats: ")[1].splitlines()[0])
    assert stats["requests_num"] == 12
    assert stats["pool_size"] <= 4
    assert stats["pool_available"] == stats["pool_size"]


def test_zope_style(dsn: str) -> None:
    out = run_example("zope_style.py", dsn)
    lines = re.findall(r"^worker-\d: backends \[(.*)\]$", out, re.M)
    assert 1 <= len(lines) <= 3
    # No backend served two threads: each thread had connections of its own.
    pids = [pid for line in lines for pid in line.split(", ")]
    assert len(pids) == len(set(pids))
    assert "each thread kept one connection per database: yes" in out
    assert "all requests handled" in out


def test_psycopg3_migration(dsn: str) -> None:
    out = run_example("psycopg3_migration.py", dsn=dsn)  # the DSN through the environment
    assert "psycopg2_pool: 8 rows, sum 28; requests_num=11 pool_max=4" in out
    try:
        import psycopg_pool  # noqa: F401
    except ImportError:
        assert "psycopg_pool: not installed, skipped" in out
    else:
        assert "psycopg_pool: 8 rows, sum 28; requests_num=11 pool_max=4" in out


def test_gunicorn_app_runs_directly_with_wsgiref(dsn: str) -> None:
    out = run_example("gunicorn_app.py", dsn, "--port", "0", "--check")
    assert "serving on http://127.0.0.1:" in out
    assert len(re.findall(r"^GET / -> 200 \{\"worker\"", out, re.M)) == 2
    stats = json.loads(out.split("GET /stats -> 200 ")[1].splitlines()[0])
    assert stats["requests_num"] == 2


def get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as reply:
        return json.loads(reply.read())


def test_gunicorn_preload_threaded_workers(dsn: str) -> None:
    pytest.importorskip("gunicorn")
    app = app_name()
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "--preload",
            "--workers",
            "2",
            "--threads",
            "4",
            "--bind",
            f"127.0.0.1:{port}",
            "--no-control-socket",
            "examples.gunicorn_app:app",
        ],
        cwd=ROOT,
        env=env_for(dsn_with(dsn, application_name=app)),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    lines: list[str] = []
    assert process.stdout is not None

    def read(stream: Any = process.stdout) -> None:
        for line in stream:  # one at a time: up() looks at them as they come
            lines.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    failure: BaseException | None = None
    try:

        def up() -> bool:
            assert process.poll() is None, "".join(lines)
            # Both workers booted: a worker still booting when the master is told
            # to stop misses the signal and holds the master for 30 s.
            if sum("Booting worker" in line for line in list(lines)) < 2:
                return False
            try:
                get(url + "/stats")
            except (urllib.error.URLError, ConnectionError):
                return False
            return True

        wait_for(up, timeout=30, interval=0.1, message="gunicorn's two workers to answer")
        with ThreadPoolExecutor(8) as executor:
            answers = list(executor.map(lambda _: get(url + "/"), range(40)))
        assert len(answers) == 40
        workers: dict[int, set[int]] = {}
        for answer in answers:
            workers.setdefault(answer["worker"], set()).add(answer["backend"])
        assert 1 <= len(workers) <= 2
        # Each worker talks to the server over its own connections: none is
        # inherited from the master and shared by both.
        if len(workers) == 2:
            first, second = workers.values()
            assert not first & second
        stats = get(url + "/stats")
        assert stats["pool_size"] <= 8
    except BaseException as exc:
        failure = exc
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        reader.join(10)
        output = "".join(lines)
    # What the app and gunicorn logged is the only clue to a failed request.
    assert failure is None, f"{failure!r}\ngunicorn's output:\n{output}"
    assert process.returncode == 0, output
    assert "Traceback" not in output, output
    # Workers and master closed their pools: no server connection is left.
    wait_for(lambda: not backends(dsn, app), timeout=10)
