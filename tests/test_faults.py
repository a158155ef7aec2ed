"""Faults: a server that restarts, kills its backends, is not there, goes silent,
and connections given back in every state they can be in.

Every test that stops or silences a server owns that server (``private_server``);
the return-state tests only kill their own backends and share the session server.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from time import monotonic, sleep
from typing import Any, Callable

import psycopg2
import psycopg2.extensions as ext
import pytest

from psycopg2_pool import ConnectionPool, PoolTimeout, ThreadedConnectionPool
from psycopg2_pool._embedded import free_port
from psycopg2_pool.workers import Backoff
from tests.helpers import app_name, backends, dsn_with, terminate_backends, wait_for
from tests.tcpproxy import TcpProxy

# The reconnection delays of a pool (1 s, 2 s, 4 s... with 10% jitter): how long
# a pool may take to reconnect to a server that was away for a short while.
BACKOFF_BOUND = Backoff.INITIAL_DELAY * (1 + Backoff.JITTER) * (1 + 2 + 4) + 1.0
# Slack for "returns within its timeout" on a busy 2-core machine.
SLACK = 2.0


def unwrap(conn: Any) -> Any:
    return getattr(conn, "__wrapped__", conn)


def identity(conn: Any) -> tuple[int, Any] | None:
    """(backend pid, postmaster start time) of ``conn``'s server; None if it is dead."""
    real = unwrap(conn)
    try:
        with real.cursor() as cur:
            cur.execute("SELECT pg_backend_pid(), pg_postmaster_start_time()")
            row = cur.fetchone()
        real.rollback()
    except psycopg2.Error:
        return None
    return (row[0], row[1])


def server_start_time(dsn: str) -> Any:
    conn = psycopg2.connect(dsn_with(dsn, application_name="p2p-test-admin"))
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_postmaster_start_time()")
            return cur.fetchone()[0]
    finally:
        conn.close()


def in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    """Run ``fn`` in a daemon thread; the dict gets 'result' or 'error', and 'elapsed'."""
    out: dict[str, Any] = {}

    def run() -> None:
        started = monotonic()
        try:
            out["result"] = fn()
        except BaseException as exc:
            out["error"] = exc
        finally:
            out["elapsed"] = monotonic() - started

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


@pytest.fixture
def pools() -> Iterator[list[Any]]:
    """Pools to close at the end of the test, whatever happened."""
    made: list[Any] = []
    yield made
    for pool in made:
        try:
            if isinstance(pool, ConnectionPool):
                pool.close(timeout=1.0)
            elif not pool.closed:
                pool.closeall()
        except Exception:
            pass


# -- 1. server restart while clients hold and wait -----------------------------------


def _restart_scenario(
    server: Any, pools: list[Any], **pool_kwargs: Any
) -> tuple[ConnectionPool, str, Any, list[Any]]:
    """Three clients hold the pool's three connections, two more wait; the server
    restarts; the first holder notices (so the pool sees a dead connection come
    back), then all three give theirs back. Returns (pool, app name, old start
    time, identities seen by the waiters and by six later clients, in order)."""
    name = app_name()
    pool = ConnectionPool(
        dsn_with(server.dsn, application_name=name),
        min_size=3,
        max_size=3,
        timeout=15.0,
        open=True,
        **pool_kwargs,
    )
    pools.append(pool)
    pool.wait(10)
    held = [pool.getconn() for _ in range(3)]
    old_start = identity(held[0])[1]  # type: ignore[index]
    seen: list[Any] = []

    def wait_and_look() -> None:
        conn = pool.getconn(timeout=15)
        try:
            seen.append(identity(conn))
        finally:
            pool.putconn(conn)

    waiters = [in_thread(wait_and_look) for _ in range(2)]
    wait_for(lambda: pool.get_stats()["requests_waiting"] == 2, message="two waiting clients")
    server.restart("fast")
    assert identity(held[0]) is None, "a connection to the old server still answers"
    for conn in held:
        pool.putconn(conn)
    for thread, out in waiters:
        thread.join(20)
        assert not thread.is_alive()
        assert "error" not in out, out.get("error")
    for _ in range(6):
        with pool.connection(timeout=15) as conn:
            seen.append(identity(conn))
    return pool, name, old_start, seen


def test_restart_no_client_gets_old_server_connection_once_pool_saw_it_die(
    private_server: Any, pools: list[Any]
) -> None:
    _pool, _name, old_start, seen = _restart_scenario(private_server, pools)
    old = [s for s in seen if s is None or s[1] == old_start]
    assert not old, (
        f"{len(old)} of {len(seen)} clients served after the pool got a dead connection"
        " back were handed a connection to the old server"
    )


def test_restart_with_check_no_client_gets_dead_connection(
    private_server: Any, pools: list[Any]
) -> None:
    _pool, _name, old_start, seen = _restart_scenario(
        private_server, pools, check=ConnectionPool.check_connection
    )
    dead = [s for s in seen if s is None]
    assert not dead, f"{len(dead)} of {len(seen)} clients got a dead connection"
    assert all(s[1] != old_start for s in seen)


def test_restart_with_check_pool_back_to_min_size_within_backoff(
    private_server: Any, pools: list[Any]
) -> None:
    pool, name, _old_start, _seen = _restart_scenario(
        private_server, pools, check=ConnectionPool.check_connection
    )
    wait_for(
        lambda: len(backends(private_server.dsn, name)) == 3 and pool.get_stats()["pool_size"] == 3,
        timeout=BACKOFF_BOUND,
        message="3 live server connections and pool_size 3",
    )


def test_restart_with_check_stats_count_lost_connections(
    private_server: Any, pools: list[Any]
) -> None:
    pool, _name, _old_start, _seen = _restart_scenario(
        private_server, pools, check=ConnectionPool.check_connection
    )
    stats = pool.get_stats()
    # Three connections died with the old server: one came back broken, the
    # two given back untouched failed the check.
    assert stats.get("returns_bad", 0) + stats.get("connections_lost", 0) == 3, stats


def test_restart_idle_pool_back_to_min_size_within_backoff(
    private_server: Any, pools: list[Any]
) -> None:
    """Nobody uses the pool while the server restarts: it still ends up with
    min_size connections to the new server (no dead ones counted as its size)."""
    name = app_name()
    pool = ConnectionPool(
        dsn_with(private_server.dsn, application_name=name), min_size=2, open=True
    )
    pools.append(pool)
    pool.wait(10)
    private_server.restart("fast")
    wait_for(
        lambda: len(backends(private_server.dsn, name)) == 2,
        timeout=BACKOFF_BOUND,
        message="2 server connections after the restart",
    )


# -- 2. every backend terminated at once, under load ----------------------------------


class Load:
    """Threads looping on ``with pool.connection()``: SELECT 1, noting each outcome."""

    def __init__(self, pool: ConnectionPool, threads: int = 6) -> None:
        self.pool = pool
        self.stop = threading.Event()
        # (asked at, error or None); list.append is atomic
        self.outcomes: list[tuple[float, BaseException | None]] = []
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]
        for thread in self.threads:
            thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            asked = monotonic()
            try:
                with self.pool.connection(timeout=5) as conn:
                    conn.execute("SELECT 1").fetchone()
            except PoolTimeout as exc:
                self.outcomes.append((asked, exc))
            except psycopg2.Error as exc:
                self.outcomes.append((asked, exc))
            else:
                self.outcomes.append((asked, None))
            sleep(0.002)

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(10)
            assert not thread.is_alive()

    def errors_asked_after(self, when: float) -> list[BaseException]:
        return [e for asked, e in self.outcomes if asked > when and e is not None]

    def count_asked_after(self, when: float) -> int:
        return sum(1 for asked, _ in self.outcomes if asked > when)


def _kill_all_under_load(server: Any, pools: list[Any], **kwargs: Any) -> tuple[Load, float]:
    name = app_name()
    pool = ConnectionPool(
        dsn_with(server.dsn, application_name=name), min_size=4, max_size=4, open=True, **kwargs
    )
    pools.append(pool)
    pool.wait(10)
    load = Load(pool)
    wait_for(lambda: load.count_asked_after(0) > 50, message="load running")
    killed = terminate_backends(server.dsn, name)
    assert killed
    killed_at = monotonic()
    sleep(1.5)
    recovered_at = monotonic()
    sleep(0.5)
    load.finish()
    assert load.count_asked_after(recovered_at) > 10
    # Everything works again afterwards.
    assert not load.errors_asked_after(recovered_at), load.errors_asked_after(recovered_at)[:3]
    for _ in range(8):
        with pool.connection(timeout=5) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    return load, killed_at


def test_terminate_all_backends_under_load_then_everything_works(
    private_server: Any, pools: list[Any]
) -> None:
    load, killed_at = _kill_all_under_load(private_server, pools)
    # Without check, each of the 4 dead connections may fail one client, no more.
    assert len(load.errors_asked_after(killed_at)) <= 4


def test_terminate_all_backends_under_load_with_check_hands_out_no_dead_connection(
    private_server: Any, pools: list[Any]
) -> None:
    load, killed_at = _kill_all_under_load(
        private_server, pools, check=ConnectionPool.check_connection
    )
    # Asked for after the backends were gone: the check must catch every dead one.
    late = load.errors_asked_after(killed_at)
    assert not late, f"{len(late)} clients got a dead connection: {late[:3]}"


# -- 3. server unreachable at start ---------------------------------------------------


@pytest.fixture(params=["wrong_port", "server_down"])
def unreachable_dsn(request: Any) -> str:
    if request.param == "wrong_port":
        return f"host=127.0.0.1 port={free_port()} user=postgres dbname=postgres"
    server = request.getfixturevalue("private_server")
    server.stop()
    return str(server.dsn)


def test_unreachable_wait_raises_within_its_timeout(unreachable_dsn: str, pools: list[Any]) -> None:
    pool = ConnectionPool(unreachable_dsn, min_size=2, open=True)
    pools.append(pool)
    started = monotonic()
    with pytest.raises(PoolTimeout):
        pool.wait(timeout=1.0)
    assert monotonic() - started < 1.0 + SLACK


def test_unreachable_clients_get_pool_timeout_within_theirs(
    unreachable_dsn: str, pools: list[Any]
) -> None:
    pool = ConnectionPool(unreachable_dsn, min_size=2, open=True, timeout=30)
    pools.append(pool)
    started = monotonic()
    with pytest.raises(PoolTimeout):
        pool.getconn(timeout=0.5)
    with pytest.raises(PoolTimeout), pool.connection(timeout=0.5):
        pass
    assert monotonic() - started < 1.0 + SLACK


def test_unreachable_reconnect_failed_is_called(unreachable_dsn: str, pools: list[Any]) -> None:
    called: list[Any] = []
    done = threading.Event()

    def failed(pool: Any) -> None:
        called.append(pool)
        done.set()

    pool = ConnectionPool(
        unreachable_dsn, min_size=1, open=True, reconnect_timeout=0.5, reconnect_failed=failed
    )
    pools.append(pool)
    assert done.wait(5.0), "reconnect_failed was not called"
    assert called[0] is pool


def test_server_down_at_start_pool_serves_once_it_is_up(
    private_server: Any, pools: list[Any]
) -> None:
    private_server.stop()
    name = app_name()
    pool = ConnectionPool(
        dsn_with(private_server.dsn, application_name=name),
        min_size=2,
        open=True,
        reconnect_timeout=60,
    )
    pools.append(pool)
    with pytest.raises(PoolTimeout):
        pool.getconn(timeout=0.3)
    private_server.start()
    with pool.connection(timeout=BACKOFF_BOUND) as conn:
        assert identity(conn) is not None
    wait_for(
        lambda: len(backends(private_server.dsn, name)) == 2,
        timeout=BACKOFF_BOUND,
        message="min_size connections",
    )


def _gave_up_then_server_back(private_server: Any, pools: list[Any]) -> tuple[Any, str]:
    """A min_size=2 pool that gave up reconnecting while the server was down; it is up now."""
    private_server.stop()
    name = app_name()
    gave_up = threading.Event()
    pool = ConnectionPool(
        dsn_with(private_server.dsn, application_name=name),
        min_size=2,
        open=True,
        reconnect_timeout=0.5,
        reconnect_failed=lambda pool: gave_up.set(),
    )
    pools.append(pool)
    assert gave_up.wait(5.0)
    private_server.start()
    return pool, name


def test_server_down_after_reconnect_failed_pool_serves_once_it_is_up(
    private_server: Any, pools: list[Any]
) -> None:
    pool, _ = _gave_up_then_server_back(private_server, pools)
    # The same pool object, not a new one.
    with pool.connection(timeout=BACKOFF_BOUND) as conn:
        assert identity(conn) is not None


def test_server_down_after_reconnect_failed_pool_refills_to_min_size_once_it_is_up(
    private_server: Any, pools: list[Any]
) -> None:
    pool, name = _gave_up_then_server_back(private_server, pools)
    with pool.connection(timeout=BACKOFF_BOUND):
        pass
    wait_for(
        lambda: len(backends(private_server.dsn, name)) == 2,
        timeout=BACKOFF_BOUND,
        message="min_size connections after the server came back",
    )


# -- 4. a server that stops answering (traffic dropped, not refused) -----------------


@pytest.fixture
def proxy(private_server: Any) -> Iterator[TcpProxy]:
    with TcpProxy("127.0.0.1", private_server.port) as proxy:
        yield proxy
        proxy.resume()


def _proxied_pool(
    server: Any, proxy: TcpProxy, pools: list[Any], kwargs: dict[str, Any] | None = None, **kw: Any
) -> ConnectionPool:
    kw.setdefault("min_size", 2)
    kw.setdefault("max_size", 2)
    pool = ConnectionPool(
        dsn_with(server.dsn, port=proxy.port, application_name=app_name()),
        kwargs=kwargs,
        open=True,
        timeout=1.0,
        **kw,
    )
    pools.append(pool)
    pool.wait(10)
    return pool


def _bounded(proxy: TcpProxy, fn: Callable[[], Any], timeout: float) -> dict[str, Any]:
    """Run ``fn``; if it is still running after ``timeout`` + SLACK, note it, let the
    traffic through so that it ends, and return with out['hung'] set."""
    thread, out = in_thread(fn)
    thread.join(timeout + SLACK)
    out["hung"] = thread.is_alive()
    if out["hung"]:
        proxy.resume()
        thread.join(30)
    return out


def test_blackhole_getconn_and_connection_bounded_by_timeout(
    private_server: Any, proxy: TcpProxy, pools: list[Any]
) -> None:
    pool = _proxied_pool(private_server, proxy, pools)
    proxy.blackhole()
    first = _bounded(proxy, lambda: pool.getconn(timeout=1), 1)
    second = _bounded(proxy, lambda: pool.getconn(timeout=1), 1)
    assert not first["hung"] and not second["hung"]
    assert "result" in first and "result" in second
    exhausted = _bounded(proxy, lambda: pool.getconn(timeout=1), 1)
    assert not exhausted["hung"]
    assert isinstance(exhausted.get("error"), PoolTimeout)

    def empty_block() -> None:
        with pool.connection(timeout=1):
            pass

    blocked = _bounded(proxy, empty_block, 1)
    assert not blocked["hung"]
    assert isinstance(blocked.get("error"), PoolTimeout)
    pool.putconn(first["result"])
    served = _bounded(proxy, empty_block, 1)
    assert not served["hung"] and "error" not in served, served.get("error")
    pool.putconn(second["result"])


def test_blackhole_getconn_with_check_bounded_by_timeout(
    private_server: Any, proxy: TcpProxy, pools: list[Any]
) -> None:
    pool = _proxied_pool(private_server, proxy, pools, check=ConnectionPool.check_connection)
    proxy.blackhole()
    out = _bounded(proxy, lambda: pool.getconn(timeout=1), 1)
    assert not out["hung"], "getconn(timeout=1) with check hung on a silent server"
    assert isinstance(out.get("error"), PoolTimeout), out


def test_blackhole_successive_getconn_with_check_each_bounded_by_timeout(
    private_server: Any, proxy: TcpProxy, pools: list[Any]
) -> None:
    """Each check cut short sends a worker to open a replacement into the silent
    network; the watchdogs of the next clients' checks must not wait for them."""
    pool = _proxied_pool(
        private_server,
        proxy,
        pools,
        min_size=4,
        max_size=4,
        num_workers=3,
        check=ConnectionPool.check_connection,
    )
    proxy.blackhole()
    for attempt in range(5):
        out = _bounded(proxy, lambda: pool.getconn(timeout=1), 1)
        assert not out["hung"], f"getconn(timeout=1) #{attempt + 1} hung on a silent server"
        assert isinstance(out.get("error"), PoolTimeout), out
        assert out["elapsed"] < 1.5, f"getconn(timeout=1) #{attempt + 1}: {out['elapsed']:.2f} s"


# libpq parameters that might bound a query on a connection whose traffic stopped.
TCP_SETTINGS = {
    "tcp_user_timeout": {"tcp_user_timeout": 1000},
    "keepalives": {
        "keepalives": 1,
        "keepalives_idle": 1,
        "keepalives_interval": 1,
        "keepalives_count": 1,
    },
    "tcp_user_timeout_and_keepalives": {
        "tcp_user_timeout": 1000,
        "keepalives": 1,
        "keepalives_idle": 1,
        "keepalives_interval": 1,
        "keepalives_count": 1,
    },
    "connect_timeout": {"connect_timeout": 2},
}


@pytest.mark.parametrize("settings", list(TCP_SETTINGS), ids=list(TCP_SETTINGS))
def test_blackhole_getconn_with_check_bounded_by_libpq_settings(
    private_server: Any, proxy: TcpProxy, pools: list[Any], settings: str
) -> None:
    pool = _proxied_pool(
        private_server,
        proxy,
        pools,
        kwargs=TCP_SETTINGS[settings],
        check=ConnectionPool.check_connection,
    )
    proxy.blackhole()
    out = _bounded(proxy, lambda: pool.getconn(timeout=1), 1)
    assert not out["hung"], f"getconn(timeout=1) with check and {settings} hung"


def test_blackhole_new_connections_bounded_by_connect_timeout(
    private_server: Any, proxy: TcpProxy, pools: list[Any]
) -> None:
    """Connection attempts into a silent network give up after connect_timeout
    (libpq's minimum is 2 s), and the pool connects once traffic flows again."""
    proxy.blackhole()
    pool = ConnectionPool(
        dsn_with(private_server.dsn, port=proxy.port, application_name=app_name()),
        kwargs={"connect_timeout": 2},
        min_size=1,
        open=True,
        reconnect_timeout=60,
    )
    pools.append(pool)
    out = _bounded(proxy, lambda: pool.getconn(timeout=1), 1)
    assert not out["hung"] and isinstance(out.get("error"), PoolTimeout), out
    wait_for(
        lambda: pool.get_stats().get("connections_errors", 0) >= 1,
        timeout=2 + 2 * SLACK,
        message="a connection attempt that timed out",
    )
    proxy.resume()
    with pool.connection(timeout=BACKOFF_BOUND) as conn:
        assert identity(conn) is not None


def test_blackhole_new_connections_bounded_by_reconnect_timeout_without_connect_timeout(
    private_server: Any, proxy: TcpProxy, pools: list[Any]
) -> None:
    """With no connect_timeout set, a connection attempt into a silent network
    gives up after reconnect_timeout instead of holding a worker for ever."""
    proxy.blackhole()
    pool = ConnectionPool(
        dsn_with(private_server.dsn, port=proxy.port, application_name=app_name()),
        min_size=1,
        open=True,
        reconnect_timeout=3,
    )
    pools.append(pool)
    wait_for(
        lambda: pool.get_stats().get("connections_errors", 0) >= 1,
        timeout=3 + 2 * SLACK,
        message="a connection attempt that gave up",
    )
    proxy.resume()
    with pool.connection(timeout=BACKOFF_BOUND) as conn:
        assert identity(conn) is not None


# -- 5. connections given back in every state ---------------------------------------


def _admin(dsn: str) -> Any:
    conn = psycopg2.connect(dsn_with(dsn, application_name="p2p-test-admin"))
    conn.autocommit = True
    return conn


class State:
    """Puts a checked-out connection in one state before it is given back."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.gid: str | None = None

    def idle(self, conn: Any) -> None:
        conn.cursor().execute("SELECT 1")
        conn.commit()

    def in_transaction(self, conn: Any) -> None:
        conn.cursor().execute("CREATE TEMP TABLE p2p_left_open (x int)")
        assert conn.get_transaction_status() == ext.TRANSACTION_STATUS_INTRANS

    def failed_transaction(self, conn: Any) -> None:
        with pytest.raises(psycopg2.Error):
            conn.cursor().execute("SELECT 1/0")
        assert conn.get_transaction_status() == ext.TRANSACTION_STATUS_INERROR

    def closed_by_user(self, conn: Any) -> None:
        unwrap(conn).close()

    def broken(self, conn: Any) -> None:
        pid = unwrap(conn).get_backend_pid()
        admin = _admin(self.dsn)
        try:
            admin.cursor().execute("SELECT pg_terminate_backend(%s)", (pid,))
        finally:
            admin.close()
        with pytest.raises(psycopg2.Error):
            for _ in range(50):  # the signal takes a moment to land
                conn.cursor().execute("SELECT 1")
                conn.rollback()
                sleep(0.02)

    def session_set(self, conn: Any) -> None:
        conn.cursor().execute("SET work_mem = '7MB'")
        conn.commit()

    def prepared_transaction_sql(self, conn: Any) -> None:
        self.gid = f"p2p-{uuid.uuid4().hex}"
        cur = conn.cursor()
        cur.execute("SELECT 1")  # psycopg2 opened a transaction
        cur.execute(f"PREPARE TRANSACTION '{self.gid}'")

    def prepared_transaction_tpc(self, conn: Any) -> None:
        self.gid = f"p2p-{uuid.uuid4().hex}"
        real = unwrap(conn)
        real.tpc_begin(self.gid)
        real.cursor().execute("SELECT 1")
        real.tpc_prepare()

    def named_cursor(self, conn: Any) -> None:
        cur = unwrap(conn).cursor("p2p_named")
        cur.execute("SELECT generate_series(1, 1000)")
        cur.fetchone()

    def cleanup(self) -> None:
        """Roll back a prepared transaction the test left on the server."""
        admin = _admin(self.dsn)
        try:
            with admin.cursor() as cur:
                cur.execute(
                    "SELECT gid FROM pg_prepared_xacts WHERE gid LIKE %s", (f"%{self.gid}%",)
                )
                for (gid,) in cur.fetchall():
                    cur.execute(f"ROLLBACK PREPARED '{gid}'")
        finally:
            admin.close()


STATES = [
    "idle",
    "in_transaction",
    "failed_transaction",
    "closed_by_user",
    "broken",
    "session_set",
    "prepared_transaction_sql",
    "prepared_transaction_tpc",
    "named_cursor",
]


def reset_all(conn: Any) -> None:
    conn.autocommit = True
    try:
        conn.cursor().execute("RESET ALL")
    finally:
        conn.autocommit = False


def assert_clean(conn: Any, default_work_mem: str) -> None:
    real = unwrap(conn)
    assert not real.closed
    assert real.status == ext.STATUS_READY, f"psycopg2 status {real.status}"
    assert real.get_transaction_status() == ext.TRANSACTION_STATUS_IDLE
    assert real.autocommit is False
    with real.cursor() as cur:
        cur.execute("SELECT 1")
        assert cur.fetchone() == (1,)
        cur.execute("SHOW work_mem")
        assert cur.fetchone()[0] == default_work_mem
        cur.execute("SELECT count(*) FROM pg_cursors")
        assert cur.fetchone()[0] == 0
        cur.execute("SELECT to_regclass('pg_temp.p2p_left_open')")
        assert cur.fetchone()[0] is None
    real.rollback()


@pytest.fixture
def default_work_mem(dsn: str) -> str:
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW work_mem")
            return str(cur.fetchone()[0])
    finally:
        conn.close()


@pytest.mark.parametrize("state", STATES)
def test_connection_pool_returned_in_state_next_client_gets_clean_connection(
    dsn: str, pools: list[Any], default_work_mem: str, state: str
) -> None:
    pool = ConnectionPool(
        dsn_with(dsn, application_name=app_name()),
        min_size=1,
        max_size=1,
        timeout=5,
        open=True,
        # Only the session SET needs (and gets) a reset callback: the other
        # states must be cleaned by the pool itself.
        reset=reset_all if state == "session_set" else None,
    )
    pools.append(pool)
    states = State(dsn)
    try:
        conn = pool.getconn()
        getattr(states, state)(conn)
        pool.putconn(conn)
        with pool.connection() as conn:
            assert_clean(conn, default_work_mem)
    finally:
        if states.gid:
            states.cleanup()


# Legacy pools have no reset callback: a session SET stays, as in psycopg2.pool.
LEGACY_STATES = [s for s in STATES if s != "session_set"]


@pytest.mark.parametrize("state", LEGACY_STATES)
def test_threaded_pool_returned_in_state_next_client_gets_clean_connection(
    dsn: str, pools: list[Any], default_work_mem: str, state: str
) -> None:
    pool = ThreadedConnectionPool(1, 1, dsn_with(dsn, application_name=app_name()))
    pools.append(pool)
    states = State(dsn)
    try:
        conn = pool.getconn()
        getattr(states, state)(conn)
        pool.putconn(conn)
        conn = pool.getconn()
        assert_clean(conn, default_work_mem)
        pool.putconn(conn)
    finally:
        if states.gid:
            states.cleanup()
