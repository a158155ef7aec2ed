"""A primary with streaming standbys, and writers that count their commits.

For the high-availability tests (test_ha.py), and to run the same scenarios
against another pool by hand: ``python -m tests.ha_cluster psycopg_pool``
(from the repository root) prints the times for psycopg_pool's.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg2

from psycopg2_pool._embedded import EmbeddedServer
from psycopg2_pool._watchdog import shutdown_socket

# Every commit waits until the standby applied it: a commit acknowledged by
# the old primary is on the new one, so "lost" can only be the pool's doing.
PRIMARY_SETTINGS = {"synchronous_standby_names": "*", "synchronous_commit": "remote_apply"}


@dataclass
class Cluster:
    primary: EmbeddedServer
    standbys: list[EmbeddedServer]
    stopped: list[EmbeddedServer] = field(default_factory=list)

    def conninfo(self, attrs: str, *servers: EmbeddedServer, extra: str = "") -> str:
        servers = servers or (self.primary, *self.standbys)
        hosts = ",".join("127.0.0.1" for _ in servers)
        ports = ",".join(str(server.port) for server in servers)
        return (
            f"host={hosts} port={ports} user=postgres dbname=postgres"
            f" target_session_attrs={attrs} connect_timeout=2 {extra}"
        )


@contextlib.contextmanager
def cluster(standbys: int = 1) -> Iterator[Cluster]:
    """A primary and ``standbys`` streaming standbys on loopback ports, all private."""
    servers: list[EmbeddedServer] = []
    try:
        primary = EmbeddedServer(**PRIMARY_SETTINGS)
        servers.append(primary)
        primary.start()
        with contextlib.closing(psycopg2.connect(primary.dsn)) as conn:
            conn.autocommit = True
            # No standby yet: a synchronous commit would wait for ever.
            conn.cursor().execute("SET synchronous_commit = local")
            conn.cursor().execute("CREATE TABLE written (id bigint NOT NULL)")
        for _ in range(standbys):
            standby = EmbeddedServer(standby_of=primary)
            servers.append(standby)
            standby.start()
        _wait_streaming(primary, standbys)
        yield Cluster(primary, servers[1:])
    finally:
        for server in servers:
            with contextlib.suppress(Exception):
                if server.running:
                    for pid in (server.pid, *_children(server.pid)):
                        os.kill(pid, signal.SIGCONT)
            with contextlib.suppress(Exception):
                server.cleanup()


def _wait_streaming(primary: EmbeddedServer, count: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    with contextlib.closing(psycopg2.connect(primary.dsn)) as conn:
        conn.autocommit = True
        cur = conn.cursor()
        while True:
            cur.execute("SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'")
            row = cur.fetchone()
            if row is not None and row[0] >= count:
                return
            if time.monotonic() > deadline:
                raise RuntimeError("the standbys do not stream")
            time.sleep(0.05)


@dataclass
class Writers:
    """Threads that each insert ids of their own, one per transaction, through ``pool``.

    A write that raised is tried again with the same id, unless a look on a
    writable connection finds it landed after all.
    """

    pool: Any
    count: int = 12
    bound: float | None = None  # break a statement that runs longer than this
    successes: list[list[float]] = field(default_factory=list)
    committed: set[int] = field(default_factory=set)
    pending: set[int] = field(default_factory=set)
    failures: int = 0
    checkout_times: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.successes = [[] for _ in range(self.count)]
        self._threads = [
            threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(self.count)
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)
            assert not thread.is_alive(), "a writer hangs"

    def _run(self, n: int) -> None:
        next_id = n * 10_000_000
        retry: int | None = None
        while not self._stop.is_set():
            wid = retry if retry is not None else next_id
            called = time.monotonic()
            try:
                with self.pool.connection(timeout=1.0) as conn:
                    with self._lock:
                        self.checkout_times.append(time.monotonic() - called)
                    landed = self._write(conn, wid, retry is not None)
            except Exception:
                with self._lock:
                    self.checkout_times.append(time.monotonic() - called)
                    self.failures += 1
                    self.pending.add(wid)
                retry = wid
                time.sleep(0.01)
                continue
            with self._lock:
                self.committed.add(wid)
                self.pending.discard(wid)
                if not landed:
                    self.successes[n].append(time.monotonic())
            if wid == next_id:
                next_id += 1
            retry = None
            time.sleep(0.005)

    def _write(self, conn: Any, wid: int, check: bool) -> bool:
        """Insert ``wid``; True if it was found there already."""
        timer = None
        if self.bound is not None:
            timer = threading.Timer(self.bound, shutdown_socket, (conn,))
            timer.start()
        try:
            cur = conn.cursor()
            if check:
                cur.execute("SELECT count(*) FROM written WHERE id = %s", (wid,))
                row = cur.fetchone()
                if row[0]:
                    return True
            cur.execute("INSERT INTO written (id) VALUES (%s)", (wid,))
            conn.commit()
            return False
        finally:
            if timer is not None:
                timer.cancel()

    def times_after(self, moment: float) -> tuple[float, float]:
        """Seconds from ``moment`` to the first write to succeed after it, and to
        the moment every writer had succeeded once after it."""
        firsts = []
        for stamps in self.successes:
            after = [stamp for stamp in stamps if stamp >= moment]
            firsts.append(after[0] - moment if after else float("inf"))
        return min(firsts), max(firsts)

    def verify(self, dsn: str) -> tuple[int, int]:
        """(lost, duplicated) commits, counted on the server at ``dsn``."""
        with contextlib.closing(psycopg2.connect(dsn)) as conn:
            cur = conn.cursor()
            cur.execute("SELECT id, count(*) FROM written GROUP BY id")
            rows = dict(cur.fetchall())
        lost = len(self.committed - rows.keys())
        duplicated = sum(1 for count in rows.values() if count > 1)
        unexplained = rows.keys() - self.committed - self.pending
        assert not unexplained, f"ids nobody wrote: {sorted(unexplained)[:5]}"
        return lost, duplicated


PoolFactory = Callable[[str], Any]


def run_switch(
    make_pool: PoolFactory,
    switch: Callable[[Cluster], float],
    writers: int = 12,
    bound: float | None = None,
    settle: float = 2.5,
) -> dict[str, Any]:
    """Writers through a read-write pool while ``switch`` moves the primary.

    ``switch`` returns the moment of the promotion. Returns the measures.
    """
    with cluster() as pair:
        pool = make_pool(pair.conninfo("read-write"))
        try:
            crew = Writers(pool, writers, bound)
            crew.start()
            time.sleep(0.5)
            promoted = switch(pair)
            time.sleep(settle)
            crew.stop()
            first, last = crew.times_after(promoted)
            lost, duplicated = crew.verify(pair.standbys[0].dsn)
        finally:
            pool.close()
    return {
        "first": first,
        "last": last,
        "lost": lost,
        "duplicated": duplicated,
        "failures": crew.failures,
        "commits": len(crew.committed),
        "slowest_checkout": max(crew.checkout_times),
    }


def failover(pair: Cluster) -> float:
    """The primary stops (fast), then the standby is promoted."""
    pair.primary.stop("fast")
    pair.standbys[0].promote()
    return time.monotonic()


def switchover(pair: Cluster) -> float:
    """The primary turns read-only, then the standby is promoted."""
    with contextlib.closing(psycopg2.connect(pair.primary.dsn)) as conn:
        conn.autocommit = True
        cur = conn.cursor()
        cur.execute("ALTER SYSTEM SET default_transaction_read_only = on")
        cur.execute("SELECT pg_reload_conf()")
    time.sleep(0.2)  # the primary serves read-only for a moment
    pair.standbys[0].promote()
    return time.monotonic()


def hang(pair: Cluster) -> float:
    """The primary hangs (SIGSTOP: TCP alive, no answers), then the standby is promoted."""
    os.kill(pair.primary.pid, signal.SIGSTOP)
    # Its backends are children: stop them all, as a frozen machine would.
    for pid in _children(pair.primary.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGSTOP)
    time.sleep(0.3)
    pair.standbys[0].promote()
    return time.monotonic()


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(entry))
    return found


def _ours(conninfo: str) -> Any:
    from psycopg2_pool import ConnectionPool

    return ConnectionPool(conninfo, min_size=4, max_size=16, open=True)


def _psycopg_pools(conninfo: str) -> Any:
    import psycopg_pool

    return psycopg_pool.ConnectionPool(conninfo, min_size=4, max_size=16, open=True)


if __name__ == "__main__":  # pragma: no cover - run by hand
    factory = _psycopg_pools if sys.argv[1:] == ["psycopg_pool"] else _ours
    for name, switch, bound in (
        ("failover", failover, None),
        ("switchover", switchover, None),
        ("hung primary", hang, 0.5),  # each statement cut after 0.5 s
    ):
        result = run_switch(factory, switch, bound=bound)
        print(name, {k: round(v, 3) if isinstance(v, float) else v for k, v in result.items()})
