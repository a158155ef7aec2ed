"""Several hosts in the conninfo: the pool tries the ones that failed it lately last.

The shared test server stands behind a host that never answers (a
:class:`~tests.helpers.BlackHole`, as a hung server looks from the client) or
that refuses; no HA cluster needed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from time import monotonic, sleep
from typing import Any

import psycopg2
import pytest
from psycopg2.extensions import parse_dsn

from psycopg2_pool import AsyncConnectionPool, ConnectionPool
from psycopg2_pool._embedded import free_port
from psycopg2_pool._watchdog import shutdown_socket
from psycopg2_pool.hosts import HostOrder
from tests.helpers import BlackHole


@pytest.fixture
def hung() -> Iterator[BlackHole]:
    hole = BlackHole()
    yield hole
    hole.close()


def _behind(dsn: str, port: int, extra: str = "") -> str:
    """The test server's conninfo, with a host at ``port`` on 127.0.0.1 listed first."""
    params = parse_dsn(dsn)
    host = params.get("host") or "127.0.0.1"
    return (
        f"host=127.0.0.1,{host} port={port},{params.get('port') or 5432}"
        f" user={params.get('user', 'postgres')} dbname={params.get('dbname', 'postgres')}"
        f" connect_timeout=2 {extra}"
    )


def test_a_host_that_timed_out_is_tried_last_by_the_next_connects(
    dsn: str, hung: BlackHole
) -> None:
    with ConnectionPool(_behind(dsn, hung.port), min_size=1, max_size=4, open=True) as pool:
        started = monotonic()
        pool.wait(timeout=10)
        first = monotonic() - started
        started = monotonic()
        pool.resize(4, 4)
        pool.wait(timeout=10)
        more = monotonic() - started
        held = [pool.getconn(timeout=5) for _ in range(4)]
        ports = {conn.info.port for conn in held}
        for conn in held:
            pool.putconn(conn)
    assert first > 1.0  # libpq gave the silent host its connect_timeout once
    assert ports == {int(parse_dsn(dsn).get("port") or 5432)}
    assert more < 1.0, f"3 more connections took {more:.2f} s"


def test_a_broken_connection_sends_its_idle_siblings_and_new_ones_to_the_next_host(
    dsn: str,
) -> None:
    # Two names for the shared server: the pool cannot tell they are one.
    params = parse_dsn(dsn)
    port = params.get("port") or "5432"
    conninfo = (
        f"host=127.0.0.1,localhost port={port},{port} user={params.get('user', 'postgres')}"
        f" dbname={params.get('dbname', 'postgres')} connect_timeout=2"
    )
    with ConnectionPool(conninfo, min_size=4, open=True) as pool:
        pool.wait(timeout=10)
        held = [pool.getconn() for _ in range(4)]
        assert {conn.info.host for conn in held} == {"127.0.0.1"}
        for conn in held:
            pool.putconn(conn)
        # As a statement bounded on a hung server: the client cuts the socket.
        with pytest.raises(psycopg2.OperationalError), pool.connection() as conn:
            shutdown_socket(conn)
            conn.cursor().execute("SELECT 1")
        held = [pool.getconn(timeout=5) for _ in range(4)]
        hosts = [conn.info.host for conn in held]
        for conn in held:
            pool.putconn(conn)
    assert hosts == ["localhost"] * 4


def test_a_host_named_in_a_libpq_error_is_tried_last(dsn: str) -> None:
    refused = free_port()
    with pytest.raises(psycopg2.OperationalError) as failure:
        psycopg2.connect(host="127.0.0.1", port=refused, dbname="x", connect_timeout=2)
    order = HostOrder()
    order.failed(str(failure.value), monotonic())
    arguments: dict[str, Any] = {"dsn": _behind(dsn, refused)}
    order.plan(arguments, monotonic())
    assert order.several
    conn = psycopg2.connect(**arguments)
    try:
        server_port = parse_dsn(dsn).get("port") or "5432"
        assert conn.get_dsn_parameters()["port"] == f"{server_port},{refused}"
    finally:
        conn.close()


def test_a_lost_connection_lists_its_server_last() -> None:
    order = HostOrder()
    arguments = {"dsn": "host=a,b port=1,2 dbname=x"}
    order.plan(arguments, monotonic())
    assert "host" not in arguments  # nothing failed yet: as given
    order.lost(("a", 1), monotonic())
    order.plan(arguments, monotonic())
    assert (arguments["host"], arguments["port"]) == ("b,a", "2,1")


def test_a_timed_out_host_goes_after_one_that_failed_fast() -> None:
    order = HostOrder()
    message = (
        'connection to server at "10.0.0.1", port 5432 failed: timeout expired\n'
        'connection to server at "db2" (10.0.0.2), port 5432 failed: server is in hot standby'
        " mode\n"
    )
    order.failed(message, monotonic())
    arguments = {"dsn": "host=db1,db2,db3 hostaddr=10.0.0.1,10.0.0.2,10.0.0.3 dbname=x"}
    order.plan(arguments, monotonic())
    assert arguments["host"] == "db3,db2,db1"
    assert arguments["hostaddr"] == "10.0.0.3,10.0.0.2,10.0.0.1"
    assert "port" not in arguments  # one port for all: nothing to reorder


@pytest.mark.parametrize(
    "dsn",
    [
        "host=a port=1 dbname=x",
        "host=a,b port=1,2 dbname=x load_balance_hosts=random",
        "host=a,b service=mine",
        "host=a,b,c port=1,2 dbname=x",  # libpq reports the mismatch
    ],
)
def test_conninfos_the_pool_leaves_as_they_are(dsn: str) -> None:
    order = HostOrder()
    order.lost(("a", 1), monotonic())
    arguments = {"dsn": dsn}
    order.plan(arguments, monotonic())
    assert arguments == {"dsn": dsn}
    assert not order.several


def test_a_failed_host_is_tried_first_again_after_a_while(monkeypatch: pytest.MonkeyPatch) -> None:
    from psycopg2_pool import hosts

    monkeypatch.setattr(hosts, "HOLD", 0.05)
    order = HostOrder()
    order.lost(("a", 1), monotonic())
    sleep(0.1)
    arguments = {"dsn": "host=a,b port=1,2"}
    order.plan(arguments, monotonic())
    assert "host" not in arguments


def test_async_pool_a_host_that_timed_out_is_tried_last(dsn: str, hung: BlackHole) -> None:
    async def main() -> tuple[float, set[int]]:
        conninfo = _behind(dsn, hung.port, "target_session_attrs=read-write")
        async with AsyncConnectionPool(conninfo, min_size=1, max_size=4) as pool:
            await pool.wait(timeout=10)
            started = monotonic()
            await pool.resize(4, 4)
            await pool.wait(timeout=10)
            more = monotonic() - started
            held = [await pool.getconn(timeout=5) for _ in range(4)]
            ports = {conn.info.port for conn in held}
            for conn in held:
                await pool.putconn(conn)
        return more, ports

    more, ports = asyncio.run(asyncio.wait_for(main(), 30))
    assert ports == {int(parse_dsn(dsn).get("port") or 5432)}
    assert more < 1.0, f"3 more connections took {more:.2f} s"
