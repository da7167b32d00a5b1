"""What the propagation tracker exports to Prometheus, and how a finished timeline is counted."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from revocation.coordination import PresignedPositions, ResponderRegistry, ResponderState
from revocation.propagation.timeline import Moment, Timeline

log = logging.getLogger("pca.tracker")

CHANNELS = ("presigned", "ocsp_all_responders", "crl", "probe")
# Relying parties' CRL sync agents: optional, observed once per (revocation, agent) when first seen; no
# incomplete count (an agent that never installs a CRL is not pca's to miss).
RELYING_PARTY = "relying_party"
# From a fast in-process path (tens of ms) to a CRL published every few minutes.
BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)


class PropagationMetrics:
    def __init__(self, registry: CollectorRegistry, slo_seconds: float) -> None:
        self._slo_seconds = slo_seconds
        self.ended: set[str] = set()  # responders whose process has ended, said once in the log
        self._seconds = Histogram(
            "revocation_propagation_seconds",
            "Seconds from a revocation's commit to its arrival on each channel",
            ["channel"],
            buckets=BUCKETS,
            registry=registry,
        )
        self._breaches = Counter(
            "revocation_propagation_slo_breaches",
            "Revocations that reached every live responder later than the SLO (or never, when given up on)",
            ["channel"],
            registry=registry,
        )
        self._incomplete = Counter(
            "revocation_propagation_incomplete",
            "Revocations given up on before reaching the channel",
            ["channel"],
            registry=registry,
        )
        self.untracked = Counter(
            "revocation_propagation_untracked",
            "Revocations not followed because too many were pending at once",
            registry=registry,
        )
        self.pending = Gauge("revocation_propagation_pending", "Revocations still being followed", registry=registry)
        self._lag = Gauge(
            "ocsp_responder_lag_changes",
            "Response-store changes a responder has not applied yet",
            ["responder_id"],
            registry=registry,
        )
        self._up = Gauge(
            "ocsp_responder_up",
            "1 while the responder heartbeats, 0 once it has been silent for a few heartbeats",
            ["responder_id"],
            registry=registry,
        )
        # Every series exported from the start, so a rate over a quiet period is 0 rather than absent.
        for channel in CHANNELS:
            self._seconds.labels(channel)
            self._incomplete.labels(channel)
        self._breaches.labels("ocsp_all_responders")
        self._seconds.labels(RELYING_PARTY)

    def observe(self, timeline: Timeline) -> None:
        """Count a finished timeline: its delays per channel, and what it missed."""
        presigned = timeline.presigned
        if isinstance(presigned, Moment):
            self._seconds.labels("presigned").observe(max(0.0, presigned.seconds))
        elif presigned is None:
            self._incomplete.labels("presigned").inc()
        ocsp = timeline.ocsp_all_responders
        if ocsp is not None:
            self._seconds.labels("ocsp_all_responders").observe(max(0.0, ocsp.seconds))
            if ocsp.seconds > self._slo_seconds:
                self._breaches.labels("ocsp_all_responders").inc()
        else:
            self._incomplete.labels("ocsp_all_responders").inc()
            if timeline.pending:  # live responders never got it: a breach however long the SLO
                self._breaches.labels("ocsp_all_responders").inc()
        crl = timeline.crl
        if crl is not None:
            self._seconds.labels("crl").observe(max(0.0, crl.seconds))
        elif timeline.crl_published:  # an issuer whose key pca lacks has no CRL from pca to wait for
            self._incomplete.labels("crl").inc()
        for probe in timeline.probes:
            self._seconds.labels("probe").observe(max(0.0, probe.seconds))

    def observe_relying_party(self, seconds: float) -> None:
        """A relying party's agent installed a CRL listing a followed revocation, ``seconds`` after its commit."""
        self._seconds.labels(RELYING_PARTY).observe(max(0.0, seconds))

    def gauge_responder(self, responder_id: str, up: bool, lag_changes: int) -> None:
        self._up.labels(responder_id).set(1.0 if up else 0.0)
        self._lag.labels(responder_id).set(lag_changes)

    def forget_responder(self, responder_id: str) -> None:
        """Drop the responder's series: one gone for good must not stay on dashboards as down."""
        self._up.remove(responder_id)
        self._lag.remove(responder_id)


class ResponderRecords(ResponderRegistry, PresignedPositions, Protocol):
    """What the responder gauges read: the responders, and the response store's last change."""


async def gauge_responders(
    coord: ResponderRecords,
    metrics: PropagationMetrics,
    responders: Sequence[ResponderState],
    now: float,
    *,
    down_after: float,
    forget_after: float,
    gauged: set[str],
) -> set[str]:
    """Set each responder's ``up`` (silent at most ``down_after``) and lag; forget those silent past
    ``forget_after`` (in the store too); drop the series of responders gone from ``gauged``. Returns the
    ids gauged now.

    A responder whose process is known to have ended on this machine (``ended``: killed, then replaced
    by a restart) has no series at all: it is not down, it is gone, and an alert on ``up == 0`` must not
    page for an hour after every restart. It stays in the store, where timelines still name it."""
    last = await coord.last_change() if responders else 0
    present: set[str] = set()
    listed: set[str] = set()
    for r in responders:
        silent = now - r.last_seen
        if silent > forget_after:
            log.info("forgetting responder %s, silent for %.0f s", r.responder_id, silent)
            await coord.forget_responder(r.responder_id)
            continue
        listed.add(r.responder_id)
        if r.ended:
            if r.responder_id not in metrics.ended:
                metrics.ended.add(r.responder_id)
                log.warning("responder %s is gone: its process on this machine has ended", r.responder_id)
            continue
        present.add(r.responder_id)
        metrics.gauge_responder(r.responder_id, silent <= down_after, max(0, last - r.applied_change))
    for rid in gauged - present:
        metrics.forget_responder(rid)
    metrics.ended &= listed
    return present
