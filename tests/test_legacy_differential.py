"""Our legacy pools against psycopg2.pool (Simple, Threaded) and psycopg2 2.7.7's pool
(Persistent): the same calls, and the same results, errors and server connections.

The last section pins the documented differences, where we fix a psycopg2.pool
defect that no correct caller can observe: each test asserts our behaviour and
its ``test_reference_*`` twin shows the reference's.
"""

from __future__ import annotations

import itertools
import re
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Callable

import psycopg2
import psycopg2.pool
import pytest
from hypothesis import given
from hypothesis import strategies as st

import psycopg2_pool
from tests.differential import (
    CLOSED,
    DEPRECATION,
    EXHAUSTED,
    IDLE,
    UNKEYED,
    Attributes,
    Begin,
    CloseAll,
    Get,
    In,
    Outcome,
    PersistentPut,
    Put,
    PutForeign,
    Side,
    StallingRelay,
    Step,
    check_state,
    compare,
    compare_step,
    query_one,
    scratch_table,
    terminate_backend,
)
from tests.helpers import app_name, backends, dsn_with, wait_for
from tests.reference import psycopg2_277_pool

PoolError = psycopg2.pool.PoolError
KINDS = ["SimpleConnectionPool", "ThreadedConnectionPool"]
SIZES = [(0, 1), (0, 2), (1, 1), (1, 3), (2, 2), (2, 3)]
PERSISTENT_SIZES = [(0, 1), (1, 2), (2, 3)]

MakeSides = Callable[..., "tuple[Side, Side]"]


def raises(message: str) -> Outcome:
    return ("raises", PoolError, message)


@pytest.fixture
def make_sides(dsn: str) -> Iterator[MakeSides]:
    """``make_sides(reference_factory, our_factory)``: two Sides, closed after the test."""
    made: list[Side] = []

    def make(
        reference: Callable[[str], Any], ours: Callable[[str], Any], **kwargs: Any
    ) -> tuple[Side, Side]:
        made.append(Side(dsn, reference, **kwargs))
        made.append(Side(dsn, ours))
        return made[-2], made[-1]

    yield make
    for side in made:
        side.close()


@pytest.fixture(
    params=list(itertools.product(KINDS, SIZES)),
    ids=lambda p: f"{p[0].replace('ConnectionPool', '')}-{p[1][0]}-{p[1][1]}",
)
def legacy(request: pytest.FixtureRequest, make_sides: MakeSides) -> tuple[Side, Side]:
    """psycopg2.pool's pool and ours, same class and sizes."""
    kind, (minconn, maxconn) = request.param
    return make_sides(
        lambda dsn: getattr(psycopg2.pool, kind)(minconn, maxconn, dsn),
        lambda dsn: getattr(psycopg2_pool, kind)(minconn, maxconn, dsn),
    )


MakePersistent = Callable[[], "tuple[Side, Side]"]


@pytest.fixture(params=PERSISTENT_SIZES, ids=lambda p: f"Persistent-{p[0]}-{p[1]}")
def persistent(request: pytest.FixtureRequest, make_sides: MakeSides) -> MakePersistent:
    """``persistent()``: psycopg2 2.7.7's PersistentConnectionPool and ours, same sizes.

    Built in the test itself, so that an unavailable reference fails the test.
    """
    minconn, maxconn = request.param

    def make() -> tuple[Side, Side]:
        ref277 = psycopg2_277_pool()
        return make_sides(
            lambda dsn: ref277.PersistentConnectionPool(minconn, maxconn, dsn),
            lambda dsn: psycopg2_pool.PersistentConnectionPool(minconn, maxconn, dsn),
            errors={ref277.PoolError: PoolError},
        )

    return make


# --- Simple and Threaded against psycopg2.pool --------------------------------------


def test_pool_error_is_psycopg2_pools_class() -> None:
    assert psycopg2_pool.PoolError is psycopg2.pool.PoolError


@pytest.mark.parametrize("kind", [*KINDS, "PersistentConnectionPool"])
def test_pools_derive_from_abstract_connection_pool(kind: str) -> None:
    assert issubclass(getattr(psycopg2_pool, kind), psycopg2_pool.AbstractConnectionPool)


def test_constructor_opens_minconn_connections(legacy: tuple[Side, Side]) -> None:
    reference, ours = legacy
    compare(reference, ours, [])
    assert ours.server_connections() == ours.pool.minconn


def test_attributes_are_the_same(legacy: tuple[Side, Side]) -> None:
    outcomes = compare(*legacy, [Attributes(), CloseAll(), Attributes()])
    assert outcomes[-1][1][2] is True


@pytest.mark.parametrize("kind", KINDS)
def test_constructor_converts_sizes_with_int(kind: str, make_sides: MakeSides) -> None:
    reference, ours = make_sides(
        lambda dsn: getattr(psycopg2.pool, kind)("1", 2.0, dsn),
        lambda dsn: getattr(psycopg2_pool, kind)("1", 2.0, dsn),
    )
    outcomes = compare(reference, ours, [Attributes()])
    assert outcomes[0][1] == (1, 2, False)


@pytest.mark.parametrize("kind", KINDS)
def test_constructor_passes_keyword_arguments_to_connect(kind: str, make_sides: MakeSides) -> None:
    def factory(module: ModuleType) -> Callable[[str], Any]:
        # The application_name Side counts backends by arrives as a keyword here.
        return lambda dsn: getattr(module, kind)(1, 2, **psycopg2.extensions.parse_dsn(dsn))

    reference, ours = make_sides(factory(psycopg2.pool), factory(psycopg2_pool))
    compare(reference, ours, [Get(), Get()])
    assert ours.server_connections() == 2


def test_getconn_hands_out_distinct_connections_until_exhausted(
    legacy: tuple[Side, Side],
) -> None:
    reference, ours = legacy
    maxconn = ours.pool.maxconn
    outcomes = compare(reference, ours, [Get() for _ in range(maxconn + 1)])
    assert len({outcome[1] for outcome in outcomes[:-1]}) == maxconn
    assert outcomes[-1] == raises(EXHAUSTED)


def test_getconn_with_the_same_key_returns_the_same_connection(
    legacy: tuple[Side, Side],
) -> None:
    outcomes = compare(*legacy, [Get("a"), Get("a"), Get(key="a", keyword=True), Get("b")])
    assert outcomes[0] == outcomes[1] == outcomes[2]
    assert outcomes[3] == raises(EXHAUSTED) or outcomes[3][1] != outcomes[0][1]


def test_getconn_with_a_held_key_works_when_exhausted(legacy: tuple[Side, Side]) -> None:
    reference, ours = legacy
    maxconn = ours.pool.maxconn
    steps: list[Step] = [Get("a"), *[Get() for _ in range(maxconn)], Get("a")]
    outcomes = compare(reference, ours, steps)
    assert outcomes[-2] == raises(EXHAUSTED)
    assert outcomes[-1] == outcomes[0]


def test_putconn_makes_room_after_exhaustion(legacy: tuple[Side, Side]) -> None:
    reference, ours = legacy
    maxconn = ours.pool.maxconn
    steps: list[Step] = [*[Get() for _ in range(maxconn + 1)], Put(1), Get()]
    outcomes = compare(reference, ours, steps)
    assert outcomes[-1][0] == "conn"


def test_putconn_keeps_up_to_minconn_idle_and_closes_the_rest(
    legacy: tuple[Side, Side],
) -> None:
    reference, ours = legacy
    maxconn = ours.pool.maxconn
    gets: list[Step] = [Get() for _ in range(maxconn)]
    puts: list[Step] = [Put(number) for number in range(1, maxconn + 1)]
    compare(reference, ours, [*gets, *puts, *gets])
    # After the puts, only minconn stayed open (check_state verified it step by step).
    kept = [bool(conn.closed) for conn in ours.seen[:maxconn]].count(False)
    assert kept == min(ours.pool.minconn, maxconn)


def test_putconn_with_close_closes_the_connection(legacy: tuple[Side, Side]) -> None:
    reference, ours = legacy
    compare(reference, ours, [Get(), Put(1, close=True), Get()])
    assert ours.conn(1).closed


def test_putconn_with_an_explicit_key(legacy: tuple[Side, Side]) -> None:
    outcomes = compare(*legacy, [Get("a"), Put(1, key="a"), Get("a")])
    assert outcomes[1] == ("returns", None)


def test_putconn_with_positional_arguments(legacy: tuple[Side, Side]) -> None:
    steps: list[Step] = [
        Get("a"),
        Put(1, key="a", close=False, positional=True),
        Get(),
        Put(3, key=None, close=True, positional=True),
    ]
    outcomes = compare(*legacy, steps)
    assert outcomes[1] == outcomes[3] == ("returns", None)


def test_putconn_of_a_foreign_connection_raises_unkeyed(legacy: tuple[Side, Side]) -> None:
    outcomes = compare(*legacy, [PutForeign()])
    assert outcomes[0] == raises(UNKEYED)


def test_putconn_twice_raises_unkeyed(legacy: tuple[Side, Side]) -> None:
    outcomes = compare(*legacy, [Get(), Put(1), Put(1)])
    assert outcomes[2] == raises(UNKEYED)


def test_putconn_rolls_back_an_open_transaction(legacy: tuple[Side, Side]) -> None:
    reference, ours = legacy
    steps: list[Step] = [Get(), Begin(1), Put(1), Get()]
    outcomes = compare(reference, ours, steps)
    assert outcomes[1][1] != IDLE
    assert outcomes[3][2] == IDLE


def test_closeall_closes_connections_in_use(legacy: tuple[Side, Side]) -> None:
    reference, ours = legacy
    compare(reference, ours, [Get(), Get("a"), CloseAll()])
    assert all(conn.closed for conn in ours.seen)


def test_calls_after_closeall_raise_closed(legacy: tuple[Side, Side]) -> None:
    outcomes = compare(*legacy, [Get(), CloseAll(), Get(), Get("a"), Put(1), CloseAll()])
    assert outcomes[2:] == [raises(CLOSED)] * 4


# --- Persistent against psycopg2 2.7.7 ----------------------------------------------


def test_persistent_warns_deprecation(dsn: str) -> None:
    app = app_name()
    with pytest.warns(DeprecationWarning, match=re.escape(DEPRECATION)):
        pool = psycopg2_pool.PersistentConnectionPool(0, 1, dsn_with(dsn, application_name=app))
    pool.closeall()


def test_persistent_warning_is_the_reference_warning(persistent: MakePersistent) -> None:
    reference, ours = persistent()
    compare(reference, ours, [])
    assert ours.warnings == [(DeprecationWarning, DEPRECATION)]


def test_persistent_thread_gets_the_same_connection_each_time(
    persistent: MakePersistent,
) -> None:
    outcomes = compare(*persistent(), [In("T1", Get()), In("T1", Get())])
    assert outcomes[0] == outcomes[1]


def test_persistent_threads_get_distinct_connections(persistent: MakePersistent) -> None:
    reference, ours = persistent()
    outcomes = compare(reference, ours, [In("T1", Get()), In("T2", Get()), In("T1", Get())])
    assert outcomes[2] == outcomes[0]
    assert outcomes[1] == raises(EXHAUSTED) or outcomes[1][1] != outcomes[0][1]


def test_persistent_exhausted_when_every_connection_is_held(
    persistent: MakePersistent,
) -> None:
    reference, ours = persistent()
    maxconn = ours.pool.maxconn
    outcomes = compare(reference, ours, [In(f"T{n}", Get()) for n in range(maxconn + 1)])
    assert outcomes[-1] == raises(EXHAUSTED)


def test_persistent_putconn_without_conn_returns_the_threads_connection(
    persistent: MakePersistent,
) -> None:
    steps: list[Step] = [In("T1", Get()), In("T1", PersistentPut()), In("T2", Get())]
    outcomes = compare(*persistent(), steps)
    assert outcomes[1] == ("returns", None)


def test_persistent_putconn_with_conn(persistent: MakePersistent) -> None:
    steps: list[Step] = [
        In("T1", Get()),
        In("T1", PersistentPut(1)),
        In("T1", Get()),
        In("T1", PersistentPut(3, close=False, positional=True)),
    ]
    outcomes = compare(*persistent(), steps)
    assert outcomes[1] == outcomes[3] == ("returns", None)


def test_persistent_putconn_with_close_closes_the_connection(
    persistent: MakePersistent,
) -> None:
    reference, ours = persistent()
    steps: list[Step] = [In("T1", Get()), In("T1", PersistentPut(close=True)), In("T1", Get())]
    compare(reference, ours, steps)
    assert ours.conn(1).closed


def test_persistent_putconn_rolls_back_an_open_transaction(
    persistent: MakePersistent,
) -> None:
    steps: list[Step] = [
        In("T1", Get()),
        In("T1", Begin(1)),
        In("T1", PersistentPut()),
        In("T1", Get()),
    ]
    outcomes = compare(*persistent(), steps)
    assert outcomes[3][2] == IDLE


def test_persistent_calls_after_closeall_raise_closed(persistent: MakePersistent) -> None:
    steps: list[Step] = [
        In("T1", Get()),
        CloseAll(),
        In("T1", Get()),
        In("T1", PersistentPut()),
        CloseAll(),
    ]
    reference, ours = persistent()
    outcomes = compare(reference, ours, steps)
    assert outcomes[2:] == [raises(CLOSED)] * 3
    assert all(conn.closed for conn in ours.seen)


# --- randomised: correct-caller sequences -------------------------------------------
#
# Caller keys are strings: psycopg2.pool's automatic keys are the integers 1, 2, ...
# and a caller integer key can collide with them (deviation e). Connections are
# never broken, sizes keep minconn <= maxconn, and every connection put back is one
# the caller holds: the documented deviations stay out of the comparison.


@dataclass(frozen=True)
class GetAction:
    key: str | None
    keyword: bool

    def resolve(self, held: list[tuple[str, str | None]]) -> Step | None:
        return Get(self.key, self.keyword)


@dataclass(frozen=True)
class PutAction:
    index: int
    with_key: bool
    close: bool | None
    positional: bool

    def resolve(self, held: list[tuple[str, str | None]]) -> Step | None:
        if not held:
            return None
        label, key = held[self.index % len(held)]
        return Put(label, key if self.with_key else None, self.close, self.positional)


@dataclass(frozen=True)
class BeginAction:
    index: int

    def resolve(self, held: list[tuple[str, str | None]]) -> Step | None:
        return Begin(held[self.index % len(held)][0]) if held else None


@dataclass(frozen=True)
class ForeignAction:
    def resolve(self, held: list[tuple[str, str | None]]) -> Step | None:
        return PutForeign()


@dataclass(frozen=True)
class CloseAllAction:
    def resolve(self, held: Any) -> Step | None:
        return CloseAll()


@dataclass(frozen=True)
class ThreadAction:
    """A PersistentConnectionPool call in one of two long-lived threads."""

    thread: str
    op: str
    explicit: bool = False
    close: bool | None = None
    positional: bool = False

    def resolve(self, held: dict[str, str]) -> Step | None:
        if self.op == "get":
            return In(self.thread, Get())
        label = held.get(self.thread)
        if label is None:  # a thread only puts back the connection it holds
            return None
        if self.op == "begin":
            return In(self.thread, Begin(label))
        put = PersistentPut(label if self.explicit else None, self.close, self.positional)
        return In(self.thread, put)


def track_keyed(held: list[tuple[str, str | None]], step: Step, outcome: Outcome) -> None:
    if isinstance(step, Get) and outcome[0] == "conn":
        entry = (outcome[1], step.key)
        if step.key is None or entry not in held:
            held.append(entry)
    elif isinstance(step, Put) and outcome == ("returns", None):
        held[:] = [entry for entry in held if entry[0] != step.conn]


def track_threads(held: dict[str, str], step: Step, outcome: Outcome) -> None:
    if not isinstance(step, In):
        return
    if isinstance(step.step, Get) and outcome[0] == "conn":
        held[step.thread] = outcome[1]
    elif isinstance(step.step, PersistentPut) and outcome == ("returns", None):
        del held[step.thread]


def run_random(
    reference: Side, ours: Side, script: list[Any], held: Any, track: Callable[..., None]
) -> None:
    assert ours.warnings == reference.warnings, "the constructors warned differently"
    check_state(reference, ours, "after the constructor")
    done: list[Step] = []
    for action in script:
        step = action.resolve(held)
        if step is None:
            continue
        done.append(step)
        history = "\nsteps run:\n" + "\n".join(f"  {n}. {s}" for n, s in enumerate(done, 1))
        track(held, step, compare_step(reference, ours, step, len(done), history))


def run_pair(
    dsn: str,
    reference: Callable[[str], Any],
    ours: Callable[[str], Any],
    errors: dict[type[BaseException], type[BaseException]] | None,
    script: list[Any],
    held: Any,
    track: Callable[..., None],
) -> None:
    sides: list[Side] = []
    try:
        sides.append(Side(dsn, reference, errors))
        sides.append(Side(dsn, ours))
        run_random(sides[0], sides[1], script, held, track)
    finally:
        for side in sides:
            side.close()


@st.composite
def scripts(draw: st.DrawFn, actions: st.SearchStrategy[Any]) -> list[Any]:
    """A list of actions with at most one closeall somewhere in it."""
    body: list[Any] = draw(st.lists(actions, min_size=4, max_size=30))
    at = draw(st.none() | st.integers(0, len(body)))
    if at is not None:
        body.insert(at, CloseAllAction())
    return body


SIZES_ST = st.integers(0, 2).flatmap(
    lambda minconn: st.tuples(st.just(minconn), st.integers(max(minconn, 1), minconn + 2))
)
KEYED_ACTIONS = st.one_of(
    st.builds(GetAction, key=st.sampled_from([None, "a", "b", "c"]), keyword=st.booleans()),
    st.builds(
        PutAction,
        index=st.integers(0, 7),
        with_key=st.booleans(),
        close=st.sampled_from([None, False, True]),
        positional=st.booleans(),
    ),
    st.builds(BeginAction, index=st.integers(0, 7)),
    st.just(ForeignAction()),
)
THREAD_ACTIONS = st.builds(
    ThreadAction,
    thread=st.sampled_from(["T1", "T2"]),
    op=st.sampled_from(["get", "put", "begin"]),
    explicit=st.booleans(),
    close=st.sampled_from([None, False, True]),
    positional=st.booleans(),
)


@given(kind=st.sampled_from(KINDS), sizes=SIZES_ST, script=scripts(KEYED_ACTIONS))
def test_random_correct_caller_sequences_match_psycopg2_pool(
    dsn: str, kind: str, sizes: tuple[int, int], script: list[Any]
) -> None:
    minconn, maxconn = sizes
    run_pair(
        dsn,
        lambda d: getattr(psycopg2.pool, kind)(minconn, maxconn, d),
        lambda d: getattr(psycopg2_pool, kind)(minconn, maxconn, d),
        None,
        script,
        [],
        track_keyed,
    )


@given(sizes=SIZES_ST, script=scripts(THREAD_ACTIONS))
def test_random_persistent_sequences_match_psycopg2_277(
    dsn: str, sizes: tuple[int, int], script: list[Any]
) -> None:
    ref277 = psycopg2_277_pool()
    minconn, maxconn = sizes
    run_pair(
        dsn,
        lambda d: ref277.PersistentConnectionPool(minconn, maxconn, d),
        lambda d: psycopg2_pool.PersistentConnectionPool(minconn, maxconn, d),
        {ref277.PoolError: PoolError},
        script,
        {},
        track_threads,
    )


# --- documented differences from psycopg2.pool --------------------------------------
#
# Each pair: ``test_<our fixed behaviour>`` and ``test_reference_<its defect>``.


def run_in_thread(target: Callable[[], None]) -> None:
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(15)
    assert not thread.is_alive(), "the thread did not finish"


def select_one(conn: Any) -> Any:
    with conn.cursor() as cur:
        cur.execute("SELECT 1")
        return cur.fetchone()[0]


def run_in_a_thread_with_ident(target: Callable[[], None], ident: int, reused: bool) -> bool:
    """Run ``target`` in a new thread whose ident is ``ident`` (reused) or is not.

    A thread's ident is the address of its stack, and glibc gives a new thread
    the stack a finished one left, latest first. So a candidate with the wrong
    ident stays parked until the end: the next candidate then gets another
    stack, and the search walks through the cached ones instead of getting the
    same one back each time. False if no such thread turned up in 100 tries.
    """
    release = threading.Event()
    parked: list[threading.Thread] = []
    ran: list[bool] = []

    def candidate(decided: threading.Event) -> None:
        if (threading.get_ident() == ident) == reused:
            ran.append(True)
            decided.set()
            target()
        else:
            decided.set()
            release.wait()

    try:
        for _ in range(100):
            decided = threading.Event()
            thread = threading.Thread(target=candidate, args=(decided,), daemon=True)
            thread.start()
            assert decided.wait(15), "a candidate thread never started"
            if ran:
                thread.join(15)
                assert not thread.is_alive(), "the thread did not finish"
                return True
            parked.append(thread)
        return False
    finally:
        release.set()
        for thread in parked:
            thread.join(15)


def dead_thread_observations(pool_class: Any, dsn: str, table: str, reused: bool) -> dict[str, Any]:
    """Persistent(0, 1): a thread inserts a row without committing and dies without
    putconn; then a new thread, with the same ident or another, calls getconn and
    inserts the same row."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        pool = pool_class(0, 1, dsn_with(dsn, application_name=app_name()))
    seen: dict[str, Any] = {}

    def doomed() -> None:
        seen["ident"] = threading.get_ident()
        try:
            conn = pool.getconn()
            seen["pid"] = conn.get_backend_pid()
            with conn.cursor() as cur:
                cur.execute(f"INSERT INTO {table} VALUES (1)")
        except Exception as exc:  # reported below, never lost in the thread
            seen["doomed error"] = exc

    def successor() -> None:
        try:
            conn = pool.getconn()
        except Exception as exc:
            seen["error"] = (type(exc), str(exc))
            return
        seen["status"] = conn.info.transaction_status
        try:
            with conn.cursor() as cur:
                cur.execute("SET lock_timeout = '2s'")
                cur.execute(f"INSERT INTO {table} VALUES (1)")
            conn.commit()
            seen["inserted"] = True
        except psycopg2.Error as exc:
            seen["inserted"] = exc
            conn.rollback()
        pool.putconn(conn)

    try:
        run_in_thread(doomed)
        assert "doomed error" not in seen, seen
        if not run_in_a_thread_with_ident(successor, seen["ident"], reused):
            pytest.skip(f"no new thread {'reused' if reused else 'avoided'} the dead one's ident")
        seen["doomed state"] = query_one(
            dsn, "SELECT state FROM pg_stat_activity WHERE pid = %s", (seen["pid"],)
        )
        seen["rows"] = query_one(dsn, f"SELECT count(*) FROM {table}")
    finally:
        pool.closeall()
    return seen


IDENTS = pytest.mark.parametrize("reused", [True, False], ids=["same-ident", "new-ident"])


@IDENTS
def test_persistent_reclaims_the_connection_of_a_dead_thread(dsn: str, reused: bool) -> None:
    """(a) The dead thread's slot is free (maxconn=1), its transaction rolled back, and the
    next thread gets an idle connection, whether or not it has the dead thread's ident."""
    pool_class = psycopg2_pool.PersistentConnectionPool
    with scratch_table(dsn) as table:
        seen = dead_thread_observations(pool_class, dsn, table, reused)
    assert "error" not in seen, f"getconn in a new thread raised {seen.get('error')}"
    assert seen["status"] == IDLE, "the new thread got a connection inside a transaction"
    assert seen["inserted"] is True, f"the dead thread's row still blocks: {seen['inserted']}"
    assert seen["doomed state"] != "idle in transaction"
    assert seen["rows"] == 1


@IDENTS
def test_reference_persistent_keeps_the_connection_of_a_dead_thread(dsn: str, reused: bool) -> None:
    ref277 = psycopg2_277_pool()
    with scratch_table(dsn) as table:
        seen = dead_thread_observations(ref277.PersistentConnectionPool, dsn, table, reused)
    if reused:  # the new thread inherits the open transaction
        assert seen["status"] != IDLE
    else:  # the slot stays taken
        assert seen["error"] == (ref277.PoolError, EXHAUSTED)


@contextmanager
def after_returning_a_broken_connection(
    pool_class: Any, dsn: str
) -> Iterator[tuple[Any, str, Any, int, Any]]:
    """Pool (2, 3): a connection's backend is terminated, a query on it fails, it is
    put back, and getconn is called again. Yields (pool, app, broken, pid, next)."""
    app = app_name()
    pool = pool_class(2, 3, dsn_with(dsn, application_name=app))
    try:
        broken = pool.getconn()
        pid = broken.get_backend_pid()
        terminate_backend(dsn, pid)
        with pytest.raises(psycopg2.OperationalError):
            select_one(broken)
        pool.putconn(broken)
        yield pool, app, broken, pid, pool.getconn()
    finally:
        pool.closeall()


@pytest.mark.parametrize("kind", KINDS)
def test_broken_connection_is_replaced_and_the_pool_refilled_to_minconn(
    dsn: str, kind: str
) -> None:
    """(b)"""
    pool_class = getattr(psycopg2_pool, kind)
    with after_returning_a_broken_connection(pool_class, dsn) as (pool, app, broken, pid, nxt):
        assert nxt is not broken
        assert nxt.get_backend_pid() != pid
        assert select_one(nxt) == 1
        wait_for(
            lambda: pool.minconn <= len(backends(dsn, app)) <= pool.maxconn,
            timeout=5,
            message="the server connections to get back to minconn",
        )


@pytest.mark.parametrize("kind", KINDS)
def test_reference_does_not_refill_after_a_broken_connection(dsn: str, kind: str) -> None:
    pool_class = getattr(psycopg2.pool, kind)
    with after_returning_a_broken_connection(pool_class, dsn) as (pool, app, _, _, nxt):
        assert select_one(nxt) == 1
        assert len(backends(dsn, app)) == 1 < pool.minconn


@contextmanager
def after_a_failed_rollback(pool_class: Any, dsn: str) -> Iterator[tuple[Any, Any]]:
    """Pool (1, 1): the backend of a connection in a transaction is terminated, then the
    connection is put back. Yields (pool, what putconn raised or None)."""
    pool = pool_class(1, 1, dsn_with(dsn, application_name=app_name()))
    try:
        conn = pool.getconn()
        select_one(conn)
        terminate_backend(dsn, conn.get_backend_pid())
        error: Exception | None = None
        try:
            pool.putconn(conn)
        except Exception as exc:
            error = exc
        yield pool, error
    finally:
        pool.closeall()


@pytest.mark.parametrize("kind", KINDS)
def test_failed_rollback_in_putconn_frees_the_slot(dsn: str, kind: str) -> None:
    """(c)"""
    with after_a_failed_rollback(getattr(psycopg2_pool, kind), dsn) as (pool, error):
        assert error is None, f"putconn raised {error!r}"
        assert select_one(pool.getconn()) == 1


@pytest.mark.parametrize("kind", KINDS)
def test_reference_failed_rollback_leaks_the_slot(dsn: str, kind: str) -> None:
    with after_a_failed_rollback(getattr(psycopg2.pool, kind), dsn) as (pool, error):
        assert isinstance(error, psycopg2.OperationalError)
        with pytest.raises(PoolError, match=EXHAUSTED):
            pool.getconn()


def connections_with_minconn_above_maxconn(pool_class: Any, dsn: str) -> tuple[list[Any], int]:
    """Pool (3, 2): getconn four times. Returns (outcomes, server connections)."""
    app = app_name()
    pool = pool_class(3, 2, dsn_with(dsn, application_name=app))
    try:
        outcomes: list[Any] = []
        for _ in range(4):
            try:
                outcomes.append(pool.getconn())
            except PoolError as exc:
                outcomes.append(str(exc))
        return outcomes, len(backends(dsn, app))
    finally:
        pool.closeall()


@pytest.mark.parametrize("kind", KINDS)
def test_minconn_above_maxconn_caps_connections_at_minconn(dsn: str, kind: str) -> None:
    """(d)"""
    outcomes, servers = connections_with_minconn_above_maxconn(getattr(psycopg2_pool, kind), dsn)
    assert outcomes[3] == EXHAUSTED
    assert servers == 3


@pytest.mark.parametrize("kind", KINDS)
def test_reference_minconn_above_maxconn_is_unbounded(dsn: str, kind: str) -> None:
    outcomes, servers = connections_with_minconn_above_maxconn(getattr(psycopg2.pool, kind), dsn)
    assert not isinstance(outcomes[3], str)
    assert servers == 4


def auto_key_then_key_1(pool_class: Any, dsn: str) -> tuple[Any, Any]:
    """``getconn()`` then ``getconn(key=1)`` on a pool (0, 5)."""
    pool = pool_class(0, 5, dsn_with(dsn, application_name=app_name()))
    try:
        return pool.getconn(), pool.getconn(key=1)
    finally:
        pool.closeall()


@pytest.mark.parametrize("kind", KINDS)
def test_automatic_keys_never_collide_with_caller_keys(dsn: str, kind: str) -> None:
    """(e)"""
    first, second = auto_key_then_key_1(getattr(psycopg2_pool, kind), dsn)
    assert first is not second


@pytest.mark.parametrize("kind", KINDS)
def test_reference_automatic_key_collides_with_caller_key_1(dsn: str, kind: str) -> None:
    first, second = auto_key_then_key_1(getattr(psycopg2.pool, kind), dsn)
    assert first is second


def test_threaded_putconn_by_key_alone_puts_back_that_keys_connection(dsn: str) -> None:
    """(f)"""
    pool = psycopg2_pool.ThreadedConnectionPool(1, 1, dsn_with(dsn, application_name=app_name()))
    try:
        conn = pool.getconn(key="k")
        pool.putconn(key="k")
        assert pool.getconn() is conn
    finally:
        pool.closeall()


def test_reference_threaded_putconn_by_key_alone_crashes(dsn: str) -> None:
    pool = psycopg2.pool.ThreadedConnectionPool(1, 1, dsn_with(dsn, application_name=app_name()))
    try:
        pool.getconn(key="k")
        with pytest.raises(AttributeError):
            pool.putconn(key="k")
    finally:
        pool.closeall()


@pytest.fixture
def relay(dsn: str) -> Iterator[StallingRelay]:
    proxy = StallingRelay(dsn)
    try:
        yield proxy
    finally:
        proxy.close()


def seconds_to_reuse_while_another_thread_connects(pool_class: Any, relay: StallingRelay) -> float:
    """Pool (1, 3) through the relay: while a thread is stuck in connect (the relay
    never answers, connect_timeout=3), time putconn + getconn + putconn of an idle one."""
    pool = pool_class(1, 3, relay.dsn(application_name=app_name(), connect_timeout=3))
    errors: list[BaseException] = []

    def connect() -> None:
        try:
            pool.getconn()
        except Exception as exc:
            errors.append(exc)

    try:
        held = pool.getconn()
        relay.stall_new = True
        thread = threading.Thread(target=connect, daemon=True)
        thread.start()
        assert relay.stalled.wait(5), "the pool did not try to connect"
        time.sleep(0.2)  # the thread is inside psycopg2.connect() now
        start = time.monotonic()
        pool.putconn(held)
        pool.putconn(pool.getconn())
        elapsed = time.monotonic() - start
        thread.join(10)
        assert not thread.is_alive()
        assert len(errors) == 1 and isinstance(errors[0], psycopg2.OperationalError), errors
        return elapsed
    finally:
        pool.closeall()


def test_connecting_does_not_block_other_threads(relay: StallingRelay) -> None:
    """(g)"""
    elapsed = seconds_to_reuse_while_another_thread_connects(
        psycopg2_pool.ThreadedConnectionPool, relay
    )
    assert elapsed < 1.0


def test_reference_connecting_blocks_other_threads(relay: StallingRelay) -> None:
    elapsed = seconds_to_reuse_while_another_thread_connects(
        psycopg2.pool.ThreadedConnectionPool, relay
    )
    assert elapsed > 2.0


def seconds_to_reuse_while_another_thread_rolls_back(
    pool_class: Any, relay: StallingRelay
) -> float:
    """Pool (2, 3) through the relay: a thread puts back a connection in a transaction
    whose ROLLBACK reply the relay holds for 3s; time getconn + putconn of the idle one."""
    pool = pool_class(2, 3, relay.dsn(application_name=app_name()))
    errors: list[BaseException] = []
    busy = pool.getconn()
    link = relay.link_for(busy)
    release = threading.Timer(3.0, link.release)

    def put_back() -> None:
        try:
            pool.putconn(busy)
        except Exception as exc:
            errors.append(exc)

    try:
        pool.putconn(pool.getconn())  # an idle connection to reuse
        select_one(busy)
        link.hold()
        thread = threading.Thread(target=put_back, daemon=True)
        thread.start()
        wait_for(
            lambda: link.client_spoke_while_held.is_set() or not thread.is_alive(),
            timeout=5,
            message="putconn to send its ROLLBACK",
        )
        release.start()
        start = time.monotonic()
        pool.putconn(pool.getconn())
        elapsed = time.monotonic() - start
        thread.join(10)
        assert not thread.is_alive()
        assert not errors, errors
        return elapsed
    finally:
        release.cancel()
        link.release()
        pool.closeall()


def test_rolling_back_does_not_block_other_threads(relay: StallingRelay) -> None:
    """(g)"""
    elapsed = seconds_to_reuse_while_another_thread_rolls_back(
        psycopg2_pool.ThreadedConnectionPool, relay
    )
    assert elapsed < 1.0


def test_reference_rolling_back_blocks_other_threads(relay: StallingRelay) -> None:
    elapsed = seconds_to_reuse_while_another_thread_rolls_back(
        psycopg2.pool.ThreadedConnectionPool, relay
    )
    assert elapsed > 2.0
