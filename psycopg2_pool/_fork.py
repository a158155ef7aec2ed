"""Keeping pools safe across ``os.fork()``: a child never uses its parent's connections.

psycopg2 sends a Terminate message when it closes a connection, even one it
inherited, which would end the parent's session: in the child every inherited
connection is first pointed at /dev/null, then forgotten.
"""

from __future__ import annotations

import logging
import os
import weakref
from typing import Any, Protocol

logger = logging.getLogger("psycopg2_pool")


class _ForkAware(Protocol):
    def _after_fork(self) -> None: ...


_pools: weakref.WeakSet[Any] = weakref.WeakSet()


def track(pool: _ForkAware) -> None:
    """Reset ``pool`` in every child process forked from now on."""
    _pools.add(pool)


def disarm(conn: Any) -> None:
    """Make an inherited connection harmless: its socket becomes /dev/null here."""
    try:
        fd = conn.fileno()
    except Exception:  # closed already: nothing to protect
        return
    devnull = os.open(os.devnull, os.O_RDWR)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


def _after_fork_in_child() -> None:
    for pool in list(_pools):
        try:
            pool._after_fork()
        except Exception:  # one pool must not stop the others being reset
            logger.exception("resetting %r after fork failed", pool)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
