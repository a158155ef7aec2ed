"""Shared fixtures: one PostgreSQL for the whole run (or the one named by
PSYCOPG2_POOL_TEST_DSN), and private throwaway servers for fault tests."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Callable

import pytest

from psycopg2_pool._embedded import EmbeddedServer

DSN_ENV = "PSYCOPG2_POOL_TEST_DSN"

try:
    from hypothesis import HealthCheck, settings
except ImportError:  # pragma: no cover - hypothesis comes with the dev extra
    pass
else:
    # Property tests here talk to a real server: slow examples are normal.
    settings.register_profile(
        "ci",
        deadline=None,
        max_examples=30,
        suppress_health_check=[HealthCheck.too_slow],
    )
    settings.register_profile(
        "thorough",
        parent=settings.get_profile("ci"),
        max_examples=300,
    )
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(scope="session")
def dsn() -> Iterator[str]:
    """The DSN of the server that most tests share.

    ``$PSYCOPG2_POOL_TEST_DSN`` if set; otherwise one embedded server started
    for the session and deleted at its end. Tests must not stop this server:
    use ``private_server`` for that.
    """
    configured = os.environ.get(DSN_ENV)
    if configured:
        yield configured
        return
    server = EmbeddedServer()
    try:
        server.start()
        yield server.dsn
    finally:
        server.cleanup()


MakeServer = Callable[..., EmbeddedServer]


@pytest.fixture
def make_server() -> Iterator[MakeServer]:
    """A factory of private, started embedded servers, all deleted after the test.

    ``make_server(**settings)`` passes PostgreSQL settings through, e.g.
    ``make_server(max_connections="20")``; ``port=`` picks the port, and
    ``make_server(start=False)`` only creates the data directory.
    """
    servers: list[EmbeddedServer] = []

    def make(start: bool = True, port: int | None = None, **settings: str) -> EmbeddedServer:
        server = EmbeddedServer(port, **settings)
        servers.append(server)
        if start:
            server.start()
        return server

    try:
        yield make
    finally:
        # Clean up every server even if one of them fails to stop.
        errors: list[Exception] = []
        for server in servers:
            try:
                server.cleanup()
            except Exception as exc:
                errors.append(exc)
        if errors:
            raise errors[0]


@pytest.fixture
def private_server(make_server: MakeServer) -> EmbeddedServer:
    """A started server for this test alone: it may be stopped, restarted or crashed."""
    return make_server()
