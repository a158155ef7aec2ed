"""Zope-era code: one PersistentConnectionPool per DSN, threads handling requests.

::

    python examples/zope_style.py [DSN]

``PersistentConnectionPool`` (gone from psycopg2 since 2.8, kept here with its
2.7 behaviour) gives each thread its own connection and hands the same one
back for as long as the thread keeps it, as Zope's database adapters expected.
The example keeps one pool per DSN, as an adapter did per connection string,
and lets a few worker threads handle "requests" against two of them. Without
a DSN (argument or ``$PSYCOPG2_POOL_DSN``) a throwaway embedded PostgreSQL is
started.
"""

from __future__ import annotations

import contextlib
import queue
import sys
import threading
import warnings
from collections.abc import Iterator

from psycopg2.extensions import make_dsn

from psycopg2_pool import PersistentConnectionPool
from psycopg2_pool._embedded import dsn_or_server


@contextlib.contextmanager
def server_dsn(dsn: str | None) -> Iterator[str]:
    """The DSN given (argument or environment), or an embedded server's."""
    with dsn_or_server(dsn) as target:
        print(f"using server: {target.description}", flush=True)
        yield target.dsn


_pools: dict[str, PersistentConnectionPool] = {}
_pools_lock = threading.Lock()


def get_pool(dsn: str) -> PersistentConnectionPool:
    """The pool of ``dsn``, made on first use (one per DSN, as a Zope adapter had)."""
    with _pools_lock:
        pool = _pools.get(dsn)
        if pool is None:
            with warnings.catch_warnings():
                # "deprecated: use ZPsycopgDA.pool implementation": we know.
                warnings.simplefilter("ignore", DeprecationWarning)
                pool = _pools[dsn] = PersistentConnectionPool(1, 4, dsn)
        return pool


def handle(database: str, request: int) -> tuple[int, int]:
    """One "request": work in the thread's own connection, then commit."""
    conn = get_pool(database).getconn()  # the same connection on every call in this thread
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_backend_pid()")
            (pid,) = cur.fetchone()
        conn.commit()
    except Exception:
        conn.rollback()
        raise
    return request, pid


def worker(
    requests: queue.Queue[tuple[str, int] | None], seen: dict[str, set[tuple[str, int]]]
) -> None:
    name = threading.current_thread().name
    databases = set()
    try:
        while True:
            item = requests.get()
            if item is None:
                return
            database, number = item
            databases.add(database)
            _, pid = handle(database, number)
            seen.setdefault(name, set()).add((database, pid))
    finally:
        # At the end of its life a thread gives its connections back.
        for database in databases:
            get_pool(database).putconn()


def main(argv: list[str]) -> int:
    with server_dsn(argv[0] if argv else None) as dsn:
        # Two "databases": the same server under two application names.
        databases = [make_dsn(dsn, application_name=f"zope-{n}") for n in ("main", "catalog")]
        requests: queue.Queue[tuple[str, int] | None] = queue.Queue()
        for number in range(24):
            requests.put((databases[number % 2], number))
        seen: dict[str, set[tuple[str, int]]] = {}
        threads = [
            threading.Thread(target=worker, args=(requests, seen), name=f"worker-{i}")
            for i in range(3)
        ]
        for _ in threads:
            requests.put(None)
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for name in sorted(seen):
            pids = sorted(pid for _, pid in seen[name])
            print(f"{name}: backends {pids}")
        kept = all(
            len({pid for db, pid in pairs if db == database}) <= 1
            for pairs in seen.values()
            for database in databases
        )
        print(f"each thread kept one connection per database: {'yes' if kept else 'NO'}")
        for database in databases:
            _pools.pop(database).closeall()
        print("all requests handled")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
