"""PoolCore: the state every psycopg_pool-style pool keeps, on the engine.

The settings a pool was made with, its counters, its workers, the one
:class:`~psycopg2_pool.slot.Slot` per connection, and the few decisions every
layer above needs: where a returned connection goes (the engine's
``_release``: to the longest waiting client, else among the idle ones),
closing a connection, and the errors a client gets. The layers above add one
concern each: :mod:`.connecting`, :mod:`.health`, :mod:`.upkeep`, then
:mod:`.base`, which the sync and asyncio pools share.
"""

from __future__ import annotations

import itertools
import logging
import math
import threading
import warnings
from collections import Counter, deque
from collections.abc import Callable
from typing import Any, NoReturn, Union

import psycopg2
from psycopg2 import extensions as _ext

from . import stats as S
from ._connect_options import split_options
from ._masking import mask_text, secrets_in
from .decisions import Connection, Request, status_name
from .engine import AbstractConnectionPool
from .errors import PoolClosed, PoolError, PoolTimeout
from .hosts import HostOrder
from .roles import asks_for_a_role
from .slot import Slot
from .workers import Workers
from .wrapper import lend

__all__ = ["ConnectionCB", "ConninfoParam", "KwargsParam", "PoolCore", "ensure_idle"]

logger = logging.getLogger("psycopg2_pool")

ConnectionCB = Callable[[Any], None]
ConninfoParam = Union[str, Callable[[], str]]
KwargsParam = Union[dict[str, Any], Callable[[], dict[str, Any]]]

_IDLE = _ext.TRANSACTION_STATUS_IDLE
_READY = _ext.STATUS_READY
_names = itertools.count(1)


def ensure_idle(conn: Connection, role: str, function: Any) -> None:
    """Raise if a callback left ``conn`` inside a transaction."""
    status = conn.get_transaction_status()
    if status != _IDLE or conn.status != _READY:
        raise psycopg2.ProgrammingError(
            f"connection left in status {status_name(status)}"
            f" by {role} function {function!r}: discarded"
        )


def check_int(name: str, value: Any, minimum: int) -> int:
    """``value``, if it is an integer of at least ``minimum``; raise otherwise."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")
    return value


def check_seconds(name: str, value: Any, *, positive: bool = False) -> float:
    """``value`` as seconds, if it is a number in range; raise otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise TypeError(f"{name} must be a number of seconds, got {value!r}")
    if value < 0 or (positive and value == 0):
        raise ValueError(f"{name} must be {'positive' if positive else 'zero or more'}: {value}")
    return float(value)


class PoolCore(AbstractConnectionPool):
    """The shared state of the psycopg_pool-style pools (see the module's docstring)."""

    _keep_all = True
    _fresh_keys = True
    #: Idle connections. Clients take the last one, as from the engine's list,
    #: but returned ones go in at the front: the last is the one idle longest,
    #: so every connection is used in turn and kept warm, as in psycopg_pool.
    _pool: deque[Connection]
    #: Hand out the most recently returned connection first instead (LIFO).
    _newest_first = False
    #: A client that finds the pool at ``max_size`` with others already in
    #: line just joins the line (growth and the dropped-handle scan were
    #: decided by the first).
    _queue_when_full = True
    _handle_class: Any

    def __init__(
        self,
        conninfo: Any,
        *,
        connection_class: type[Connection],
        kwargs: Any,
        min_size: int,
        max_size: int | None,
        configure: Any,
        check: Any,
        reset: Any,
        name: str | None,
        close_returns: bool,
        timeout: float,
        max_waiting: int,
        max_lifetime: float,
        max_idle: float,
        reconnect_timeout: float,
        reconnect_failed: Callable[[Any], Any] | None,
        num_workers: int,
        leak_timeout: float | None,
        connect_kwargs: dict[str, Any],
    ) -> None:
        min_size, max_size = self._check_size(min_size, max_size)
        self._setup(min_size, max_size, (), {})
        self._pool = deque()
        # Keep a connection idle: bound once, this is the hot path. The deque
        # is never replaced, only emptied and refilled.
        self._keep_idle = self._pool.append if self._newest_first else self._pool.appendleft
        # The fewest idle connections since the last shrink (see _shrink).
        self._idle_low = min_size
        self.closed = True
        self._opened = False
        self._open_implicit = False

        self.conninfo = conninfo
        self.kwargs = kwargs
        self._connect_kwargs = connect_kwargs
        if not callable(kwargs):
            # psycopg 3 options psycopg2 cannot honour fail here, not in a worker.
            split_options({**connect_kwargs, **(kwargs or {})})
        self.connection_class = connection_class
        self._configure = configure
        self._check = check
        self._reset = reset
        self._reconnect_failed = reconnect_failed
        self.name = name if name else f"pool-{next(_names)}"
        self.close_returns = bool(close_returns)
        self.timeout = check_seconds("timeout", timeout)
        self.max_waiting = check_int("max_waiting", max_waiting, 0)
        self.max_lifetime = check_seconds("max_lifetime", max_lifetime, positive=True)
        self.max_idle = check_seconds("max_idle", max_idle, positive=True)
        self.reconnect_timeout = check_seconds("reconnect_timeout", reconnect_timeout)
        self.num_workers = check_int("num_workers", num_workers, 1)
        self.leak_timeout = (
            None if leak_timeout is None else check_seconds("leak_timeout", leak_timeout)
        )

        # A reset callback must run on every return: no fast path then.
        self._always_settle = reset is not None
        self._stats: Counter[str] = Counter()
        self._requests = 0  # requests_num, kept apart: it is counted on the hot path
        # requests_wait_ms and usage_ms, summed in seconds: rounding each wait
        # down to whole milliseconds would report waits under 1 ms as none.
        self._wait_seconds = 0.0
        self._usage_seconds = 0.0
        self._handle_class = self._make_handle_class()
        self._new_handle = self._handle_class.__new__
        self._wrap_at_birth = False
        #: id(connection) -> its slot, for every connection the pool opened
        #: and has not closed yet.
        self._slots: dict[int, Slot] = {}
        self._growing = False
        self._connect_time = 0.0  # seconds a connection takes to open, on average
        self._filled = self._make_filled()
        self._workers: Workers | None = None
        self._secrets = self._find_secrets()
        # Connections last verified before this may be dead: the pool saw one die.
        self._suspect_before = 0.0
        # Connections may have a role to keep (target_session_attrs): tested
        # at checkout and return. Decided once: other pools pay nothing for it.
        self._roles = asks_for_a_role(conninfo, kwargs, connect_kwargs)
        # Which of several hosts to try first: the ones that failed lately last.
        self._hosts = HostOrder()
        self._update_plain_checkout()

    def _make_handle_class(self) -> Any:
        """The class of the handles this pool hands out (one class per pool)."""
        raise NotImplementedError

    def _make_filled(self) -> threading.Condition:
        """The condition notified when a connection is added (or the pool closes)."""
        return threading.Condition(self._mutex)

    @property
    def min_size(self) -> int:
        """The number of connections the pool keeps open even when idle."""
        return int(self.minconn)

    @property
    def max_size(self) -> Any:
        """The most connections the pool opens at once."""
        return self.maxconn

    def __repr__(self) -> str:
        return f"<{type(self).__module__}.{type(self).__name__} {self.name!r} at 0x{id(self):x}>"

    def _find_secrets(self) -> tuple[str, ...]:
        sources = [self._connect_kwargs, self.conninfo, self.kwargs]
        return secrets_in(source for source in sources if not callable(source))

    def _masked(self, error: BaseException) -> str:
        return mask_text(str(error), self._secrets)

    @staticmethod
    def _check_size(min_size: Any, max_size: Any) -> tuple[int, int]:
        check_int("min_size", min_size, 0)
        if max_size is None:
            max_size = min_size
        check_int("max_size", max_size, 0)
        if max_size < min_size:
            raise ValueError(
                f"max_size must be greater or equal than min_size: {max_size} < {min_size}"
            )
        if min_size == max_size == 0:
            raise ValueError("if min_size is 0 max_size must be greater than 0")
        return min_size, max_size

    def __del__(self) -> None:
        # Dropped without close(): the workers hold the pool weakly (see
        # WeakCall), so it gets here. Its idle connections close as they are
        # freed with it; its threads are told to end, and nothing waits here.
        workers = getattr(self, "_workers", None)
        if workers is not None and not getattr(self, "closed", True):
            workers.signal_stop()

    def _refuse(self) -> NoReturn:
        self._requests += 1  # psycopg_pool counts refused requests too
        raise self._closed_error()

    def _closed_error(self) -> PoolError:
        if self._opened:
            return PoolClosed(f"the pool {self.name!r} is already closed")
        return PoolClosed(f"the pool {self.name!r} is not open yet")

    def _update_plain_checkout(self) -> None:
        # One flag for getconn(): anything to do beyond handing the connection over?
        self._plain_checkout = not (
            self._open_implicit
            or self._check
            or self.leak_timeout is not None
            or self._suspect_before
            or self._roles
        )

    def _warn_implicit_open(self) -> None:
        self._open_implicit = False
        self._update_plain_checkout()
        warnings.warn(
            f"the default for the {type(self).__name__} 'open' parameter will become"
            " 'False' in a future release. Please use open={True|False} explicitly,"
            f" or use the pool as context manager using: `with {type(self).__name__}(...)"
            " as pool: ...`",
            DeprecationWarning,
            stacklevel=3,
        )

    def _note_wait(self, waiter: Request, seconds: float) -> None:
        self._wait_seconds += seconds

    def _timeout_error(self, waiter: Request | None, timeout: float | None) -> PoolError:
        self._stats[S.REQUESTS_ERRORS] += 1
        return PoolTimeout(f"couldn't get a connection from {self.name!r} after {timeout:.2f} sec")

    def _restore(self, conn: Connection) -> bool:
        if conn.closed:
            return False
        status = conn.get_transaction_status()
        if status != _IDLE and status != _ext.TRANSACTION_STATUS_UNKNOWN:
            logger.warning("rolling back returned connection (%s): %r", status_name(status), conn)
        if not super()._restore(conn):
            return False
        if self._reset is not None:
            try:
                lend(self._reset, conn)
                ensure_idle(conn, "reset", self._reset)
            except Exception as exc:
                logger.warning("error resetting connection: %s", self._masked(exc))
                return False
        return True

    def _drop(self, conn: Connection) -> None:
        self._slots.pop(id(conn), None)
        self._close_quietly(conn)

    def _forget_connection(self, conn: Connection) -> None:
        """Under the lock: stop tracking ``conn``, whichever key holds it."""
        key = self._rused.get(id(conn))
        if key is not None:
            self._forget(key)

    def get_stats(self) -> dict[str, int]:
        """Counters since the last :meth:`pop_stats`, and the pool's current sizes."""
        with self._mutex:
            return self._measures(
                dict(self._stats), self._requests, self._wait_seconds, self._usage_seconds
            )

    def pop_stats(self) -> dict[str, int]:
        """Like :meth:`get_stats`, then reset the counters to zero."""
        with self._mutex:
            counters, self._stats = self._stats, Counter()
            requests, self._requests = self._requests, 0
            wait, self._wait_seconds = self._wait_seconds, 0.0
            usage, self._usage_seconds = self._usage_seconds, 0.0
            return self._measures(dict(counters), requests, wait, usage)

    def _measures(
        self, stats: dict[str, int], requests: int, wait: float, usage: float
    ) -> dict[str, int]:
        if requests:
            stats[S.REQUESTS_NUM] = requests
        if wait:
            stats[S.REQUESTS_WAIT_MS] = int(1000.0 * wait)
        if usage:
            stats[S.USAGE_MS] = int(1000.0 * usage)
        stats[S.POOL_MIN] = self.min_size
        stats[S.POOL_MAX] = self.maxconn if math.isfinite(self.maxconn) else 0
        stats[S.POOL_SIZE] = self._size()
        stats[S.POOL_AVAILABLE] = len(self._pool)
        stats[S.REQUESTS_WAITING] = len(self._waiters)
        return stats
