"""Prometheus metrics for pools: a collector reading their ``get_stats()``.

::

    from prometheus_client import REGISTRY
    from psycopg2_pool.prometheus import PoolCollector

    REGISTRY.register(PoolCollector(pool))

Every scrape reads :meth:`ConnectionPool.get_stats` of each pool (never
``pop_stats``, which would reset the counters). Each metric carries a ``pool``
label with the pool's name. Needs the ``prometheus`` extra
(the ``prometheus`` extra: ``pip install ".[prometheus]"`` from a checkout).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

try:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
    from prometheus_client.registry import Collector
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError(
        "psycopg2_pool.prometheus needs prometheus_client (the 'prometheus' extra):"
        " pip install prometheus_client"
    ) from exc

from . import stats as S
from ._exported import ExportedPools, StatsSource

__all__ = ["COUNTERS", "GAUGES", "PoolCollector"]

PREFIX = "psycopg2_pool"

#: Gauges: (get_stats key, metric name without prefix, help).
GAUGES = (
    (S.POOL_MIN, "min_size", "Connections the pool keeps open even when idle (min_size)."),
    (S.POOL_MAX, "max_size", "Most connections the pool may open (max_size; 0: no limit)."),
    (S.POOL_SIZE, "size", "Connections open or being opened, idle or in use."),
    (S.POOL_AVAILABLE, "available", "Idle connections ready to be handed out."),
    (S.REQUESTS_WAITING, "requests_waiting", "Clients waiting in line for a connection."),
)

#: Counters: (get_stats key, metric name without prefix and _total, scale, help).
#: Durations are counted in milliseconds by the pool and exported in seconds.
COUNTERS = (
    (S.REQUESTS_NUM, "requests", 1.0, "Connections requested from the pool."),
    (S.REQUESTS_QUEUED, "requests_queued", 1.0, "Requests that had to wait in line."),
    (
        S.REQUESTS_WAIT_MS,
        "requests_wait_seconds",
        0.001,
        "Time clients spent waiting for a connection.",
    ),
    (
        S.REQUESTS_ERRORS,
        "requests_errors",
        1.0,
        "Requests that failed: timed out, or refused as too many waiting.",
    ),
    (S.USAGE_MS, "usage_seconds", 0.001, "Time connections spent checked out by connection()."),
    (S.RETURNS_BAD, "returns_bad", 1.0, "Connections given back broken or in a bad state."),
    (S.CONNECTIONS_NUM, "connections", 1.0, "Connection attempts to the server."),
    (S.CONNECTIONS_MS, "connections_seconds", 0.001, "Time spent opening connections."),
    (S.CONNECTIONS_ERRORS, "connections_errors", 1.0, "Failed connection attempts."),
    (
        S.CONNECTIONS_LOST,
        "connections_lost",
        1.0,
        "Connections found broken by a check and discarded.",
    ),
)


class PoolCollector(ExportedPools, Collector):
    """A Prometheus collector of the statistics of one or more pools.

    Register it once (``REGISTRY.register(collector)``) and add pools to it as
    they are made. Pools must have distinct names: the name is the ``pool``
    label. Counters restart from zero if someone calls the pool's
    ``pop_stats()`` (Prometheus' ``rate()`` treats that as a counter reset),
    so don't pop the stats of a pool exported here.
    """

    def __init__(self, *pools: StatsSource, prefix: str = PREFIX) -> None:
        self.prefix = prefix
        super().__init__(*pools)

    def _families(self) -> tuple[list[GaugeMetricFamily], list[CounterMetricFamily]]:
        gauges = [
            GaugeMetricFamily(f"{self.prefix}_{name}", text, labels=["pool"])
            for _, name, text in GAUGES
        ]
        counters = [
            CounterMetricFamily(f"{self.prefix}_{name}", text, labels=["pool"])
            for _, name, _, text in COUNTERS
        ]
        return gauges, counters

    def describe(self) -> Iterable[Metric]:
        """The metric families, without samples: lets registries spot clashing names."""
        gauges, counters = self._families()
        return [*gauges, *counters]

    def collect(self) -> Iterator[Metric]:
        gauges, counters = self._families()
        for pool in self.pools:
            stats = pool.get_stats()
            for family, (key, _, _) in zip(gauges, GAUGES):
                family.add_metric([pool.name], stats.get(key, 0))
            for counter, (key, _, scale, _) in zip(counters, COUNTERS):
                counter.add_metric([pool.name], stats.get(key, 0) * scale)
        yield from gauges
        yield from counters
