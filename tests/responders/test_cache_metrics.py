"""The responder cache's hits and misses are counters: exported as ``*_total`` and typed ``counter``."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from responders.cache_metrics import CacheCounters


@dataclass
class Counts:
    hits: int = 0
    misses: int = 0


def test_hits_and_misses_are_counters_read_at_scrape_time() -> None:
    counts = Counts()
    registry = CollectorRegistry()
    registry.register(CacheCounters(counts))
    counts.hits, counts.misses = 3, 1
    assert {family.name: family.type for family in registry.collect()} == {
        "ocsp_cache_hits": "counter",
        "ocsp_cache_misses": "counter",
    }
    text = generate_latest(registry).decode()
    assert "ocsp_cache_hits_total 3.0\n" in text
    assert "ocsp_cache_misses_total 1.0\n" in text
    counts.hits += 2
    assert registry.get_sample_value("ocsp_cache_hits_total") == 5.0
    # The old gauge names are gone: a dashboard still reading them should fail loudly, not read 0.
    assert registry.get_sample_value("ocsp_cache_hits") is None


def test_the_names_cannot_be_registered_twice() -> None:
    registry = CollectorRegistry()
    registry.register(CacheCounters(Counts()))
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        registry.register(CacheCounters(Counts()))
