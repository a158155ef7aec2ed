"""Lets psycopg2's registration helpers accept pooled connection handles.

``register_type(t, conn)`` checks the C type of ``conn``, which a proxy cannot
pass, and ``psycopg2.extras`` takes anything with an ``execute`` method for a
cursor; the versions installed here unwrap the handle and call the original.
"""

from __future__ import annotations

import sys
from typing import Any

import psycopg2.extensions
import psycopg2.extras

_original = psycopg2.extensions.register_type
_original_solve = psycopg2.extras._solve_conn_curs  # type: ignore[attr-defined]


def _unwrap(obj: Any) -> Any:
    unwrap = getattr(type(obj), "_pool_unwrap", None)
    return obj if unwrap is None else unwrap(obj)


def register_type(obj: Any, scope: Any = None) -> Any:
    """psycopg2's ``register_type``, also accepting a pooled connection handle."""
    return _original(obj, _unwrap(scope))


register_type.__doc__ = _original.__doc__


def _solve_conn_curs(conn_or_curs: Any) -> Any:
    # psycopg2's own helper behind register_hstore, register_composite,
    # register_range...: it would take a handle for a cursor.
    return _original_solve(_unwrap(conn_or_curs))


def install() -> None:
    """Point psycopg2's modules at the unwrapping ``register_type``."""
    for name in ("psycopg2.extensions", "psycopg2.extras", "psycopg2._json", "psycopg2._range"):
        module = sys.modules.get(name)
        if module is None:
            module = __import__(name, fromlist=["_"])
        if getattr(module, "register_type", None) is _original:
            module.register_type = register_type  # type: ignore[attr-defined]
    if getattr(psycopg2.extras, "_solve_conn_curs", None) is _original_solve:
        psycopg2.extras._solve_conn_curs = _solve_conn_curs  # type: ignore[attr-defined]
