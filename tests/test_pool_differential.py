"""One scenario, run on psycopg_pool 3.3 (psycopg 3) and on ours: the caller must
observe the same results, the same exception classes and the same counters."""

from __future__ import annotations

import threading
from typing import Any, Callable

import pytest

import psycopg2_pool
from tests.helpers import app_name, dsn_with, wait_for

psycopg_pool = pytest.importorskip("psycopg_pool")

COUNTERS = ("requests_num", "requests_queued", "requests_errors", "connections_num")
MEASURES = ("pool_min", "pool_max", "pool_size", "pool_available")


def attempt(func: Callable[[], Any]) -> str:
    """Call ``func``; the name of the exception class it raised, or 'ok'."""
    try:
        func()
    except Exception as exc:
        return type(exc).__name__
    return "ok"


def scenario(pool: Any) -> dict[str, Any]:
    """Drive an open=False pool of max_size connections (1 or 2) through the
    usual events and write down what the caller sees."""
    seen: dict[str, Any] = {}
    pool.open()
    pool.wait(5)
    after_wait = pool.get_stats()
    seen["after_wait"] = {k: after_wait.get(k, 0) for k in MEASURES}

    with pool.connection() as conn:
        seen["query"] = conn.execute("select %s + 1, 'x'", (41,)).fetchone()

    held = [pool.getconn() for _ in range(pool.max_size)]
    seen["timeout"] = attempt(lambda: pool.getconn(timeout=0.2))
    # psycopg_pool leaves a timed-out client in its queue (still counted by
    # requests_waiting and max_waiting) until a connection comes back: give
    # them back and take them again so that both pools start clean below.
    for c in held:
        pool.putconn(c)
    held = [pool.getconn() for _ in range(pool.max_size)]

    waiter_result: list[Any] = []

    def waiter() -> None:
        with pool.connection(timeout=5) as c:
            waiter_result.append(c.execute("select 7").fetchone())

    t = threading.Thread(target=waiter)
    t.start()
    wait_for(lambda: pool.get_stats().get("requests_waiting", 0) == 1)
    seen["too_many"] = attempt(lambda: pool.getconn(timeout=0.2))
    for c in held:
        pool.putconn(c)
    t.join(5)
    seen["waiter"] = waiter_result

    stats = pool.get_stats()
    seen["counters"] = {k: stats.get(k, 0) for k in COUNTERS}
    seen["keys"] = sorted(stats)
    popped = pool.pop_stats()
    seen["popped_keys"] = sorted(popped)
    after_pop = pool.get_stats()
    seen["after_pop"] = {k: after_pop.get(k, 0) for k in COUNTERS}

    pool.close()
    seen["closed"] = pool.closed
    seen["after_close"] = attempt(lambda: pool.getconn(timeout=0.2))
    return seen


def normalise(seen: dict[str, Any]) -> dict[str, Any]:
    # psycopg 3 returns tuples too; make sure lists of rows compare equal.
    seen = dict(seen)
    seen["query"] = tuple(seen["query"])
    seen["waiter"] = [tuple(r) for r in seen["waiter"]]
    return seen


def run_both(dsn: str, ours_cls: Any, theirs_cls: Any, **kwargs: Any) -> tuple[dict, dict]:
    theirs = theirs_cls(dsn_with(dsn, application_name=app_name()), open=False, **kwargs)
    ours = ours_cls(dsn_with(dsn, application_name=app_name()), open=False, **kwargs)
    try:
        return normalise(scenario(theirs)), normalise(scenario(ours))
    finally:
        theirs.close()
        ours.close()


POOL_ARGS = dict(min_size=2, max_size=2, timeout=2.0, max_waiting=1)
NULL_ARGS = dict(max_size=1, timeout=2.0, max_waiting=1)


@pytest.fixture(scope="module")
def pool_runs(dsn: str) -> tuple[dict, dict]:
    return run_both(dsn, psycopg2_pool.ConnectionPool, psycopg_pool.ConnectionPool, **POOL_ARGS)


@pytest.fixture(scope="module")
def null_runs(dsn: str) -> tuple[dict, dict]:
    return run_both(
        dsn, psycopg2_pool.NullConnectionPool, psycopg_pool.NullConnectionPool, **NULL_ARGS
    )


ASPECTS = [
    "after_wait",
    "query",
    "timeout",
    "too_many",
    "waiter",
    "counters",
    "keys",
    "popped_keys",
    "after_pop",
    "closed",
    "after_close",
]


@pytest.mark.parametrize("aspect", ASPECTS)
def test_pool_same_as_psycopg_pool(pool_runs, aspect):
    theirs, ours = pool_runs
    assert ours[aspect] == theirs[aspect]


@pytest.mark.parametrize("aspect", ASPECTS)
def test_null_pool_same_as_psycopg_pool(null_runs, aspect):
    theirs, ours = null_runs
    assert ours[aspect] == theirs[aspect]


def test_scenario_exceptions_are_the_expected_ones(pool_runs, null_runs):
    # Guard against both sides agreeing on something wrong.
    for theirs, _ in (pool_runs, null_runs):
        assert theirs["timeout"] == "PoolTimeout"
        assert theirs["too_many"] == "TooManyRequests"
        assert theirs["after_close"] == "PoolClosed"
        assert theirs["waiter"] == [(7,)]
