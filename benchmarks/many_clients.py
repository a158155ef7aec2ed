"""Scenario S7, many clients: how a pool's cost grows with the clients waiting
on it (threads, asyncio tasks), how promptly it times them out, and what an
idle connection and a waiting client cost it in memory.

scenarios.py runs :func:`run` for one pool per process (``S7`` in its table);
the four parts, each described in benchmarks/README.md:

- a. 8 to 2,000 threads on 8 connections in a closed loop of ``SELECT 1``:
  throughput, waits, starved threads and the process's CPU per request;
- b. 1,000 to 30,000 asyncio tasks asking a full ``AsyncConnectionPool`` of 2
  for a connection with ``timeout=1``: when each got its PoolTimeout, and how
  long the event loop was blocked meanwhile;
- c. 1,000 threads asking a full pool with ``timeout=1`` at once;
- d. tracemalloc's bytes per idle connection and per waiting asyncio task.

Parts b and d need an asyncio pool: ours and psycopg_pool's, with a bare one
(:class:`BareAsync`) as the floor. Part c needs a checkout with a timeout
(``Adapter.acquire_within``).
"""

from __future__ import annotations

import asyncio
import gc
import resource
import statistics
import threading
import time
import tracemalloc
from array import array
from collections import Counter, deque
from collections.abc import Coroutine
from typing import Any, Callable, ClassVar

from peers import OPENED, Adapter, counted_psycopg3_class, opened, psycopg2_connect
from scenarios import SELECT_1, Result, _request, _retries_between, _select, now, percentile

# -- part a: a closed loop of threads on 8 connections -------------------------------


class _Looper(threading.Thread):
    """One client: acquire, ``SELECT 1``, release, again, from ``go`` until ``stop``.

    Times go into arrays of machine integers (see scenarios._Client); failed
    attempts are timed only near the window, where they are counted.
    """

    def __init__(self, adapter: Adapter, go: threading.Event, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.adapter, self.go, self.stop = adapter, go, stop
        self.counted = (0, 0)  # set before ``go``: failures timed within this span
        self.asked: array[int] = array("q")
        self.served: array[int] = array("q")
        self.failed: array[int] = array("q")
        self.errors: Counter[str] = Counter()

    def run(self) -> None:
        self.go.wait()
        adapter, stop = self.adapter, self.stop
        asked_at, served_at, failed_at = self.asked, self.served, self.failed
        first, last = self.counted
        while not stop.is_set():
            asked = now()
            try:
                got = _request(adapter, SELECT_1)
            except Exception as exc:
                self.errors[type(exc).__name__] += 1
                if first <= asked < last:
                    failed_at.append(asked)
                continue
            asked_at.append(asked)
            served_at.append(got)


def _switches() -> int:
    """Context switches of this process so far, voluntary and not."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_nvcsw + usage.ru_nivcsw


def driver_cpu_us(driver: str, dsn: str, seconds: float) -> float:
    """Process CPU µs of one ``SELECT 1`` on one connection of ``driver``, no pool, one thread.

    The median of three batches of about ``seconds / 3``: what any client of
    that driver spends per request, pool or not.
    """
    if driver == "psycopg2":
        conn: Any = psycopg2_connect(dsn)
    else:
        conn = counted_psycopg3_class().connect(dsn, autocommit=True)
    try:
        count = 64
        while True:  # size the batch
            start = time.process_time_ns()
            for _ in range(count):
                _select(conn, SELECT_1)
            spent = time.process_time_ns() - start
            if spent > seconds / 12 * 1e9:
                break
            count *= 2
        count = max(1, int(count * seconds / 3 * 1e9 / max(spent, 1)))
        batches = []
        for _ in range(3):
            start = time.process_time_ns()
            for _ in range(count):
                _select(conn, SELECT_1)
            batches.append((time.process_time_ns() - start) / count / 1000)
        return statistics.median(batches)
    finally:
        conn.close()


def threads_on_pool(adapter: Adapter, threads: int, params: dict[str, Any]) -> Result:
    """``threads`` clients in a closed loop on the (open) pool for one window.

    The clients start together; the window opens once every one of them has
    been served (a steady state: 2,000 threads on 8 connections take a few
    tenths of a second to go round once), but no sooner than ``warmup`` and
    no later than ``warmup_max`` seconds after the start. It lasts
    ``window`` seconds, or longer (up to ``window_max``) if needed for three
    turns of a fair queue (``threads`` / the throughput of the warm-up), so
    that a thread not served in it was passed over, not merely late. It runs
    from the main thread's first reading of the process CPU clock to its
    second; every figure counts what happened between the two.
    """
    go, stop = threading.Event(), threading.Event()
    clients = [_Looper(adapter, go, stop) for _ in range(threads)]
    for client in clients:
        client.start()
    started = now()
    latest = started + int((params["warmup_max"] + params["window_max"] + 0.1) * 1e9)
    for client in clients:
        client.counted = (started, latest)
    go.set()
    time.sleep(params["warmup"])
    waiting = clients
    while waiting and now() < started + params["warmup_max"] * 1e9:
        waiting = [client for client in waiting if not client.served]
        time.sleep(0.01)
    warmed = (now() - started) / 1e9
    rate = sum(len(client.served) for client in clients) / warmed
    cycle = threads / rate if rate else 0.0  # a fair pool serves each thread this often
    window = min(max(params["window"], 3 * cycle), params["window_max"])
    switches_begin = _switches()
    cpu_begin, begin = time.process_time_ns(), now()
    time.sleep(window)
    cpu_end, end = time.process_time_ns(), now()
    switches = _switches() - switches_begin
    stop.set()
    deadline = time.monotonic() + 60
    for client in clients:
        client.join(max(0.0, deadline - time.monotonic()))
    stuck = sum(client.is_alive() for client in clients)

    waits: list[int] = []
    starved = 0
    errors = 0
    for client in clients:
        mine = [
            got - asked for asked, got in zip(client.asked, client.served) if begin <= got < end
        ]
        waits.extend(mine)
        starved += not mine
        errors += sum(begin <= asked < end for asked in client.failed)
    waits.sort()
    seconds = (end - begin) / 1e9
    ops = len(waits)
    error_types: Counter[str] = Counter()
    for client in clients:
        error_types.update(client.errors)
    return {
        "threads": threads,
        "ops_per_s": ops / seconds,
        "us_per_op": seconds * 1e6 / ops if ops else None,
        "wait_p50_us": percentile(waits, 0.5) / 1000,
        "wait_p99_us": percentile(waits, 0.99) / 1000,
        "wait_max_us": (waits[-1] if waits else 0) / 1000,
        "starved": starved,
        "errors": errors,
        "errors_by_type": dict(error_types),
        "retries": _retries_between(adapter, begin, end),
        "cpu_us_per_op": (cpu_end - cpu_begin) / ops / 1000 if ops else None,
        "cpu_share": (cpu_end - cpu_begin) / (end - begin),
        # Context switches of the process (voluntary: a thread blocked, on the
        # GIL, a lock or the socket): each costs CPU on top of the request's.
        "switches_per_op": switches / ops if ops else None,
        "window_s": seconds,
        "warmup_s": (begin - started) / 1e9,
        "stuck_threads": stuck,
    }


# -- part c: many threads timing out together -------------------------------------------


def threads_timing_out(adapter: Adapter, params: dict[str, Any]) -> Result:
    """``timeout_threads`` threads ask the pool, all of whose connections are held,
    for one with ``timeout``, released together by one event."""
    acquire_within = adapter.acquire_within
    assert acquire_within is not None
    threads, timeout = params["timeout_threads"], params["timeout"]
    held = [adapter.acquire() for _ in range(params["size"])]
    go = threading.Event()
    asked = array("q", [0] * threads)
    answered = array("q", [0] * threads)
    outcomes: list[str] = []  # list.append is atomic: no lock in the way

    def client(index: int) -> None:
        go.wait()
        asked[index] = now()
        try:
            conn = acquire_within(timeout)
        except Exception as exc:
            answered[index] = now()
            outcomes.append(type(exc).__name__)
        else:
            answered[index] = now()
            outcomes.append("served")
            adapter.release(conn)

    pending = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(threads)]
    for thread in pending:
        thread.start()
    released = now()
    go.set()
    deadline = time.monotonic() + timeout * 10 + 30
    for thread in pending:
        thread.join(max(0.0, deadline - time.monotonic()))
    for conn in held:
        adapter.release(conn)
    finished = [i for i in range(threads) if answered[i]]
    own = sorted(answered[i] - asked[i] for i in finished)
    return {
        "threads": threads,
        "timeout_s": timeout,
        # From the release of all threads to the last answer.
        "all_answered_s": (max(answered[i] for i in finished) - released) / 1e9 if own else None,
        "slowest_s": own[-1] / 1e9 if own else None,
        "p50_s": percentile(own, 0.5) / 1e9,
        "asked_within_ms": (max(asked[i] for i in finished) - released) / 1e6 if own else None,
        "outcomes": dict(Counter(outcomes)),
        "unanswered": threads - len(finished),
    }


# -- the asyncio pools of parts b and d ------------------------------------------------------


class AsyncSide:
    """An asyncio pool of ``size`` connections, as parts b and d use it."""

    label: ClassVar[str]
    timeout_error: type[BaseException]

    async def open(self, dsn: str, size: int) -> None:
        raise NotImplementedError

    def getconn(self, timeout: float) -> Coroutine[Any, Any, Any]:
        """The pool's own coroutine (no wrapper frame is counted in part d)."""
        raise NotImplementedError

    async def putconn(self, conn: Any) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError


class OursAsync(AsyncSide):
    label = "ours AsyncConnectionPool"
    pool: Any

    async def open(self, dsn: str, size: int) -> None:
        from psycopg2_pool import AsyncConnectionPool, PoolTimeout

        self.timeout_error = PoolTimeout
        self.pool = AsyncConnectionPool(dsn, min_size=size, max_size=size, open=False)
        await self.pool.open(wait=True, timeout=60)

    def getconn(self, timeout: float) -> Coroutine[Any, Any, Any]:
        waiting: Coroutine[Any, Any, Any] = self.pool.getconn(timeout=timeout)
        return waiting

    async def putconn(self, conn: Any) -> None:
        await self.pool.putconn(conn)

    async def close(self) -> None:
        await self.pool.close()


class PsycopgAsync(OursAsync):
    label = "psycopg_pool AsyncConnectionPool"

    async def open(self, dsn: str, size: int) -> None:
        from psycopg_pool import AsyncConnectionPool, PoolTimeout

        self.timeout_error = PoolTimeout
        self.pool = AsyncConnectionPool(dsn, min_size=size, max_size=size, open=False)
        await self.pool.open(wait=True, timeout=60)


class BareTimeout(Exception):
    pass


def _expire(waiter: asyncio.Future[Any]) -> None:
    if not waiter.done():
        waiter.set_exception(BareTimeout())


class BareAsync(AsyncSide):
    """The least an asyncio pool can do to keep clients waiting with a timeout:
    a FIFO line of futures, a timer per waiter that fails its future, and a
    waiter that gave up left in the line until a returned connection skips
    it (so giving up costs O(1)). The floor under parts b and d."""

    label = "bare asyncio line (floor)"
    timeout_error = BareTimeout

    async def open(self, dsn: str, size: int) -> None:
        self.conns = [psycopg2_connect(dsn) for _ in range(size)]
        self.idle = list(self.conns)
        self.line: deque[asyncio.Future[Any]] = deque()

    async def _getconn(self, timeout: float) -> Any:
        if self.idle:
            return self.idle.pop()
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        self.line.append(waiter)
        timer = loop.call_later(timeout, _expire, waiter)
        try:
            return await waiter
        finally:
            timer.cancel()

    def getconn(self, timeout: float) -> Coroutine[Any, Any, Any]:
        return self._getconn(timeout)

    async def putconn(self, conn: Any) -> None:
        while self.line:
            waiter = self.line.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        self.idle.append(conn)

    async def close(self) -> None:
        for conn in self.conns:
            conn.close()


#: The asyncio pool standing for each sync pool key in parts b and d.
ASYNC_SIDES: dict[str, type[AsyncSide]] = {
    "ours": OursAsync,
    "psycopg_pool": PsycopgAsync,
    "bare-fifo": BareAsync,
}


# -- part b: many tasks timing out together ----------------------------------------------------


async def _tasks_timing_out(
    side: AsyncSide, tasks: int, start: str, params: dict[str, Any]
) -> Result:
    """``tasks`` tasks ask the full pool for a connection with ``timeout``.

    ``burst``: all created at once (``asyncio.gather`` of the coroutines), so
    they all ask in one turn of the loop; ``staggered``: ``batch`` tasks per
    turn of the loop. A ticker task sleeping ``tick`` at a time meanwhile
    records how late it woke: the loop's worst lag.
    """
    timeout, tick = params["timeout"], params["tick"]
    tick_ns = int(tick * 1e9)
    asked: array[int] = array("q")
    answered: array[int] = array("q")
    outcomes: Counter[str] = Counter()
    lags: array[int] = array("q")
    running = True

    async def ticker() -> None:
        while running:
            before = now()
            await asyncio.sleep(tick)
            lags.append(now() - before - tick_ns)

    async def client() -> None:
        began = now()
        try:
            conn = await side.getconn(timeout)
        except side.timeout_error:
            asked.append(began)
            answered.append(now())
            outcomes["timed out"] += 1
        except Exception as exc:
            outcomes[type(exc).__name__] += 1
        else:
            outcomes["served"] += 1
            await side.putconn(conn)

    gc.collect()
    pauses = _GcPauses()
    ticking = asyncio.create_task(ticker())
    await asyncio.sleep(tick * 4)
    lags_before = len(lags)
    first = now()
    if start == "burst":
        await asyncio.gather(*(client() for _ in range(tasks)))
    else:
        batch = params["batch"]
        spawned = []
        for offset in range(0, tasks, batch):
            spawned += [asyncio.create_task(client()) for _ in range(min(batch, tasks - offset))]
            await asyncio.sleep(0)
        await asyncio.gather(*spawned)
    running = False
    await ticking
    pauses.stop()
    own = sorted(b - a for a, b in zip(asked, answered))
    lag = sorted(lags[lags_before:])
    return {
        "tasks": tasks,
        "start": start,
        "last_answer_s": (max(answered) - first) / 1e9 if answered else None,
        "slowest_s": own[-1] / 1e9 if own else None,
        "p50_s": percentile(own, 0.5) / 1e9,
        "asked_within_ms": (max(asked) - first) / 1e6 if asked else None,
        "loop_lag_max_ms": (lag[-1] if lag else 0) / 1e6,
        "loop_lag_p99_ms": percentile(lag, 0.99) / 1e6,
        "ticks_over_20ms": sum(late > 20_000_000 for late in lag),
        "gc_pause_max_ms": pauses.longest / 1e6,
        "gc_full_collections": pauses.full,
        "outcomes": dict(outcomes),
    }


class _GcPauses:
    """The longest garbage collection, and how many full ones, from now until ``stop``.

    A collection stops the loop like any other work: with tens of thousands
    of tasks alive, a full one can take longer than the loop lag allowed, and
    the report shows how much of the lag it was.
    """

    def __init__(self) -> None:
        self.longest = 0
        self.full = 0
        self._began = 0
        gc.callbacks.append(self._note)

    def _note(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._began = now()
            return
        self.longest = max(self.longest, now() - self._began)
        self.full += info["generation"] == 2

    def stop(self) -> None:
        gc.callbacks.remove(self._note)


async def tasks_timing_out(side: AsyncSide, dsn: str, params: dict[str, Any]) -> list[Result]:
    """Part b for every task count and start: the pool's connections held meanwhile."""
    size = params["async_size"]
    await side.open(dsn, size)
    held = [await side.getconn(60) for _ in range(size)]
    try:
        return [
            await _tasks_timing_out(side, tasks, start, params)
            for tasks in params["tasks"]
            for start in params["starts"]
        ]
    finally:
        for conn in held:
            await side.putconn(conn)
        await side.close()


# -- part d: memory ----------------------------------------------------------------------------


def _traced() -> int:
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


def _median_growth(measure: Callable[[int], int], few: int, many: int, repeats: int) -> float:
    """Median over ``repeats`` of (measure(many) - measure(few)) / (many - few)."""
    return statistics.median((measure(many) - measure(few)) / (many - few) for _ in range(repeats))


def idle_slot_bytes(adapter_class: type[Adapter], dsn: str, params: dict[str, Any]) -> Result:
    """Bytes per idle connection: a pool of ``many`` idle connections against one of ``few``.

    Both are opened and filled while tracemalloc traces; the difference, per
    connection, is one idle slot: the driver's connection object and what the
    pool keeps for it. The driver's part alone is measured the same way on
    plain connections (kept in a list) and given beside it.
    """
    few, many = params["memory_slots"]
    repeats = params["memory_repeats"]
    driver = adapter_class.driver

    def pool_bytes(size: int) -> int:
        before = _traced()
        adapter = adapter_class()
        with opened(adapter, dsn, size, size):
            _prefill_and_settle(adapter, size)
            return _traced() - before

    def plain_bytes(size: int) -> int:
        before = _traced()
        conns: list[Any] = []
        for _ in range(size):
            if driver == "psycopg2":
                conns.append(psycopg2_connect(dsn))
            else:
                conns.append(counted_psycopg3_class().connect(dsn, autocommit=True))
        try:
            return _traced() - before
        finally:
            for conn in conns:
                conn.close()

    pool_bytes(few)  # imports and caches land outside the measurements
    plain_bytes(few)
    tracemalloc.start()
    try:
        per_slot = _median_growth(pool_bytes, few, many, repeats)
        per_conn = _median_growth(plain_bytes, few, many, repeats)
    finally:
        tracemalloc.stop()
    return {
        "idle_slot_bytes": per_slot,
        "driver_connection_bytes": per_conn,
        "pool_bytes_per_slot": per_slot - per_conn,
    }


def _prefill_and_settle(adapter: Adapter, size: int) -> None:
    """Every connection checked out and back once, so each slot is as it will stay."""
    held = [adapter.acquire() for _ in range(size)]
    for conn in held:
        adapter.release(conn)
    time.sleep(0.05)  # let a pool's background workers file what was returned


async def waiter_bytes(side: AsyncSide, dsn: str, params: dict[str, Any]) -> Result:
    """Bytes per asyncio task waiting in ``getconn``, and per task awaiting a bare future.

    ``memory_waiters`` tasks wait on the full pool while tracemalloc traces;
    the same number of tasks awaiting a fresh future each (a task and a
    coroutine frame: what waiting costs with no pool) are measured the same
    way. The difference is what the pool keeps per waiter. Each is the median
    of three rounds; after each round the tasks are cancelled, and what is
    still traced then, per task, is what the pool keeps of cancelled waiters.
    """
    count, size = params["memory_waiters"], params["async_size"]
    await side.open(dsn, size)
    held = [await side.getconn(60) for _ in range(size)]
    loop = asyncio.get_running_loop()

    async def parked() -> None:
        await loop.create_future()

    async def settle() -> None:
        for _ in range(3):
            await asyncio.sleep(0)

    async def per_task(
        make: Callable[[], Coroutine[Any, Any, Any]], tasks: int
    ) -> tuple[float, float]:
        """Bytes per task while they wait, and per task still held once they were cancelled."""
        before = _traced()
        spawned = [asyncio.create_task(make()) for _ in range(tasks)]
        await settle()  # each task has started and waits
        grown = _traced() - before
        for task in spawned:
            task.cancel()
        await asyncio.gather(*spawned, return_exceptions=True)
        del spawned
        await settle()  # the loop drops its last references to the tasks
        return grown / tasks, (_traced() - before) / tasks

    try:
        await per_task(lambda: side.getconn(600), 100)  # warm-up, untraced
        await per_task(parked, 100)
        tracemalloc.start()
        try:
            waiting = [await per_task(lambda: side.getconn(600), count) for _ in range(3)]
            bare = [await per_task(parked, count) for _ in range(3)]
        finally:
            tracemalloc.stop()
    finally:
        for conn in held:
            await side.putconn(conn)
        await side.close()
    waiting_bytes = statistics.median(grown for grown, _ in waiting)
    parked_bytes = statistics.median(grown for grown, _ in bare)
    return {
        "waiters": count,
        "waiting_task_bytes": waiting_bytes,
        "parked_task_bytes": parked_bytes,
        "pool_bytes_per_waiter": waiting_bytes - parked_bytes,
        # Still held, per task, after the waiting tasks were cancelled (median round).
        "kept_after_cancel_bytes": statistics.median(left for _, left in waiting),
    }


# -- the scenario ------------------------------------------------------------------------------

#: Pools left out of S7, and why (the rest: every thread-safe pool and ``bare-fifo``).
LEFT_OUT = {
    "no-pool": "a connection per thread: 2,000 server connections",
    "no-pool-8": "a connection per thread, 8 threads whatever the load",
    "no-pool-psycopg3": "a connection per thread",
    "connect-per-request": "a connection per request, 2,000 at a time",
    "psycopg2-pool-1.2": "does not enforce maxconn: far more than 8 connections",
    "psycopg2-pool-1.2+retry": "does not enforce maxconn: far more than 8 connections",
    "bare-fifo-handle": "bare-fifo is the floor here; S1-S4 show what the handle adds",
}


def applies(cls: type[Adapter]) -> bool:
    return cls.thread_safe and cls.key not in LEFT_OUT


def run(adapter: Adapter, params: dict[str, Any]) -> Result:
    """S7 for one pool: part a, then c, b and d where the pool has them."""
    dsn = params["dsn"]
    result: Result = {
        "driver_cpu_us": driver_cpu_us(adapter.driver, dsn, params["driver_seconds"]),
    }
    with opened(adapter, dsn, params["size"], params["size"]):
        opened_before = len(OPENED)
        result["threads"] = [threads_on_pool(adapter, n, params) for n in params["threads"]]
        result["connections_opened"] = len(OPENED) - opened_before
        if adapter.acquire_within is not None and not adapter.uses_with:
            result["timing_out"] = threads_timing_out(adapter, params)
    for row in result["threads"]:
        if row["cpu_us_per_op"] is not None:
            row["pool_cpu_us"] = row["cpu_us_per_op"] - result["driver_cpu_us"]
    side = ASYNC_SIDES.get(adapter.key)
    if side is not None:
        result["async_label"] = side.label
        result["tasks"] = asyncio.run(tasks_timing_out(side(), dsn, params))
        result["idle_slot"] = idle_slot_bytes(type(adapter), dsn, params)
        result["waiting"] = asyncio.run(waiter_bytes(side(), dsn, params))
    # For run.py's progress line.
    result["ops_per_s"] = result["threads"][-1]["ops_per_s"]
    result["errors"] = sum(row["errors"] for row in result["threads"])
    return result


def parameters(quick: bool) -> dict[str, Any]:
    return {
        "size": 8,
        "threads": [8, 64, 512, 2000],
        "warmup": 0.2,
        "warmup_max": 1.0 if quick else 1.5,
        "window_max": 1.2 if quick else 2.0,
        "window": 0.4 if quick else 1.0,
        "driver_seconds": 0.15 if quick else 0.3,
        "timeout": 1.0,
        "timeout_threads": 1000,
        "async_size": 2,
        "tasks": [1000, 10000] if quick else [1000, 10000, 30000],
        "starts": ["staggered", "burst"],
        "batch": 100,
        "tick": 0.005,
        "memory_slots": [2, 8],
        "memory_repeats": 1 if quick else 3,
        "memory_waiters": 1000 if quick else 2000,
    }
