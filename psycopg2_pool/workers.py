"""Background threads that open connections and run the pool's housekeeping.

Clients never connect themselves: they queue, and a worker serves them. The
timer thread submits delayed tasks to the workers, and runs alarms itself:
those must not wait behind a worker stuck in a connect. Tasks hold their pool
weakly, so that a pool its program drops is collected.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import queue
import random
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

logger = logging.getLogger("psycopg2_pool")

Task = Callable[[], None]

_STOP: Task = lambda: None  # noqa: E731 - a unique sentinel


class WeakCall:
    """A call of an object's method, to make later, holding the object weakly.

    Worker threads and timers live as long as the pool does not stop them: if
    they held the pool itself, a pool that its program dropped without
    ``close()`` would never be collected, nor its threads end. A call whose
    object is gone does nothing.
    """

    __slots__ = ("_args", "_method")

    def __init__(self, method: Callable[..., object], args: tuple[Any, ...]) -> None:
        self._method = weakref.WeakMethod(method)  # TypeError if not a bound method
        self._args = args

    def __call__(self) -> None:
        method = self._method()
        if method is not None:
            method(*self._args)

    def __repr__(self) -> str:
        method = self._method()
        return f"<{type(self).__name__} {method!r}>" if method else "<WeakCall (object gone)>"


class Workers:
    """``num_workers`` threads running submitted tasks, plus one timer thread.

    Tasks are methods (of the pool, mostly), held weakly: see :class:`WeakCall`.
    """

    #: Timer entries: (when, order, task, run by the timer thread itself).
    _timers: list[tuple[float, int, Task, bool]]

    def __init__(self, name: str, num_workers: int) -> None:
        self.name = name
        self._tasks: queue.SimpleQueue[Task] = queue.SimpleQueue()
        self._timers = []
        self._timers_changed = threading.Condition()
        self._order = itertools.count()
        self._stopping = False
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-worker-{i}", daemon=True)
            for i in range(num_workers)
        ]
        self._threads.append(
            threading.Thread(target=self._tick, name=f"{name}-scheduler", daemon=True)
        )
        for thread in self._threads:
            thread.start()
        #: Run a :class:`WeakCall` on a worker as soon as one is free. A C
        #: method: once it is called, nothing can interrupt it half way.
        self.post: Callable[[Task], None] = self._tasks.put

    def submit(self, method: Callable[..., object], *args: Any) -> None:
        """Run ``method(*args)`` on a worker as soon as one is free."""
        self._tasks.put(WeakCall(method, args))

    def schedule(self, delay: float, method: Callable[..., object], *args: Any) -> None:
        """Submit ``method(*args)`` after ``delay`` seconds."""
        self._at(delay, WeakCall(method, args), False)

    def alarm(self, delay: float, method: Callable[..., object], *args: Any) -> None:
        """Run ``method(*args)`` on the timer thread itself after ``delay`` seconds.

        Only for tasks that never block (shutting a socket down): they run even
        while every worker waits on a connect that may take minutes.
        """
        self._at(delay, WeakCall(method, args), True)

    def _at(self, delay: float, task: Task, alarm: bool) -> None:
        with self._timers_changed:
            entry = (time.monotonic() + delay, next(self._order), task, alarm)
            heapq.heappush(self._timers, entry)
            self._timers_changed.notify()

    def signal_stop(self) -> None:
        """Tell the threads to end, waiting for nothing (from a finaliser, say)."""
        with self._timers_changed:
            self._stopping = True
            self._timers_changed.notify()
        for _ in self._threads[:-1]:
            self._tasks.put(_STOP)

    def stop(self, timeout: float) -> None:
        """Stop the threads; wait up to ``timeout`` seconds for running tasks."""
        self.signal_stop()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            if thread is threading.current_thread():
                continue
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                logger.warning("%s still running after %s sec: left behind", thread.name, timeout)

    def _work(self) -> None:
        while True:
            task = self._tasks.get()
            if task is _STOP:
                return
            try:
                task()
            except Exception:  # a failing task must not kill the worker
                logger.exception("task %r failed in %s", task, threading.current_thread().name)
            # Waiting for the next task, hold nothing of the last one.
            del task

    def _tick(self) -> None:
        while True:
            alarms = []
            with self._timers_changed:
                if self._stopping:
                    return
                now = time.monotonic()
                while self._timers and self._timers[0][0] <= now:
                    _, _, task, alarm = heapq.heappop(self._timers)
                    if alarm:
                        alarms.append(task)
                    else:
                        self._tasks.put(task)
                if not alarms:
                    self._timers_changed.wait(self._timers[0][0] - now if self._timers else None)
            for task in alarms:  # outside the lock: schedule() never waits for them
                try:
                    task()
                except Exception:  # a failing alarm must not stop the timers
                    logger.exception("alarm %r failed in %s", task, threading.current_thread().name)


class Backoff:
    """Delays between reconnection attempts: exponential, with jitter, bounded in total."""

    INITIAL_DELAY = 1.0
    FACTOR = 2.0
    JITTER = 0.1

    def __init__(
        self, timeout: float, initial: float | None = None, most: float | None = None
    ) -> None:
        self.timeout = timeout
        self.initial = self.INITIAL_DELAY if initial is None else initial
        self.most = most  # no delay longer than this, if set
        self.delay = 0.0
        self.give_up_at = 0.0

    def next_delay(self, now: float) -> float | None:
        """The wait before the next attempt, or None when it is time to give up."""
        if self.delay == 0.0:
            self.give_up_at = now + self.timeout
            self.delay = self.initial * (1 + random.uniform(-self.JITTER, self.JITTER))
        else:
            self.delay *= self.FACTOR
            if self.most is not None and self.delay > self.most:
                self.delay = self.most * (1 + random.uniform(-self.JITTER, self.JITTER))
        if now >= self.give_up_at:
            return None
        return min(self.delay, self.give_up_at - now)


class Retry:
    """When a client tries again after a connection was turned down at checkout.

    At once the first time, then after a :class:`Backoff` delay (1 s, 2 s,
    4 s...), never past the client's deadline: a cause that persists (a check
    that keeps failing) costs a few attempts per request, not a busy loop.
    """

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self._tries = 0
        self._backoff: Backoff | None = None

    def next_delay(self) -> float | None:
        """The wait before the next attempt, or None once the deadline has passed."""
        now = time.monotonic()
        if now >= self.deadline:
            return None
        self._tries += 1
        if self._tries == 1:
            return 0.0
        if self._backoff is None:
            self._backoff = Backoff(self.deadline - now)
        return self._backoff.next_delay(now)
