"""psycopg2_pool.prometheus: pool statistics scraped as Prometheus metrics."""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

prometheus_client = pytest.importorskip("prometheus_client")

from prometheus_client import CollectorRegistry, generate_latest  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from psycopg2_pool import ConnectionPool, NullConnectionPool  # noqa: E402
from psycopg2_pool._embedded import free_port  # noqa: E402
from psycopg2_pool.prometheus import PoolCollector  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def samples(registry: CollectorRegistry) -> dict[tuple[str, str], float]:
    """{(sample name, pool label): value} from a scrape of ``registry``."""
    text = generate_latest(registry).decode()
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[sample.name, sample.labels.get("pool", "")] = sample.value
    return found


def test_scrape_reports_gauges_and_counters(dsn: str) -> None:
    registry = CollectorRegistry()
    with ConnectionPool(dsn, min_size=2, max_size=3, name="web", open=True) as pool:
        pool.wait()
        collector = PoolCollector(pool)
        registry.register(collector)
        for _ in range(3):
            with pool.connection() as conn:
                conn.execute("SELECT 1")
        held = pool.getconn()
        try:
            got = samples(registry)
        finally:
            pool.putconn(held)
        assert got["psycopg2_pool_min_size", "web"] == 2
        assert got["psycopg2_pool_max_size", "web"] == 3
        assert got["psycopg2_pool_size", "web"] == 2
        assert got["psycopg2_pool_available", "web"] == 1
        assert got["psycopg2_pool_requests_waiting", "web"] == 0
        assert got["psycopg2_pool_requests_total", "web"] == 4
        assert got["psycopg2_pool_connections_total", "web"] == 2
        assert got["psycopg2_pool_connections_errors_total", "web"] == 0
        assert got["psycopg2_pool_requests_wait_seconds_total", "web"] >= 0
        assert got["psycopg2_pool_usage_seconds_total", "web"] >= 0


def test_scraping_never_resets_the_counters(dsn: str) -> None:
    registry = CollectorRegistry()
    with ConnectionPool(dsn, min_size=1, name="steady", open=True) as pool:
        registry.register(PoolCollector(pool))
        with pool.connection():
            pass
        first = samples(registry)["psycopg2_pool_requests_total", "steady"]
        second = samples(registry)["psycopg2_pool_requests_total", "steady"]
        assert first == second == 1
        assert pool.get_stats()["requests_num"] == 1


def test_several_pools_get_one_label_each(dsn: str) -> None:
    registry = CollectorRegistry()
    collector = PoolCollector()
    registry.register(collector)
    with (
        ConnectionPool(dsn, min_size=1, name="a", open=True) as a,
        NullConnectionPool(dsn, max_size=2, name="b", open=True) as b,
    ):
        collector.add(a)
        collector.add(b)
        with pytest.raises(ValueError, match="already exported"):
            collector.add(ConnectionPool(dsn, name="a", open=False))
        with b.connection():
            pass
        got = samples(registry)
        assert got["psycopg2_pool_max_size", "a"] == 1
        assert got["psycopg2_pool_max_size", "b"] == 2
        assert got["psycopg2_pool_requests_total", "b"] == 1
        collector.remove(a)
        assert ("psycopg2_pool_size", "a") not in samples(registry)


def test_http_endpoint(dsn: str) -> None:
    registry = CollectorRegistry()
    port = free_port()
    with ConnectionPool(dsn, min_size=1, name="http", open=True) as pool:
        registry.register(PoolCollector(pool))
        server, thread = prometheus_client.start_http_server(port, "127.0.0.1", registry)
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
                body = reply.read().decode()
        finally:
            server.shutdown()
            server.server_close()
            thread.join(5)
    assert "# TYPE psycopg2_pool_requests_total counter" in body
    assert "# TYPE psycopg2_pool_size gauge" in body
    assert 'psycopg2_pool_max_size{pool="http"} 1.0' in body


def test_duplicate_collectors_are_refused_by_the_registry() -> None:
    registry = CollectorRegistry(auto_describe=True)
    registry.register(PoolCollector())
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        registry.register(PoolCollector())


def test_import_error_names_the_extra() -> None:
    code = (
        "import sys; sys.modules['prometheus_client'] = None\n"
        "try:\n    import psycopg2_pool.prometheus\n"
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
    assert "pip install prometheus_client" in result.stdout, result.stderr
