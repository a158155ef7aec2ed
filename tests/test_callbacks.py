"""The configure, check and reset callbacks of the psycopg_pool-style pools.

What a callback gets (a handle alive while it runs), and what happens to a
check that the client's deadline cuts short.
"""

from __future__ import annotations

import asyncio
import gc
import warnings
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest

from psycopg2_pool import AsyncConnectionPool, PoolError, PoolTimeout

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


@pytest.mark.filterwarnings("error::RuntimeWarning")
@pytest.mark.parametrize("timeout", [0.0, 1e-6, 1e-4, 1e-3, 0.05])
def test_async_check_running_at_the_deadline_leaves_no_coroutine_unawaited(dsn, timeout):
    async def check(conn: Any) -> None:
        await asyncio.sleep(1)

    async def main() -> None:
        async with AsyncConnectionPool(dsn, min_size=1, check=check, open=False) as pool:
            await pool.wait(5)
            for _ in range(5):
                with pytest.raises(PoolTimeout):
                    await pool.getconn(timeout=timeout)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run(main())
        gc.collect()
    unawaited = [str(w.message) for w in caught if "never awaited" in str(w.message)]
    assert not unawaited


@pytest.mark.parametrize("role", ["configure", "check", "reset"])
def test_async_callback_connection_is_dead_once_the_callback_returned(dsn, role):
    kept: list[Any] = []

    async def callback(conn: Any) -> None:
        kept.append(conn)

    async def main() -> None:
        pool = AsyncConnectionPool(dsn, min_size=1, open=False, **{role: callback})
        async with pool, pool.connection():
            pass

    run(main())
    assert kept
    with pytest.raises(PoolError, match="returned to the pool"):
        kept[0].cursor()
