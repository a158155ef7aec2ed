"""High availability: a real primary and streaming standbys, switched under writers.

Each test builds its own servers (tests/ha_cluster.py) on loopback ports and
deletes them after. The pool is asked for a role by ``target_session_attrs``
and has no ``check``.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import signal
import threading
import time
from collections.abc import Coroutine
from typing import Any

import psycopg2
import pytest

from psycopg2_pool import AsyncConnectionPool, ConnectionPool, PoolTimeout

from .ha_cluster import _children, cluster, failover, hang, run_switch, switchover


def _pool(conninfo: str) -> ConnectionPool:
    return ConnectionPool(conninfo, min_size=4, max_size=16, open=True)


def test_failover_every_writer_writes_again_soon_after_the_promotion() -> None:
    result = run_switch(_pool, failover)
    print("failover:", result)
    assert (result["lost"], result["duplicated"]) == (0, 0)
    assert result["last"] < 1.0


def test_switchover_to_a_read_only_primary_every_writer_writes_again_within_1s() -> None:
    result = run_switch(_pool, switchover)
    print("switchover:", result)
    assert (result["lost"], result["duplicated"]) == (0, 0)
    assert result["last"] < 1.0


def test_a_primary_that_turns_read_only_is_left_for_the_writable_one() -> None:
    # No promotion: the pool must not keep the read-only server's connections
    # once it has seen one turn, though new ones keep failing until a write
    # target exists; after the switch back, every checkout can write.
    with cluster() as pair, _pool(pair.conninfo("read-write", pair.primary)) as pool:
        pool.wait()
        with contextlib.closing(psycopg2.connect(pair.primary.dsn)) as admin:
            admin.autocommit = True
            admin.cursor().execute("ALTER SYSTEM SET default_transaction_read_only = on")
            admin.cursor().execute("SELECT pg_reload_conf()")
            time.sleep(0.2)
            with pytest.raises(psycopg2.errors.ReadOnlySqlTransaction), pool.connection() as conn:
                conn.cursor().execute("INSERT INTO written VALUES (1)")
            assert pool.get_stats().get("pool_available", 0) == 0
            admin.cursor().execute("ALTER SYSTEM RESET default_transaction_read_only")
            admin.cursor().execute("SELECT pg_reload_conf()")
        for n in range(8):
            with pool.connection(timeout=5) as conn:
                conn.cursor().execute("INSERT INTO written VALUES (%s)", (n,))


def test_a_standby_pool_leaves_a_standby_that_was_promoted() -> None:
    with cluster(standbys=2) as trio:
        first, second = trio.standbys
        conninfo = trio.conninfo("standby", first, second, extra="load_balance_hosts=disable")
        with _pool(conninfo) as pool:
            pool.wait()
            first.promote()
            # Each connection to it hears of the promotion when it next answers.
            for _ in range(8):
                with pool.connection() as conn:
                    conn.cursor().execute("SELECT 1")
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                with pool.connection() as conn:
                    cur = conn.cursor()
                    cur.execute("SELECT pg_is_in_recovery(), inet_server_port()")
                    ports = {cur.fetchone()}
                if ports == {(True, second.port)}:
                    break
            for _ in range(16):
                with pool.connection() as conn:
                    cur = conn.cursor()
                    cur.execute("SELECT pg_is_in_recovery(), inet_server_port()")
                    assert cur.fetchone() == (True, second.port)


def test_hung_primary_clients_timeouts_hold_and_pool_moves_to_the_new_primary() -> None:
    checkouts: list[float] = []
    with cluster() as pair, _pool(pair.conninfo("read-write")) as pool:
        pool.wait()
        promoted = hang(pair)
        new_port = pair.standbys[0].port
        on_new = math.inf
        deadline = promoted + 10
        while time.monotonic() < deadline:
            called = time.monotonic()
            try:
                with pool.connection(timeout=1) as conn:
                    checkouts.append(time.monotonic() - called)
                    # A statement on the hung server never ends: bound it.
                    timer = threading.Timer(0.5, _break, (conn,))
                    timer.start()
                    try:
                        cur = conn.cursor()
                        cur.execute("SELECT inet_server_port()")
                        port = cur.fetchone()[0]
                    finally:
                        timer.cancel()
            except (psycopg2.Error, PoolTimeout):
                checkouts.append(time.monotonic() - called)
                continue
            if port == new_port:
                on_new = time.monotonic() - promoted
                break
        for pid in (pair.primary.pid, *_children(pair.primary.pid)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
    print(
        f"on the new primary {on_new:.2f} s after the promotion; slowest checkout", max(checkouts)
    )
    assert max(checkouts) < 1.5
    # A connection to the hung server broke: new ones try the other host first,
    # not after libpq's connect_timeout (2 s at least) on the hung one.
    assert on_new < 2.0


def _break(conn: Any) -> None:
    from psycopg2_pool._watchdog import shutdown_socket

    shutdown_socket(conn)


def _binomial_two_sided(k: int, n: int) -> float:
    """P(as far from n/2 as k, or farther) for a fair coin over n tosses."""
    far = abs(k - n / 2)
    return sum(math.comb(n, i) for i in range(n + 1) if abs(i - n / 2) >= far) / 2**n


@pytest.mark.skipif(
    psycopg2.extensions.libpq_version() < 160000,
    reason="load_balance_hosts needs libpq 16; psycopg2 links an older one",
)
def test_read_pool_over_two_standbys_spreads_fairly_and_survives_one_stopping() -> None:
    with cluster(standbys=2) as trio:
        first, second = trio.standbys
        conninfo = trio.conninfo("standby", first, second, extra="load_balance_hosts=random")
        on_first = []
        for _ in range(4):
            with ConnectionPool(conninfo, min_size=16, open=True) as pool:
                pool.wait()
                held = [pool.getconn() for _ in range(16)]
                on_first.append(sum(conn.info.port == first.port for conn in held))
                for conn in held:
                    pool.putconn(conn)
        p_value = _binomial_two_sided(sum(on_first), 16 * len(on_first))
        print("standby load balance: on the first of two, out of 16:", on_first, f"p={p_value:.3f}")
        # Chance alone goes this far once in a thousand runs.
        assert p_value > 0.001

        with ConnectionPool(conninfo, min_size=8, open=True) as pool:
            pool.wait()
            first.stop("fast")
            stopped = time.monotonic()
            served = 0
            while time.monotonic() < stopped + 2:
                with contextlib.suppress(psycopg2.OperationalError), pool.connection(2) as conn:
                    cur = conn.cursor()
                    cur.execute("SELECT inet_server_port()")
                    assert cur.fetchone()[0] == second.port
                    served += 1
            for _ in range(16):
                with pool.connection(2) as conn:
                    cur = conn.cursor()
                    cur.execute("SELECT inet_server_port()")
                    assert cur.fetchone()[0] == second.port
            assert served > 0


def _run(coro: Coroutine[Any, Any, None], timeout: float = 60.0) -> None:
    asyncio.run(asyncio.wait_for(coro, timeout))


def _read_only(server: Any, on: bool = True) -> None:
    with contextlib.closing(psycopg2.connect(server.dsn)) as admin:
        admin.autocommit = True
        if on:
            admin.cursor().execute("ALTER SYSTEM SET default_transaction_read_only = on")
        else:
            admin.cursor().execute("ALTER SYSTEM RESET default_transaction_read_only")
        admin.cursor().execute("SELECT pg_reload_conf()")
    time.sleep(0.2)


def test_async_a_read_only_error_in_a_block_retires_the_server() -> None:
    async def main() -> None:
        with cluster() as pair:
            conninfo = pair.conninfo("read-write", pair.primary)
            async with AsyncConnectionPool(conninfo, min_size=4, max_size=16) as pool:
                await pool.wait()
                _read_only(pair.primary)
                with pytest.raises(psycopg2.errors.ReadOnlySqlTransaction):
                    async with pool.connection() as conn:
                        await conn.cursor().execute("INSERT INTO written VALUES (1)")
                # Its idle siblings went with it: none is handed out to fail again.
                assert pool.get_stats().get("pool_available", 0) == 0
                _read_only(pair.primary, on=False)
                for n in range(8):
                    async with pool.connection(timeout=5) as conn:
                        await conn.cursor().execute("INSERT INTO written VALUES (%s)", (n,))

    _run(main())


def test_async_a_connection_that_heard_of_the_switch_is_not_handed_out() -> None:
    # pool.check() runs a query on every idle connection: each hears that its
    # server turned read-only, and goes back idle. The checkout must see it.
    async def main() -> None:
        with cluster() as pair:
            async with AsyncConnectionPool(
                pair.conninfo("read-write"), min_size=4, max_size=16
            ) as pool:
                await pool.wait()
                _read_only(pair.primary)
                pair.standbys[0].promote()
                await pool.check()
                for n in range(8):
                    async with pool.connection(timeout=5) as conn:
                        cur = conn.cursor()
                        await cur.execute("INSERT INTO written VALUES (%s)", (n,))
                        await cur.execute("SELECT inet_server_port()")
                        assert (await cur.fetchone())[0] == pair.standbys[0].port

    _run(main())
