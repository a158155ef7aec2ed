"""The app entry, for INSTALLED_APPS: it only gets this package imported early."""

from __future__ import annotations

from django.apps import AppConfig


class Psycopg2PoolConfig(AppConfig):
    """``"psycopg2_pool.django"`` in INSTALLED_APPS; it has no models."""

    name = "psycopg2_pool.django"
    label = "psycopg2_pool"
    verbose_name = "psycopg2_pool"
