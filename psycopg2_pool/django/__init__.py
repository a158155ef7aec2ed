"""A Django database backend for psycopg2 that pools connections the way Django
pools them on psycopg 3: ``ENGINE: "psycopg2_pool.django"`` with ``OPTIONS["pool"]``.

Importing this package loads Django's PostgreSQL backend on psycopg2 (see
``_postgresql``); listing it in INSTALLED_APPS makes that happen first.
"""

from __future__ import annotations

from . import _postgresql

_postgresql.load()
