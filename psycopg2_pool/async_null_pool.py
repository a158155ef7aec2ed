"""AsyncNullConnectionPool: psycopg_pool's pool that keeps no connection idle, for asyncio.

:class:`~psycopg2_pool.null_policy.NullPolicy`'s rules on
:class:`~psycopg2_pool.AsyncConnectionPool`, as :class:`~psycopg2_pool.NullConnectionPool`
has them on :class:`~psycopg2_pool.ConnectionPool`.
"""

from __future__ import annotations

import asyncio
import logging
from time import monotonic
from typing import Any

from .async_pool import AsyncConnectionPool, AsyncConninfoParam
from .errors import PoolTimeout
from .null_policy import NullPolicy
from .workers import Backoff

__all__ = ["AsyncNullConnectionPool"]

logger = logging.getLogger("psycopg2_pool")


class AsyncNullConnectionPool(NullPolicy, AsyncConnectionPool):
    """An asyncio pool that opens a connection per checkout and closes it on return.

    :class:`~psycopg2_pool.NullConnectionPool`'s policies on the async pool.
    """

    def __init__(
        self, conninfo: AsyncConninfoParam = "", *, min_size: int = 0, **kwargs: Any
    ) -> None:
        kwargs["close_returns"] = False  # giving back closes already
        super().__init__(conninfo, min_size=min_size, **kwargs)

    async def wait(self, timeout: float = 30.0) -> None:
        """Check that a connection can be made, trying for up to ``timeout`` seconds.

        Failed attempts are logged and retried with exponential backoff, each
        bounded by the time left; the connection made is closed at once. At
        the deadline close the pool and raise :class:`PoolTimeout`.
        """
        if self._open_implicit:
            self._warn_implicit_open()
        with self._mutex:
            if self.closed:
                raise self._closed_error()
        logger.info("waiting for pool %r initialization", self.name)
        deadline = monotonic() + timeout
        backoff = Backoff(timeout)
        error: Exception | None = None
        while (left := deadline - monotonic()) > 0:
            try:
                conn = await self._new_connection_async(connect_timeout=left)
            except Exception as exc:
                error = exc
                logger.warning("error connecting in %r: %s", self.name, self._masked(exc))
            else:
                self._drop(conn)
                logger.info("pool %r is ready to use", self.name)
                return
            delay = backoff.next_delay(monotonic())
            if delay is None:
                break
            await asyncio.sleep(min(delay, deadline - monotonic()))
            with self._mutex:
                if self.closed:
                    raise self._closed_error()
        await self.close()
        raise PoolTimeout(
            f"pool {self.name!r} initialization incomplete after {timeout} sec"
        ) from error

    async def check(self) -> None:
        """Nothing to check: the pool holds no idle connection."""

    async def resize(self, min_size: int, max_size: int | None = None) -> None:
        """Change ``max_size``; ``min_size`` must stay 0."""
        self._resize(min_size, max_size)
