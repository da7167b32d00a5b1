"""What the status page shows, read from the stores (``revocation.admin.status_page`` serves it).

Issuers with their signer's expiry and certificate counts, the age of each CRL shard's latest
full and delta CRL, the responders with their lag and liveness, a histogram of how long the
revocations of the last hour took to reach every live responder and the first CRL, and the
latest revocations with their timelines. Nothing here is secret: no token, key reference, actor
or request id is read into it.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Callable
from typing import Any, Protocol

from revocation.coordination import Coordination, CRLPublication
from revocation.eventlog import EventLog
from revocation.events import CertificateRevoked
from revocation.issuer_summary import PcaURLs, SummaryView, issuer_summaries
from revocation.propagation.timeline import Timeline

WINDOW_SECONDS = 3600  # the histogram covers the revocations of the last hour
TAIL_EVENTS = 5000  # the log tail read for them
MAX_TIMELINES = 200  # the histogram's revocations at most (the newest)
RECENT = 15  # revocations listed with their timelines
# Upper bounds (seconds) of the histogram's buckets; the last one is "more".
BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
PUBLICATION_WINDOWS = (10_000, 1_000_000, None)  # log positions searched back for a shard's latest CRLs


class Timelines(Protocol):
    async def find_timeline(self, issuer_id: str, serial: int) -> Timeline | None: ...


@dataclasses.dataclass(frozen=True)
class StatusSettings:
    urls: PcaURLs
    crl_interval_seconds: float  # a full CRL older than this is late
    delta_interval_seconds: float  # 0: no deltas
    heartbeat_seconds: float
    responder_gone_seconds: float
    slo_seconds: float


@dataclasses.dataclass(frozen=True)
class StatusSources:
    view: SummaryView
    log: EventLog
    coord: Coordination
    tracker: Timelines
    settings: StatusSettings
    now: Callable[[], float]


def bucket_of(seconds: float) -> int:
    """The index of the histogram bucket ``seconds`` falls in (``len(BUCKETS)``: beyond the last bound)."""
    for i, bound in enumerate(BUCKETS):
        if seconds <= bound:
            return i
    return len(BUCKETS)


async def _latest(coord: Coordination, issuer_id: str, shard: int, head: int) -> dict[str, CRLPublication]:
    """The shard's latest full and delta publications, searching back from the log's head."""
    for window in PUBLICATION_WINDOWS:
        start = 0 if window is None else max(0, head - window)
        found: dict[str, CRLPublication] = {}
        for pub in await coord.crl_publications(issuer_id, shard, start):
            if pub.kind not in found or pub.published_at >= found[pub.kind].published_at:
                found[pub.kind] = pub
        if found or start == 0:
            return found
    return {}


async def crl_shards(src: StatusSources, issuers: list[dict[str, Any]], head: int) -> list[dict[str, Any]]:
    """One row per CRL shard pca publishes: its latest full and delta CRL and their ages."""
    settings, now = src.settings, src.now()
    layout = settings.urls.crl_layout
    rows = []
    for issuer in issuers:
        if not issuer["key_held"]:
            continue
        for shard in layout.configured_shards(issuer["kind"]):
            latest = await _latest(src.coord, issuer["issuer_id"], shard, head)
            row: dict[str, Any] = {"issuer_id": issuer["issuer_id"], "shard": shard}
            row["url"] = layout.full_url(issuer["issuer_id"], shard)
            for kind in ("full", "delta"):
                pub = latest.get(kind)
                row[kind] = None if pub is None else {"number": pub.number, "age": max(0.0, now - pub.published_at)}
            full, delta = row["full"], row["delta"]
            late = full is None or full["age"] > settings.crl_interval_seconds
            if settings.delta_interval_seconds > 0:
                late = late or delta is None or delta["age"] > 2 * settings.delta_interval_seconds
            row["fresh"] = not late
            rows.append(row)
    return rows


async def responders(src: StatusSources) -> list[dict[str, Any]]:
    """Every responder that ever reported: changes behind the response store, and whether it is live."""
    settings, now = src.settings, src.now()
    last = await src.coord.last_change()
    out = []
    for r in sorted(await src.coord.responders(), key=lambda r: r.responder_id):
        silent = max(0.0, now - r.last_seen)
        if silent > settings.responder_gone_seconds or r.ended:  # ended: its process on this machine is gone
            state = "gone"
        elif silent > 3 * settings.heartbeat_seconds:
            state = "down"
        else:
            state = "up"
        out.append(
            {
                "responder_id": r.responder_id,
                "url": r.url,
                "lag_changes": max(0, last - r.applied_change),
                "silent_seconds": silent,
                "state": state,
            }
        )
    return out


def _seconds(moment: Any) -> float | None:
    seconds = getattr(moment, "seconds", None)
    return seconds if isinstance(seconds, int | float) else None


def timeline_row(revocation: dict[str, Any], timeline: Timeline | None) -> dict[str, Any]:
    row = dict(revocation)
    if timeline is None:
        return row | {"presigned": None, "ocsp": None, "crl": None, "slo": "unknown"}
    slo = "pending" if timeline.slo_met is None else ("met" if timeline.slo_met else "missed")
    crl = _seconds(timeline.crl) if timeline.crl_published else "none"
    row.update(presigned=_seconds(timeline.presigned), ocsp=_seconds(timeline.ocsp_all_responders), crl=crl, slo=slo)
    return row


async def recent_revocations(src: StatusSources) -> list[dict[str, Any]]:
    """The revocations of the last hour (at most ``MAX_TIMELINES``, newest first), each with its timeline."""
    head = await src.log.head()
    events = await src.log.read(max(0, head - TAIL_EVENTS), TAIL_EVENTS)
    since = datetime.datetime.fromtimestamp(src.now() - WINDOW_SECONDS, datetime.UTC)
    revocations = [e for e in events if e.type == CertificateRevoked.TYPE and e.recorded_at >= since]
    rows = []
    for event in reversed(revocations[-MAX_TIMELINES:]):
        issuer_id, serial = str(event.payload.get("issuer_id")), str(event.payload.get("serial"))
        timeline = await src.tracker.find_timeline(issuer_id, int(serial, 16))
        if timeline is not None and timeline.seq != event.seq:
            timeline = None  # revoked again since (after a hold's release): the newer one is listed too
        basics = {
            "seq": event.seq,
            "issuer_id": issuer_id,
            "serial": serial,
            "reason": event.payload.get("reason"),
            "committed_at": event.recorded_at,
        }
        rows.append(timeline_row(basics, timeline))
    return rows


def histogram(rows: list[dict[str, Any]]) -> dict[str, list[int]]:
    """Counts per bucket of the seconds to every live responder (``ocsp``) and to the first CRL (``crl``)."""
    out = {"ocsp": [0] * (len(BUCKETS) + 1), "crl": [0] * (len(BUCKETS) + 1)}
    for row in rows:
        for channel in out:
            seconds = row.get(channel)
            if isinstance(seconds, int | float):
                out[channel][bucket_of(seconds)] += 1
    return out


async def gather(src: StatusSources) -> dict[str, Any]:
    """Everything the page shows, as plain data (the page escapes it when it renders it)."""
    generated_at = datetime.datetime.fromtimestamp(src.now(), datetime.UTC)
    issuers = await issuer_summaries(src.view, src.settings.urls, generated_at)
    head = await src.log.head()
    revocations = await recent_revocations(src)
    return {
        "generated_at": generated_at,
        "head": head,
        "issuers": issuers,
        "crl_shards": await crl_shards(src, issuers, head),
        "responders": await responders(src),
        "histogram": histogram(revocations),
        "window_revocations": len(revocations),
        "recent": revocations[:RECENT],
        "slo_seconds": src.settings.slo_seconds,
    }
