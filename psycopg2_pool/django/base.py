"""The database wrapper behind ``ENGINE: "psycopg2_pool.django"``.

Django's PostgreSQL backend on psycopg2, plus what Django offers only on
psycopg 3: ``OPTIONS["pool"]`` (True, or ConnectionPool keyword arguments)
pools the connections, one ConnectionPool per database alias and process.
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar

import psycopg2.extras
from django.core.exceptions import ImproperlyConfigured
from django.db.backends.base.base import NO_DB_ALIAS
from django.db.backends.postgresql.base import DatabaseWrapper as PostgreSQLDatabaseWrapper
from django.db.backends.postgresql.psycopg_any import IsolationLevel
from django.utils.asyncio import async_unsafe

from psycopg2_pool import ConnectionPool

Connection = psycopg2.extensions.connection


def _raw_json(text: str) -> str:
    # Django's JSONField decodes with its own decoder: psycopg2 must hand the
    # text over as it came, as Django's own backend arranges.
    return text


class _PooledSession:
    """The session every pooled connection of one pool gets, from the settings
    the pool was made with (Django closes the pool when they change).

    The pool calls it from its own threads, so it refers to no DatabaseWrapper:
    a wrapper belongs to one thread, and its connection must not be kept
    alive by the pool once that thread is gone.
    """

    __slots__ = ("isolation_level", "role", "time_zone", "user_reset")

    def __init__(
        self,
        time_zone: str | None,
        isolation_level: int | None,
        role: str | None,
        user_reset: Callable[[Connection], None] | None,
    ) -> None:
        self.time_zone = time_zone
        self.isolation_level = isolation_level
        self.role = role
        self.user_reset = user_reset

    def configure(self, connection: Connection) -> None:
        """The pool's ``configure``: what Django does to each new connection
        of its own, done once per pooled connection."""
        # Idle in the pool means outside any transaction; Django sets the
        # autocommit it wants on each checkout.
        connection.autocommit = True
        if self.isolation_level is not None:
            connection.isolation_level = self.isolation_level
        self._restore_time_zone(connection)
        self._assume_role(connection)
        psycopg2.extras.register_default_jsonb(conn_or_curs=connection, loads=_raw_json)

    def reset(self, connection: Connection) -> None:
        """The pool's ``reset``: after each return, the connection gets back
        the session ``configure`` gave it, whatever the request changed."""
        if self.user_reset is not None:
            self.user_reset(connection)
            # The role cannot be seen without a round trip: set it again only
            # after a reset of the user's, which may have dropped it.
            self._assume_role(connection)
        level = self.isolation_level
        if not (
            connection.autocommit
            and connection.isolation_level == level
            and connection.readonly is None
            and connection.deferrable is None
        ):
            connection.set_session(
                isolation_level="default" if level is None else level,
                readonly="default",
                deferrable="default",
                autocommit=True,
            )
        self._restore_time_zone(connection)

    def _restore_time_zone(self, connection: Connection) -> None:
        # The server reports its time zone to the client: checking is free.
        zone = self.time_zone
        if zone and connection.info.parameter_status("TimeZone") != zone:
            with connection.cursor() as cursor:
                cursor.execute("SELECT set_config('TimeZone', %s, false)", (zone,))

    def _assume_role(self, connection: Connection) -> None:
        if self.role:
            with connection.cursor() as cursor:
                cursor.execute("SET ROLE %s", (self.role,))


class DatabaseWrapper(PostgreSQLDatabaseWrapper):
    """Django's PostgreSQL wrapper, taking connections from a pool when
    ``OPTIONS["pool"]`` says so, and giving them back when Django closes them.
    """

    #: alias -> the pool of that database, shared by the wrappers of all threads.
    _pools: ClassVar[dict[str, ConnectionPool]] = {}
    #: The pool the current connection came from, to give it back to that one
    #: even if the alias got a new pool meanwhile (close_pool(), settings changes).
    _connection_pool: ConnectionPool | None = None
    # Set by Django's base class; declared for the type checker.
    settings_dict: dict[str, Any]
    connection: Any

    @property
    def pool(self) -> ConnectionPool | None:
        """This database's pool (made on first use, opened on first connection),
        or None without ``OPTIONS["pool"]``."""
        options = self.settings_dict["OPTIONS"].get("pool")
        if not options or self.alias == NO_DB_ALIAS:
            return None
        pool = self._pools.get(self.alias)
        if pool is None:
            # Threads that get here together each make a pool; the first one
            # stored wins. The others were never opened: they hold nothing.
            pool = self._pools.setdefault(self.alias, self._new_pool(options))
        return pool

    def _new_pool(self, options: Any) -> ConnectionPool:
        max_age = self.settings_dict.get("CONN_MAX_AGE", 0)
        if max_age != 0:
            raise ImproperlyConfigured(
                "OPTIONS['pool'] and persistent connections exclude each other: Django"
                " gives a pooled connection back when it closes it, so CONN_MAX_AGE must"
                f" be 0, not {max_age!r}"
            )
        arguments = {} if options is True else dict(options)
        # Pool keywords are the user's, as on psycopg 3; configure, check,
        # kwargs and open are the backend's (given twice, they raise TypeError
        # there as here). A reset of the user's runs before the backend's own.
        session = _PooledSession(
            time_zone=self.timezone_name,
            isolation_level=self._session_isolation_level(),
            role=self.settings_dict["OPTIONS"].get("assume_role"),
            user_reset=arguments.pop("reset", None),
        )
        arguments.setdefault("name", f"django-{self.alias}")
        health_checks = self.settings_dict["CONN_HEALTH_CHECKS"]
        return ConnectionPool(
            kwargs=self.get_connection_params(),
            open=False,
            configure=session.configure,
            check=ConnectionPool.check_connection if health_checks else None,
            reset=session.reset,
            **arguments,
        )

    def close_pool(self) -> None:
        """Close this database's pool; the next connection opens a new one.

        Idle connections close now; those in use close when given back.
        """
        pool = self._pools.pop(self.alias, None)
        if pool is not None:
            pool.close()

    def get_connection_params(self) -> dict[str, Any]:
        settings_dict = self.settings_dict
        if "pool" not in settings_dict["OPTIONS"]:
            params: dict[str, Any] = super().get_connection_params()
            return params
        # Django refuses OPTIONS["pool"] on psycopg2, and the pool is this
        # backend's business: Django computes the connection parameters from
        # the settings without it. This wrapper belongs to one thread, so the
        # settings can be swapped on it for the call.
        options = {key: value for key, value in settings_dict["OPTIONS"].items() if key != "pool"}
        self.settings_dict = {**settings_dict, "OPTIONS": options}
        try:
            params = super().get_connection_params()
        finally:
            self.settings_dict = settings_dict
        return params

    def _session_isolation_level(self) -> IsolationLevel | None:
        """``OPTIONS["isolation_level"]``, or None for the server's default."""
        options = self.settings_dict["OPTIONS"]
        if "isolation_level" not in options:
            return None
        value = options["isolation_level"]
        try:
            return IsolationLevel(value)
        except ValueError:
            levels = ", ".join(f"IsolationLevel.{level.name}" for level in IsolationLevel)
            raise ImproperlyConfigured(
                f"OPTIONS['isolation_level'] = {value!r} is no transaction isolation level:"
                f" use one of {levels}"
            ) from None

    @async_unsafe
    def get_new_connection(self, conn_params: dict[str, Any]) -> Any:
        pool = self.pool
        if pool is None:
            return super().get_new_connection(conn_params)
        level = self._session_isolation_level()
        self.isolation_level = IsolationLevel.READ_COMMITTED if level is None else level
        if pool.closed:
            pool.open()  # the first connection opens the pool, not the settings
        connection = pool.getconn()
        self._connection_pool = pool
        return connection

    def _close(self) -> None:
        if self.connection is None:
            return
        pool = self._connection_pool
        with self.wrap_database_errors:
            if pool is None:
                self.connection.close()
                return
            try:
                pool.putconn(self.connection)
            finally:
                # The handle is dead once given back: Django must not reuse it.
                self.connection = None
                self._connection_pool = None
