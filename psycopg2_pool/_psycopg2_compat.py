"""Lets psycopg2's C registration functions accept pooled connection handles.

``register_type(t, conn)`` checks the C type of ``conn``, which a proxy cannot
pass; the versions installed here unwrap the handle and call the original.
"""

from __future__ import annotations

import sys
from typing import Any

import psycopg2.extensions

_original = psycopg2.extensions.register_type


def register_type(obj: Any, scope: Any = None) -> Any:
    """psycopg2's ``register_type``, also accepting a pooled connection handle."""
    unwrap = getattr(type(scope), "_pool_unwrap", None)
    if unwrap is not None:
        scope = unwrap(scope)
    return _original(obj, scope)


register_type.__doc__ = _original.__doc__


def install() -> None:
    """Point psycopg2's modules at the unwrapping ``register_type``."""
    for name in ("psycopg2.extensions", "psycopg2.extras", "psycopg2._json", "psycopg2._range"):
        module = sys.modules.get(name)
        if module is None:
            module = __import__(name, fromlist=["_"])
        if getattr(module, "register_type", None) is _original:
            module.register_type = register_type  # type: ignore[attr-defined]
