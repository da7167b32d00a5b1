"""Prometheus series of a serving process that no single library module owns.

- what the API committed: ``certificates_issued_total{issuer,profile}``,
  ``certificates_revoked_total{issuer,reason}``;
- where each log-following role is: ``eventlog_head_seq``, ``eventlog_position{role}``,
  ``eventlog_lag_events{role}``;
- leaf certificates near expiry: ``certificates_expiring{issuer,within="7d"|"30d"}``;
- how close the stored OCSP responses are to their nextUpdate:
  ``ocsp_responses_oldest_this_update_timestamp_seconds``,
  ``ocsp_responses_earliest_next_update_timestamp_seconds``;
- signatures and signing failures per role and key backend (``revocation.keys.usage``);
- the granian workers' series: each worker writes its registry's exposition to a file in a
  directory ``pca serve`` makes for the run, and the ``/metrics`` that covers them adds them up.

Labels are issuers, reasons, roles and backends: never a serial or a request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import tempfile
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Metric, disable_created_metrics, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from pca.runtime import Runtime
from revocation.errors import PCAError
from revocation.eventlog import RecordedEvent
from revocation.keys.usage import SigningUsage

log = logging.getLogger("pca.metrics")

WORKERS_ENV = "PCA_WORKER_METRICS_DIR"
POSITION_EVERY = 5.0  # seconds between readings of the log's head and a role's position
EARLIEST_EVERY = 30.0  # the oldest response is found by a scan of the response store
EXPIRING_EVERY = 300.0  # certificates near expiry: a count over the status projection
EXPIRING_WINDOWS = (("7d", 7 * 86400), ("30d", 30 * 86400))
DUMP_EVERY = 1.0  # granian workers write their series to the run's directory this often

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


def export_tracker_position(rt: Runtime, position: Callable[[], int | None]) -> None:
    """The tracker's ``eventlog_position``: where it started (the head) until its first step."""

    async def at() -> int:
        found = position()
        return await rt.log.head() if found is None else found

    export_log_position(rt, "tracker", at)


class _Expiring(Collector):
    """``certificates_expiring{issuer,within}``, exported once read (0 for an issuer with none)."""

    def __init__(self) -> None:
        self.counts: dict[str, tuple[int, int]] | None = None

    def collect(self) -> Iterator[Metric]:
        if self.counts is not None:
            family = GaugeMetricFamily(
                "certificates_expiring",
                "Unrevoked, unexpired certificates whose notAfter falls within the window",
                labels=["issuer", "within"],
            )
            for issuer, counts in sorted(self.counts.items()):
                for (window, _), count in zip(EXPIRING_WINDOWS, counts, strict=True):
                    family.add_metric([issuer, window], count)
            yield family


def export_expiring(rt: Runtime) -> None:
    """Every few minutes: how many of each issuer's certificates expire within 7 and 30 days."""
    expiring = _Expiring()
    rt.registry.register(expiring)
    (_, soon), (_, later) = EXPIRING_WINDOWS

    async def follow() -> None:
        while True:
            try:
                now = int(rt.clock.time())
                found = await rt.view.expiring_counts(now, now + soon, now + later)
                issuers = await rt.view.issuers()
            except (PCAError, OSError) as exc:
                log.warning("cannot count the certificates near expiry for metrics: %s", exc)
            else:
                expiring.counts = {i.issuer_id: found.get(i.issuer_id, (0, 0)) for i in issuers}
            await asyncio.sleep(EXPIRING_EVERY)

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
            # An empty store (a fresh install) is read again soon: the gauges appear once responses exist.
            await asyncio.sleep(EARLIEST_EVERY if freshness.found is not None else 1.0)

    rt.tasks.append(follow())


# --- granian workers ----------------------------------------------------------------------------
#
# Each worker counts in its own registry as any process does (the OCSP hot path pays no more than
# under uvicorn), and writes the registry's exposition to a file of its own in the run's directory
# every second; the /metrics that covers the workers reads those files at scrape time and adds them
# up: counters and histograms summed over the live workers, gauges per worker (label ``pid``).


def worker_metrics_dir() -> Path | None:
    """The run's directory, in a granian worker (``pca serve`` names it in its environment)."""
    value = os.environ.get(WORKERS_ENV)
    return Path(value) if value else None


def make_workers_dir() -> Path:
    """A fresh directory for one run's worker metrics (removed by ``remove_workers_dir``)."""
    return Path(tempfile.mkdtemp(prefix="pca-metrics-"))


def remove_workers_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def _write_atomically(path: Path, data: bytes) -> None:
    partial = path.with_suffix(".partial")
    partial.write_bytes(data)
    partial.replace(path)


def publish_worker_metrics(rt: Runtime, path: Path) -> None:
    """In a granian worker: write this worker's series to a file of its own in ``path`` every second."""
    rt.tasks.append(write_series(rt.registry, path / f"worker-{os.getpid()}.prom"))


def publish_main_metrics(registry: CollectorRegistry, path: Path) -> Coroutine[Any, Any, None]:
    """In ``pca serve`` with no admin listener: its own roles' series (pre-signer, publisher...) for
    the workers' ``/metrics`` to serve beside theirs; its gauges carry no ``pid`` label."""
    return write_series(registry, path / f"main-{os.getpid()}.prom")


async def write_series(registry: CollectorRegistry, target: Path) -> None:
    """Write ``registry``'s exposition to ``target`` every second, for ever."""
    disable_created_metrics()  # type: ignore[no-untyped-call]  # one family per name: sums need no creation times

    def write() -> None:
        with contextlib.suppress(OSError):  # the directory went with the server that made it
            _write_atomically(target, generate_latest(registry))

    while True:
        await asyncio.to_thread(write)
        await asyncio.sleep(DUMP_EVERY)


_WORKER_FILE = re.compile(r"(worker|main)-(\d+)\.prom$")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class WorkersCollector(Collector):
    """The granian workers' series, read from their files at scrape time.

    A worker that died (granian restarts it) is left out, and its file removed: its counters
    restart with its successor, which Prometheus's ``rate()`` reads as a counter reset.
    """

    def __init__(self, path: Path) -> None:
        self._path = path

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        sums: dict[tuple[str, str, tuple[tuple[str, str], ...]], float] = {}
        for file in sorted(self._path.glob("*.prom")):
            found = _WORKER_FILE.search(file.name)
            if found is None:
                continue
            main, pid = found.group(1) == "main", found.group(2)
            if not _alive(int(pid)):
                file.unlink(missing_ok=True)
                continue
            try:
                text = file.read_text()
            except OSError:
                continue
            for family in text_string_to_metric_families(text):
                merged = families.setdefault(family.name, Metric(family.name, family.documentation, family.type))
                for sample in family.samples:
                    labels = dict(sample.labels)
                    if family.type in ("gauge", "unknown", "info", "stateset"):
                        merged.add_sample(sample.name, labels if main else {**labels, "pid": pid}, sample.value)
                    else:
                        key = (family.name, sample.name, tuple(sorted(labels.items())))
                        sums[key] = sums.get(key, 0.0) + sample.value
        for (family_name, sample_name, labels_items), value in sums.items():
            families[family_name].add_sample(sample_name, dict(labels_items), value)
        yield from families.values()


def workers_registry(path: Path) -> CollectorRegistry:
    """A registry of the workers' series alone (the ``/metrics`` a granian worker serves)."""
    registry = CollectorRegistry()
    registry.register(WorkersCollector(path))
    return registry
