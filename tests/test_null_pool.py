"""NullConnectionPool: a new connection per checkout, closed on return."""

from __future__ import annotations

import gc
import logging
import threading
import time
import warnings
from collections.abc import Iterator
from typing import Any, Callable

import psycopg2
import pytest
from psycopg2.extensions import parse_dsn

from psycopg2_pool import NullConnectionPool, PoolTimeout
from psycopg2_pool._embedded import free_port
from tests.helpers import (
    BlackHole,
    app_name,
    backends,
    dsn_with,
    terminate_backends,
    wait_for,
)
from tests.tcpproxy import TcpProxy


@pytest.fixture
def make_pool(dsn: str) -> Iterator[Callable[..., tuple[NullConnectionPool, str, str]]]:
    made: list[NullConnectionPool] = []

    def make(**kwargs: Any) -> tuple[NullConnectionPool, str, str]:
        name = app_name()
        pdsn = dsn_with(dsn, application_name=name)
        kwargs.setdefault("timeout", 3.0)
        pool = NullConnectionPool(pdsn, open=True, **kwargs)
        made.append(pool)
        return pool, pdsn, name

    try:
        yield make
    finally:
        for pool in made:
            pool.close()


def test_each_checkout_is_a_new_backend(make_pool):
    pool, _, _ = make_pool()
    pids = []
    for _ in range(3):
        with pool.connection() as conn:
            pids.append(conn.get_backend_pid())
    assert len(set(pids)) == 3


def test_connection_closed_on_return(make_pool):
    pool, pdsn, name = make_pool()
    conn = pool.getconn()
    real = conn.__wrapped__
    assert len(backends(pdsn, name)) == 1
    pool.putconn(conn)
    assert real.closed
    wait_for(lambda: backends(pdsn, name) == [])
    assert pool.get_stats()["pool_size"] == 0


def test_no_connection_opened_before_checkout(make_pool):
    pool, pdsn, name = make_pool()
    pool.wait(5)
    assert backends(pdsn, name) == []


def test_max_size_caps_concurrency_and_waiter_gets_returned_connection(make_pool):
    pool, pdsn, name = make_pool(max_size=2)
    a = pool.getconn()
    b = pool.getconn()
    pid_b = b.get_backend_pid()
    got: list[int] = []

    def waiter() -> None:
        with pool.connection() as c:
            got.append(c.get_backend_pid())

    t = threading.Thread(target=waiter)
    t.start()
    wait_for(lambda: pool.get_stats()["requests_waiting"] == 1)
    assert len(backends(pdsn, name)) == 2
    pool.putconn(b)
    t.join(5)
    assert got == [pid_b]
    pool.putconn(a)
    wait_for(lambda: backends(pdsn, name) == [])


def _expire(pool: NullConnectionPool, conn: Any, pdsn: str, name: str) -> None:
    time.sleep(0.3)  # past max_lifetime


def _break(pool: NullConnectionPool, conn: Any, pdsn: str, name: str) -> None:
    terminate_backends(pdsn, name)
    with pytest.raises(psycopg2.OperationalError):
        conn.execute("SELECT 1")


def _fail_reset(pool: NullConnectionPool, conn: Any, pdsn: str, name: str) -> None:
    conn.execute("SET application_name = 'fail-reset'")
    conn.commit()


def _reset(conn: Any) -> None:
    with conn.cursor() as cur:
        cur.execute("SHOW application_name")
        if cur.fetchone()[0] == "fail-reset":
            raise RuntimeError("reset refuses this connection")


@pytest.mark.parametrize(
    "spoil, settings",
    [
        (_expire, {"max_lifetime": 0.2}),
        (_break, {}),
        (_fail_reset, {"reset": _reset}),
    ],
    ids=["expired", "broken", "reset-failed"],
)
def test_waiting_client_served_when_returned_connection_is_closed(make_pool, spoil, settings):
    # The connection comes back unusable: instead of handing it over, the pool
    # closes it and must open another for the client in line.
    pool, pdsn, name = make_pool(max_size=1, timeout=5, **settings)
    conn = pool.getconn()
    got: list[Any] = []

    def client() -> None:
        try:
            with pool.connection() as c:
                got.append(c.execute("SELECT 1").fetchone())
        except Exception as exc:
            got.append(exc)

    t = threading.Thread(target=client)
    t.start()
    wait_for(lambda: pool.get_stats()["requests_waiting"] == 1)
    spoil(pool, conn, pdsn, name)
    pool.putconn(conn)
    t.join(10)
    assert got == [(1,)]


def test_connection_opened_for_a_client_that_gave_up_is_closed(dsn):
    params = parse_dsn(dsn)
    host = params.get("host", "")
    if not host or host.startswith("/"):
        pytest.skip("the test server is not reached over TCP")
    with TcpProxy(host, int(params.get("port", 5432)), connect_delay=0.5) as proxy:
        name = app_name()
        pdsn = dsn_with(dsn, host="127.0.0.1", port=proxy.port, application_name=name)
        with NullConnectionPool(pdsn, max_size=1, max_lifetime=0.3, open=True) as pool:
            conn = pool.getconn()
            time.sleep(0.35)  # conn has expired
            gave_up: list[BaseException] = []

            def client() -> None:
                try:
                    pool.getconn(timeout=0.3)
                except PoolTimeout as exc:
                    gave_up.append(exc)

            t = threading.Thread(target=client)
            t.start()
            wait_for(lambda: pool.get_stats()["requests_waiting"] == 1)
            pool.putconn(conn)  # closed; a new one is opened for the client in line...
            t.join(5)
            assert gave_up  # ...who leaves before it arrives
            wait_for(lambda: pool.get_stats()["connections_num"] == 2, timeout=3)
            wait_for(lambda: pool.get_stats()["pool_size"] == 0)
            assert pool.get_stats()["pool_available"] == 0
            wait_for(lambda: backends(dsn, name) == [])


def unreachable_dsn() -> str:
    return f"host=127.0.0.1 port={free_port()} user=postgres dbname=postgres"


def _client_outcome(pool: NullConnectionPool, timeout: float) -> tuple[BaseException, float]:
    """Run ``with pool.connection(timeout)`` on a thread: its error and how long it took."""
    outcome: list[tuple[BaseException, float]] = []

    def client() -> None:
        started = time.monotonic()
        try:
            with pool.connection(timeout=timeout):
                pass
        except Exception as exc:
            outcome.append((exc, time.monotonic() - started))

    t = threading.Thread(target=client, daemon=True)
    t.start()
    t.join(timeout + 5)
    assert not t.is_alive(), f"connection(timeout={timeout}) still waiting after {timeout + 5} s"
    [result] = outcome
    return result


def test_own_connection_attempt_is_bounded_by_the_clients_timeout():
    # A server that accepts and never answers: libpq alone would wait for good.
    hole = BlackHole()
    pool = NullConnectionPool(f"host=127.0.0.1 port={hole.port} user=u dbname=d", open=True)
    try:
        error, elapsed = _client_outcome(pool, 1.0)
        assert isinstance(error, PoolTimeout)
        assert elapsed < 1.5
        assert pool.get_stats()["requests_errors"] == 1
    finally:
        pool.close()
        hole.close()


def test_zero_timeout_raises_pool_timeout_without_connecting(make_pool):
    # Nothing is ever ready at once in a null pool (psycopg_pool raises too).
    pool, _, _ = make_pool()
    with pytest.raises(PoolTimeout):
        pool.getconn(timeout=0)
    stats = pool.get_stats()
    assert stats.get("connections_num", 0) == 0
    assert stats["pool_size"] == 0


def test_users_connect_timeout_shorter_than_the_clients_still_holds():
    hole = BlackHole()
    dsn = f"host=127.0.0.1 port={hole.port} user=u dbname=d connect_timeout=2"
    pool = NullConnectionPool(dsn, open=True)
    try:
        error, elapsed = _client_outcome(pool, 30.0)
        assert isinstance(error, psycopg2.OperationalError)
        assert not isinstance(error, PoolTimeout)
        assert elapsed < 4
    finally:
        pool.close()
        hole.close()


def test_abandoned_connection_attempt_ends_and_frees_its_slot():
    hole = BlackHole()
    pool = NullConnectionPool(
        f"host=127.0.0.1 port={hole.port} user=u dbname=d", max_size=1, open=True
    )
    try:
        error, _ = _client_outcome(pool, 0.3)
        assert isinstance(error, PoolTimeout)
        # The slot is the client's: free as it gives up. The attempt ends by
        # itself (libpq's connect_timeout is the client's timeout + 1 s).
        assert pool.get_stats()["pool_size"] == 0
        wait_for(lambda: hole.open_clients() == 0, timeout=5)
    finally:
        pool.close()
        hole.close()


def test_connection_arriving_after_its_client_gave_up_is_closed(dsn):
    params = parse_dsn(dsn)
    host = params.get("host", "")
    if not host or host.startswith("/"):
        pytest.skip("the test server is not reached over TCP")
    with TcpProxy(host, int(params.get("port", 5432)), connect_delay=0.5) as proxy:
        name = app_name()
        pdsn = dsn_with(dsn, host="127.0.0.1", port=proxy.port, application_name=name)
        with NullConnectionPool(pdsn, open=True) as pool:
            error, _ = _client_outcome(pool, 0.2)
            assert isinstance(error, PoolTimeout)
            wait_for(lambda: pool.get_stats()["connections_num"] == 1)
            wait_for(lambda: pool.get_stats()["pool_size"] == 0)
            assert pool.get_stats().get("connections_errors", 0) == 0
            wait_for(lambda: backends(dsn, name) == [])


def test_wait_retries_until_the_server_is_up(private_server):
    private_server.stop()
    pool = NullConnectionPool(private_server.dsn, open=True)
    starter = threading.Timer(0.3, private_server.start)
    starter.start()
    try:
        pool.wait(20)
        assert not pool.closed
        assert pool.get_stats()["connections_errors"] >= 1
    finally:
        starter.join()
        pool.close()


def test_wait_gives_up_at_its_deadline_not_at_the_first_failure():
    pool = NullConnectionPool(unreachable_dsn(), open=True)
    started = time.monotonic()
    with pytest.raises(PoolTimeout, match=r"initialization incomplete after 1\.5 sec"):
        pool.wait(1.5)
    assert 1.4 <= time.monotonic() - started < 4
    assert pool.closed


def test_wait_logs_each_failed_attempt_without_password(caplog):
    caplog.set_level(logging.INFO, logger="psycopg2_pool")
    pool = NullConnectionPool(unreachable_dsn(), password="s3cr3t-pw", open=True)
    with pytest.raises(PoolTimeout):
        pool.wait(2.5)
    failures = [r for r in caplog.records if "error connecting" in r.getMessage()]
    assert len(failures) >= 2
    assert all(r.name == "psycopg2_pool" and r.levelno == logging.WARNING for r in failures)
    assert "s3cr3t-pw" not in caplog.text


def test_min_size_not_zero_raises(dsn):
    with pytest.raises(ValueError, match="min_size"):
        NullConnectionPool(dsn, min_size=1, open=False)


def test_autocommit_in_kwargs_gives_autocommit_connections(make_pool):
    pool, _, _ = make_pool(kwargs={"autocommit": True})
    with pool.connection() as conn:
        assert conn.autocommit is True


def test_dropped_handle_is_taken_back_for_the_next_client(dsn: str) -> None:
    # A null pool has no sweep: the first client to wait looks for dropped handles.
    with NullConnectionPool(
        dsn_with(dsn, application_name=app_name()), max_size=1, open=True
    ) as pool:
        pool.getconn()  # dropped at once, never returned
        gc.collect()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            conn = pool.getconn(timeout=5)
        assert conn.execute("select 1").fetchone() == (1,)
        pool.putconn(conn)
