"""The responder cache's hit and miss counts, exported as Prometheus counters.

The cache counts with plain integers on its hot path; this collector reads them at
scrape time, so answering a request costs no metric update. They only ever grow,
so they are counters (``ocsp_cache_hits_total``, ``ocsp_cache_misses_total``) and
``rate()`` works on them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector


class HitCounts(Protocol):
    @property
    def hits(self) -> int: ...

    @property
    def misses(self) -> int: ...


class CacheCounters(Collector):
    def __init__(self, cache: HitCounts) -> None:
        self._cache = cache

    def collect(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily("ocsp_cache_hits", "Responder cache hits since start", value=self._cache.hits)
        yield CounterMetricFamily("ocsp_cache_misses", "Responder cache misses since start", value=self._cache.misses)

    def describe(self) -> Iterator[CounterMetricFamily]:
        # The names, so the registry refuses a second collector exporting them.
        return self.collect()
