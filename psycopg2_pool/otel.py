"""OpenTelemetry metrics for pools: observable instruments reading their ``get_stats()``.

::

    from psycopg2_pool.otel import PoolMetrics

    PoolMetrics(pool)        # on the global MeterProvider, or meter_provider=...

Every collection reads :meth:`ConnectionPool.get_stats` of each pool (never
``pop_stats``, which would reset the counters). Each instrument is named after
its statistics key (``psycopg2_pool.pool_size``,
``psycopg2_pool.requests_wait_ms``, ...) and each observation carries a
``pool.name`` attribute with the pool's name. Needs the ``otel`` extra
(the ``otel`` extra: ``pip install ".[otel]"`` from a checkout, the OpenTelemetry API alone); the
application brings the SDK and its exporter.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

try:
    from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation, get_meter
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError(
        "psycopg2_pool.otel needs opentelemetry-api (the 'otel' extra):"
        " pip install opentelemetry-api"
    ) from exc

from . import __version__
from . import stats as S
from ._exported import ExportedPools, StatsSource

__all__ = ["COUNTERS", "GAUGES", "POOL_NAME", "PoolMetrics"]

PREFIX = "psycopg2_pool"

#: The attribute naming the pool of each observation.
POOL_NAME = "pool.name"

#: Observable gauges: (get_stats key, unit, description).
GAUGES = (
    (S.POOL_MIN, "{connection}", "Connections the pool keeps open even when idle (min_size)."),
    (S.POOL_MAX, "{connection}", "Most connections the pool may open (max_size; 0: no limit)."),
    (S.POOL_SIZE, "{connection}", "Connections open or being opened, idle or in use."),
    (S.POOL_AVAILABLE, "{connection}", "Idle connections ready to be handed out."),
    (S.REQUESTS_WAITING, "{request}", "Clients waiting in line for a connection."),
)

#: Observable counters: (get_stats key, unit, description). Durations stay in
#: milliseconds, as the pool counts them and as their names say.
COUNTERS = (
    (S.REQUESTS_NUM, "{request}", "Connections requested from the pool."),
    (S.REQUESTS_QUEUED, "{request}", "Requests that had to wait in line."),
    (S.REQUESTS_WAIT_MS, "ms", "Time clients spent waiting for a connection."),
    (
        S.REQUESTS_ERRORS,
        "{request}",
        "Requests that failed: timed out, or refused as too many waiting.",
    ),
    (S.USAGE_MS, "ms", "Time connections spent checked out by connection()."),
    (S.RETURNS_BAD, "{connection}", "Connections given back broken or in a bad state."),
    (S.CONNECTIONS_NUM, "{connection}", "Connection attempts to the server."),
    (S.CONNECTIONS_MS, "ms", "Time spent opening connections."),
    (S.CONNECTIONS_ERRORS, "{connection}", "Failed connection attempts."),
    (S.CONNECTIONS_LOST, "{connection}", "Connections found broken by a check and discarded."),
)


Callback = Callable[[CallbackOptions], Iterable[Observation]]


class PoolMetrics(ExportedPools):
    """OpenTelemetry instruments reporting the statistics of one or more pools.

    Make one per meter provider (it creates the instruments once) and add pools
    to it as they are made. Pools must have distinct names: the name is the
    ``pool.name`` attribute. Counters restart from zero if someone calls the
    pool's ``pop_stats()``, so don't pop the stats of a pool exported here.
    """

    verb = "reported"

    def __init__(
        self,
        *pools: StatsSource,
        meter_provider: MeterProvider | None = None,
        prefix: str = PREFIX,
    ) -> None:
        self.prefix = prefix
        super().__init__(*pools)
        meter = get_meter("psycopg2_pool", __version__, meter_provider=meter_provider)
        for key, unit, text in GAUGES:
            meter.create_observable_gauge(
                f"{prefix}.{key}", [self._observer(key)], unit=unit, description=text
            )
        for key, unit, text in COUNTERS:
            meter.create_observable_counter(
                f"{prefix}.{key}", [self._observer(key)], unit=unit, description=text
            )

    def _observer(self, key: str) -> Callback:
        def observe(options: CallbackOptions) -> Iterable[Observation]:
            return [
                Observation(pool.get_stats().get(key, 0), {POOL_NAME: pool.name})
                for pool in self.pools
            ]

        return observe
