"""The test suite's own tools: the shared and private servers and the helpers
that watch backends. If these are wrong, every other test is."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg2
import pytest
from psycopg2.extensions import connection, parse_dsn

from psycopg2_pool._embedded import EmbeddedServer
from tests.conftest import DSN_ENV, MakeServer
from tests.helpers import app_name, backends, dsn_with, terminate_backends, wait_for


@contextmanager
def connections(dsn: str, name: str, count: int) -> Iterator[list[connection]]:
    """``count`` open connections with application_name ``name``."""
    conns = [psycopg2.connect(dsn_with(dsn, application_name=name)) for _ in range(count)]
    try:
        yield conns
    finally:
        for conn in conns:
            conn.close()


def scalar(dsn: str, query: str) -> object:
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(query)
            row = cur.fetchone()
            assert row is not None
            return row[0]
    finally:
        conn.close()


# --- the shared server -------------------------------------------------------


def test_session_dsn_accepts_connections(dsn: str) -> None:
    assert scalar(dsn, "SELECT 1") == 1


def test_session_dsn_comes_from_the_environment_when_set(dsn: str) -> None:
    if os.environ.get(DSN_ENV):
        assert dsn == os.environ[DSN_ENV]
    else:
        assert parse_dsn(dsn)["host"] == "127.0.0.1"


# --- private servers ---------------------------------------------------------


def test_private_server_is_a_different_server(dsn: str, private_server: EmbeddedServer) -> None:
    assert private_server.running
    assert private_server.dsn != dsn
    assert scalar(private_server.dsn, "SELECT 1") == 1


def test_private_server_restart_breaks_old_connections_and_accepts_new_ones(
    private_server: EmbeddedServer,
) -> None:
    conn = psycopg2.connect(private_server.dsn)
    try:
        private_server.restart()
        with pytest.raises(psycopg2.OperationalError), conn.cursor() as cur:
            cur.execute("SELECT 1")
    finally:
        conn.close()
    assert scalar(private_server.dsn, "SELECT 1") == 1


def test_private_server_can_crash_and_come_back(private_server: EmbeddedServer) -> None:
    private_server.stop("immediate")
    assert not private_server.running
    with pytest.raises(psycopg2.OperationalError):
        psycopg2.connect(private_server.dsn, connect_timeout=2)
    private_server.start()
    assert scalar(private_server.dsn, "SELECT 1") == 1


def test_make_server_gives_independent_servers(make_server: MakeServer) -> None:
    first, second = make_server(), make_server()
    assert first.port != second.port
    first.stop()
    assert scalar(second.dsn, "SELECT 1") == 1


def test_make_server_passes_settings_to_postgres(make_server: MakeServer) -> None:
    server = make_server(max_connections="20")
    assert scalar(server.dsn, "SHOW max_connections") == "20"


def test_make_server_can_leave_the_server_stopped(make_server: MakeServer) -> None:
    server = make_server(start=False)
    assert not server.running
    server.start()
    assert scalar(server.dsn, "SELECT 1") == 1


def test_embedded_server_deletes_its_files_on_cleanup() -> None:
    with EmbeddedServer() as server:
        assert server.datadir.exists()
    assert not server.datadir.exists()
    assert not server.running


# --- helpers -----------------------------------------------------------------


def test_app_name_is_unique_per_call() -> None:
    names = {app_name() for _ in range(100)}
    assert len(names) == 100
    assert all(name.startswith("p2p-test-") for name in names)


def test_dsn_with_adds_and_overrides_parameters() -> None:
    dsn = dsn_with("host=127.0.0.1 port=5432 dbname=postgres", port=6543, application_name="x")
    assert parse_dsn(dsn) == {
        "host": "127.0.0.1",
        "port": "6543",
        "dbname": "postgres",
        "application_name": "x",
    }


def test_dsn_with_accepts_a_uri() -> None:
    dsn = dsn_with("postgresql://u@localhost:5433/db", connect_timeout=3)
    assert parse_dsn(dsn) == {
        "user": "u",
        "host": "localhost",
        "port": "5433",
        "dbname": "db",
        "connect_timeout": "3",
    }


def test_backends_lists_the_pids_of_that_application_name_only(dsn: str) -> None:
    mine, other = app_name(), app_name()
    with connections(dsn, mine, 3) as conns, connections(dsn, other, 1):
        assert backends(dsn, mine) == sorted(conn.get_backend_pid() for conn in conns)
        assert len(backends(dsn, other)) == 1


def test_backends_follows_closed_connections(dsn: str) -> None:
    name = app_name()
    with connections(dsn, name, 2) as conns:
        conns[0].close()
        wait_for(lambda: backends(dsn, name) == [conns[1].get_backend_pid()])
    wait_for(lambda: backends(dsn, name) == [])


def test_backends_leaves_out_its_own_connection(dsn: str) -> None:
    # The helper's side connection has a name of its own; it must never see itself.
    assert backends(dsn, "p2p-test-admin") == []


def test_backends_is_empty_for_an_unknown_name(dsn: str) -> None:
    assert backends(dsn, app_name()) == []


def test_terminate_backends_kills_exactly_those_connections(dsn: str) -> None:
    victim, bystander = app_name(), app_name()
    with connections(dsn, victim, 2) as doomed, connections(dsn, bystander, 1) as (survivor,):
        killed = terminate_backends(dsn, victim)
        assert killed == sorted(conn.get_backend_pid() for conn in doomed)
        assert backends(dsn, victim) == []
        with pytest.raises(psycopg2.OperationalError), doomed[0].cursor() as cur:
            cur.execute("SELECT 1")
        with survivor.cursor() as cur:
            cur.execute("SELECT 1")
            assert cur.fetchone() == (1,)


def test_terminate_backends_of_an_unknown_name_does_nothing(dsn: str) -> None:
    assert terminate_backends(dsn, app_name()) == []


def test_wait_for_returns_the_first_truthy_value() -> None:
    values = iter([0, None, "", 7, 8])
    assert wait_for(lambda: next(values)) == 7


def test_wait_for_raises_assertion_error_naming_what_it_waited_for() -> None:
    with pytest.raises(AssertionError, match=r"the moon.*last value: \[\]"):
        wait_for(lambda: [], timeout=0.05, message="the moon")


# --- hypothesis --------------------------------------------------------------


def test_ci_hypothesis_profile_is_loaded_by_default() -> None:
    hypothesis = pytest.importorskip("hypothesis")
    if os.environ.get("HYPOTHESIS_PROFILE"):
        pytest.skip("another hypothesis profile was chosen")
    current = hypothesis.settings.default
    assert current.deadline is None
    assert current.max_examples == 30
    assert hypothesis.HealthCheck.too_slow in current.suppress_health_check
