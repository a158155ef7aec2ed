"""What the legacy pools do to real connections: transactions rolled back on return,
dead backends dropped, closeall, one connection per thread, thread safety under load,
and subclasses that override psycopg2.pool's hooks."""

from __future__ import annotations

import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Callable

import psycopg2
import psycopg2.pool
import pytest

import psycopg2_pool
from tests.differential import (
    EXHAUSTED,
    IDLE,
    Begin,
    CloseAll,
    Get,
    In,
    Put,
    Side,
    compare,
    query_one,
    scratch_table,
    terminate_backend,
)
from tests.helpers import app_name, backends, dsn_with, wait_for

KINDS = ["SimpleConnectionPool", "ThreadedConnectionPool"]


def make_persistent(minconn: int, maxconn: int, dsn: str) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return psycopg2_pool.PersistentConnectionPool(minconn, maxconn, dsn)


@pytest.fixture
def pools(dsn: str) -> Iterator[Callable[..., Any]]:
    """``pools(kind, minconn, maxconn)``: ``(pool, application_name)`` for one of our
    pools with a fresh application_name, closed after the test."""
    made: list[Any] = []

    def make(kind: str, minconn: int, maxconn: int) -> tuple[Any, str]:
        app = app_name()
        target = dsn_with(dsn, application_name=app)
        if kind == "PersistentConnectionPool":
            pool = make_persistent(minconn, maxconn, target)
        else:
            pool = getattr(psycopg2_pool, kind)(minconn, maxconn, target)
        made.append(pool)
        return pool, app

    yield make
    for pool in made:
        if not pool.closed:
            pool.closeall()


def run_in_thread(target: Callable[[], None]) -> None:
    errors: list[BaseException] = []

    def guarded() -> None:
        try:
            target()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=guarded, daemon=True)
    thread.start()
    thread.join(15)
    assert not thread.is_alive(), "the thread did not finish"
    if errors:
        raise errors[0]


# --- connections coming back ---------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_putconn_rolls_back_uncommitted_inserts(dsn: str, pools: Any, kind: str) -> None:
    pool, _ = pools(kind, 1, 1)
    with scratch_table(dsn) as table:
        conn = pool.getconn()
        with conn.cursor() as cur:
            cur.execute(f"INSERT INTO {table} VALUES (1)")
        pool.putconn(conn)
        again = pool.getconn()
        assert again.info.transaction_status == IDLE
        with again.cursor() as cur:
            cur.execute(f"SELECT count(*) FROM {table}")
            assert cur.fetchone()[0] == 0
        again.rollback()
        pool.putconn(again)
        assert query_one(dsn, f"SELECT count(*) FROM {table}") == 0


def test_persistent_putconn_rolls_back_uncommitted_inserts(dsn: str, pools: Any) -> None:
    pool, _ = pools("PersistentConnectionPool", 1, 1)
    with scratch_table(dsn) as table:

        def insert_and_put_back() -> None:
            conn = pool.getconn()
            with conn.cursor() as cur:
                cur.execute(f"INSERT INTO {table} VALUES (1)")
            pool.putconn()

        run_in_thread(insert_and_put_back)
        assert query_one(dsn, f"SELECT count(*) FROM {table}") == 0


@pytest.mark.parametrize("kind", KINDS)
def test_connection_with_a_terminated_backend_is_not_handed_out_again(
    dsn: str, pools: Any, kind: str
) -> None:
    pool, _ = pools(kind, 1, 1)
    dead = pool.getconn()
    pid = dead.get_backend_pid()
    terminate_backend(dsn, pid)
    with pytest.raises(psycopg2.OperationalError), dead.cursor() as cur:
        cur.execute("SELECT 1")
    pool.putconn(dead)
    fresh = pool.getconn()
    assert fresh is not dead
    assert fresh.get_backend_pid() != pid
    with fresh.cursor() as cur:
        cur.execute("SELECT 1")
        assert cur.fetchone() == (1,)


@pytest.mark.parametrize("kind", [*KINDS, "PersistentConnectionPool"])
def test_closeall_closes_connections_in_use(pools: Any, kind: str) -> None:
    pool, _ = pools(kind, 1, 3)
    in_use = pool.getconn()
    pool.closeall()
    assert in_use.closed
    assert pool.closed


@pytest.mark.parametrize("kind", [*KINDS, "PersistentConnectionPool"])
def test_closeall_leaves_no_server_connections(dsn: str, pools: Any, kind: str) -> None:
    pool, app = pools(kind, 2, 3)
    pool.getconn()
    pool.closeall()
    wait_for(lambda: not backends(dsn, app), timeout=5, message="the backends to go")


# --- threads -------------------------------------------------------------------------


def test_persistent_gives_each_thread_its_own_connection(pools: Any) -> None:
    pool, _ = pools("PersistentConnectionPool", 0, 4)
    together = threading.Barrier(4, timeout=10)
    seen: dict[int, tuple[int, int, bool]] = {}
    lock = threading.Lock()

    def use(n: int) -> Callable[[], None]:
        def body() -> None:
            conn = pool.getconn()
            with conn.cursor() as cur:
                cur.execute("SELECT pg_backend_pid()")
                pid = cur.fetchone()[0]
            together.wait()  # all four hold their connection at once
            same = pool.getconn() is conn
            with lock:
                seen[n] = (id(conn), pid, same)
            together.wait()
            pool.putconn()

        return body

    threads = [threading.Thread(target=use(n), daemon=True) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(15)
    assert len(seen) == 4, "a thread failed"
    assert len({conn_id for conn_id, _, _ in seen.values()}) == 4
    assert len({pid for _, pid, _ in seen.values()}) == 4
    assert all(same for _, _, same in seen.values())


@dataclass
class Hammering:
    """What 16 threads x 200 getconn/query/putconn on ThreadedConnectionPool(2, 4) saw."""

    app: str = ""
    shared: list[str] = field(default_factory=list)
    peak_in_use: int = 0
    errors: list[BaseException] = field(default_factory=list)
    exhausted: int = 0
    leftover_backends: list[int] = field(default_factory=list)


THREADS, ROUNDS, MAXCONN = 16, 200, 4


@pytest.fixture(scope="module")
def hammering(dsn: str) -> Hammering:
    result = Hammering(app=app_name())
    pool = psycopg2_pool.ThreadedConnectionPool(
        2, MAXCONN, dsn_with(dsn, application_name=result.app)
    )
    lock = threading.Lock()
    by_conn: dict[int, int] = {}
    by_pid: dict[int, int] = {}
    in_use = 0

    def worker(n: int) -> None:
        nonlocal in_use
        try:
            for _ in range(ROUNDS):
                while True:
                    try:
                        conn = pool.getconn()
                        break
                    except psycopg2.pool.PoolError as exc:
                        if str(exc) != EXHAUSTED:
                            raise
                        with lock:
                            result.exhausted += 1
                        time.sleep(0.0005)
                with lock:
                    if id(conn) in by_conn:
                        result.shared.append(f"{conn!r} held by {by_conn[id(conn)]} and {n}")
                    by_conn[id(conn)] = n
                    in_use += 1
                    result.peak_in_use = max(result.peak_in_use, in_use)
                with conn.cursor() as cur:
                    cur.execute("SELECT pg_backend_pid()")
                    pid = cur.fetchone()[0]
                with lock:
                    if pid in by_pid:
                        result.shared.append(f"backend {pid} held by {by_pid[pid]} and {n}")
                    by_pid[pid] = n
                time.sleep(0)
                with lock:
                    del by_pid[pid]
                    del by_conn[id(conn)]
                    in_use -= 1
                pool.putconn(conn)
        except BaseException as exc:
            with lock:
                result.errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,), daemon=True) for n in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    if any(thread.is_alive() for thread in threads):
        result.errors.append(TimeoutError("a worker thread is still running"))
    pool.closeall()
    deadline = time.monotonic() + 5
    while True:
        result.leftover_backends = backends(dsn, result.app)
        if not result.leftover_backends or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    return result


def test_threaded_pool_survives_many_threads_without_errors(hammering: Hammering) -> None:
    assert not hammering.errors, hammering.errors[:3]


def test_threaded_pool_never_hands_one_connection_to_two_threads(hammering: Hammering) -> None:
    assert not hammering.shared, hammering.shared[:5]


def test_threaded_pool_never_has_more_than_maxconn_in_use(hammering: Hammering) -> None:
    assert hammering.peak_in_use <= MAXCONN


def test_threaded_pool_closeall_after_load_leaks_no_server_connection(
    hammering: Hammering,
) -> None:
    assert hammering.leftover_backends == []


# --- subclasses overriding psycopg2.pool's hooks ---------------------------------------


def configuring(base: type) -> type:
    """A subclass whose ``_connect`` configures every new connection."""

    class Configuring(base):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self.made: list[Any] = []
            super().__init__(*args, **kwargs)

        def _connect(self, key: Any = None) -> Any:
            conn = super()._connect(key)
            conn.autocommit = True
            self.made.append(conn)
            return conn

    return Configuring


@pytest.mark.parametrize("kind", KINDS)
def test_subclass_overriding_connect_sees_every_new_connection(dsn: str, kind: str) -> None:
    reference = Side(dsn, lambda d: configuring(getattr(psycopg2.pool, kind))(1, 3, d))
    ours = Side(dsn, lambda d: configuring(getattr(psycopg2_pool, kind))(1, 3, d))
    try:
        steps = [Get(), Get("a"), Get(), Put(1), Put(2), Put(3), Get(), Get(), CloseAll()]
        compare(reference, ours, steps)
        assert len(ours.pool.made) == len(reference.pool.made)
        assert all(any(conn is made for made in ours.pool.made) for conn in ours.seen)
        assert all(conn.autocommit for conn in ours.seen)
    finally:
        reference.close()
        ours.close()


def per_thread_keys(base: type) -> type:
    """A subclass whose ``_getkey`` makes ``getconn()`` return one connection per thread."""

    class PerThread(base):  # type: ignore[misc, valid-type]
        def _getkey(self) -> Any:
            return ("thread", threading.get_ident())

    return PerThread


@pytest.mark.parametrize("kind", KINDS)
def test_subclass_overriding_getkey_chooses_the_keys(dsn: str, kind: str) -> None:
    reference = Side(dsn, lambda d: per_thread_keys(getattr(psycopg2.pool, kind))(1, 3, d))
    ours = Side(dsn, lambda d: per_thread_keys(getattr(psycopg2_pool, kind))(1, 3, d))
    try:
        steps = [
            In("T1", Get()),
            In("T1", Get()),
            In("T2", Get()),
            In("T1", Put(1)),
            In("T2", Get()),
            In("T1", Get()),
        ]
        outcomes = compare(reference, ours, steps)
        assert outcomes[0] == outcomes[1]
        assert outcomes[2] == outcomes[4] != outcomes[0]
    finally:
        reference.close()
        ours.close()


@pytest.mark.parametrize("kind", KINDS)
def test_subclass_overriding_connect_sees_connections_opened_to_refill(dsn: str, kind: str) -> None:
    """A broken connection put back makes the pool refill to minconn: the new connection
    must come from the subclass's ``_connect`` too, configured like every other."""
    pool = configuring(getattr(psycopg2_pool, kind))(
        2, 3, dsn_with(dsn, application_name=app_name())
    )
    try:
        broken = pool.getconn()
        terminate_backend(dsn, broken.get_backend_pid())
        with pytest.raises(psycopg2.OperationalError), broken.cursor() as cur:
            cur.execute("SELECT 1")
        pool.putconn(broken)
        handed_out = [pool.getconn(), pool.getconn()]
        bypassed = [conn for conn in handed_out if not any(conn is m for m in pool.made)]
        assert not bypassed, f"connections not opened by _connect: {bypassed}"
        assert all(conn.autocommit for conn in handed_out)
    finally:
        pool.closeall()


def locking(base: type) -> type:
    """A subclass that wraps the hooks in ``self._lock`` as psycopg2.pool's Threaded does."""

    class Locking(base):  # type: ignore[misc, valid-type]
        def getconn(self, key: Any = None) -> Any:
            self._lock.acquire()
            try:
                return self._getconn(key)
            finally:
                self._lock.release()

        def putconn(self, conn: Any = None, key: Any = None, close: bool = False) -> None:
            self._lock.acquire()
            try:
                self._putconn(conn, key, close)
            finally:
                self._lock.release()

    return Locking


def test_subclass_taking_the_lock_around_the_hooks_keeps_working(dsn: str) -> None:
    reference = Side(dsn, lambda d: locking(psycopg2.pool.ThreadedConnectionPool)(1, 2, d))
    ours = Side(dsn, lambda d: locking(psycopg2_pool.ThreadedConnectionPool)(1, 2, d))
    try:
        steps = [Get(), Get("a"), Get(), Begin(1), Put(1), Put(2, close=True), Get(), CloseAll()]
        outcomes = compare(reference, ours, steps)
        assert outcomes[2] == ("raises", psycopg2.pool.PoolError, EXHAUSTED)
    finally:
        reference.close()
        ours.close()


@dataclass(frozen=True)
class Counts:
    """What a subclass reading psycopg2.pool's state sees: idle and in-use counts."""

    def run(self, side: Side) -> Any:
        return ("returns", len(side.pool._pool), len(side.pool._used), len(side.pool._rused))


@pytest.mark.parametrize("kind", KINDS)
def test_subclass_reading_pool_state_sees_the_same_counts(dsn: str, kind: str) -> None:
    reference = Side(dsn, lambda d: getattr(psycopg2.pool, kind)(1, 3, d))
    ours = Side(dsn, lambda d: getattr(psycopg2_pool, kind)(1, 3, d))
    try:
        steps: list[Any] = [Counts(), Get(), Get("a"), Counts(), Begin(2), Put(2), Counts()]
        steps += [Put(3), Counts(), Get(), Counts()]
        outcomes = compare(reference, ours, steps)
        assert outcomes[3] == ("returns", 0, 2, 2)
    finally:
        reference.close()
        ours.close()
