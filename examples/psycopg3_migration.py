"""The same pool code on psycopg2_pool, then on psycopg_pool (psycopg 3).

::

    python examples/psycopg3_migration.py [DSN]

Code written for psycopg_pool 3.3 runs on psycopg2 by changing one import:
``from psycopg_pool import ConnectionPool`` becomes ``from psycopg2_pool
import ConnectionPool``. Here the pool module is a parameter of ``run()``, so
the very same function runs on both (psycopg_pool only if it is installed).
Without a DSN (argument or ``$PSYCOPG2_POOL_DSN``) a throwaway embedded
PostgreSQL is started.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
import threading
from collections.abc import Iterator
from types import ModuleType

from psycopg2_pool._embedded import dsn_or_server


@contextlib.contextmanager
def server_dsn(dsn: str | None) -> Iterator[str]:
    """The DSN given (argument or environment), or an embedded server's."""
    with dsn_or_server(dsn) as target:
        print(f"using server: {target.description}", flush=True)
        yield target.dsn


def run(pool_module: ModuleType, conninfo: str) -> str:
    """psycopg_pool-style code; only ``pool_module`` says which library runs it."""
    table = f"migration_{pool_module.__name__}"
    with pool_module.ConnectionPool(
        conninfo,
        min_size=1,
        max_size=4,
        timeout=10,
        check=pool_module.ConnectionPool.check_connection,
        name=pool_module.__name__,
        open=True,
    ) as pool:
        pool.wait()
        with pool.connection() as conn:
            conn.execute(f"DROP TABLE IF EXISTS {table}")
            conn.execute(f"CREATE TABLE {table} (n int, thread text)")

        def work(n: int) -> None:
            # Leaving the block commits and gives the connection back.
            with pool.connection() as conn:
                conn.execute(f"INSERT INTO {table} VALUES (%s, %s)", (n, f"t{n}"))

        threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

        try:
            with pool.connection() as conn:
                conn.execute(f"INSERT INTO {table} VALUES (%s, %s)", (99, "rolled back"))
                raise RuntimeError("an error rolls the block back")
        except RuntimeError:
            pass

        with pool.connection() as conn:
            count, total = conn.execute(f"SELECT count(*), sum(n) FROM {table}").fetchone()
            conn.execute(f"DROP TABLE {table}")
        stats = pool.get_stats()
    return (
        f"{pool_module.__name__}: {count} rows, sum {total};"
        f" requests_num={stats['requests_num']} pool_max={stats['pool_max']}"
    )


def main(argv: list[str]) -> int:
    with server_dsn(argv[0] if argv else None) as dsn:
        import psycopg2_pool

        print(run(psycopg2_pool, dsn), flush=True)
        try:
            psycopg_pool = importlib.import_module("psycopg_pool")
        except ImportError:
            print("psycopg_pool: not installed, skipped (pip install psycopg-pool psycopg[binary])")
        else:
            print(run(psycopg_pool, dsn), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
