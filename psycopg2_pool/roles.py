"""The server roles a pool keeps its connections in (``target_session_attrs``).

libpq picks a server by role when it connects; afterwards only what the
server reports tells that the role changed. PostgreSQL 14+ reports
``in_hot_standby`` and ``default_transaction_read_only`` to the client when
they change, so each test here is a C call or two, never a round trip. An
older server reports neither (None): nothing is concluded then.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import psycopg2
from psycopg2 import extensions as _ext

__all__ = ["READ_ONLY_SQL_TRANSACTION", "ROLE_RETRY", "asks_for_a_role", "role_test", "writes"]

Connection = _ext.connection
RoleTest = Callable[[Connection], bool]

#: SQLSTATE read_only_sql_transaction: a write reached a read-only server.
READ_ONLY_SQL_TRANSACTION = "25006"

#: Reconnection delays of a pool whose connections have a role to keep: the
#: first and the longest (seconds). A failover leaves no server of the role
#: asked for until a standby is promoted, seconds later: look again often.
ROLE_RETRY = (0.1, 0.4)


def _writable_no_more(conn: Connection) -> bool:
    status = conn.get_parameter_status
    return status("default_transaction_read_only") == "on" or status("in_hot_standby") == "on"


def _primary_no_more(conn: Connection) -> bool:
    return conn.get_parameter_status("in_hot_standby") == "on"


def _standby_no_more(conn: Connection) -> bool:
    return conn.get_parameter_status("in_hot_standby") == "off"


def _read_only_no_more(conn: Connection) -> bool:
    status = conn.get_parameter_status
    return status("default_transaction_read_only") == "off" and status("in_hot_standby") == "off"


_ROLE_TESTS: dict[str, RoleTest] = {
    "read-write": _writable_no_more,
    "primary": _primary_no_more,
    "standby": _standby_no_more,
    "read-only": _read_only_no_more,
}


def writes(test: RoleTest | None) -> bool:
    """Whether ``test`` watches a connection that must stay writable."""
    return test is _writable_no_more or test is _primary_no_more


def role_test(conn: Connection) -> RoleTest | None:
    """What tells that ``conn`` left the role its target_session_attrs asked for.

    ``prefer-standby`` settles for a primary when no standby answers: only a
    connection made to a standby is watched (for a promotion).
    """
    try:
        wanted = conn.get_dsn_parameters().get("target_session_attrs") or "any"
    except psycopg2.Error:  # pragma: no cover - a connection just made
        return None
    if wanted == "prefer-standby":
        wanted = "standby" if conn.get_parameter_status("in_hot_standby") == "on" else "any"
    return _ROLE_TESTS.get(wanted)


def asks_for_a_role(conninfo: Any, kwargs: Any, connect_kwargs: dict[str, Any]) -> bool:
    """Whether connections made from these arguments may have a role to keep.

    Decided once, when the pool is made; a callable conninfo or kwargs may ask
    for one at any connect, so it counts as asking.
    """
    if callable(conninfo) or callable(kwargs):
        return True
    arguments = {**connect_kwargs, **(kwargs or {})}
    if "target_session_attrs" in arguments:
        return arguments["target_session_attrs"] not in (None, "", "any")
    if os.environ.get("PGTARGETSESSIONATTRS", "any") not in ("", "any"):
        return True
    try:
        params = _ext.parse_dsn(conninfo or "")
    except psycopg2.ProgrammingError:
        return False  # connect() reports the bad conninfo itself
    if "service" in params or "PGSERVICE" in os.environ:
        return True  # a service file may ask for one
    return bool(params.get("target_session_attrs", "any") != "any")
