"""The fault-injecting TCP proxy the benchmarks and fault tests put in front of
PostgreSQL: it forwards, delays new connections, goes silent and drops."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Callable

import psycopg2
import pytest
from psycopg2.extensions import parse_dsn

from tests.helpers import dsn_with
from tests.tcpproxy import TcpProxy

MakeProxy = Callable[..., TcpProxy]


def scalar(conn: psycopg2.extensions.connection, query: str) -> object:
    with conn.cursor() as cur:
        cur.execute(query)
        row = cur.fetchone()
        assert row is not None
        return row[0]


@pytest.fixture
def make_proxy(dsn: str) -> Iterator[MakeProxy]:
    """``make_proxy(connect_delay=...)`` -> a started proxy to the shared server."""
    params = parse_dsn(dsn)
    host = params.get("host", "")
    if not host or host.startswith("/"):
        pytest.skip("the test server is not reached over TCP")
    proxies: list[TcpProxy] = []

    def make(connect_delay: float = 0.0) -> TcpProxy:
        proxy = TcpProxy(host, int(params.get("port", 5432)), connect_delay=connect_delay)
        proxies.append(proxy.start())
        return proxy

    yield make
    for proxy in proxies:
        proxy.close()


def through(dsn: str, proxy: TcpProxy) -> str:
    return dsn_with(dsn, host="127.0.0.1", port=proxy.port, connect_timeout=10)


def test_forwards_a_real_connection(dsn: str, make_proxy: MakeProxy) -> None:
    proxy = make_proxy()
    conn = psycopg2.connect(through(dsn, proxy))
    try:
        assert scalar(conn, "SELECT 40 + 2") == 42
        assert scalar(conn, "SELECT repeat('x', 200000)") == "x" * 200000
        assert proxy.connection_count == 1
    finally:
        conn.close()


def test_connect_delay_holds_new_connections(dsn: str, make_proxy: MakeProxy) -> None:
    proxy = make_proxy(connect_delay=0.3)
    started = time.perf_counter()
    conn = psycopg2.connect(through(dsn, proxy))
    elapsed = time.perf_counter() - started
    try:
        assert elapsed >= 0.3
        # Only connecting is slow: queries on the open connection are not delayed.
        started = time.perf_counter()
        scalar(conn, "SELECT 1")
        assert time.perf_counter() - started < 0.3
    finally:
        conn.close()


def test_blackhole_withholds_the_answer_until_resume(dsn: str, make_proxy: MakeProxy) -> None:
    proxy = make_proxy()
    conn = psycopg2.connect(through(dsn, proxy))
    results: list[object] = []
    try:
        proxy.blackhole()
        query = threading.Thread(target=lambda: results.append(scalar(conn, "SELECT 7")))
        query.start()
        query.join(0.5)
        assert query.is_alive(), "the query was answered through a blackholed proxy"
        assert proxy.connection_count == 1  # nothing was closed
        proxy.resume()
        query.join(5)
        assert not query.is_alive()
        assert results == [7]
    finally:
        proxy.resume()
        conn.close()


def test_drop_all_closes_current_connections(dsn: str, make_proxy: MakeProxy) -> None:
    proxy = make_proxy()
    conn = psycopg2.connect(through(dsn, proxy))
    try:
        proxy.drop_all()
        with pytest.raises(psycopg2.OperationalError):
            scalar(conn, "SELECT 1")
        assert conn.closed
        # The proxy still accepts new connections afterwards.
        other = psycopg2.connect(through(dsn, proxy))
        assert scalar(other, "SELECT 1") == 1
        other.close()
    finally:
        conn.close()


def test_close_ends_connections_and_refuses_new_ones(dsn: str, make_proxy: MakeProxy) -> None:
    proxy = make_proxy()
    conn = psycopg2.connect(through(dsn, proxy))
    proxy.close()
    with pytest.raises(psycopg2.OperationalError):
        scalar(conn, "SELECT 1")
    with pytest.raises(psycopg2.OperationalError):
        psycopg2.connect(through(dsn, proxy))
    conn.close()
