"""Connection pools for psycopg2.

Drop-in for psycopg2.pool, for psycopg2-pool 1.2, and psycopg_pool 3.3-style
pools running on psycopg2.
"""

try:
    import psycopg2  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "psycopg2_pool needs psycopg2: install it with 'pip install psycopg2' "
        "(builds against your libpq) or 'pip install psycopg2-binary' (prebuilt; "
        "the 'binary' extra of psycopg2_pool)"
    ) from exc

from . import _psycopg2_compat
from .async_connection import AsyncModeNotSupported
from .async_null_pool import AsyncNullConnectionPool
from .async_pool import AsyncConnectionPool
from .engine import AbstractConnectionPool
from .errors import PoolClosed, PoolError, PoolTimeout, TooManyRequests
from .legacy import PersistentConnectionPool, SimpleConnectionPool, ThreadedConnectionPool
from .null_pool import NullConnectionPool
from .pool import ConnectionPool
from .pool12 import ThreadSafeConnectionPool
from .wrapper import PooledConnection

_psycopg2_compat.install()

__all__ = [
    "AbstractConnectionPool",
    "AsyncConnectionPool",
    "AsyncModeNotSupported",
    "AsyncNullConnectionPool",
    "ConnectionPool",
    "NullConnectionPool",
    "PersistentConnectionPool",
    "PoolClosed",
    "PoolError",
    "PoolTimeout",
    "PooledConnection",
    "SimpleConnectionPool",
    "ThreadSafeConnectionPool",
    "ThreadedConnectionPool",
    "TooManyRequests",
]

# A plain literal: setup.cfg reads it as the distribution's version.
__version__ = "2.0.0"
