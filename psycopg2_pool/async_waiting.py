"""What the asyncio pools wait with: clients on futures, workers as loop tasks.

The engine serves a client under its lock, from the loop or from any thread;
an :class:`AsyncWaiter` turns that into an asyncio future resolved on the
loop. :class:`LoopWorkers` runs the pool's background tasks (grow, replace,
sweep, reconnect with backoff) as loop callbacks and tasks instead of
threads, and :class:`Filled` wakes ``await pool.wait()`` as well as threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Coroutine, Hashable
from time import monotonic
from typing import Any

from .decisions import Connection
from .engine import Waiter
from .workers import Task, WeakCall, Workers

__all__ = ["AsyncWaiter", "Filled", "LoopWorkers", "wake"]

logger = logging.getLogger("psycopg2_pool")


def wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class AsyncWaiter(Waiter):
    """A client's place in the queue, woken through an asyncio future.

    The engine serves (or fails) it under its lock, from the loop or from any
    thread; the client awaits :meth:`wait` on the loop, then lets the engine's
    own ``_wait`` settle the outcome (served, timed out, interrupted).
    """

    __slots__ = ("_future", "_loop", "_thread", "interrupt")

    def __init__(self, key: Hashable, loop: asyncio.AbstractEventLoop, thread: int) -> None:
        self.key = key
        self.conn: Connection | None = None
        self.error: BaseException | None = None
        self._loop = loop
        self._thread = thread
        self._future: asyncio.Future[None] = loop.create_future()
        self.interrupt: BaseException | None = None
        self.reserved = False
        self.since = monotonic()
        self.wake = self._wake

    def serve(self, conn: Connection) -> None:
        self.conn = conn
        self._wake()

    def fail(self, error: BaseException) -> None:
        self.error = error
        self._wake()

    def _wake(self) -> None:
        if threading.get_ident() == self._thread:
            wake(self._future)
        else:
            # RuntimeError: the loop is closed, nobody is waiting any more.
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(wake, self._future)

    async def wait(self, timeout: float | None) -> None:
        """Wait until served, failed, or ``timeout`` seconds passed."""
        fut = self._future
        if fut.done():
            return
        timer = None if timeout is None else self._loop.call_later(max(timeout, 0.0), wake, fut)
        try:
            await fut
        finally:
            if timer is not None:
                timer.cancel()

    def sleep(self, timeout: float | None) -> bool:
        # The engine's _wait calls this once the awaiting is over: it never blocks.
        if self.interrupt is not None:
            raise self.interrupt
        return self.conn is not None or self.error is not None


class LoopWorkers(Workers):
    """The pool's workers as event loop callbacks and tasks: no thread.

    The sync pool submits and schedules its maintenance tasks here as it does
    to its worker threads; a task that needs I/O spawns a coroutine.
    """

    def __init__(self, name: str, loop: asyncio.AbstractEventLoop) -> None:
        # No super().__init__(): it would start threads.
        self.name = name
        self._loop = loop
        self._thread = threading.get_ident()
        self._stopping = False
        self._handles: set[asyncio.TimerHandle] = set()
        self._running: set[asyncio.Task[Any]] = set()

    def _call(self, callback: Callable[..., object], *args: Any) -> None:
        if threading.get_ident() == self._thread:
            callback(*args)
        else:
            self._loop.call_soon_threadsafe(callback, *args)

    def submit(self, method: Callable[..., object], *args: Any) -> None:
        self.post(WeakCall(method, args))

    def post(self, task: Task) -> None:
        self._call(self._loop.call_soon, self._run, task)

    def schedule(self, delay: float, method: Callable[..., object], *args: Any) -> None:
        self._call(self._schedule, delay, WeakCall(method, args))

    # Connects never block the loop: an alarm can be an ordinary timer.
    alarm = schedule

    def _schedule(self, delay: float, task: Task) -> None:
        if self._stopping:
            return
        holder: list[asyncio.TimerHandle] = []

        def fire() -> None:
            self._handles.discard(holder[0])
            self._run(task)

        holder.append(self._loop.call_later(delay, fire))
        self._handles.add(holder[0])

    def _run(self, task: Task) -> None:
        if self._stopping:
            return
        try:
            task()
        except Exception:  # a failing task must not go unnoticed, nor stop the others
            logger.exception("task %r failed in pool %r", task, self.name)

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` as a task of the pool (on the loop thread)."""
        if self._stopping:
            coro.close()
            return
        task = self._loop.create_task(coro)
        self._running.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._running.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("task failed in pool %r", self.name, exc_info=task.exception())

    def stop(self, timeout: float) -> None:
        """Stop taking tasks and cancel the timers; see :meth:`join` for the running ones."""
        self.signal_stop()

    def signal_stop(self) -> None:
        self._stopping = True
        with contextlib.suppress(RuntimeError):  # the loop is closed already
            self._call(self._cancel_timers)

    def _cancel_timers(self) -> None:
        for handle in self._handles:
            handle.cancel()
        self._handles.clear()

    async def join(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for the running tasks, then cancel them."""
        running = set(self._running)
        if not running:
            return
        _, late = await asyncio.wait(running, timeout=timeout)
        if late:
            logger.warning("%s tasks of pool %r still running: cancelled", len(late), self.name)
            for task in late:
                task.cancel()
            await asyncio.wait(late)


class Filled(threading.Condition):
    """The sync pool's "filled" condition, which also wakes awaiting ``wait()`` calls."""

    def __init__(self, lock: Any) -> None:
        super().__init__(lock)
        self._futures: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    def future(self, loop: asyncio.AbstractEventLoop) -> asyncio.Future[None]:
        """Under the lock: a future resolved at the next :meth:`notify_all`."""
        fut: asyncio.Future[None] = loop.create_future()
        self._futures.append((loop, fut))
        return fut

    def notify_all(self) -> None:
        super().notify_all()
        futures, self._futures = self._futures, []
        for loop, fut in futures:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(wake, fut)
