"""Facts about the psycopg2_pool.django backend, gathered inside one Django process.

``python -m tests.django_probes`` with ``$PSYCOPG2_POOL_DSN`` (a database the
caller made) and ``$P2P_APP`` (an application_name prefix): configures Django
with a few database aliases, runs every probe and prints one JSON object,
probe name -> {"result": ...} or {"error": "ExceptionClass: message"}.
tests/test_django.py asserts on it; a probe only reports, never asserts.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import traceback
from typing import Any, Callable

import django
from django.conf import settings
from psycopg2.extensions import parse_dsn

PROBES: dict[str, Callable[[], Any]] = {}
APP = os.environ.get("P2P_APP", "p2p-django-probe")
RESETS: list[str] = []


def probe(function: Callable[[], Any]) -> Callable[[], Any]:
    PROBES[function.__name__] = function
    return function


def user_reset(conn: Any) -> None:
    """A reset of the user's that throws away every session setting."""
    RESETS.append(type(conn).__name__)
    with conn.cursor() as cur:
        cur.execute("RESET ALL")


def database(alias: str, **options: Any) -> dict[str, Any]:
    server = parse_dsn(os.environ["PSYCOPG2_POOL_DSN"])
    max_age = options.pop("CONN_MAX_AGE", 0)
    return {
        "ENGINE": "psycopg2_pool.django",
        "NAME": server.pop("dbname"),
        "USER": server.pop("user", ""),
        "PASSWORD": server.pop("password", ""),
        "HOST": server.pop("host", ""),
        "PORT": server.pop("port", ""),
        "CONN_MAX_AGE": max_age,
        "OPTIONS": {**server, "application_name": f"{APP}-{alias}", **options},
    }


def configure() -> None:
    small = {"min_size": 1, "max_size": 2, "timeout": 10}
    settings.configure(
        INSTALLED_APPS=["psycopg2_pool.django"],
        USE_TZ=True,
        TIME_ZONE="Europe/Paris",
        DATABASES={
            "default": database("default", pool=small),
            "other": database("other", pool=small),
            "defaults": database("defaults", pool=True),
            "persistent": database("persistent", pool=small, CONN_MAX_AGE=60),
            "isolated": database("isolated", pool=small, isolation_level=3),
            "bad_isolation": database("bad_isolation", pool=small, isolation_level=42),
            # One connection: the second checkout must get the one the reset ran on.
            "with_reset": database(
                "with_reset", pool={**small, "max_size": 1, "reset": user_reset}
            ),
            "opens_itself": database("opens_itself", pool={**small, "open": True}),
            "abandoned": database("abandoned", pool={"min_size": 1, "max_size": 1, "timeout": 5}),
            "role": database("role", pool=small, assume_role="pg_monitor"),
            "health_checked": {
                **database("health_checked", pool=small),
                "CONN_HEALTH_CHECKS": True,
            },
            "unpooled": database("unpooled"),
        },
    )
    django.setup()


def server_backends(alias: str) -> int:
    """How many server connections the alias's application_name has now."""
    from django.db import connections

    with connections["unpooled"].cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
            [f"{APP}-{alias}"],
        )
        count: int = cursor.fetchone()[0]
    return count


@probe
def pooled_handle() -> dict[str, Any]:
    import psycopg2.extensions
    from django.db import connection

    from psycopg2_pool import ConnectionPool, PooledConnection

    connection.ensure_connection()
    try:
        return {
            "pool_is_connection_pool": isinstance(connection.pool, ConnectionPool),
            "pool_name": connection.pool.name,
            "is_pooled_handle": isinstance(connection.connection, PooledConnection),
            "is_psycopg2_connection": isinstance(
                connection.connection, psycopg2.extensions.connection
            ),
            "driver": connection.Database.__name__,
        }
    finally:
        connection.close()


@probe
def pool_true_takes_the_pool_defaults() -> dict[str, Any]:
    from django.db import connections

    pool = connections["defaults"].pool
    return {"min_size": pool.min_size, "max_size": pool.max_size, "timeout": pool.timeout}


@probe
def pool_opens_on_first_connection() -> dict[str, Any]:
    from django.db import connections

    lazy = connections["defaults"]
    before = {"closed": lazy.pool.closed, "backends": server_backends("defaults")}
    lazy.ensure_connection()
    after = {"closed": lazy.pool.closed}
    lazy.close()
    lazy.close_pool()
    return {"before": before, "after": after}


@probe
def one_pool_per_alias_and_process() -> dict[str, Any]:
    from django.db import connections

    seen: list[int] = []

    def use() -> None:
        conn = connections["default"]
        conn.ensure_connection()
        seen.append(id(conn.pool))
        conn.close()

    threads = [threading.Thread(target=use) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {
        "threads": len(seen),
        "distinct_pools": len(set(seen)),
        "other_alias_has_its_own": connections["other"].pool is not connections["default"].pool,
    }


@probe
def close_gives_the_connection_back() -> dict[str, Any]:
    from django.db import connections

    from psycopg2_pool import PoolError

    conn = connections["other"]
    conn.ensure_connection()
    handle = conn.connection
    conn.close()
    try:
        handle.cursor()
    except PoolError as exc:
        returned = str(exc)
    else:
        returned = "the handle still works"
    return {"connection": repr(conn.connection), "handle": returned}


@probe
def close_pool_closes_its_connections() -> dict[str, Any]:
    from django.db import connections

    conn = connections["other"]
    conn.ensure_connection()
    first = conn.pool
    conn.close()
    before = server_backends("other")
    conn.close_pool()
    # A server process leaves pg_stat_activity a moment after its client hung up.
    deadline = time.monotonic() + 5
    while (after := server_backends("other")) and time.monotonic() < deadline:
        time.sleep(0.02)
    conn.ensure_connection()  # a new pool, opened by this connection
    reopened = conn.pool is not first and not conn.pool.closed
    conn.close()
    return {
        "backends_before": before,
        "backends_after": after,
        "old_pool_closed": first.closed,
        "reopened": reopened,
    }


@probe
def persistent_connections_refused() -> str:
    from django.db import connections

    connections["persistent"].ensure_connection()
    return "connected"


@probe
def isolation_level_option_applies_to_every_checkout() -> list[str]:
    import psycopg2.extensions
    from django.db import connections, transaction

    conn = connections["isolated"]
    levels = []
    for _ in range(2):
        with transaction.atomic(using="isolated"), conn.cursor() as cursor:
            cursor.execute("SHOW transaction_isolation")
            levels.append(cursor.fetchone()[0])
        # What a request may do to its connection: undone before the next one.
        conn.connection.isolation_level = psycopg2.extensions.ISOLATION_LEVEL_READ_COMMITTED
        conn.close()
    return levels


@probe
def invalid_isolation_level_refused() -> str:
    from django.db import connections

    connections["bad_isolation"].ensure_connection()
    return "connected"


@probe
def jsonb_comes_back_as_text() -> str:
    # Django's JSONField decodes jsonb itself: the backend must register the
    # raw loader on each pooled connection, as Django does on its own.
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("""SELECT '{"a": [1, 2]}'::jsonb""")
        value = cursor.fetchone()[0]
    connection.close()
    return f"{type(value).__name__}: {value}"


@probe
def user_reset_runs_then_the_session_is_restored() -> dict[str, Any]:
    from django.db import connections

    conn = connections["with_reset"]
    seen = []
    for _ in range(2):
        with conn.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid(), current_setting('TimeZone')")
            seen.append(cursor.fetchone())
        conn.close()
    return {
        "resets": RESETS,
        "same_backend": seen[0][0] == seen[1][0],
        "time_zones": [zone for _, zone in seen],
    }


@probe
def backend_keywords_in_the_pool_dict_refused() -> str:
    from django.db import connections

    connections["opens_itself"].ensure_connection()
    return "connected"


@probe
def health_checks_replace_a_dead_connection() -> dict[str, Any]:
    from django.db import connections

    conn = connections["health_checked"]

    def backend_pid() -> int:
        with conn.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            pid: int = cursor.fetchone()[0]
        conn.close()
        return pid

    first = backend_pid()
    with connections["unpooled"].cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(%s)", [first])
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", [first])
        while cursor.fetchone()[0]:
            cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", [first])
    return {"replaced": backend_pid() != first}


@probe
def connection_of_a_thread_that_never_closed_it_comes_back() -> str:
    import gc

    from django.db import connections

    def use_and_forget() -> None:
        # This thread's wrapper makes the pool, then the thread ends without
        # closing its connection: nothing of it may keep the connection out.
        connections["abandoned"].ensure_connection()

    thread = threading.Thread(target=use_and_forget)
    thread.start()
    thread.join()
    gc.collect()
    conn = connections["abandoned"]  # this thread's own wrapper; max_size is 1
    with conn.cursor() as cursor:
        cursor.execute("SELECT 'served'")
        served: str = cursor.fetchone()[0]
    conn.close()
    return served


@probe
def assume_role_applies_to_pooled_connections() -> Any:
    from django.db import connections

    with connections["unpooled"].cursor() as cursor:
        cursor.execute("SELECT pg_has_role(current_user, 'pg_monitor', 'MEMBER')")
        if not cursor.fetchone()[0]:
            return "skip: the test user cannot assume pg_monitor"
    conn = connections["role"]
    users = []
    for _ in range(2):
        with conn.cursor() as cursor:
            cursor.execute("SELECT current_user")
            users.append(cursor.fetchone()[0])
        conn.close()
    return users


def main() -> None:
    configure()
    report: dict[str, Any] = {}
    for name, function in PROBES.items():
        try:
            report[name] = {"result": function()}
        except Exception as exc:
            report[name] = {
                "error": f"{type(exc).__name__}: {exc}",
                "traceback": traceback.format_exc(),
            }
    json.dump(report, sys.stdout)


if __name__ == "__main__":
    main()
