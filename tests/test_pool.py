"""ConnectionPool (psycopg_pool 3.3 style) against a real PostgreSQL server."""

from __future__ import annotations

import gc
import logging
import math
import re
import threading
import time
import warnings
import weakref
from collections import Counter
from collections.abc import Iterator
from typing import Any, Callable

import psycopg2
import psycopg2.extensions
import pytest

from psycopg2_pool import (
    ConnectionPool,
    PoolClosed,
    PoolError,
    PoolTimeout,
    TooManyRequests,
)
from psycopg2_pool._embedded import free_port
from tests.helpers import (
    STATS_KEYS,
    app_name,
    backends,
    dsn_with,
    terminate_backends,
    wait_for,
)


@pytest.fixture
def make_pool(dsn: str) -> Iterator[Callable[..., tuple[ConnectionPool, str, str]]]:
    """``make_pool(**kwargs)`` -> (open pool, its dsn, its application_name); closed after."""
    made: list[ConnectionPool] = []

    def make(**kwargs: Any) -> tuple[ConnectionPool, str, str]:
        name = app_name()
        pdsn = dsn_with(dsn, application_name=name)
        kwargs.setdefault("open", True)
        kwargs.setdefault("timeout", 2.0)
        pool = ConnectionPool(pdsn, **kwargs)
        made.append(pool)
        return pool, pdsn, name

    try:
        yield make
    finally:
        for pool in made:
            pool.close()


def pid_of(conn: Any) -> int:
    return conn.get_backend_pid()


def unreachable_dsn(name: str = "x") -> str:
    port = free_port()
    return f"host=127.0.0.1 port={port} user=postgres dbname=postgres application_name={name}"


# -- open / close --------------------------------------------------------------


def test_open_and_close(make_pool):
    pool, pdsn, name = make_pool(min_size=1, open=False)
    assert pool.closed
    pool.open(wait=True, timeout=5)
    assert not pool.closed
    assert len(backends(pdsn, name)) == 1
    pool.close()
    assert pool.closed
    wait_for(lambda: backends(pdsn, name) == [])


def test_context_manager_opens_and_closes(dsn):
    name = app_name()
    pdsn = dsn_with(dsn, application_name=name)
    with ConnectionPool(pdsn, min_size=1, open=False) as pool:
        assert not pool.closed
        with pool.connection() as conn:
            assert conn.execute("select 1").fetchone() == (1,)
    assert pool.closed
    wait_for(lambda: backends(pdsn, name) == [])


def test_dropped_open_pool_is_collected_and_its_threads_and_connections_end(dsn):
    name = app_name()
    pdsn = dsn_with(dsn, application_name=name)
    pool = ConnectionPool(pdsn, min_size=2, open=True, name=name)
    pool.wait(5)
    with pool.connection() as conn:
        conn.execute("select 1")
    threads = [t for t in threading.enumerate() if t.name.startswith(f"{name}-")]
    assert threads
    ref = weakref.ref(pool)
    del pool, conn
    gc.collect()
    assert ref() is None
    wait_for(lambda: not any(t.is_alive() for t in threads), message="the workers to end")
    wait_for(lambda: backends(pdsn, name) == [], message="the connections to close")


def test_open_twice_is_fine(make_pool):
    pool, _, _ = make_pool(min_size=1, open=False)
    pool.open()
    pool.open()
    with pool.connection() as conn:
        assert conn.execute("select 2").fetchone() == (2,)


def test_reopen_after_close_raises_pool_closed(make_pool):
    pool, _, _ = make_pool(min_size=1)
    pool.close()
    with pytest.raises(PoolClosed):
        pool.open()


def test_getconn_before_open_raises_not_open_yet(make_pool):
    pool, _, _ = make_pool(min_size=1, open=False)
    with pytest.raises(PoolClosed, match="not open yet"):
        pool.getconn()


def test_implicit_open_warns_on_first_getconn(dsn):
    pool = ConnectionPool(dsn, min_size=1)  # open not given
    try:
        with pytest.warns(DeprecationWarning, match="open"):
            conn = pool.getconn()
        pool.putconn(conn)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            pool.putconn(pool.getconn())  # only the first time
    finally:
        pool.close()


def test_wait_fills_min_size(make_pool):
    pool, pdsn, name = make_pool(min_size=3)
    pool.wait(5)
    assert len(backends(pdsn, name)) == 3
    assert pool.get_stats()["pool_available"] == 3


def test_wait_timeout_on_unreachable_server_raises_and_closes(dsn):
    pool = ConnectionPool(unreachable_dsn(), min_size=1, open=True)
    started = time.monotonic()
    with pytest.raises(PoolTimeout):
        pool.wait(timeout=0.5)
    assert time.monotonic() - started < 3.0
    assert pool.closed
    with pytest.raises(PoolClosed):
        pool.getconn()


# -- waiting clients ----------------------------------------------------------


def test_waiting_clients_are_served_fifo(make_pool):
    pool, _, _ = make_pool(min_size=1, max_size=1, timeout=5)
    pool.wait(5)
    holder = pool.getconn()
    served: list[int] = []
    lock = threading.Lock()

    def client(i: int) -> None:
        conn = pool.getconn()
        with lock:
            served.append(i)
        time.sleep(0.01)
        pool.putconn(conn)

    threads = []
    for i in range(5):
        t = threading.Thread(target=client, args=(i,))
        t.start()
        threads.append(t)
        wait_for(lambda n=i + 1: pool.get_stats()["requests_waiting"] == n)
    pool.putconn(holder)
    for t in threads:
        t.join(10)
    assert served == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("max_waiting", [0, 3])
def test_clients_joining_a_full_pools_line_are_served_and_counted(make_pool, max_waiting):
    # The first client to find the pool full takes the engine's way; the next
    # ones take getconn()'s shortcut into the line (without max_waiting) or the
    # engine's way again (with it): all must end up the same.
    pool, _, _ = make_pool(min_size=1, max_size=1, max_waiting=max_waiting, timeout=5)
    pool.wait(5)
    holder = pool.getconn()
    order: list[int] = []
    pids: set[int] = set()

    def client(i: int) -> None:
        conn = pool.getconn()
        order.append(i)
        pids.add(conn.cursor().connection.get_backend_pid())
        pool.putconn(conn)

    threads = []
    for i in range(3):
        threads.append(threading.Thread(target=client, args=(i,)))
        threads[-1].start()
        wait_for(lambda n=i + 1: pool.get_stats()["requests_waiting"] == n)
    if max_waiting:
        with pytest.raises(TooManyRequests):
            pool.getconn()
    pid = holder.get_backend_pid()
    pool.putconn(holder)
    for t in threads:
        t.join(10)
    assert order == [0, 1, 2]
    assert pids == {pid}
    stats = pool.get_stats()
    assert stats["requests_num"] == 4 + bool(max_waiting)
    assert stats["requests_queued"] == 3
    assert stats.get("requests_errors", 0) == bool(max_waiting)
    assert stats["pool_available"] == 1


@pytest.mark.parametrize("where", ["getconn", "pool"])
def test_an_endless_timeout_waits_until_served(make_pool, where):
    # Locks refuse a timeout past threading.TIMEOUT_MAX: such a wait is endless.
    endless = {"timeout": math.inf} if where == "pool" else {}
    pool, _, _ = make_pool(min_size=1, max_size=1, **endless)
    pool.wait(5)
    holder = pool.getconn()
    served: list[int] = []
    errors: list[BaseException] = []

    def client(i: int) -> None:
        try:
            with pool.connection(**({} if endless else {"timeout": math.inf})) as conn:
                conn.execute("SELECT 1")
                served.append(i)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    # The second client joins a line that is already there: getconn()'s shortcut.
    threads = [threading.Thread(target=client, args=(i,)) for i in range(2)]
    for n, t in enumerate(threads, 1):
        t.start()
        wait_for(lambda n=n: pool.get_stats()["requests_waiting"] == n)
    time.sleep(0.2)
    assert served == [] and errors == []
    pool.putconn(holder)
    for t in threads:
        t.join(10)
    assert errors == []
    assert served == [0, 1]


def test_timeout_raises_pool_timeout_naming_pool_and_seconds(make_pool):
    pool, _, _ = make_pool(min_size=1, max_size=1, name="mypool")
    pool.wait(5)
    conn = pool.getconn()
    try:
        with pytest.raises(PoolTimeout) as info:
            pool.getconn(timeout=0.3)
        msg = str(info.value)
        assert "mypool" in msg
        assert re.search(r"0\.3", msg), msg
    finally:
        pool.putconn(conn)


def test_max_waiting_raises_too_many_requests(make_pool):
    pool, _, _ = make_pool(min_size=1, max_size=1, max_waiting=1, timeout=3)
    pool.wait(5)
    holder = pool.getconn()
    errors: list[BaseException] = []

    def waiter() -> None:
        try:
            pool.putconn(pool.getconn())
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    t = threading.Thread(target=waiter)
    t.start()
    wait_for(lambda: pool.get_stats()["requests_waiting"] == 1)
    with pytest.raises(TooManyRequests):
        pool.getconn()
    pool.putconn(holder)
    t.join(5)
    assert errors == []


def test_waiters_get_pool_closed_when_pool_closes(make_pool):
    pool, _, _ = make_pool(min_size=1, max_size=1, timeout=5)
    pool.wait(5)
    holder = pool.getconn()
    got: list[BaseException] = []

    def waiter() -> None:
        try:
            pool.getconn()
        except BaseException as exc:
            got.append(exc)

    threads = [threading.Thread(target=waiter) for _ in range(3)]
    for t in threads:
        t.start()
    wait_for(lambda: pool.get_stats()["requests_waiting"] == 3)
    pool.close()
    for t in threads:
        t.join(5)
    assert [type(e) for e in got] == [PoolClosed] * 3
    pool.putconn(holder)  # returning to a closed pool does not raise


def _wait_for_one(pool: ConnectionPool, timeout: float, errors: list[BaseException]) -> None:
    try:
        pool.putconn(pool.getconn(timeout=timeout))
    except BaseException as exc:
        errors.append(exc)


def test_waiters_timing_out_while_pool_closes_get_pool_closed_or_pool_timeout(dsn):
    """close() waits for its workers before it is done; clients whose timeout
    runs out meanwhile get PoolClosed or PoolTimeout, never anything else."""
    growing = threading.Event()
    busy = threading.Event()

    def slow_configure(conn: Any) -> None:
        # Keeps a worker busy, so that close() waits for it while clients time out.
        if growing.is_set():
            busy.set()
            time.sleep(0.5)

    for _ in range(3):
        pool = ConnectionPool(
            dsn_with(dsn, application_name=app_name()),
            min_size=1,
            max_size=2,
            open=True,
            configure=slow_configure,
        )
        got: list[BaseException] = []
        try:
            pool.wait(5)
            holder = pool.getconn()
            busy.clear()
            growing.set()
            threads = [
                threading.Thread(target=_wait_for_one, args=(pool, 0.2 + 0.02 * i, got))
                for i in range(10)
            ]
            for t in threads:
                t.start()
            assert busy.wait(5)
            pool.close()
            for t in threads:
                t.join(5)
            pool.putconn(holder)
        finally:
            growing.clear()
            pool.close()
        assert all(isinstance(e, (PoolClosed, PoolTimeout)) for e in got), got


def test_check_after_a_wait_in_line_is_bounded_by_what_is_left_of_the_timeout(make_pool):
    """The client's timeout runs from its getconn() call: time spent in line
    counts, and a slow check only gets what is left."""
    slow = threading.Event()

    def check(conn: Any) -> None:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_sleep(10)" if slow.is_set() else "SELECT 1")
        conn.rollback()

    pool, _, _ = make_pool(min_size=1, max_size=1, check=check)
    pool.wait(5)
    holder = pool.getconn(timeout=5)
    slow.set()
    returner = threading.Timer(0.6, pool.putconn, (holder,))
    returner.start()
    started = time.monotonic()
    with pytest.raises(PoolTimeout):
        pool.getconn(timeout=1.0)
    elapsed = time.monotonic() - started
    returner.join()
    assert elapsed < 1.3, f"getconn(timeout=1) took {elapsed:.2f} s"


# -- sizing ---------------------------------------------------------------------


def test_grows_under_demand_never_above_max_size(make_pool):
    pool, pdsn, name = make_pool(min_size=1, max_size=3, timeout=5)
    pool.wait(5)
    conns = [pool.getconn() for _ in range(3)]
    assert len(backends(pdsn, name)) == 3
    with pytest.raises(PoolTimeout):
        pool.getconn(timeout=0.3)
    assert len(backends(pdsn, name)) == 3
    assert pool.get_stats()["pool_size"] == 3
    for c in conns:
        pool.putconn(c)


def test_max_idle_shrinks_back_to_min_size(make_pool):
    pool, pdsn, name = make_pool(min_size=1, max_size=3, max_idle=0.2)
    pool.wait(5)
    conns = [pool.getconn() for _ in range(3)]
    for c in conns:
        pool.putconn(c)
    assert len(backends(pdsn, name)) == 3
    wait_for(lambda: len(backends(pdsn, name)) == 1, timeout=5)
    assert pool.get_stats()["pool_size"] == 1


def test_max_lifetime_replaces_connections(make_pool):
    pool, pdsn, name = make_pool(min_size=1, max_lifetime=0.3)
    pool.wait(5)
    first = set(backends(pdsn, name))
    assert len(first) == 1
    wait_for(
        lambda: (lambda b: len(b) == 1 and not (set(b) & first))(backends(pdsn, name)), timeout=5
    )
    with pool.connection() as conn:
        assert pid_of(conn) not in first


def test_longest_idle_connection_is_handed_out_first(make_pool):
    pool, _, _ = make_pool(min_size=3)
    pool.wait(5)
    a, b, c = (pool.getconn() for _ in range(3))
    returned = [pid_of(x) for x in (a, c, b)]
    for x in (a, c, b):
        pool.putconn(x)
    handed = [pool.getconn() for _ in range(3)]
    assert [pid_of(x) for x in handed] == returned
    for x in handed:
        pool.putconn(x)


def test_idle_connections_are_used_in_turn(make_pool):
    # As psycopg_pool: every connection stays warm, none idles into a server
    # or firewall idle timeout while the others do all the work.
    pool, _, _ = make_pool(min_size=4)
    pool.wait(5)
    uses: Counter[int] = Counter()
    for _ in range(8):
        with pool.connection() as conn:
            uses[pid_of(conn)] += 1
    assert sorted(uses.values()) == [2, 2, 2, 2]


def sizes_until(pool: ConnectionPool, size: int, timeout: float) -> list[int]:
    """The pool sizes seen (each change once) until the pool is down to ``size``."""
    seen: list[int] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = pool.get_stats()["pool_size"]
        if not seen or seen[-1] != now:
            seen.append(now)
        if now <= size:
            break
        time.sleep(0.01)
    return seen


def test_max_idle_closes_surplus_connections_one_per_period(make_pool):
    pool, pdsn, name = make_pool(min_size=1, max_size=4, max_idle=0.5)
    pool.wait(5)
    conns = [pool.getconn() for _ in range(4)]
    for c in conns:
        pool.putconn(c)
    assert sizes_until(pool, 1, timeout=10) == [4, 3, 2, 1]
    wait_for(lambda: len(backends(pdsn, name)) == 1)


def test_resize_down_closes_surplus_connections_one_per_period(make_pool):
    pool, pdsn, name = make_pool(min_size=4, max_idle=0.5)
    pool.wait(5)
    pool.resize(1, 1)
    assert sizes_until(pool, 1, timeout=10) == [4, 3, 2, 1]
    wait_for(lambda: len(backends(pdsn, name)) == 1)


def test_pool_used_in_turn_still_shrinks_to_min_size(make_pool):
    # One client at a time uses every connection in turn, so none stays idle
    # for max_idle; yet at no moment were more than one needed.
    pool, _, _ = make_pool(min_size=1, max_size=3, max_idle=0.3)
    pool.wait(5)
    conns = [pool.getconn() for _ in range(3)]
    for c in conns:
        pool.putconn(c)
    deadline = time.monotonic() + 10
    while pool.get_stats()["pool_size"] > 1 and time.monotonic() < deadline:
        with pool.connection():
            time.sleep(0.02)
    assert pool.get_stats()["pool_size"] == 1


# -- callbacks ------------------------------------------------------------------


def test_configure_runs_once_per_new_connection(make_pool):
    seen: list[int] = []
    pool, _, _ = make_pool(min_size=2, configure=lambda c: seen.append(pid_of(c)))
    pool.wait(5)
    for _ in range(5):
        with pool.connection():
            pass
    assert len(seen) == 2
    assert len(set(seen)) == 2


def test_configure_leaving_transaction_open_discards_connection(make_pool):
    # psycopg_pool 3.3 raises ProgrammingError in _connect after the connection
    # succeeded: the connection is closed, connections_num counts it and
    # connections_errors (connect failures only) does not.
    def configure(conn: Any) -> None:
        conn.cursor().execute("select 1")  # opens a transaction, never ends it

    pool, pdsn, name = make_pool(min_size=1, configure=configure, reconnect_timeout=0.5)
    wait_for(lambda: pool.get_stats().get("connections_num", 0) >= 1, timeout=5)
    wait_for(lambda: backends(pdsn, name) == [], timeout=3)
    assert pool.get_stats()["pool_available"] == 0
    with pytest.raises(PoolTimeout):
        pool.getconn(timeout=0.3)


def test_check_connection_replaces_terminated_backend_before_handing_out(make_pool):
    pool, pdsn, name = make_pool(min_size=1, check=ConnectionPool.check_connection)
    pool.wait(5)
    old = backends(pdsn, name)
    terminate_backends(pdsn, name)
    with pool.connection() as conn:
        pid = pid_of(conn)
    assert pid not in old


def test_reset_runs_on_return(make_pool):
    calls: list[Any] = []
    # What the callback gets is valid while it runs: note what it wraps then.
    pool, _, _ = make_pool(min_size=1, reset=lambda c: calls.append(c.__wrapped__))
    pool.wait(5)
    conn = pool.getconn()
    real = conn.__wrapped__
    pool.putconn(conn)
    assert calls == [real]


def test_reset_that_raises_discards_connection(make_pool):
    def reset(conn: Any) -> None:
        raise RuntimeError("nope")

    pool, pdsn, name = make_pool(min_size=1, reset=reset)
    pool.wait(5)
    conn = pool.getconn()
    pid = pid_of(conn)
    pool.putconn(conn)
    wait_for(lambda: pid not in backends(pdsn, name))
    with pool.connection() as conn2:
        assert pid_of(conn2) != pid


def test_returned_connection_in_transaction_is_rolled_back(make_pool):
    pool, pdsn, _ = make_pool(min_size=1)
    pool.wait(5)
    with pool.connection() as conn:
        conn.execute("create table if not exists p2p_t_rollback (x int)")
        conn.execute("delete from p2p_t_rollback")
    conn = pool.getconn()
    conn.execute("insert into p2p_t_rollback values (1)")
    assert conn.get_transaction_status() == psycopg2.extensions.TRANSACTION_STATUS_INTRANS
    pool.putconn(conn)
    with pool.connection() as conn:
        assert conn.get_transaction_status() == psycopg2.extensions.TRANSACTION_STATUS_IDLE
        assert conn.execute("select count(*) from p2p_t_rollback").fetchone() == (0,)
    other = psycopg2.connect(pdsn)
    try:
        with other.cursor() as cur:
            cur.execute("select count(*) from p2p_t_rollback")
            assert cur.fetchone() == (0,)
    finally:
        other.close()


def test_broken_returned_connection_is_replaced(make_pool):
    pool, pdsn, name = make_pool(min_size=1)
    pool.wait(5)
    conn = pool.getconn()
    terminate_backends(pdsn, name)
    with pytest.raises(psycopg2.OperationalError):
        conn.execute("select 1")
    pool.putconn(conn)
    assert pool.get_stats()["returns_bad"] == 1
    wait_for(lambda: len(backends(pdsn, name)) == 1, timeout=5)
    with pool.connection() as c:
        assert c.execute("select 1").fetchone() == (1,)


# -- maintenance -------------------------------------------------------------------


def test_resize_up_and_down(make_pool):
    pool, pdsn, name = make_pool(min_size=1, max_size=1, max_idle=0.2)
    pool.wait(5)
    pool.resize(3, 4)
    assert (pool.min_size, pool.max_size) == (3, 4)
    wait_for(lambda: len(backends(pdsn, name)) == 3, timeout=5)
    conns = [pool.getconn() for _ in range(4)]
    pool.resize(1, 1)
    assert (pool.min_size, pool.max_size) == (1, 1)
    for c in conns:
        pool.putconn(c)
    stats = pool.get_stats()
    assert stats["pool_min"] == 1 and stats["pool_max"] == 1
    # As psycopg_pool: the surplus goes one connection per max_idle period.
    wait_for(lambda: len(backends(pdsn, name)) <= 1, timeout=5)
    assert pool.get_stats()["pool_size"] <= 1


def test_check_replaces_terminated_idle_connections(make_pool):
    pool, pdsn, name = make_pool(min_size=2)
    pool.wait(5)
    old = set(backends(pdsn, name))
    terminate_backends(pdsn, name)
    pool.check()
    assert pool.get_stats()["connections_lost"] == 2
    wait_for(lambda: len(backends(pdsn, name)) == 2, timeout=5)
    assert not set(backends(pdsn, name)) & old


def test_check_refills_a_pool_that_fell_below_min_size(dsn):
    # Reconnection gives up while the server is unreachable: the pool stays
    # below min_size until check() (as in psycopg_pool) grows it back.
    name = app_name()
    target = {"dsn": unreachable_dsn(name)}
    gave_up = threading.Semaphore(0)
    pool = ConnectionPool(
        lambda: target["dsn"],
        min_size=2,
        open=True,
        reconnect_timeout=0.2,
        reconnect_failed=lambda p: gave_up.release(),
    )
    try:
        assert gave_up.acquire(timeout=10) and gave_up.acquire(timeout=10)
        assert pool.get_stats()["pool_size"] == 0
        target["dsn"] = dsn_with(dsn, application_name=name)
        pool.check()
        wait_for(lambda: pool.get_stats()["pool_available"] == 2, timeout=5)
        assert len(backends(dsn, name)) == 2
    finally:
        pool.close()


def test_drain_replaces_all_connections(make_pool):
    pool, pdsn, name = make_pool(min_size=2)
    pool.wait(5)
    old = set(backends(pdsn, name))
    pool.drain()
    wait_for(lambda: (lambda b: len(b) == 2 and not set(b) & old)(backends(pdsn, name)), timeout=5)


def test_close_returns_gives_connection_back(make_pool):
    pool, pdsn, name = make_pool(min_size=1, close_returns=True)
    pool.wait(5)
    conn = pool.getconn()
    real = conn.__wrapped__
    pid = pid_of(conn)
    conn.close()
    assert not real.closed
    assert backends(pdsn, name) == [pid]
    assert pool.get_stats()["pool_available"] == 1
    with pool.connection() as c:
        assert pid_of(c) == pid


# -- connection parameters ---------------------------------------------------------


def test_callable_conninfo_called_per_attempt(dsn):
    name = app_name()
    calls: list[int] = []

    def conninfo() -> str:
        calls.append(1)
        return dsn_with(dsn, application_name=name)

    with ConnectionPool(conninfo, min_size=2, open=True) as pool:
        pool.wait(5)
        assert len(calls) == 2
        assert len(backends(dsn, name)) == 2


def test_callable_kwargs_called_per_attempt(dsn):
    name = app_name()
    calls: list[int] = []

    def kwargs() -> dict[str, Any]:
        calls.append(1)
        return {"application_name": name}

    with ConnectionPool(dsn, kwargs=kwargs, min_size=2, open=True) as pool:
        pool.wait(5)
        assert len(calls) == 2
        assert len(backends(dsn, name)) == 2


def test_extra_keywords_go_to_connect(dsn):
    name = app_name()
    with ConnectionPool(dsn, min_size=1, open=True, application_name=name) as pool:
        pool.wait(5)
        assert len(backends(dsn, name)) == 1


def test_autocommit_in_kwargs_gives_autocommit_connections(make_pool):
    # psycopg_pool's documented idiom: psycopg 3's connect() option, not libpq's.
    pool, _, _ = make_pool(min_size=1, kwargs={"autocommit": True})
    with pool.connection() as conn:
        assert conn.autocommit is True
        conn.execute("SELECT 1")
        assert conn.get_transaction_status() == psycopg2.extensions.TRANSACTION_STATUS_IDLE


def test_autocommit_as_extra_keyword_gives_autocommit_connections(make_pool):
    pool, _, _ = make_pool(min_size=1, autocommit=True)
    with pool.connection() as conn:
        assert conn.autocommit is True


def test_autocommit_from_callable_kwargs_gives_autocommit_connections(make_pool):
    pool, _, _ = make_pool(min_size=1, kwargs=lambda: {"autocommit": True})
    with pool.connection() as conn:
        assert conn.autocommit is True


def test_autocommit_connection_sees_configure_in_autocommit(make_pool):
    # As in psycopg 3, the connection is in autocommit before configure runs.
    seen: list[bool] = []
    pool, _, _ = make_pool(
        min_size=1, kwargs={"autocommit": True}, configure=lambda c: seen.append(c.autocommit)
    )
    pool.wait(5)
    assert seen == [True]


def test_prepare_threshold_is_accepted_and_changes_nothing(make_pool):
    # psycopg2 never prepares statements on the server: any threshold holds.
    pool, _, _ = make_pool(min_size=1, kwargs={"prepare_threshold": 0})
    with pool.connection() as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_cursor_factory_in_kwargs_is_the_connections_default(make_pool):
    import psycopg2.extras

    pool, _, _ = make_pool(min_size=1, kwargs={"cursor_factory": psycopg2.extras.RealDictCursor})
    with pool.connection() as conn:
        assert conn.execute("SELECT 1 AS x").fetchone() == {"x": 1}


@pytest.mark.parametrize("option", ["row_factory", "context"])
def test_psycopg3_option_without_psycopg2_counterpart_is_refused_at_once(dsn, option):
    with pytest.raises(psycopg2.NotSupportedError, match=f"{option} is a psycopg 3 option"):
        ConnectionPool(dsn, open=False, kwargs={option: object()})


def test_unknown_keyword_still_reaches_libpq_and_fails(make_pool, caplog):
    caplog.set_level(logging.WARNING, logger="psycopg2_pool")
    pool, _, _ = make_pool(min_size=0, max_size=1, kwargs={"no_such_option": 1}, timeout=1)
    with pytest.raises(PoolTimeout):
        pool.getconn()
    assert 'invalid connection option "no_such_option"' in caplog.text


# -- stats, names, repr ----------------------------------------------------------


def test_get_stats_has_psycopg_pool_keys(make_pool):
    # As in psycopg_pool, counters still at zero may be absent; measures never are.
    pool, _, _ = make_pool(min_size=1, max_size=1)
    pool.wait(5)
    with pool.connection():
        pass
    with pool.connection(), pytest.raises(PoolTimeout):
        pool.getconn(timeout=0.1)
    keys = set(pool.get_stats())
    assert keys <= STATS_KEYS
    # Only the counters of events that did not happen here may be missing.
    assert STATS_KEYS - {"returns_bad", "connections_errors", "connections_lost"} <= keys


def test_pop_stats_resets_counters(make_pool):
    pool, _, _ = make_pool(min_size=1)
    pool.wait(5)
    for _ in range(3):
        with pool.connection():
            pass
    popped = pool.pop_stats()
    assert popped["requests_num"] == 3
    after = pool.get_stats()
    assert after.get("requests_num", 0) == 0
    assert after.get("connections_num", 0) == 0
    assert after["pool_size"] == 1  # measures are not reset


def _spin(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def test_requests_wait_ms_adds_up_waits_under_a_millisecond(make_pool):
    # Each wait is well under 1 ms: rounded down one by one, they would add up to 0.
    pool, _, _ = make_pool(min_size=1, max_size=1)
    pool.wait(5)
    held = pool.getconn()
    pool.pop_stats()
    surely_waited = took = 0.0  # summed lower and upper bounds of the waits
    for _ in range(40):
        got: list[tuple[Any, float]] = []

        def client(got: list[tuple[Any, float]]) -> None:
            started = time.monotonic()
            conn = pool.getconn()
            got.append((conn, time.monotonic() - started))

        thread = threading.Thread(target=client, args=(got,))
        thread.start()
        while not pool.get_stats()["requests_waiting"]:
            pass
        queued = time.monotonic()  # the client's wait began before this...
        _spin(0.0003)
        surely_waited += time.monotonic() - queued  # ...and ends after this
        pool.putconn(held)
        thread.join(5)
        held, duration = got[0]
        took += duration
    pool.putconn(held)
    stats = pool.get_stats()
    assert stats["requests_queued"] == 40
    assert int(1000 * surely_waited) <= stats["requests_wait_ms"] <= 1000 * took + 1


def test_usage_ms_adds_up_blocks_under_a_millisecond(make_pool):
    pool, _, _ = make_pool(min_size=1)
    pool.wait(5)
    pool.pop_stats()
    surely_used = took = 0.0
    for _ in range(40):
        started = time.monotonic()
        with pool.connection():
            inside = time.monotonic()
            _spin(0.0003)
            surely_used += time.monotonic() - inside
        took += time.monotonic() - started
    stats = pool.get_stats()
    assert int(1000 * surely_used) <= stats["usage_ms"] <= 1000 * took + 1


def test_default_name_is_pool_n(make_pool):
    pool, _, _ = make_pool(min_size=1, open=False)
    assert re.fullmatch(r"pool-\d+", pool.name)


def test_given_name(make_pool):
    pool, _, _ = make_pool(min_size=1, open=False, name="orders")
    assert pool.name == "orders"


def test_repr_has_name_and_no_password(dsn):
    pool = ConnectionPool(
        dsn_with(dsn, password="s3cr3tpw"),
        min_size=1,
        open=False,
        name="reprpool",
        password="k3ywordpw",
    )
    r = repr(pool)
    assert "reprpool" in r
    assert "s3cr3tpw" not in r
    assert "k3ywordpw" not in r


# -- reconnection ---------------------------------------------------------------


def test_reconnect_failed_called_after_reconnect_timeout(dsn):
    called = threading.Event()
    pool = ConnectionPool(
        unreachable_dsn(),
        min_size=1,
        open=True,
        reconnect_timeout=1.5,
        reconnect_failed=lambda p: called.set(),
    )
    try:
        assert called.wait(8)
    finally:
        pool.close()


def test_pool_serves_after_server_comes_up(private_server):
    private_server.stop()
    name = app_name()
    pdsn = dsn_with(private_server.dsn, application_name=name)
    with ConnectionPool(pdsn, min_size=1, open=True, reconnect_timeout=30, timeout=10) as pool:
        time.sleep(0.3)
        private_server.start()
        with pool.connection(timeout=10) as conn:
            assert conn.execute("select 1").fetchone() == (1,)


# -- validation -----------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, exc, pattern",
    [
        ({"min_size": -1}, ValueError, "min_size"),
        ({"min_size": 1.5}, TypeError, "min_size"),
        ({"min_size": 1, "max_size": -1}, ValueError, "max_size"),
        ({"min_size": 1, "max_size": "2"}, TypeError, "max_size"),
        ({"min_size": 3, "max_size": 2}, ValueError, "max_size"),
        ({"min_size": 1, "num_workers": 0}, ValueError, "num_workers"),
        ({"min_size": 1, "timeout": -1}, ValueError, "timeout"),
    ],
)
def test_invalid_arguments_raise(dsn, kwargs, exc, pattern):
    with pytest.raises(exc, match=pattern):
        ConnectionPool(dsn, open=False, **kwargs)


def test_putconn_none_raises_and_pool_still_works(make_pool):
    pool, _, _ = make_pool(min_size=1)
    pool.wait(5)
    with pytest.raises(PoolError):
        pool.putconn(None)
    with pool.connection() as conn:
        assert conn.execute("select 1").fetchone() == (1,)
    assert pool.get_stats()["pool_available"] == 1


def test_putconn_foreign_connection_raises_and_pool_still_works(make_pool, dsn):
    pool, _, _ = make_pool(min_size=1)
    pool.wait(5)
    foreign = psycopg2.connect(dsn)
    try:
        with pytest.raises(PoolError):
            pool.putconn(foreign)
        assert not foreign.closed
    finally:
        foreign.close()
    with pool.connection() as conn:
        assert conn.execute("select 1").fetchone() == (1,)
    assert pool.get_stats()["pool_available"] == 1
    assert pool.get_stats()["pool_size"] == 1


def test_putconn_twice_raises_and_pool_still_works(make_pool):
    pool, _, _ = make_pool(min_size=1)
    pool.wait(5)
    conn = pool.getconn()
    real = conn.__wrapped__
    pool.putconn(conn)
    with pytest.raises(PoolError):
        pool.putconn(conn)
    with pytest.raises(PoolError):
        pool.putconn(real)
    with pool.connection() as c:
        assert c.execute("select 1").fetchone() == (1,)
    stats = pool.get_stats()
    assert stats["pool_available"] == 1
    assert stats["pool_size"] == 1


def test_pool_is_collected_while_a_returned_handle_is_still_referenced(dsn):
    pool = ConnectionPool(dsn, min_size=2, open=True)
    with pool.connection() as conn:
        conn.execute("select 1")
    pool.wait()
    ref = weakref.ref(pool)
    del pool
    for _ in range(3):
        gc.collect()
    assert conn.closed  # the handle is still here, dead...
    assert ref() is None  # ...and holds its pool only weakly


def test_rolling_back_a_returned_connection_logs_its_status(dsn, caplog):
    pool = ConnectionPool(dsn, min_size=1, open=True)
    with pool, caplog.at_level(logging.WARNING, logger="psycopg2_pool"):
        conn = pool.getconn()
        conn.execute("select 1")
        pool.putconn(conn)
    assert "rolling back returned connection (INTRANS)" in caplog.text
