"""Upkeep: what the pool does on its own, on a timer.

The sweep (every second at most) closes expired idle connections, takes back
connections whose handle was dropped without being returned, looks for idle
connections whose server end closed and reports leaks; the shrink (every
``max_idle``) closes one connection the last period did not need.
"""

from __future__ import annotations

import logging
import warnings
from time import monotonic
from typing import Any, cast

from .decisions import Connection, held_only_by, unreferenced_keys
from .health import Health
from .slot import Slot
from .wrapper import RETURNED

__all__ = ["Upkeep"]

logger = logging.getLogger("psycopg2_pool")


class Upkeep(Health):
    """The pool's periodic tasks (see the module's docstring)."""

    def _sweep_interval(self) -> float:
        period = min(self.max_idle, self.max_lifetime) / 4
        if self.leak_timeout is not None:
            period = min(period, self.leak_timeout / 2)
        # At least every second: the sweep also spots idle connections whose
        # server went away (one select() call), so that the pool refills soon.
        return min(max(period, 0.02), 1.0)

    def _sweep(self) -> None:
        """Periodic task: close expired idle connections, find dead and leaked ones."""
        now = monotonic()
        closing = []
        with self._mutex:
            if self.closed or self._workers is None:
                return
            size = self._size()
            keep = []
            # Left to right: in a pool that reuses the newest first, the
            # connection that idled longest comes first (see _idled_out).
            for conn in self._pool:
                life = self._slots.get(id(conn))
                if life is None or life.expires <= now or self._idled_out(life, now, size):
                    closing.append(conn)
                    size -= 1
                else:
                    keep.append(conn)
            if closing:
                # In place: _keep_idle is bound to this deque.
                self._pool.clear()
                self._pool.extend(keep)
            dropped = self._take_dropped_handles()
            self._pending += len(dropped)  # until _settle has restored each
            if self._suspect_before and all(
                life.verified >= self._suspect_before for life in self._slots.values()
            ):
                self._suspect_before = 0.0
                self._update_plain_checkout()
            self._workers.schedule(self._sweep_interval(), self._sweep)
        if closing:
            logger.info("closing %s idle or expired connections in %r", len(closing), self.name)
        for conn in closing:
            self._drop(conn)
        for _ in closing:
            self._replace()
        self._settle_dropped(dropped)
        self._probe_idle()
        if self.leak_timeout is not None:
            self._report_leaks(now)

    def _idled_out(self, life: Slot, now: float, size: int) -> bool:
        """Under the lock: close this idle connection for having idled too long?

        Not here: connections used in turn are never idle for long, and
        :meth:`_shrink` takes the surplus away one at a time instead.
        """
        return False

    def _shrink(self) -> None:
        """Periodic task, every ``max_idle``: close one connection if one was not needed.

        If idle connections were left over at every moment of the last period
        (the fewest seen stayed above zero) and the pool is above ``min_size``,
        close the one idle longest. One per period, as psycopg_pool does, so a
        pool shrinks gradually after a peak or a :meth:`resize` down.
        """
        surplus = None
        with self._mutex:
            if self.closed or self._workers is None:
                return
            fewest = self._idle_low
            if fewest > 0 and self._pool and self._size() > self.minconn:
                surplus = self._pool.pop()
                size = self._size()
            # A new period starts: getconn() lowers this as it takes connections.
            self._idle_low = len(self._pool)
            self._workers.schedule(self.max_idle, self._shrink)
        if surplus is not None:
            logger.info(
                "pool %r: at least %s connections stayed idle for %s sec; closing one, %s left",
                self.name,
                fewest,
                self.max_idle,
                size,
            )
            self._drop(surplus)

    def _reclaim_dropped(self) -> None:
        """Under the lock, as the first client starts waiting on a full pool:
        take back the connections whose handle was dropped.

        Only for the first in line: the scan costs a pass over every checkout,
        too much to pay on each request of a pool that is busy for long; the
        sweep (where there is one) looks again within a second.
        """
        if self._workers is None:
            return
        dropped = self._take_dropped_handles()
        if dropped:
            self._spawn(len(dropped), self._settle_dropped, dropped)

    def _settle_dropped(self, conns: list[Connection]) -> None:
        for conn in conns:
            warnings.warn(
                f"a connection of pool {self.name!r} was dropped without being returned:"
                " it was rolled back and taken back",
                ResourceWarning,
                stacklevel=1,
            )
            self._settle(conn, close=False)

    def _take_dropped_handles(self) -> list[Connection]:
        """Under the lock: connections whose handle nothing references any more.

        They are no longer checked out; the caller counts them in ``_pending``
        until :meth:`_settle_dropped` has restored them.
        """
        dropped = []
        empty = []
        for handle in unreferenced_keys(self._used, on_key=True):
            try:
                cast(Any, handle).__wrapped__  # noqa: B018
            except (AttributeError, ValueError):  # wrapt's word for "not set yet"
                empty.append(handle)
            else:
                dropped.append(handle)
        # A handle not handed over yet is normal while getconn() is between the
        # engine and the client (which then holds the connection); one whose
        # connection nothing holds either belongs to a checkout interrupted
        # there (Ctrl-C), and nobody will ever take it.
        dropped += held_only_by(self._used, empty)
        conns = []
        for handle in dropped:
            conn = self._forget(handle)
            cast(Any, handle).__wrapped__ = RETURNED
            if conn is not None:
                slot = self._slots.get(id(conn))
                if slot is not None:
                    slot.checked_in()
                conns.append(conn)
        return conns

    def _report_leaks(self, now: float) -> None:
        """Log, once each, connections checked out for longer than ``leak_timeout``."""
        assert self.leak_timeout is not None
        for slot in list(self._slots.values()):
            stack = slot.stack
            if stack is None or slot.leak_reported:
                continue
            since = slot.checked_out_at
            if now - since >= self.leak_timeout:
                slot.leak_reported = True
                logger.warning(
                    "a connection of pool %r has been checked out for %.1f sec"
                    " (leak_timeout=%s); it was checked out at:\n%s",
                    self.name,
                    now - since,
                    self.leak_timeout,
                    "".join(stack),
                )
