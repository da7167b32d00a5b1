"""Prometheus series of a serving process that no single library module owns.

- what the API committed: ``certificates_issued_total{issuer,profile}``,
  ``certificates_revoked_total{issuer,reason}``;
- where each log-following role is: ``eventlog_head_seq``, ``eventlog_position{role}``,
  ``eventlog_lag_events{role}``;
- how close the stored OCSP responses are to their nextUpdate:
  ``ocsp_responses_oldest_this_update_timestamp_seconds``,
  ``ocsp_responses_earliest_next_update_timestamp_seconds``;
- signatures and signing failures per role and key backend (``revocation.keys.usage``);
- the granian workers' series: each worker writes its metrics to files in a directory
  ``pca serve`` makes for the run (prometheus-client's multiprocess mode,
  ``PROMETHEUS_MULTIPROC_DIR``), and the ``/metrics`` that covers them reads that directory.

Labels are issuers, reasons, roles and backends: never a serial or a request.
"""

from __future__ import annotations

import asyncio
import glob
import logging
import os
import re
import shutil
import tempfile
import weakref
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Metric
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

from pca.runtime import Runtime
from revocation.errors import PCAError
from revocation.eventlog import RecordedEvent
from revocation.keys.usage import SigningUsage

log = logging.getLogger("pca.metrics")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
POSITION_EVERY = 5.0  # seconds between readings of the log's head and a role's position
EARLIEST_EVERY = 30.0  # the oldest response is found by a scan of the response store
MIRROR_EVERY = 1.0  # granian workers copy their cache counts to the shared files this often

_positions: weakref.WeakKeyDictionary[CollectorRegistry, tuple[Gauge, Gauge, Gauge]] = weakref.WeakKeyDictionary()
_signing: weakref.WeakSet[CollectorRegistry] = weakref.WeakSet()


def export_signing(registry: CollectorRegistry) -> None:
    """``signing_operations_total`` and ``signing_errors_total`` of this process (once per registry)."""
    if registry not in _signing:
        registry.register(SigningUsage())
        _signing.add(registry)


def count_events(rt: Runtime) -> None:
    """Count the certificates issued and revoked through this process (the API role)."""
    issued = Counter(
        "certificates_issued", "Certificates issued or recorded", ["issuer", "profile"], registry=rt.registry
    )
    revoked = Counter("certificates_revoked", "Revocations recorded", ["issuer", "reason"], registry=rt.registry)

    def committed(events: list[RecordedEvent]) -> None:
        for rec in events:
            if rec.type == "CertificateIssued":
                issued.labels(str(rec.payload["issuer_id"]), str(rec.payload.get("profile", ""))).inc()
            elif rec.type == "CertificateRevoked":
                revoked.labels(str(rec.payload["issuer_id"]), str(rec.payload["reason"])).inc()

    rt.on_commit(committed)


def export_log_position(rt: Runtime, role: str, position: Callable[[], Awaitable[int]]) -> None:
    """Every few seconds: the log's head, and how far ``role`` has applied it."""
    gauges = _positions.get(rt.registry)
    if gauges is None:
        gauges = _positions[rt.registry] = (
            Gauge("eventlog_head_seq", "Seq of the last event in the log", registry=rt.registry),
            Gauge("eventlog_position", "Last log seq a role applied", ["role"], registry=rt.registry),
            Gauge(
                "eventlog_lag_events", "Events in the log a role has not applied yet", ["role"], registry=rt.registry
            ),
        )
    head_gauge, position_gauge, lag_gauge = gauges

    async def follow() -> None:
        while True:
            try:
                head, at = await rt.log.head(), await position()
            except (PCAError, OSError) as exc:
                log.warning("cannot read the %s's log position for metrics: %s", role, exc)
            else:
                head_gauge.set(head)
                position_gauge.labels(role).set(at)
                lag_gauge.labels(role).set(max(0, head - at))
            await asyncio.sleep(POSITION_EVERY)

    rt.tasks.append(follow())


class _Freshness(Collector):
    """Two gauges exported only once known: a 0 would read as "every response expired in 1970"."""

    def __init__(self) -> None:
        self.found: tuple[int, int] | None = None

    def collect(self) -> Iterator[Metric]:
        if self.found is not None:
            yield GaugeMetricFamily(
                "ocsp_responses_oldest_this_update_timestamp_seconds",
                "thisUpdate of the oldest stored OCSP response (epoch seconds)",
                value=self.found[0],
            )
            yield GaugeMetricFamily(
                "ocsp_responses_earliest_next_update_timestamp_seconds",
                "The earliest nextUpdate of any stored OCSP response (epoch seconds)",
                value=self.found[1],
            )


def export_response_freshness(rt: Runtime, earliest: Callable[[], Awaitable[tuple[int, int] | None]]) -> None:
    """The oldest stored response's thisUpdate and the earliest nextUpdate (the pre-signer's process)."""
    freshness = _Freshness()
    rt.registry.register(freshness)

    async def follow() -> None:
        while True:
            try:
                freshness.found = await earliest()
            except (PCAError, OSError) as exc:
                log.warning("cannot read the response store for metrics: %s", exc)
            await asyncio.sleep(EARLIEST_EVERY if freshness.found is not None else POSITION_EVERY)

    rt.tasks.append(follow())


# --- granian workers ----------------------------------------------------------------------------


def multiprocess_mode() -> bool:
    """Whether this process writes its metrics to the shared directory (a granian worker)."""
    return bool(os.environ.get(MULTIPROC_ENV))


def make_workers_dir() -> Path:
    """A fresh directory for one run's worker metrics (removed by ``remove_workers_dir``)."""
    return Path(tempfile.mkdtemp(prefix="pca-metrics-"))


def remove_workers_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


_PID_FILE = re.compile(r"_(\d+)\.db$")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class WorkersCollector(Collector):
    """The granian workers' series, summed over workers (counters, histograms) or per live worker (gauges).

    A worker that died (granian restarts it) leaves its counts, which keep counting in the sums;
    its gauges are dropped at the next scrape.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._collector = MultiProcessCollector(None, path=str(path))  # type: ignore[no-untyped-call]

    def collect(self) -> Iterator[Metric]:
        for name in glob.glob(os.path.join(self._path, "gauge_live*_*.db")):
            found = _PID_FILE.search(name)
            if found and not _alive(int(found.group(1))):
                mark_process_dead(int(found.group(1)), str(self._path))  # type: ignore[no-untyped-call]
        yield from self._collector.collect()  # type: ignore[no-untyped-call]


def workers_registry(path: Path) -> CollectorRegistry:
    """A registry of the workers' series alone (the ``/metrics`` a granian worker serves)."""
    registry = CollectorRegistry()
    registry.register(WorkersCollector(path))
    return registry


def mirror_cache_counts(
    rt: Runtime, hits: Callable[[], int], misses: Callable[[], int], size: Callable[[], int]
) -> None:
    """In a granian worker: the responder cache's counts, copied to the shared files every second
    (the cache counts with plain integers; a collector reading them at scrape time cannot be
    asked across processes)."""
    hit_counter = Counter("ocsp_cache_hits", "Responder cache hits since start", registry=rt.registry)
    miss_counter = Counter("ocsp_cache_misses", "Responder cache misses since start", registry=rt.registry)
    entries = Gauge(
        "ocsp_cache_entries", "Responses held in the responder cache", registry=rt.registry, multiprocess_mode="liveall"
    )

    async def mirror() -> None:
        copied = [0, 0]
        while True:
            now = [hits(), misses()]
            hit_counter.inc(max(0, now[0] - copied[0]))
            miss_counter.inc(max(0, now[1] - copied[1]))
            copied = now
            entries.set(size())
            await asyncio.sleep(MIRROR_EVERY)

    rt.tasks.append(mirror())
