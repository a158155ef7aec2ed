"""Ctrl-C anywhere in getconn, putconn or a ``with`` block never wedges a pool.

An exception delivered asynchronously (KeyboardInterrupt in the main thread,
``PyThreadState_SetAsyncExc``) lands where the interpreter checks for pending
events: when a function starts, after a call returns and on a backward jump
(a blocking call interrupted by Ctrl-C raises as if from the point just
before it). A tracer finds every such point that a checkout, a return or a
``with`` block passes through in the package's code (and the start of every
function it calls), and one trial per point raises there. After each, the
pool must have its lock free, no connection checked out to nobody, nothing
pending, and its full capacity.
"""

from __future__ import annotations

import contextlib
import dis
import gc
import sys
import threading
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from types import FrameType
from typing import Any, Callable

import psycopg2
import pytest

import psycopg2_pool
from psycopg2_pool import (
    ConnectionPool,
    NullConnectionPool,
    ThreadedConnectionPool,
    ThreadSafeConnectionPool,
)
from tests.helpers import app_name, dsn_with, wait_for

PACKAGE = str(Path(psycopg2_pool.__file__).parent)
# The call opcodes of 3.11+ (CALL_KW: 3.13) and of 3.10.
_CALLS = {
    "CALL",
    "CALL_KW",
    "CALL_FUNCTION_EX",
    "CALL_FUNCTION",
    "CALL_FUNCTION_KW",
    "CALL_METHOD",
}
_BACKWARD = {name for name in dis.opname if "JUMP_BACKWARD" in name}


class Injected(KeyboardInterrupt):
    """The interrupt a trial raises: a KeyboardInterrupt, as Ctrl-C would be."""


class Injector:
    """Count the points where an asynchronous exception can land; raise at one."""

    def __init__(self, target: int | None) -> None:
        self.target = target
        self.points = 0
        self.fired: str | None = None
        self._previous: dict[FrameType, str] = {}

    def _point(self, frame: FrameType, what: str) -> None:
        number = self.points
        self.points += 1
        if number == self.target:
            self.fired = f"{frame.f_code.co_name}:{frame.f_lineno} ({what})"
            raise Injected(self.fired)

    def on_call(self, frame: FrameType, event: str, arg: Any) -> Any:
        if event != "call":
            return None
        ours = frame.f_code.co_filename.startswith(PACKAGE)
        caller = frame.f_back
        if ours or (caller is not None and caller.f_code.co_filename.startswith(PACKAGE)):
            # At the start of a function, or instead of a call out of the package.
            self._point(frame, "entry")
        if not ours:
            return None
        frame.f_trace_opcodes = True
        # From 3.12 the flag set here only takes effect once tracing is
        # re-armed: without this no opcode event comes at all.
        frame.f_trace = self.on_opcode
        sys.settrace(self.on_call)
        return self.on_opcode

    def on_opcode(self, frame: FrameType, event: str, arg: Any) -> Any:
        if event == "opcode":
            op = dis.opname[frame.f_code.co_code[frame.f_lasti]]
            previous = self._previous.get(frame)
            self._previous[frame] = op
            if previous in _CALLS or previous in _BACKWARD:
                self._point(frame, f"after {previous}")
        return self.on_opcode

    def run(self, action: Callable[[], Any]) -> None:
        sys.settrace(self.on_call)
        try:
            action()
        finally:
            sys.settrace(None)
            self._previous.clear()


def lock_is_free(pool: Any) -> bool:
    """Whether another thread can take the pool's lock."""
    got: list[bool] = []

    def take() -> None:
        acquired = pool._mutex.acquire(timeout=2)
        got.append(acquired)
        if acquired:
            pool._mutex.release()

    thread = threading.Thread(target=take)
    thread.start()
    thread.join()
    return got == [True]


def assert_whole(pool: Any, size: int, where: str) -> None:
    """The four invariants, after a trial that was interrupted at ``where``."""
    assert lock_is_free(pool), f"lock left held after an interrupt at {where}"
    gc.collect()  # what the interrupted client held is gone, as its frames are
    wait_for(lambda: pool._pending == 0, timeout=5, message=f"_pending after {where}")
    assert not pool._waiters, f"a waiter with no client after {where}"
    held = []
    try:
        for _ in range(size):
            if isinstance(pool, ConnectionPool):
                held.append(pool.getconn(timeout=5))
            else:
                held.append(pool.getconn())
    except Exception as exc:
        raise AssertionError(
            f"capacity lost after an interrupt at {where}: {len(held)} of {size}: {exc!r}"
        ) from exc
    finally:
        for conn in held:
            pool.putconn(conn)
    assert pool._pending == 0


def interrupt_everywhere(
    make_pool: Callable[[], Any],
    size: int,
    before: Callable[[Any], Any],
    action: Callable[[Any, Any], Any],
    after: Callable[[Any, Any], Any] = lambda pool, state: None,
) -> int:
    """One trial per point: ``before`` untraced, ``action`` interrupted, then check.

    Returns the number of points tried (so a test can see the tracer saw them).
    """
    target = 0
    while True:
        pool = make_pool()
        try:
            state = before(pool)
            injector = Injector(target)
            with contextlib.suppress(Injected):
                injector.run(partial(action, pool, state))
            after(pool, state)
            del state
            if injector.fired is None:
                assert target >= 3, f"only {target} points seen: the tracer missed the code"
                return target
            assert_whole(pool, size, injector.fired)
        finally:
            close = getattr(pool, "close", None) or pool.closeall
            with contextlib.suppress(psycopg2_pool.PoolError):
                close()
        target += 1


@pytest.fixture
def facade(dsn: str) -> Iterator[Callable[..., ConnectionPool]]:
    def make(**kwargs: Any) -> ConnectionPool:
        kwargs.setdefault("min_size", 2)
        pool = ConnectionPool(
            dsn_with(dsn, application_name=app_name()), open=True, timeout=5, **kwargs
        )
        pool.wait(5)
        return pool

    yield make


def give_back_later(pool: Any, handle: Any, delay: float = 0.05) -> threading.Thread:
    """Another client gives ``handle`` back after ``delay``, while ours waits."""

    def later() -> None:
        time.sleep(delay)
        pool.putconn(handle)

    thread = threading.Thread(target=later)
    thread.start()
    return thread


def test_interrupted_getconn_of_an_idle_connection(facade: Any) -> None:
    tried = interrupt_everywhere(
        lambda: facade(min_size=2),
        2,
        before=lambda pool: None,
        action=lambda pool, state: pool.getconn(),
    )
    assert tried >= 3


def test_interrupted_getconn_that_waits_in_line(facade: Any) -> None:
    def hold_all(pool: ConnectionPool) -> list[Any]:
        held = [pool.getconn(), pool.getconn()]
        return [give_back_later(pool, held[0]), held[1]]

    def finish(pool: ConnectionPool, state: list[Any]) -> None:
        state[0].join()
        pool.putconn(state[1])

    interrupt_everywhere(
        lambda: facade(min_size=2),
        2,
        before=hold_all,
        action=lambda pool, state: pool.getconn(),
        after=finish,
    )


def test_interrupted_getconn_that_waits_for_a_new_connection(facade: Any) -> None:
    interrupt_everywhere(
        lambda: facade(min_size=0, max_size=1),
        1,
        before=lambda pool: None,
        action=lambda pool, state: pool.getconn(),
    )


def test_interrupted_putconn_keeping_the_connection(facade: Any) -> None:
    interrupt_everywhere(
        lambda: facade(min_size=2),
        2,
        before=lambda pool: [pool.getconn()],
        action=lambda pool, state: pool.putconn(state.pop()),
    )


def test_interrupted_putconn_handing_over_to_a_waiter(facade: Any) -> None:
    def waiting(pool: ConnectionPool) -> list[Any]:
        held = [pool.getconn(), pool.getconn()]
        served: list[Any] = []
        thread = threading.Thread(target=lambda: served.append(pool.getconn(timeout=5)))
        thread.start()
        wait_for(lambda: len(pool._waiters) == 1)
        return [held[1], held[0], thread, served]

    def finish(pool: ConnectionPool, state: list[Any]) -> None:
        # What the interrupted putconn did not take is still in the list.
        *held, thread, served = state
        thread.join()
        for handle in held + served:
            pool.putconn(handle)

    interrupt_everywhere(
        lambda: facade(min_size=2),
        2,
        before=waiting,
        action=lambda pool, state: pool.putconn(state.pop(0)),
        after=finish,
    )


def test_interrupted_putconn_rolling_back(facade: Any) -> None:
    def in_transaction(pool: ConnectionPool) -> list[Any]:
        handle = pool.getconn()
        handle.execute("select 1")
        return [handle]

    interrupt_everywhere(
        lambda: facade(min_size=2),
        2,
        before=in_transaction,
        action=lambda pool, state: pool.putconn(state.pop()),
    )


def test_interrupted_with_block(facade: Any) -> None:
    def block(pool: ConnectionPool, state: Any) -> None:
        with pool.connection() as conn:
            conn.execute("select 1")

    interrupt_everywhere(lambda: facade(min_size=2), 2, before=lambda pool: None, action=block)


@pytest.fixture
def legacy(dsn: str) -> Callable[[], ThreadedConnectionPool]:
    return lambda: ThreadedConnectionPool(1, 2, dsn_with(dsn, application_name=app_name()))


def test_interrupted_legacy_getconn(legacy: Any) -> None:
    interrupt_everywhere(
        legacy, 2, before=lambda pool: None, action=lambda pool, state: pool.getconn()
    )


def test_interrupted_legacy_putconn_rolling_back(legacy: Any) -> None:
    def in_transaction(pool: ThreadedConnectionPool) -> list[Any]:
        conn = pool.getconn()
        conn.cursor().execute("select 1")
        return [conn]

    interrupt_everywhere(
        legacy, 2, before=in_transaction, action=lambda pool, state: pool.putconn(state.pop())
    )


def test_the_tracer_finds_the_points_of_a_lock_round() -> None:
    # The harness itself: acquire() then try: is a point where Ctrl-C lands.
    lock = threading.Lock()

    def unsafe() -> None:
        lock.acquire()
        try:
            pass
        finally:
            lock.release()

    code = unsafe.__code__
    ops = [dis.opname[code.co_code[i]] for i in range(0, len(code.co_code), 2)]
    assert _CALLS & set(ops)
    assert psycopg2.__name__  # the module under test is importable beside the harness


def test_interrupted_legacy_getconn_that_connects(dsn: str) -> None:
    interrupt_everywhere(
        lambda: ThreadedConnectionPool(0, 2, dsn_with(dsn, application_name=app_name())),
        2,
        before=lambda pool: None,
        action=lambda pool, state: pool.getconn(),
    )


def test_interrupted_null_pool_getconn_that_connects(dsn: str) -> None:
    def make() -> NullConnectionPool:
        return NullConnectionPool(
            dsn_with(dsn, application_name=app_name()), max_size=1, open=True, timeout=5
        )

    interrupt_everywhere(
        make, 1, before=lambda pool: None, action=lambda pool, state: pool.getconn()
    )


def test_interrupted_psycopg2_pool_12_getconn_and_putconn(dsn: str) -> None:
    def make() -> ThreadSafeConnectionPool:
        return ThreadSafeConnectionPool(
            minconn=0, maxconn=2, dsn=dsn_with(dsn, application_name=app_name())
        )

    def use(pool: ThreadSafeConnectionPool, state: Any) -> None:
        conn = pool.getconn()
        conn.cursor().execute("select 1")
        pool.putconn(conn)

    interrupt_everywhere(make, 2, before=lambda pool: None, action=use)


def test_interrupted_getconn_with_a_check(facade: Any) -> None:
    interrupt_everywhere(
        lambda: facade(min_size=2, check=ConnectionPool.check_connection),
        2,
        before=lambda pool: None,
        action=lambda pool, state: pool.getconn(),
    )
