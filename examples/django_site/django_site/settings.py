"""Settings of the example site: Django on psycopg2, connections pooled by
psycopg2_pool with the ``OPTIONS["pool"]`` setting Django has for psycopg 3.

The server is ``$PSYCOPG2_POOL_DSN`` (a libpq DSN; without it, the local
database ``django_site``); its parameters other than the database, user,
password, host and port (``application_name``, ``sslmode``...) go to OPTIONS.
"""

import os

from psycopg2.extensions import parse_dsn

SECRET_KEY = "django-site-example-only"
DEBUG = os.environ.get("DJANGO_DEBUG") == "1"
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]

INSTALLED_APPS = [
    # Only needed where psycopg 3 is installed too: listed before
    # django.contrib.postgres, it makes Django's PostgreSQL backend load on
    # psycopg2 (Django would otherwise pick psycopg 3 for the whole process).
    "psycopg2_pool.django",
    "django.contrib.postgres",
    "notes",
]
MIDDLEWARE = []
ROOT_URLCONF = "django_site.urls"
WSGI_APPLICATION = "django_site.wsgi.application"

USE_TZ = True
TIME_ZONE = "Europe/Paris"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

_server = parse_dsn(os.environ.get("PSYCOPG2_POOL_DSN", "dbname=django_site"))

DATABASES = {
    "default": {
        "ENGINE": "psycopg2_pool.django",
        "NAME": _server.pop("dbname", "django_site"),
        "USER": _server.pop("user", ""),
        "PASSWORD": _server.pop("password", ""),
        "HOST": _server.pop("host", ""),
        "PORT": _server.pop("port", ""),
        # A pooled connection goes back to the pool when Django closes it, at
        # the end of each request: Django must not keep it (the default, 0).
        "CONN_MAX_AGE": 0,
        "OPTIONS": {
            **_server,
            # As on psycopg 3: True, or ConnectionPool keyword arguments.
            "pool": {"min_size": 2, "max_size": 4, "timeout": 10},
        },
    }
}

# Errors of requests go to the console (the server's output), also when DEBUG is off.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"django.request": {"handlers": ["console"], "level": "ERROR"}},
}
