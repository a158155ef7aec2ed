"""Loads Django's PostgreSQL backend on psycopg2, even where psycopg 3 is installed.

Django picks its PostgreSQL driver once per process, when its backend modules are
first imported, and prefers psycopg 3. This backend needs them on psycopg2.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType
from typing import Any

from django.core.exceptions import ImproperlyConfigured

_BASE = "django.db.backends.postgresql.base"
_ANY = "django.db.backends.postgresql.psycopg_any"


def _import_hiding_psycopg3() -> ModuleType:
    # A None entry in sys.modules makes `import psycopg` raise ImportError, so
    # Django's modules fall back to psycopg2 as if psycopg 3 were not
    # installed. The entry lives only for this import; a thread importing
    # psycopg at this very moment would fail, which is why this happens once,
    # when Django loads the backend (or the app registry imports this package).
    modules: dict[str, Any] = sys.modules
    missing = object()
    saved = modules.get("psycopg", missing)
    modules["psycopg"] = None
    try:
        return importlib.import_module(_BASE)
    finally:
        if saved is missing:
            del modules["psycopg"]
        else:
            modules["psycopg"] = saved


def load() -> ModuleType:
    """Django's ``django.db.backends.postgresql.base``, running on psycopg2.

    Raise ImproperlyConfigured if this process already loaded it on psycopg 3.
    """
    loaded = sys.modules.get(_ANY)
    if loaded is None or not loaded.is_psycopg3:
        base = sys.modules.get(_BASE) or _import_hiding_psycopg3()
        if base.Database.__name__ == "psycopg2":
            return base
    raise ImproperlyConfigured(
        "ENGINE 'psycopg2_pool.django' runs Django's PostgreSQL backend on psycopg2,"
        " but this process already loaded that backend on psycopg (3): Django loads"
        " it once per process, on the first driver it finds (django.contrib.postgres"
        " loads it while the apps are set up). List 'psycopg2_pool.django' in"
        " INSTALLED_APPS before any app that uses PostgreSQL, or uninstall psycopg,"
        " or use Django's own pool (ENGINE 'django.db.backends.postgresql')."
    )
