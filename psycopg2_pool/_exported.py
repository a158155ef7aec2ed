"""The set of pools an exporter reports (Prometheus, OpenTelemetry).

Pools are told apart by name, added and removed from any thread, and read in
the order they were added.
"""

from __future__ import annotations

import threading
from typing import Protocol


class StatsSource(Protocol):
    """What an exporter needs of a pool: a name and ``get_stats()``."""

    @property
    def name(self) -> str: ...

    def get_stats(self) -> dict[str, int]: ...


class ExportedPools:
    """Pools with distinct names; ``verb`` says what the exporter does with them."""

    verb = "exported"

    def __init__(self, *pools: StatsSource) -> None:
        self._pools: list[StatsSource] = []
        self._lock = threading.Lock()
        for pool in pools:
            self.add(pool)

    @property
    def pools(self) -> list[StatsSource]:
        """The pools, in the order they were added."""
        with self._lock:
            return list(self._pools)

    def add(self, pool: StatsSource) -> None:
        """Take the statistics of ``pool`` too."""
        with self._lock:
            if any(known.name == pool.name for known in self._pools):
                raise ValueError(f"a pool named {pool.name!r} is already {self.verb}")
            self._pools.append(pool)

    def remove(self, pool: StatsSource) -> None:
        """Leave ``pool`` out from now on (for instance after closing it)."""
        with self._lock:
            self._pools = [known for known in self._pools if known is not pool]
