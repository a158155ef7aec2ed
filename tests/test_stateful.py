"""Stateful property tests: random getconn / putconn / close-and-reopen / resize /
kill-the-backends sequences, with the pool's invariants checked after each step.

Invariants: no connection is held by two clients; the pool's counts agree with
what the server sees (allowing for the workers still opening or closing
connections); nothing is left on the server once the pool is closed.
"""

from __future__ import annotations

import contextlib
from typing import Any

import psycopg2
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from psycopg2_pool import ConnectionPool, PoolError, PoolTimeout, ThreadedConnectionPool
from tests.helpers import app_name, backends, dsn_with, terminate_backends, wait_for

SETTINGS = settings(
    max_examples=15,
    stateful_step_count=15,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


def answers(conn: Any) -> bool:
    real = getattr(conn, "__wrapped__", conn)
    try:
        with real.cursor() as cur:
            cur.execute("SELECT 1")
        real.rollback()
    except psycopg2.Error:
        return False
    return True


class ConnectionPoolMachine(RuleBasedStateMachine):
    dsn: str

    def __init__(self) -> None:
        super().__init__()
        self.name = app_name()
        self.held: list[Any] = []
        self.broken: set[int] = set()  # id() of held handles whose backend was killed
        # As psycopg_pool: after a resize down, the surplus connections are
        # closed one per max_idle period (10 minutes here): the size may
        # exceed max_size until then, up to the largest max_size since it
        # last fitted.
        self.ceiling = 3
        self.pool = self._new_pool(1, 3)

    def _new_pool(self, min_size: int, max_size: int) -> ConnectionPool:
        pool = ConnectionPool(
            dsn_with(self.dsn, application_name=self.name),
            min_size=min_size,
            max_size=max_size,
            timeout=3,
            num_workers=2,
            open=True,
        )
        return pool

    # -- steps ---------------------------------------------------------------

    @rule()
    def getconn(self) -> None:
        if len(self.held) < self.pool.max_size:
            conn = self.pool.getconn(timeout=5)
        else:
            try:
                conn = self.pool.getconn(timeout=0.2)
            except PoolTimeout:
                return
            # As psycopg_pool: after a resize down, the surplus idle connections
            # may still be handed out until they are closed; never more.
            assert len(self.held) < max(self.ceiling, self.pool.max_size), (
                "more than max_size connections out"
            )
        self.held.append(conn)
        assert answers(conn), "the pool handed out a dead connection"

    @precondition(lambda self: self.held)
    @rule(data=st.data())
    def putconn(self, data: Any) -> None:
        conn = self.held.pop(data.draw(st.integers(0, len(self.held) - 1)))
        self.broken.discard(id(conn))
        self.pool.putconn(conn)

    @rule(min_size=st.integers(0, 3), extra=st.integers(0, 2))
    def close_and_reopen(self, min_size: int, extra: int) -> None:
        self.pool.close()
        for conn in self.held:
            self.pool.putconn(conn)  # closes it: the pool is closed
        self.held.clear()
        self.broken.clear()
        wait_for(
            lambda: not backends(self.dsn, self.name),
            message="no server connection after close",
        )
        self.pool = self._new_pool(min_size, max(min_size, 1) + extra)
        self.ceiling = self.pool.max_size

    @rule(min_size=st.integers(0, 3), extra=st.integers(0, 2))
    def resize(self, min_size: int, extra: int) -> None:
        self.ceiling = max(self.ceiling, self.pool.max_size)
        self.pool.resize(min_size, max(min_size, 1) + extra)

    @rule()
    def kill_backends(self) -> None:
        terminate_backends(self.dsn, self.name)
        for conn in self.held:
            assert not answers(conn)
            self.broken.add(id(conn))
        # Idle connections are dead too: let the pool find them.
        self.pool.check()

    # -- invariants ------------------------------------------------------------

    @invariant()
    def no_connection_held_twice(self) -> None:
        reals = [conn.__wrapped__ for conn in self.held]
        assert len({id(r) for r in reals}) == len(reals)
        pids = [r.get_backend_pid() for r in reals if not r.closed]
        assert len(set(pids)) == len(pids)

    @invariant()
    def counts_match_the_server(self) -> None:
        held = len(self.held)
        live_held = held - len(self.broken)

        def agree() -> bool:
            stats = self.pool.get_stats()
            size = stats["pool_size"]
            server = len(backends(self.dsn, self.name))
            return (
                size >= held
                and stats["pool_available"] + held <= size
                and size <= max(self.ceiling, self.pool.max_size, held)
                and size >= self.pool.min_size
                and server == size - (held - live_held)
            )

        wait_for(agree, timeout=5, message=f"pool stats matching the server, {held} held")
        if self.pool.get_stats()["pool_size"] <= self.pool.max_size:
            self.ceiling = self.pool.max_size

    def teardown(self) -> None:
        for conn in self.held:
            with contextlib.suppress(PoolError):
                self.pool.putconn(conn)
        self.pool.close()
        wait_for(
            lambda: not backends(self.dsn, self.name),
            message="no server connection left after close",
        )


class ThreadedPoolMachine(RuleBasedStateMachine):
    dsn: str

    def __init__(self) -> None:
        super().__init__()
        self.name = app_name()
        self.held: list[Any] = []
        self.maybe_dead = False  # backends killed since the pool was made
        self.pool = self._new_pool(1, 3)

    def _new_pool(self, minconn: int, maxconn: int) -> ThreadedConnectionPool:
        self.maybe_dead = False
        return ThreadedConnectionPool(
            minconn, maxconn, dsn_with(self.dsn, application_name=self.name)
        )

    @rule()
    def getconn(self) -> None:
        if len(self.held) < self.pool.maxconn:
            conn = self.pool.getconn()
            if answers(conn):
                self.held.append(conn)
            else:
                # A connection killed while idle: legacy pools hand it out once
                # (as psycopg2.pool); given back, it is thrown away.
                assert self.maybe_dead, "a dead connection with no kill"
                self.pool.putconn(conn)
        else:
            with pytest.raises(PoolError, match="connection pool exhausted"):
                self.pool.getconn()

    @precondition(lambda self: self.held)
    @rule(data=st.data(), close=st.booleans())
    def putconn(self, data: Any, close: bool) -> None:
        conn = self.held.pop(data.draw(st.integers(0, len(self.held) - 1)))
        self.pool.putconn(conn, close=close)

    @rule(minconn=st.integers(0, 3), extra=st.integers(0, 2))
    def closeall_and_recreate(self, minconn: int, extra: int) -> None:
        self.pool.closeall()
        self.held.clear()
        wait_for(lambda: not backends(self.dsn, self.name), message="closeall left nothing")
        self.pool = self._new_pool(minconn, max(minconn, 1) + extra)

    @rule()
    def kill_backends(self) -> None:
        terminate_backends(self.dsn, self.name)
        self.maybe_dead = True
        for conn in self.held:
            assert not answers(conn)

    @invariant()
    def no_connection_held_twice(self) -> None:
        assert len({id(c) for c in self.held}) == len(self.held)
        pids = [c.get_backend_pid() for c in self.held if not c.closed]
        assert len(set(pids)) == len(pids)
        assert all(self.pool._rused.get(id(c)) is not None for c in self.held)

    @invariant()
    def counts_match_the_server(self) -> None:
        tracked = len(self.pool._pool) + len(self.pool._used)
        assert len(self.pool._used) == len(self.held)
        assert tracked <= max(self.pool.maxconn, self.pool.minconn)
        if self.maybe_dead:
            # Dead connections may still be tracked; the server never has more.
            wait_for(lambda: len(backends(self.dsn, self.name)) <= tracked, timeout=5)
        else:
            wait_for(
                lambda: len(backends(self.dsn, self.name)) == tracked,
                timeout=5,
                message=f"{tracked} tracked connections on the server",
            )

    def teardown(self) -> None:
        if not self.pool.closed:
            self.pool.closeall()
        wait_for(
            lambda: not backends(self.dsn, self.name),
            message="no server connection left after closeall",
        )


def test_connection_pool_state_machine(dsn: str) -> None:
    machine = type("Machine", (ConnectionPoolMachine,), {"dsn": dsn})
    run_state_machine_as_test(machine, settings=SETTINGS)


def test_threaded_pool_state_machine(dsn: str) -> None:
    machine = type("Machine", (ThreadedPoolMachine,), {"dsn": dsn})
    run_state_machine_as_test(machine, settings=SETTINGS)
