"""Code written for psycopg2-pool 1.2 by other people, run unchanged on this package.

psycopg2-pool 1.2's own ``tests.py`` (from its sdist on PyPI) runs in a
subprocess, with libpq's environment pointing at the test server; liberapay's
``postgres`` 4.0, 1.2's main client, is loaded from its wheel (without its
dependencies, which would bring 1.2 back) and driven through its whole API,
from several threads.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import psycopg2
import psycopg2.errors
import pytest
from psycopg2.extensions import parse_dsn

import psycopg2_pool
from tests import pypi
from tests.helpers import app_name, backends, dsn_with

ROOT = Path(__file__).resolve().parent.parent

# libpq reads these variables when a connect() call names nothing: 1.2's
# tests build their pools with ConnectionPool(0, 1) and no DSN at all.
_LIBPQ_ENV = {
    "host": "PGHOST",
    "hostaddr": "PGHOSTADDR",
    "port": "PGPORT",
    "dbname": "PGDATABASE",
    "user": "PGUSER",
    "password": "PGPASSWORD",
    "sslmode": "PGSSLMODE",
    "application_name": "PGAPPNAME",
    "connect_timeout": "PGCONNECT_TIMEOUT",
}


def libpq_environment(dsn: str) -> dict[str, str]:
    """The environment that makes ``psycopg2.connect("")`` reach ``dsn``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    for key, value in parse_dsn(dsn).items():
        if key not in _LIBPQ_ENV:
            raise ValueError(f"no libpq environment variable for {key!r} in the test DSN")
        env[_LIBPQ_ENV[key]] = value
    return env


# -- psycopg2-pool 1.2's own tests ----------------------------------------------------


def test_psycopg2_pool_12_own_test_suite_passes_unchanged(dsn: str, tmp_path: Path) -> None:
    sdist = pypi.fetch_or_fail("psycopg2-pool==1.2", "psycopg2-pool-1.2.tar.gz", source=True)
    with tarfile.open(sdist) as archive:
        member = archive.extractfile("psycopg2-pool-1.2/tests.py")
        assert member is not None
        (tmp_path / "tests.py").write_bytes(member.read())
    # Only tests.py is taken: the sdist's own psycopg2_pool package stays out,
    # so "from psycopg2_pool import ConnectionPool" finds this package.
    env = libpq_environment(dsn)
    env["PYTHONPATH"] = str(ROOT)
    check = subprocess.run(
        [sys.executable, "-c", "import psycopg2_pool; print(psycopg2_pool.__file__)"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert Path(check.stdout.strip()).parent == ROOT / "psycopg2_pool"
    # As 1.2's tox.ini runs them (-Wd), but any warning is an error here.
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-W", "error", "tests.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "10 passed" in result.stdout.splitlines()[-1], result.stdout


# -- liberapay's postgres 4.0 ---------------------------------------------------------


@pytest.fixture(scope="module")
def postgres_module() -> Iterator[ModuleType]:
    """postgres 4.0, imported from its wheel; its ``psycopg2_pool`` is this package."""
    wheel = pypi.fetch_or_fail("postgres==4.0", "postgres-4.0-py2.py3-none-any.whl", source=False)
    with zipfile.ZipFile(wheel) as archive:
        requires = archive.read("postgres-4.0.dist-info/METADATA").decode()
    assert "Requires-Dist: psycopg2-pool" in requires  # why it is loaded without deps
    sys.path.insert(0, str(wheel))
    try:
        import postgres

        assert postgres.ThreadSafeConnectionPool is psycopg2_pool.ThreadSafeConnectionPool
        yield postgres
    finally:
        sys.path.remove(str(wheel))
        for name in [m for m in sys.modules if m == "postgres" or m.startswith("postgres.")]:
            del sys.modules[name]


@pytest.fixture
def db(postgres_module: ModuleType, dsn: str) -> Iterator[Any]:
    """A Postgres object on its own table, as an application would make it."""
    name = app_name()
    url = dsn_with(dsn, application_name=name)
    db = postgres_module.Postgres(url, minconn=1, maxconn=4)
    db.app_name = name
    db.url = url
    db.table = f"t_{name.replace('-', '_')}"
    db.run(f"CREATE TABLE {db.table} (id serial PRIMARY KEY, who text, n int)")
    try:
        yield db
    finally:
        db.run(f"DROP TABLE {db.table}")
        db.pool.close()


def test_postgres_run_one_all(db: Any) -> None:
    db.run(f"INSERT INTO {db.table} (who, n) VALUES (%s, %s)", ("a", 1))
    db.run(f"INSERT INTO {db.table} (who, n) VALUES (%(who)s, %(n)s)", {"who": "b", "n": 2})
    assert db.one(f"SELECT n FROM {db.table} WHERE who = 'b'") == 2
    assert db.one(f"SELECT n FROM {db.table} WHERE who = 'z'") is None
    assert db.all(f"SELECT who FROM {db.table} ORDER BY n") == ["a", "b"]
    rows = db.all(f"SELECT who, n FROM {db.table} ORDER BY n", back_as=dict)
    assert rows == [{"who": "a", "n": 1}, {"who": "b", "n": 2}]
    assert len(db.pool.connections_in_use) == 0


def test_postgres_connections_are_its_own_connection_class(db: Any) -> None:
    with db.get_connection() as conn:
        assert isinstance(conn, psycopg2.extensions.connection)
        assert type(conn).__name__ == "Connection"
        assert conn.postgres is db
        assert conn.encoding == "UTF8"


def test_postgres_get_cursor_commits_and_gives_the_connection_back(db: Any) -> None:
    with db.get_cursor() as cursor:
        cursor.run(f"INSERT INTO {db.table} (who, n) VALUES ('c', 3)")
        assert len(db.pool.connections_in_use) == 1
    assert len(db.pool.connections_in_use) == 0
    assert db.one(f"SELECT count(*) FROM {db.table}") == 1


def test_postgres_get_cursor_rolls_back_on_error(db: Any) -> None:
    with pytest.raises(ZeroDivisionError), db.get_cursor() as cursor:
        cursor.run(f"INSERT INTO {db.table} (who, n) VALUES ('d', 4)")
        1 / 0  # noqa: B018
    assert db.one(f"SELECT count(*) FROM {db.table}") == 0
    assert len(db.pool.connections_in_use) == 0


def test_postgres_get_connection_rolls_back_what_was_not_committed(db: Any) -> None:
    with db.get_connection() as conn:
        cursor = conn.cursor()
        cursor.run(f"INSERT INTO {db.table} (who, n) VALUES ('e', 5)")
        assert conn in db.pool.connections_in_use
    assert len(db.pool.connections_in_use) == 0
    assert db.one(f"SELECT count(*) FROM {db.table}") == 0
    with db.get_connection() as conn:
        conn.cursor().run(f"INSERT INTO {db.table} (who, n) VALUES ('e', 5)")
        conn.commit()
    assert db.one(f"SELECT count(*) FROM {db.table}") == 1


def test_postgres_nested_cursors_share_one_transaction(db: Any) -> None:
    with db.get_cursor() as outer:
        outer.run(f"INSERT INTO {db.table} (who, n) VALUES ('f', 6)")
        with db.get_cursor(cursor=outer) as inner:
            assert inner is outer
            assert inner.one(f"SELECT count(*) FROM {db.table}") == 1
        with db.get_connection() as conn, conn.get_cursor() as other:
            # Another connection does not see the uncommitted row.
            assert other.one(f"SELECT count(*) FROM {db.table}") == 0
    assert db.one(f"SELECT count(*) FROM {db.table}") == 1


def test_postgres_readonly_cursor_cannot_write_and_leaves_nothing_behind(db: Any) -> None:
    readonly = db.get_cursor(readonly=True)
    with pytest.raises(psycopg2.errors.ReadOnlySqlTransaction), readonly as cursor:
        cursor.run(f"INSERT INTO {db.table} (who, n) VALUES ('g', 7)")
    # The next checkout (most likely the same connection) writes again.
    db.run(f"INSERT INTO {db.table} (who, n) VALUES ('g', 7)")
    assert db.one(f"SELECT count(*) FROM {db.table}") == 1


def test_postgres_autocommit_cursor_commits_each_statement(db: Any) -> None:
    with pytest.raises(ZeroDivisionError), db.get_cursor(autocommit=True) as cursor:
        cursor.run(f"INSERT INTO {db.table} (who, n) VALUES ('h', 8)")
        1 / 0  # noqa: B018
    assert db.one(f"SELECT count(*) FROM {db.table}") == 1


def test_postgres_exhausted_pool_raises_pool_error_and_operational_error(db: Any) -> None:
    held = [db.get_connection() for _ in range(4)]
    with pytest.raises(psycopg2.OperationalError, match="connection pool exhausted") as info:
        db.get_connection()
    assert isinstance(info.value, psycopg2_pool.PoolError)
    for manager in held:
        manager.__exit__(None, None, None)
    assert db.one("SELECT 1") == 1


def test_postgres_from_several_threads(db: Any) -> None:
    errors: list[BaseException] = []

    def work(who: str) -> None:
        try:
            for n in range(40):
                with db.get_cursor() as cursor:
                    cursor.run(f"INSERT INTO {db.table} (who, n) VALUES (%s, %s)", (who, n))
                assert db.one(f"SELECT max(n) FROM {db.table} WHERE who = %s", (who,)) == n
                with db.get_cursor(readonly=True) as cursor:
                    assert cursor.one(
                        f"SELECT count(*) FROM {db.table} WHERE who = %s", (who,)
                    ) == (n + 1)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(f"w{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert db.one(f"SELECT count(*) FROM {db.table}") == 160
    assert len(backends(db.url, db.app_name)) <= 4
    assert len(db.pool.connections_in_use) == 0
