"""The exceptions the pools raise.

``PoolError`` is psycopg2.pool's own class, so ``except psycopg2.pool.PoolError``
keeps catching everything this package raises for pool conditions.
"""

from __future__ import annotations

from psycopg2 import OperationalError
from psycopg2.pool import PoolError

__all__ = ["PoolClosed", "PoolError", "PoolTimeout", "TooManyRequests"]


class PoolTimeout(PoolError, OperationalError):
    """No connection became available within the timeout."""


class PoolClosed(PoolError, OperationalError):
    """The pool is closed: no connection can be had from it."""


class TooManyRequests(PoolError, OperationalError):
    """Too many clients are already waiting (``max_waiting``)."""


class PoolExhausted(PoolError, OperationalError):
    """All ``maxconn`` connections are out (psycopg2-pool 1.2 spelling).

    psycopg2-pool 1.2 users catch ``psycopg2.OperationalError``-like errors as
    well as ``PoolError``, so this is both.
    """


class ConnectionReturned(PoolError, ValueError):
    """A connection handle was used after it went back to the pool.

    Also a ``ValueError``, which psycopg_pool raises for a connection returned twice.
    """


class NotFromThisPool(PoolError, ValueError):
    """``putconn()`` of a connection the pool did not hand out (or of ``None``).

    Also a ``ValueError``, which psycopg_pool raises in this case.
    """
