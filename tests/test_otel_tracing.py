"""OpenTelemetry tracing: opentelemetry-instrumentation-psycopg2 through the pools.

The instrumentation wraps ``psycopg2.connect`` and gives each connection a
traced cursor class; the pool's handles make their cursors from a guarded
subclass of the connection's cursor class. These tests show the two compose:
one span per query, and nothing else of the pool changes.
"""

from __future__ import annotations

import functools
import gc
import weakref
from collections.abc import Iterator
from typing import Any, Callable

import pytest

pytest.importorskip("opentelemetry.sdk")
pytest.importorskip("opentelemetry.instrumentation.psycopg2")

import psycopg2
import psycopg2.extensions
import psycopg2.extras
from opentelemetry.instrumentation.psycopg2 import Psycopg2Instrumentor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)

from psycopg2_pool import ConnectionPool, PoolError, ThreadedConnectionPool


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> TracerProvider:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


@pytest.fixture
def instrumented(provider: TracerProvider) -> Iterator[None]:
    """psycopg2 instrumented as an application does it, for this test only."""
    instrumentor = Psycopg2Instrumentor()
    instrumentor.instrument(tracer_provider=provider)
    try:
        yield
    finally:
        instrumentor.uninstrument()


def statements(exporter: InMemorySpanExporter) -> list[str]:
    """The statements of the finished spans, in order."""
    return [
        str((span.attributes or {}).get("db.statement")) for span in exporter.get_finished_spans()
    ]


Run = Callable[[Any], None]


def _execute_on_handle(conn: Any) -> None:
    conn.execute("SELECT 1")


def _cursor_execute(conn: Any) -> None:
    conn.cursor().execute("SELECT 1")


def _cursor_in_with(conn: Any) -> None:
    with conn.cursor() as cur:
        cur.execute("SELECT 1")
        cur.fetchall()


def _named_cursor(conn: Any) -> None:
    with conn.cursor("named") as cur:
        cur.execute("SELECT 1")
        cur.fetchall()


@pytest.mark.usefixtures("instrumented")
@pytest.mark.parametrize(
    "run",
    [_execute_on_handle, _cursor_execute, _cursor_in_with, _named_cursor],
    ids=["conn.execute", "cursor.execute", "with-cursor", "named-cursor"],
)
def test_each_query_through_a_handle_is_one_span(
    dsn: str, exporter: InMemorySpanExporter, run: Run
) -> None:
    with ConnectionPool(dsn, min_size=1, max_size=1, open=True) as pool:
        pool.wait()
        exporter.clear()
        with pool.connection() as conn:
            run(conn)
    assert statements(exporter) == ["SELECT 1"]


@pytest.mark.usefixtures("instrumented")
def test_spans_name_the_server_as_for_a_plain_connection(
    dsn: str, exporter: InMemorySpanExporter
) -> None:
    plain = psycopg2.connect(dsn)
    try:
        plain.cursor().execute("SELECT 1")
    finally:
        plain.close()
    with ConnectionPool(dsn, min_size=1, max_size=1, open=True) as pool, pool.connection() as conn:
        conn.execute("SELECT 1")
    direct, pooled = exporter.get_finished_spans()
    assert pooled.name == direct.name == "SELECT"
    assert pooled.attributes == direct.attributes
    assert (pooled.attributes or {})["db.system"] == "postgresql"


def _mixed_use(conn: Any) -> None:
    """Calls an application makes; some are traced, some (by the instrumentation's
    design) are not, such as a cursor_factory passed explicitly."""
    cur = conn.cursor()
    cur.execute("SELECT %s", (1,))
    cur.executemany("SELECT %s", [(2,), (3,)])
    cur.callproc("abs", (-4,))
    dict_cur = conn.cursor(cursor_factory=psycopg2.extras.DictCursor)
    dict_cur.execute("SELECT 5 AS five")
    assert dict_cur.fetchone()["five"] == 5
    conn.commit()


@pytest.mark.usefixtures("instrumented")
def test_a_handle_is_traced_exactly_as_a_plain_connection(
    dsn: str, exporter: InMemorySpanExporter
) -> None:
    plain = psycopg2.connect(dsn)
    try:
        _mixed_use(plain)
    finally:
        plain.close()
    direct = statements(exporter)
    exporter.clear()
    with ConnectionPool(dsn, min_size=1, max_size=1, open=True) as pool, pool.connection() as conn:
        _mixed_use(conn)
    assert statements(exporter) == direct
    assert len(direct) == 3  # execute, executemany, callproc; not the DictCursor's


@pytest.mark.usefixtures("instrumented")
def test_legacy_threaded_pool_connections_are_traced(
    dsn: str, exporter: InMemorySpanExporter
) -> None:
    pool = ThreadedConnectionPool(1, 2, dsn)
    try:
        conn = pool.getconn()
        conn.cursor().execute("SELECT 1")
        pool.putconn(conn)
        conn = pool.getconn()
        conn.cursor().execute("SELECT 2")
        pool.putconn(conn)
    finally:
        pool.closeall()
    assert statements(exporter) == ["SELECT 1", "SELECT 2"]


@pytest.mark.usefixtures("instrumented")
def test_instrumented_handle_is_still_a_psycopg2_connection(dsn: str) -> None:
    with ConnectionPool(dsn, min_size=1, max_size=1, open=True) as pool, pool.connection() as conn:
        assert isinstance(conn, psycopg2.extensions.connection)
        cur = conn.cursor()
        # The instrumentation's traced class, guarded by the pool.
        assert isinstance(cur, conn.__wrapped__.cursor_factory)
        assert isinstance(cur, psycopg2.extensions.cursor)
        dict_cur = conn.cursor(cursor_factory=psycopg2.extras.DictCursor)
        assert isinstance(dict_cur, psycopg2.extras.DictCursor)


@pytest.mark.usefixtures("instrumented")
def test_stale_cursor_is_refused_and_leaves_no_span(
    dsn: str, exporter: InMemorySpanExporter
) -> None:
    with ConnectionPool(dsn, min_size=1, max_size=1, open=True) as pool:
        with pool.connection() as conn:
            cur = conn.cursor()
        exporter.clear()
        with pytest.raises(PoolError, match="returned to the pool"):
            cur.execute("SELECT 1")
        with pytest.raises(PoolError, match="returned to the pool"):
            conn.execute("SELECT 1")
    assert statements(exporter) == []


@pytest.mark.usefixtures("instrumented")
def test_cursor_classes_of_replaced_connections_are_freed(dsn: str) -> None:
    """The instrumentation makes a cursor class per connection: the pool's guarded
    subclass of it must not outlive the connection (it would grow without end)."""
    with ConnectionPool(dsn, min_size=1, max_size=1, open=True) as pool:
        with pool.connection() as conn:
            traced = weakref.ref(conn.__wrapped__.cursor_factory)
            guarded = weakref.ref(type(conn.cursor()))
            conn.__wrapped__.close()  # broken: the pool replaces it
        del conn
        with pool.connection() as conn:
            conn.execute("SELECT 1")
            assert conn.__wrapped__.cursor_factory is not traced()
        del conn
        gc.collect()
        assert guarded() is None
        assert traced() is None


def test_instrumenting_in_configure_gives_one_span_per_query_on_every_checkout(
    dsn: str, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """Per-connection instrumentation belongs in configure: it gets the real
    connection, once in its life."""
    configure = functools.partial(
        Psycopg2Instrumentor.instrument_connection, tracer_provider=provider
    )
    with ConnectionPool(dsn, min_size=1, max_size=1, configure=configure, open=True) as pool:
        for _ in range(3):
            with pool.connection() as conn:
                conn.execute("SELECT 1")
        assert pool.get_stats()["connections_num"] == 1
    assert statements(exporter) == ["SELECT 1"] * 3
