"""Django on psycopg2 with ``ENGINE: "psycopg2_pool.django"`` and ``OPTIONS["pool"]``.

The example site (examples/django_site) runs in subprocesses against a fresh
database of the test server: its migrations, its own tests under Django's test
runner, and Django's threaded development server under concurrent load. The
backend's rules are checked inside one more Django process (tests/django_probes.py).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg2
import pytest

pytest.importorskip("django", minversion="5.1")

from psycopg2_pool._embedded import free_port

from .helpers import app_name, backends, dsn_with, wait_for

ROOT = Path(__file__).resolve().parent.parent
SITE = ROOT / "examples" / "django_site"
MAX_SIZE = 4  # OPTIONS["pool"]["max_size"] in the site's settings


def site_env(dsn: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DJANGO_")}
    paths = [str(ROOT), str(SITE), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(filter(None, paths))
    env["PSYCOPG2_POOL_DSN"] = dsn
    env["DJANGO_SETTINGS_MODULE"] = "django_site.settings"
    env.update(extra)
    return env


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=120, cwd=SITE, env=env
    )


def manage(dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    return run(["manage.py", *args], site_env(dsn))


def admin_execute(dsn: str, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Run ``query`` on a side connection in autocommit; its rows, if any."""
    conn = psycopg2.connect(dsn_with(dsn, application_name="p2p-test-admin"))
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(query, params)
            return cur.fetchall() if cur.description else []
    finally:
        conn.close()


@pytest.fixture(scope="module")
def database(dsn: str) -> Iterator[str]:
    """A fresh database for this module, dropped at its end."""
    name = f"p2p_django_{uuid.uuid4().hex[:8]}"
    admin_execute(dsn, f"CREATE DATABASE {name}")
    try:
        yield name
    finally:
        # The servers are gone by now; FORCE (PostgreSQL 13+) ends what a
        # failed test may have left connected.
        (version,) = admin_execute(dsn, "SHOW server_version_num")[0]
        force = " WITH (FORCE)" if int(version) >= 130000 else ""
        admin_execute(dsn, f"DROP DATABASE IF EXISTS {name}{force}")


@pytest.fixture(scope="module")
def migrated(dsn: str, database: str) -> subprocess.CompletedProcess[str]:
    """``manage.py migrate`` run once on the fresh database."""
    return manage(dsn_with(dsn, dbname=database), "migrate", "--no-input")


@pytest.fixture(scope="module")
def server(
    dsn: str, database: str, migrated: subprocess.CompletedProcess[str], tmp_path_factory: Any
) -> Iterator[tuple[str, str]]:
    """Django's threaded development server on the migrated database: (url, application_name)."""
    assert migrated.returncode == 0, migrated.stdout + migrated.stderr
    app = app_name()
    port = free_port()
    log = tmp_path_factory.mktemp("runserver") / "output.log"
    with log.open("w") as output:
        process = subprocess.Popen(
            [sys.executable, "manage.py", "runserver", "--noreload", f"127.0.0.1:{port}"],
            cwd=SITE,
            env=site_env(dsn_with(dsn, dbname=database, application_name=app)),
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert process.poll() is None, log.read_text()
        try:
            request("GET", f"{url}/counters/none/")
        except OSError:
            return False
        return True

    try:
        wait_for(up, timeout=30, interval=0.1, message="runserver to answer")
        yield url, app
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    output_text = log.read_text()
    assert "Traceback" not in output_text, output_text


def request(method: str, url: str, **form: str) -> tuple[int, Any]:
    data = urllib.parse.urlencode(form).encode() if method == "POST" else None
    with urllib.request.urlopen(urllib.request.Request(url, data, method=method), timeout=30) as r:
        return r.status, json.loads(r.read())


class BackendWatch:
    """Samples how many server connections an application_name has, in a thread."""

    def __init__(self, dsn: str, app: str) -> None:
        self.dsn, self.app = dsn, app
        self.counts: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self._stop.wait(0.02):
            self.counts.append(len(backends(self.dsn, self.app)))

    def __enter__(self) -> BackendWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


# -- migrations and Django's test runner -------------------------------------------------


def test_migrate_applies_the_app_migration(
    dsn: str, database: str, migrated: subprocess.CompletedProcess[str]
) -> None:
    assert migrated.returncode == 0, migrated.stdout + migrated.stderr
    assert "Applying notes.0001_initial... OK" in migrated.stdout
    again = manage(dsn_with(dsn, dbname=database), "migrate", "--no-input")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "No migrations to apply." in again.stdout


def test_django_test_runner_passes_the_app_tests(dsn: str) -> None:
    # Django makes (and drops) its own test_<NAME> database from this name.
    name = f"p2p_django_runner_{uuid.uuid4().hex[:8]}"
    result = manage(dsn_with(dsn, dbname=name), "test", "--no-input", "-v", "2")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Ran 6 tests" in result.stderr, result.stderr
    assert result.stderr.rstrip().endswith(
        f"Destroying test database for alias 'default' ('test_{name}')..."
    )
    assert "\nOK\n" in result.stderr, result.stderr
    # Dropped at the end: the pool's connections to it were closed first.
    assert not admin_execute(dsn, "SELECT 1 FROM pg_database WHERE datname = %s", (f"test_{name}",))


# -- the threaded server -------------------------------------------------------------------


def test_threaded_server_answers_200_requests_on_at_most_4_connections(
    dsn: str, server: tuple[str, str]
) -> None:
    url, app = server
    texts = [f"note {i} {uuid.uuid4().hex[:6]}" for i in range(200)]
    with BackendWatch(dsn, app) as watch, ThreadPoolExecutor(32) as clients:
        answers = list(clients.map(lambda text: request("POST", f"{url}/notes/", text=text), texts))
    for text, (status, body) in zip(texts, answers):
        assert status == 201
        assert body["text"] == text
        assert body["data"] == {"text": text, "length": len(text)}
    assert watch.counts and max(watch.counts) <= MAX_SIZE, watch.counts
    assert 1 <= len({body["pid"] for _, body in answers}) <= MAX_SIZE
    assert len(backends(dsn, app)) <= MAX_SIZE


def test_select_for_update_serialises_200_concurrent_increments(server: tuple[str, str]) -> None:
    url, _ = server
    name = f"c{uuid.uuid4().hex[:8]}"
    with ThreadPoolExecutor(32) as clients:
        answers = list(
            clients.map(lambda _: request("POST", f"{url}/counters/{name}/increment/"), range(200))
        )
    assert {status for status, _ in answers} == {200}
    # Each increment saw the one before it: every value from 1 to 200 once.
    assert sorted(body["value"] for _, body in answers) == list(range(1, 201))
    assert request("GET", f"{url}/counters/{name}/") == (200, {"name": name, "value": 200})


def test_next_request_finds_the_session_django_expects(server: tuple[str, str]) -> None:
    url, _ = server
    clean_session = {
        "time_zone": "UTC",
        "read_only": "off",
        "isolation_level": None,
        "readonly": None,
        "deferrable": None,
        "autocommit": True,
        "uncommitted_notes": 0,
    }
    # A request leaves its connection with another time zone and a read-only
    # serializable session, or inside a transaction holding a write; the next
    # request on that connection must find none of it. (Django gives the
    # connection back just after the response went out: a request sent at
    # once may get another one, clean too, so ask until it is the same.)
    for dirt in ["session", "transaction"] * 3:
        _, dirty = request("GET", f"{url}/session/?dirty={dirt}")
        for _ in range(50):
            _, clean = request("GET", f"{url}/session/")
            assert clean == {**clean_session, "pid": clean["pid"]}, dirt
            if clean["pid"] == dirty["pid"]:
                break
        else:
            raise AssertionError(f"no request got the connection back after ?dirty={dirt}")


# -- the backend's rules, inside one Django process ---------------------------------------------


@pytest.fixture(scope="module")
def probes(dsn: str, database: str) -> dict[str, Any]:
    """tests/django_probes.py's report, run on the module's database."""
    app = app_name()
    result = run(
        ["-m", "tests.django_probes"],
        {**site_env(dsn_with(dsn, dbname=database)), "P2P_APP": app},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def outcome(probes: dict[str, Any], name: str) -> Any:
    entry = probes[name]
    assert "result" in entry, entry.get("traceback", entry)
    return entry["result"]


def error(probes: dict[str, Any], name: str) -> str:
    entry = probes[name]
    assert "error" in entry, f"{name} raised nothing: {entry}"
    message: str = entry["error"]
    return message


def test_connection_is_a_pooled_psycopg2_handle(probes: dict[str, Any]) -> None:
    assert outcome(probes, "pooled_handle") == {
        "pool_is_connection_pool": True,
        "pool_name": "django-default",
        "is_pooled_handle": True,
        "is_psycopg2_connection": True,
        "driver": "psycopg2",
    }


def test_pool_true_takes_the_pool_defaults(probes: dict[str, Any]) -> None:
    result = outcome(probes, "pool_true_takes_the_pool_defaults")
    assert result == {"min_size": 4, "max_size": 4, "timeout": 30.0}


def test_pool_opens_on_first_connection(probes: dict[str, Any]) -> None:
    result = outcome(probes, "pool_opens_on_first_connection")
    assert result == {"before": {"closed": True, "backends": 0}, "after": {"closed": False}}


def test_one_pool_per_alias_and_process(probes: dict[str, Any]) -> None:
    result = outcome(probes, "one_pool_per_alias_and_process")
    assert result == {"threads": 4, "distinct_pools": 1, "other_alias_has_its_own": True}


def test_close_gives_the_connection_back(probes: dict[str, Any]) -> None:
    result = outcome(probes, "close_gives_the_connection_back")
    assert result["connection"] == "None"
    assert "returned to the pool" in result["handle"]


def test_close_pool_closes_its_connections(probes: dict[str, Any]) -> None:
    result = outcome(probes, "close_pool_closes_its_connections")
    assert result["backends_before"] >= 1
    assert result == {**result, "backends_after": 0, "old_pool_closed": True, "reopened": True}


def test_pool_with_conn_max_age_is_improperly_configured(probes: dict[str, Any]) -> None:
    message = error(probes, "persistent_connections_refused")
    assert message.startswith("ImproperlyConfigured: ")
    assert "CONN_MAX_AGE must be 0, not 60" in message


def test_isolation_level_option_applies_to_every_checkout(probes: dict[str, Any]) -> None:
    levels = outcome(probes, "isolation_level_option_applies_to_every_checkout")
    assert levels == ["serializable", "serializable"]


def test_invalid_isolation_level_is_improperly_configured(probes: dict[str, Any]) -> None:
    message = error(probes, "invalid_isolation_level_refused")
    assert message.startswith("ImproperlyConfigured: OPTIONS['isolation_level'] = 42")


def test_jsonb_comes_back_as_text_for_jsonfield(probes: dict[str, Any]) -> None:
    assert outcome(probes, "jsonb_comes_back_as_text") == 'str: {"a": [1, 2]}'


def test_user_reset_runs_before_the_session_is_restored(probes: dict[str, Any]) -> None:
    result = outcome(probes, "user_reset_runs_then_the_session_is_restored")
    # The user's reset (RESET ALL) got the pool's callback handle and dropped
    # the time zone; the backend set it again before the next checkout.
    assert result == {
        "resets": ["CallbackConnection", "CallbackConnection"],
        "same_backend": True,
        "time_zones": ["UTC", "UTC"],
    }


def test_backend_keywords_in_the_pool_dict_raise_type_error(probes: dict[str, Any]) -> None:
    message = error(probes, "backend_keywords_in_the_pool_dict_refused")
    assert message.startswith("TypeError: ") and "'open'" in message


def test_health_checks_replace_a_dead_connection(probes: dict[str, Any]) -> None:
    assert outcome(probes, "health_checks_replace_a_dead_connection") == {"replaced": True}


def test_connection_of_a_thread_that_never_closed_it_comes_back(probes: dict[str, Any]) -> None:
    assert outcome(probes, "connection_of_a_thread_that_never_closed_it_comes_back") == "served"


def test_assume_role_applies_to_pooled_connections(probes: dict[str, Any]) -> None:
    users = outcome(probes, "assume_role_applies_to_pooled_connections")
    if isinstance(users, str):
        pytest.skip(users)
    assert users == ["pg_monitor", "pg_monitor"]


# -- psycopg 3 installed too ---------------------------------------------------------------


def test_backend_refuses_django_postgresql_loaded_on_psycopg3(dsn: str) -> None:
    pytest.importorskip("psycopg")
    code = "import django.db.backends.postgresql.base\nimport psycopg2_pool.django.base\n"
    result = run(["-c", code], site_env(dsn))
    assert result.returncode != 0
    assert "ImproperlyConfigured: ENGINE 'psycopg2_pool.django' runs" in result.stderr, (
        result.stderr
    )
    assert "INSTALLED_APPS" in result.stderr


def test_app_entry_loads_postgresql_on_psycopg2_before_contrib_postgres(
    dsn: str, database: str
) -> None:
    pytest.importorskip("psycopg")
    # The site lists "psycopg2_pool.django" before django.contrib.postgres.
    code = (
        "import django\n"
        "django.setup()\n"
        "from django.db import connection\n"
        "from django.db.backends.postgresql.psycopg_any import is_psycopg3\n"
        "connection.ensure_connection()\n"
        "print(is_psycopg3, type(connection.connection.__wrapped__).__module__)\n"
    )
    result = run(["-c", code], site_env(dsn_with(dsn, dbname=database)))
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "psycopg2.extensions"]


def test_settings_can_import_isolation_level_where_psycopg3_is_installed(
    dsn: str, database: str, tmp_path: Path
) -> None:
    pytest.importorskip("psycopg")
    # As the README says: import the backend before Django's IsolationLevel.
    (tmp_path / "isolated_settings.py").write_text(
        "import psycopg2_pool.django\n"
        "from django.db.backends.postgresql.psycopg_any import IsolationLevel\n"
        "from django_site.settings import *\n"
        'DATABASES["default"]["OPTIONS"]["isolation_level"] = IsolationLevel.SERIALIZABLE\n'
    )
    code = (
        "import django\n"
        "django.setup()\n"
        "from django.db import connection, transaction\n"
        "with transaction.atomic(), connection.cursor() as cursor:\n"
        "    cursor.execute('SHOW transaction_isolation')\n"
        "    print(cursor.fetchone()[0])\n"
    )
    env = site_env(dsn_with(dsn, dbname=database), DJANGO_SETTINGS_MODULE="isolated_settings")
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env["PYTHONPATH"]])
    result = run(["-c", code], env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["serializable"]
