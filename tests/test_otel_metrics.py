"""psycopg2_pool.otel: pool statistics as OpenTelemetry metrics, read by the SDK."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk")

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import Gauge, InMemoryMetricReader, Sum

from psycopg2_pool import ConnectionPool, NullConnectionPool, PoolTimeout, stats
from psycopg2_pool.otel import POOL_NAME, PoolMetrics

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def reader() -> InMemoryMetricReader:
    return InMemoryMetricReader()


@pytest.fixture
def provider(reader: InMemoryMetricReader) -> MeterProvider:
    return MeterProvider(metric_readers=[reader])


def collect(reader: InMemoryMetricReader) -> dict[str, Any]:
    """{metric name: metric} from one collection of ``reader``."""
    data = reader.get_metrics_data()
    assert data is not None
    return {
        metric.name: metric
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
    }


def values(reader: InMemoryMetricReader) -> dict[tuple[str, str], float]:
    """{(metric name, pool name): value} from one collection of ``reader``."""
    return {
        (name, str(point.attributes[POOL_NAME])): point.value
        for name, metric in collect(reader).items()
        for point in metric.data.data_points
    }


def test_collection_reports_gauges_and_counters(
    dsn: str, provider: MeterProvider, reader: InMemoryMetricReader
) -> None:
    with ConnectionPool(dsn, min_size=2, max_size=3, name="web", open=True) as pool:
        pool.wait()
        PoolMetrics(pool, meter_provider=provider)
        for _ in range(3):
            with pool.connection() as conn:
                conn.execute("SELECT 1")
        held = pool.getconn()
        try:
            got = values(reader)
        finally:
            pool.putconn(held)
    assert got["psycopg2_pool.pool_min", "web"] == 2
    assert got["psycopg2_pool.pool_max", "web"] == 3
    assert got["psycopg2_pool.pool_size", "web"] == 2
    assert got["psycopg2_pool.pool_available", "web"] == 1
    assert got["psycopg2_pool.requests_waiting", "web"] == 0
    assert got["psycopg2_pool.requests_num", "web"] == 4
    assert got["psycopg2_pool.connections_num", "web"] == 2
    assert got["psycopg2_pool.connections_errors", "web"] == 0
    assert got["psycopg2_pool.usage_ms", "web"] >= 0


def test_every_stats_key_is_an_instrument_of_the_right_kind(
    dsn: str, provider: MeterProvider, reader: InMemoryMetricReader
) -> None:
    with ConnectionPool(dsn, min_size=1, name="kinds", open=True) as pool:
        PoolMetrics(pool, meter_provider=provider)
        metrics = collect(reader)
    assert set(metrics) == {f"psycopg2_pool.{key}" for key in stats.MEASURES + stats.COUNTERS}
    for key in stats.MEASURES:
        assert isinstance(metrics[f"psycopg2_pool.{key}"].data, Gauge), key
    for key in stats.COUNTERS:
        data = metrics[f"psycopg2_pool.{key}"].data
        assert isinstance(data, Sum), key
        assert data.is_monotonic, key
    assert metrics["psycopg2_pool.requests_wait_ms"].unit == "ms"
    assert metrics["psycopg2_pool.pool_size"].description


def test_waits_and_timeouts_are_counted(
    dsn: str, provider: MeterProvider, reader: InMemoryMetricReader
) -> None:
    with ConnectionPool(dsn, min_size=1, max_size=1, name="busy", open=True) as pool:
        pool.wait()
        PoolMetrics(pool, meter_provider=provider)
        held = pool.getconn()
        try:
            with pytest.raises(PoolTimeout):
                pool.getconn(timeout=0.2)
        finally:
            pool.putconn(held)
        got = values(reader)
    assert got["psycopg2_pool.requests_queued", "busy"] == 1
    assert got["psycopg2_pool.requests_errors", "busy"] == 1
    assert got["psycopg2_pool.requests_wait_ms", "busy"] >= 150


def test_collecting_never_resets_the_counters(
    dsn: str, provider: MeterProvider, reader: InMemoryMetricReader
) -> None:
    with ConnectionPool(dsn, min_size=1, name="steady", open=True) as pool:
        PoolMetrics(pool, meter_provider=provider)
        with pool.connection():
            pass
        first = values(reader)["psycopg2_pool.requests_num", "steady"]
        second = values(reader)["psycopg2_pool.requests_num", "steady"]
        assert first == second == 1
        assert pool.get_stats()["requests_num"] == 1


def test_several_pools_get_one_attribute_each(
    dsn: str, provider: MeterProvider, reader: InMemoryMetricReader
) -> None:
    metrics = PoolMetrics(meter_provider=provider)
    with (
        ConnectionPool(dsn, min_size=1, name="a", open=True) as a,
        NullConnectionPool(dsn, max_size=2, name="b", open=True) as b,
    ):
        metrics.add(a)
        metrics.add(b)
        with b.connection():
            pass
        got = values(reader)
    assert got["psycopg2_pool.pool_max", "a"] == 1
    assert got["psycopg2_pool.pool_max", "b"] == 2
    assert got["psycopg2_pool.requests_num", "a"] == 0
    assert got["psycopg2_pool.requests_num", "b"] == 1
    assert metrics.pools == [a, b]


def test_a_second_pool_of_the_same_name_is_refused(dsn: str, provider: MeterProvider) -> None:
    with ConnectionPool(dsn, min_size=1, name="twin", open=True) as pool:
        metrics = PoolMetrics(pool, meter_provider=provider)
        with pytest.raises(ValueError, match="already reported"):
            metrics.add(ConnectionPool(dsn, name="twin", open=False))
        assert metrics.pools == [pool]


def test_a_removed_pool_is_no_longer_reported(
    dsn: str, provider: MeterProvider, reader: InMemoryMetricReader
) -> None:
    with (
        ConnectionPool(dsn, min_size=1, name="kept", open=True) as kept,
        ConnectionPool(dsn, min_size=1, name="gone", open=True) as gone,
    ):
        metrics = PoolMetrics(kept, gone, meter_provider=provider)
        metrics.remove(gone)
        got = values(reader)
    assert ("psycopg2_pool.pool_size", "kept") in got
    assert not any(pool == "gone" for _, pool in got)


def test_prefix_renames_the_instruments(
    dsn: str, provider: MeterProvider, reader: InMemoryMetricReader
) -> None:
    with ConnectionPool(dsn, min_size=1, name="p", open=True) as pool:
        PoolMetrics(pool, meter_provider=provider, prefix="app.db")
        assert ("app.db.pool_size", "p") in values(reader)


def test_import_error_names_the_extra() -> None:
    code = (
        "import sys; sys.modules['opentelemetry.metrics'] = None\n"
        "try:\n    import psycopg2_pool.otel\n"
        "except ImportError as exc:\n    print(exc)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        timeout=60,
    )
    assert "pip install opentelemetry-api" in result.stdout, result.stderr


def readme_block(heading: str) -> str:
    """The first Python block of the README section under ``heading``."""
    text = (ROOT / "README.md").read_text()
    section = text.split(f"\n{heading}\n", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_readme_set_up_traces_queries_and_reports_pool_metrics(dsn: str) -> None:
    code = readme_block("## Tracing and metrics with OpenTelemetry")
    assert '"dbname=app"' in code
    result = subprocess.run(
        [sys.executable, "-c", code.replace('"dbname=app"', repr(dsn))],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert '"db.statement": "SELECT 1"' in result.stdout, result.stdout
    assert '"name": "psycopg2_pool.requests_num"' in result.stdout, result.stdout
    assert '"pool.name": "app"' in result.stdout, result.stdout
