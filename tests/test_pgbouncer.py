"""ConnectionPool behind a real PgBouncer in transaction mode.

Each test starts its own pgbouncer on a free port in front of the test server.
PgBouncer refuses to run as root; as root it is started with ``-u nobody``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest
from psycopg2.extensions import parse_dsn

from psycopg2_pool import ConnectionPool
from psycopg2_pool._embedded import free_port

from .helpers import wait_for

PGBOUNCER = shutil.which("pgbouncer") or (
    "/usr/sbin/pgbouncer" if os.access("/usr/sbin/pgbouncer", os.X_OK) else None
)
pytestmark = pytest.mark.skipif(
    PGBOUNCER is None, reason="pgbouncer is not installed (apt-get install pgbouncer)"
)

# Server connections pgbouncer opens per database/user pair.
DEFAULT_POOL_SIZE = 4


class Bouncer:
    """A pgbouncer process in transaction mode, in front of one server."""

    def __init__(self, server_dsn: str, workdir: Path) -> None:
        target = parse_dsn(server_dsn)
        self.database = f"p2p_{uuid.uuid4().hex[:8]}"
        self.port = free_port()
        self.workdir = workdir
        self.log = workdir / "pgbouncer.log"
        server = " ".join(
            f"{key}={target[key]}"
            for key in ("host", "port", "dbname", "user", "password")
            if key in target
        )
        config = workdir / "pgbouncer.ini"
        config.write_text(
            f"[databases]\n"
            f"{self.database} = {server}\n"
            f"[pgbouncer]\n"
            f"listen_addr = 127.0.0.1\n"
            f"listen_port = {self.port}\n"
            f"unix_socket_dir =\n"
            f"auth_type = any\n"
            f"admin_users = pgbouncer\n"
            f"pool_mode = transaction\n"
            f"default_pool_size = {DEFAULT_POOL_SIZE}\n"
            f"max_client_conn = 200\n"
            f"server_check_delay = 0\n"
            # psycopg2 never sends it, but other drivers do.
            f"ignore_startup_parameters = extra_float_digits\n"
        )
        self.command = [str(PGBOUNCER), str(config)]
        if os.geteuid() == 0:
            # "FATAL PgBouncer should not run as root": drop to an unprivileged user.
            self.command[1:1] = ["-u", "nobody"]
            # tmp_path's parents are private to root: nobody could not read the config.
            workdir.chmod(0o755)
            config.chmod(0o644)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def dsn(self) -> str:
        return f"host=127.0.0.1 port={self.port} dbname={self.database} user=app"

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(self.command, stdout=log, stderr=log)

        def ready() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                log = self.log.read_text() if self.log.exists() else ""
                raise RuntimeError(f"pgbouncer exited with {self.process.returncode}:\n{log}")
            try:
                psycopg2.connect(self.admin_dsn, connect_timeout=1).close()
            except psycopg2.OperationalError:
                return False
            return True

        wait_for(ready, timeout=10, interval=0.05, message="pgbouncer to accept connections")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()  # SIGTERM: pgbouncer exits at once, dropping clients
            self.process.wait(10)
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    @property
    def admin_dsn(self) -> str:
        return f"host=127.0.0.1 port={self.port} dbname=pgbouncer user=pgbouncer"

    def show(self, what: str) -> list[dict[str, Any]]:
        """Rows of the admin console's ``SHOW <what>`` for our database."""
        conn = psycopg2.connect(self.admin_dsn)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute(f"SHOW {what}")
                assert cur.description is not None
                names = [column[0] for column in cur.description]
                rows = [dict(zip(names, row)) for row in cur.fetchall()]
        finally:
            conn.close()
        return [row for row in rows if row.get("database") == self.database]


@pytest.fixture
def bouncer(dsn: str) -> Iterator[Bouncer]:
    workdir = Path(tempfile.mkdtemp(prefix="psycopg2_pool_pgbouncer_"))
    try:
        bouncer = Bouncer(dsn, workdir)
        bouncer.start()
        try:
            yield bouncer
        finally:
            bouncer.stop()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def backend_pid(conn: Any) -> int:
    with conn.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        row = cur.fetchone()
    assert row is not None
    return int(row[0])


def test_checkout_and_transactions(bouncer: Bouncer) -> None:
    with ConnectionPool(bouncer.dsn, min_size=2, max_size=3, timeout=10, open=True) as pool:
        pool.wait()
        with pool.connection() as conn:
            conn.execute("CREATE TEMP TABLE IF NOT EXISTS t (x int) ON COMMIT DROP")
            conn.execute("INSERT INTO t VALUES (1)")
            assert conn.execute("SELECT count(*) FROM t").fetchone() == (1,)
        for _ in range(5):
            with pool.connection() as conn:
                assert conn.execute("SELECT 1").fetchone() == (1,)
        stats = pool.get_stats()
        assert stats["pool_size"] == 2
        assert stats["pool_available"] == 2
        assert stats.get("returns_bad", 0) == 0
        assert len(bouncer.show("CLIENTS")) == 2


def test_check_connection_and_reset(bouncer: Bouncer) -> None:
    resets: list[int] = []

    def reset(conn: Any) -> None:
        # A reset that needs no session state: one autocommit statement.
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
        conn.autocommit = False
        resets.append(1)

    with ConnectionPool(
        bouncer.dsn,
        min_size=1,
        max_size=2,
        timeout=10,
        check=ConnectionPool.check_connection,
        reset=reset,
        open=True,
    ) as pool:
        pool.wait()
        for _ in range(3):
            with pool.connection() as conn:
                conn.execute("SELECT 1")
        wait_for(lambda: len(resets) == 3)
        pool.check()
        stats = pool.get_stats()
        assert stats.get("connections_lost", 0) == 0
        assert stats.get("returns_bad", 0) == 0
        assert stats["pool_available"] == stats["pool_size"] == 1


def test_transaction_mode_shares_server_connections(bouncer: Bouncer) -> None:
    """Two pooled connections may run on the same server backend, one after the other.

    This is why nothing session-level (SET, advisory locks, prepared statements,
    temp tables outliving a transaction) can be relied on behind pgbouncer.
    """
    with ConnectionPool(bouncer.dsn, min_size=2, timeout=10, open=True) as pool:
        pool.wait()
        pids = set()
        for _ in range(4):
            with pool.connection() as conn:
                pids.add(backend_pid(conn))
        # Used one at a time, the clients were all served by one server backend.
        assert len(pids) == 1
        assert len(bouncer.show("SERVERS")) == 1


def test_pool_recovers_from_a_pgbouncer_restart(bouncer: Bouncer) -> None:
    with ConnectionPool(
        bouncer.dsn,
        min_size=3,
        timeout=10,
        check=ConnectionPool.check_connection,
        open=True,
    ) as pool:
        pool.wait()
        bouncer.restart()
        # Every idle connection is now broken; check= discards and replaces them.
        for _ in range(5):
            with pool.connection() as conn:
                assert conn.execute("SELECT 1").fetchone() == (1,)
        stats = pool.get_stats()
        assert stats["connections_lost"] >= 1
        wait_for(lambda: pool.get_stats()["pool_available"] == 3)
        assert len(bouncer.show("CLIENTS")) == 3


def test_pool_without_check_recovers_after_restart(bouncer: Bouncer) -> None:
    with ConnectionPool(bouncer.dsn, min_size=2, timeout=10, open=True) as pool:
        pool.wait()
        bouncer.restart()
        # Without check= a client may get a broken connection once: the error
        # reaches it, and the pool discards the connection when given back.
        failures = 0
        for _ in range(4):
            try:
                with pool.connection() as conn:
                    conn.execute("SELECT 1")
            except psycopg2.OperationalError:
                failures += 1
        assert failures <= 2
        assert pool.get_stats().get("returns_bad", 0) == failures
        # pool.check() clears out any broken idle connection that remains.
        pool.check()
        wait_for(lambda: pool.get_stats()["pool_available"] == 2)
        with pool.connection() as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)


def test_many_pools_share_one_pgbouncer(bouncer: Bouncer) -> None:
    pools = [
        ConnectionPool(
            bouncer.dsn, min_size=5, max_size=5, timeout=20, name=f"shared-{i}", open=True
        )
        for i in range(4)
    ]
    errors: list[BaseException] = []
    deadline = time.monotonic() + 1.0

    def client(pool: ConnectionPool) -> None:
        try:
            while time.monotonic() < deadline:
                with pool.connection() as conn:
                    conn.execute("SELECT pg_sleep(0.002)")
        except BaseException as exc:
            errors.append(exc)

    try:
        for pool in pools:
            pool.wait()
        # 20 client connections on pgbouncer, at most DEFAULT_POOL_SIZE server ones.
        assert len(bouncer.show("CLIENTS")) == 20
        threads = [
            threading.Thread(target=client, args=(pool,)) for pool in pools for _ in range(3)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert not errors
        assert 1 <= len(bouncer.show("SERVERS")) <= DEFAULT_POOL_SIZE
        for pool in pools:
            stats = pool.get_stats()
            assert stats["requests_num"] > 0
            assert stats["pool_size"] == 5
            assert stats.get("requests_errors", 0) == 0
            assert stats.get("returns_bad", 0) == 0
    finally:
        for pool in pools:
            pool.close()
    wait_for(lambda: not bouncer.show("CLIENTS"))
