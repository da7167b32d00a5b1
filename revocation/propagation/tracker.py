"""The propagation tracker: how long each revocation takes to reach every channel.

For a revocation committed to the log at ``committed_at`` it follows

- ``presigned``: the response store holds a "revoked" response reflecting it;
- each live responder: the first progress report of the responder at or past
  that response's change (``ResponderRegistry.first_applied``);
- ``ocsp_all_responders``: the last of those, over the responders that were live
  and already running when the response was stored (one started later loaded it
  at start and never answered otherwise);
- ``crl``: the first CRL (full or delta) of the certificate's shard published
  from a log position at or past the revocation;
- ``probe``: what black-box probers saw over HTTP, when they report it;
- ``relying_party``: when each relying party's CRL sync agent installed a CRL
  listing it (``revocation.propagation.relying_parties``). Informative only: it
  never counts toward ``slo_met`` or ``Timeline.missing()``, since agents are
  optional and outside pca's control; a followed revocation waits (at most
  ``give_up_after``) for the agents known for its shard, so their figures are observed.

``timeline`` computes this from stored data only, in any process. ``run`` follows
the log from where it stands at start (history is not replayed), keeps the new
revocations in memory until both channels (all responders, a CRL) are complete or
``give_up_after`` has passed, then exports the figures to Prometheus and saves the
finished timeline, which outlives the progress rows pruned after ``keep_progress``.

Times are epoch seconds from the hosts' wall clocks (NTP); seconds are counted
from the commit. A responder whose last heartbeat is older than ``gone_after`` is
"gone": it is listed but no longer holds ``ocsp_all_responders`` open (one gone without the revocation is
named in ``gone_without``). Its ``ocsp_responder_up`` is 0 once silent for ``down_after`` (a few heartbeats).

An on-demand timeline of a revocation the tracker did not save is the best the
stored rows can say: after a response is re-signed (refresh) or progress rows are
pruned, the times it finds may be later than the real ones.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from prometheus_client import CollectorRegistry

from revocation.coordination import (
    CRLPublication,
    InstallationLog,
    PresignedPositions,
    PresignedState,
    ProbeResult,
    ProbeStore,
    PublicationLog,
    ResponderRegistry,
    ResponderState,
    SavedTimeline,
    TimelineArchive,
)
from revocation.errors import ConfigError
from revocation.eventlog import EventLog, RecordedEvent, read_seqs
from revocation.events import CertificateHoldReleased, CertificateRevoked, cert_stream
from revocation.projection import CRLEntries, IssuerDirectory
from revocation.propagation.metrics import PropagationMetrics, gauge_responders
from revocation.propagation.relying_parties import KEEP_INSTALLATIONS, AgentWatch, watch_agents
from revocation.propagation.timeline import (
    CRLSighting,
    Timeline,
    build_timeline,
    counts,
    probe_sightings,
    relying_party_sightings,
    valid_presigned,
)
from revocation.waiting import wait_event

log = logging.getLogger("pca.tracker")

READ_BATCH = 1000
MAX_BACKOFF = 5.0  # seconds between attempts while the database is unreachable
PRUNE_EVERY = 60.0  # seconds between prunings of responder progress
MIN_STEP_SECONDS = 0.2  # steps (each looks at all it follows) come no oftener, however often commits wake it


class PropagationRecords(
    ResponderRegistry, PresignedPositions, PublicationLog, InstallationLog, ProbeStore, TimelineArchive, Protocol
):
    """What the tracker reads and keeps in the coordination store: everything but the leases."""


class TrackedView(CRLEntries, IssuerDirectory, Protocol):
    """What the tracker reads of the projection: CRL shards, and which issuers have CRLs at all."""


ISSUERS_REFRESH_SECONDS = 10.0  # how often the tracker reads which issuers pca publishes CRLs for


@dataclasses.dataclass
class _Tracked:
    """A revocation followed by ``run`` until it has reached every channel."""

    issuer_id: str
    serial: int
    seq: int
    committed_at: float
    shard: int | None = None  # None until the projection has the certificate
    presigned: PresignedState | None = None  # the first valid row seen (a refresh re-stores it later)
    applied: dict[str, float] = dataclasses.field(default_factory=dict)
    crl: CRLPublication | None = None
    crl_published: bool = True  # False: an issuer without its key in pca; OCSP alone completes it
    agents: AgentWatch = dataclasses.field(default_factory=AgentWatch)  # relying parties' sync agents

    @property
    def key(self) -> tuple[str, int]:
        return (self.issuer_id, self.serial)


class PropagationTracker:
    def __init__(
        self,
        log: EventLog,
        view: TrackedView,
        coord: PropagationRecords,
        registry: CollectorRegistry,
        *,
        slo_seconds: float = 5.0,
        gone_after: float = 30.0,
        down_after: float | None = None,
        poll_seconds: float = 0.25,
        give_up_after: float = 600.0,
        keep_progress: float = 3600.0,
        forget_after: float = 3600.0,
        max_pending: int = 100_000,
        now: Callable[[], float] = time.time,
    ) -> None:
        for name, value in (
            ("slo_seconds", slo_seconds),
            ("gone_after", gone_after),
            ("poll_seconds", poll_seconds),
            ("give_up_after", give_up_after),
            ("max_pending", max_pending),
        ):
            if not value > 0:
                raise ConfigError(f"{name} must be positive, got {value}")
        if keep_progress <= give_up_after:
            raise ConfigError(
                f"keep_progress ({keep_progress}) must be longer than give_up_after ({give_up_after}): "
                "a revocation still followed needs its progress rows"
            )
        if down_after is not None and not 0 < down_after <= gone_after:
            raise ConfigError(f"down_after must be positive and at most gone_after ({gone_after}), got {down_after}")
        if forget_after <= gone_after:
            raise ConfigError(f"forget_after ({forget_after}) must be longer than gone_after ({gone_after})")
        self._log = log
        self._view = view
        self._coord = coord
        self.slo_seconds = slo_seconds
        self.gone_after = gone_after
        self._down_after = gone_after if down_after is None else down_after
        self._poll = poll_seconds
        self._give_up_after = give_up_after
        self._keep_progress = keep_progress
        self._forget_after = forget_after
        self._max_pending = max_pending
        self._now = now
        self._wake = asyncio.Event()
        self._position: int | None = None  # the last seq looked at; None until the first step
        self._tracked: dict[tuple[str, int], _Tracked] = {}
        self._last_prune: float | None = None
        self._gauged: set[str] = set()  # responder ids with gauge samples
        self._keyless: set[str] = set()  # issuers pca publishes no CRL for (it holds no key)
        self._issuers_read: float | None = None
        self._metrics = PropagationMetrics(registry, slo_seconds)

    def wake(self) -> None:
        """Look at the log now rather than at the next poll (call from the event loop's thread)."""
        self._wake.set()

    # --- on demand ----------------------------------------------------------------------------

    async def timeline(self, issuer_id: str, serial: int) -> dict[str, Any] | None:
        """The JSON of :meth:`find_timeline` (``Timeline.to_json``, what the admin API serves), in the form the
        coordination store hands a saved timeline back in, so the two compare directly."""
        found = await self.find_timeline(issuer_id, serial)
        return None if found is None else found.to_json()

    async def find_timeline(self, issuer_id: str, serial: int) -> Timeline | None:
        """The timeline of the certificate's latest revocation; None if it was never revoked."""
        events = await self._log.read_stream(cert_stream(issuer_id, serial))
        revocation = next((e for e in reversed(events) if e.type == CertificateRevoked.TYPE), None)
        if revocation is None:
            return None
        seq = revocation.seq
        committed_at = revocation.recorded_at.timestamp()
        superseded = any(e.type == CertificateHoldReleased.TYPE and e.seq > seq for e in events)
        stored = await self._coord.timeline(issuer_id, serial, seq)
        saved = None if stored is None else Timeline.from_json(stored)
        if saved is not None and saved.ocsp_all_responders is not None:
            crl = saved.crl
            shard = saved.crl.shard if saved.crl is not None else await self._shard(issuer_id, serial)
            if crl is None and saved.crl_published and shard is not None:  # given up on before a CRL: look again
                publication = await self._coord.first_crl(issuer_id, shard, seq)
                crl = None if publication is None else CRLSighting.of(publication, committed_at)
            installations = [] if shard is None else await self._coord.crl_installations(issuer_id, shard, seq)
            return dataclasses.replace(
                saved,
                superseded=superseded,
                # Probers and sync agents report on their own schedule, often after the timeline was saved.
                probes=probe_sightings(await self._coord.probes(issuer_id, serial), seq, committed_at),
                crl=crl,
                relying_parties=relying_party_sightings(installations, seq, committed_at, saved.relying_parties),
            )
        key = (issuer_id, serial)
        presigned = valid_presigned((await self._coord.presigned([key])).get(key), seq)
        responders = await self._coord.responders()
        applied: dict[str, float] = {}
        if presigned is not None:
            for r in responders:
                at = await self._coord.first_applied(r.responder_id, presigned.change_id)
                if at is not None:
                    applied[r.responder_id] = at
        shard = await self._shard(issuer_id, serial)
        return build_timeline(
            issuer_id=issuer_id,
            serial=serial,
            seq=seq,
            committed_at=committed_at,
            superseded=superseded,
            presigned=presigned,
            responders=responders,
            applied=applied,
            crl=None if shard is None else await self._coord.first_crl(issuer_id, shard, seq),
            probes=await self._coord.probes(issuer_id, serial),
            now=self._now(),
            gone_after=self.gone_after,
            slo_seconds=self.slo_seconds,
            crl_published=await self._crl_published(issuer_id),
            installations=[] if shard is None else await self._coord.crl_installations(issuer_id, shard, seq),
        )

    async def _crl_published(self, issuer_id: str) -> bool:
        """Whether pca publishes CRLs for the issuer (it holds its key); re-read every few seconds."""
        now = self._now()
        if self._issuers_read is None or now - self._issuers_read >= ISSUERS_REFRESH_SECONDS:
            self._keyless = {i.issuer_id for i in await self._view.issuers() if i.key_ref is None}
            self._issuers_read = now
        return issuer_id not in self._keyless

    async def _shard(self, issuer_id: str, serial: int) -> int | None:
        """The certificate's CRL shard; None while the projection lacks it."""
        records = await self._view.crl_records(issuer_id, [serial])
        return records[0].shard if records else None

    # --- following the log ------------------------------------------------------------------------

    async def run(self) -> None:
        """Follow the log and the stores for ever; a failing step is logged and retried, with backoff."""
        delay = self._poll
        failing = False
        while True:
            self._wake.clear()
            started = time.monotonic()
            try:
                await self.step()
            except Exception as exc:  # the database may be down for a while: keep going
                if failing:
                    log.warning("propagation tracker still failing: %s", exc)
                else:
                    log.exception("propagation tracker step failed; retrying")
                failing = True
                delay = min(delay * 2, MAX_BACKOFF)
            else:
                if failing:
                    log.info("propagation tracker recovered")
                failing = False
                delay = self._poll
            await wait_event(self._wake, delay)
            await asyncio.sleep(max(0.0, min(self._poll, MIN_STEP_SECONDS) - (time.monotonic() - started)))

    @property
    def pending(self) -> int:
        return len(self._tracked)

    def position(self) -> int | None:  # the last log seq looked at (eventlog_position{role="tracker"})
        return self._position

    async def step(self) -> None:
        """One round: take new revocations from the log, advance every pending one, finish those
        complete (or too old), refresh the responder gauges, prune old progress.

        The first step only notes where the log stands: revocations before it are not followed.
        """
        if self._position is None:
            self._position = await self._log.head()
        await self._follow()
        now = self._now()
        responders = await self._coord.responders()
        if self._tracked:
            await self._advance(responders)
            await self._finish(responders, now)
        self._metrics.pending.set(len(self._tracked))
        await self._gauge_responders(responders, now)
        if self._last_prune is None or now - self._last_prune >= PRUNE_EVERY:
            pruned = await self._coord.prune_progress(now - self._keep_progress)
            await self._coord.prune_crl_installations(now - max(KEEP_INSTALLATIONS, self._keep_progress))
            if pruned:
                log.debug("pruned %d responder progress rows", pruned)
            self._last_prune = now

    async def _follow(self) -> None:
        assert self._position is not None
        while True:
            index = await self._log.read_index(self._position, READ_BATCH)
            if not index:
                return
            wanted = [
                seq for seq, _, type_ in index if type_ in (CertificateRevoked.TYPE, CertificateHoldReleased.TYPE)
            ]
            for record in await read_seqs(self._log, wanted):
                self._take(record)
            self._position = index[-1][0]
            if len(index) < READ_BATCH:
                return

    def _take(self, record: RecordedEvent) -> None:
        event = record.event
        if isinstance(event, CertificateHoldReleased):
            # Good again: the revocation no longer has anywhere to reach.
            self._tracked.pop((event.issuer_id, int(event.serial, 16)), None)
        elif isinstance(event, CertificateRevoked):
            key = (event.issuer_id, int(event.serial, 16))
            if key not in self._tracked and len(self._tracked) >= self._max_pending:
                self._metrics.untracked.inc()
                return
            # A newer revocation of the same certificate (a hold made permanent) replaces the older.
            self._tracked[key] = _Tracked(key[0], key[1], record.seq, record.recorded_at.timestamp())

    async def _advance(self, responders: Sequence[ResponderState]) -> None:
        tracked = list(self._tracked.values())
        # The CRL shard of each certificate, once.
        by_issuer: dict[str, list[_Tracked]] = {}
        for t in tracked:
            if t.shard is None:
                by_issuer.setdefault(t.issuer_id, []).append(t)
        for issuer_id, group in by_issuer.items():
            shards = {r.serial: r.shard for r in await self._view.crl_records(issuer_id, [t.serial for t in group])}
            published = await self._crl_published(issuer_id)
            for t in group:
                t.shard = shards.get(t.serial)
                t.crl_published = published
        # Pre-signed responses not seen yet.
        unsigned = [t for t in tracked if t.presigned is None]
        if unsigned:
            found = await self._coord.presigned([t.key for t in unsigned])
            for t in unsigned:
                t.presigned = valid_presigned(found.get(t.key), t.seq)
        # Responders that got past a change we still wait for.
        for r in responders:
            waiting = [
                t
                for t in tracked
                if t.presigned is not None
                and r.responder_id not in t.applied
                and r.applied_change >= t.presigned.change_id
            ]
            if not waiting:
                continue
            times = await self._coord.applied_times(
                r.responder_id, [t.presigned.change_id for t in waiting if t.presigned]
            )
            for t in waiting:
                assert t.presigned is not None
                at = times.get(t.presigned.change_id)
                if at is not None:
                    t.applied[r.responder_id] = at
        # CRLs: one read per shard for all its pending revocations.
        by_shard: dict[tuple[str, int], list[_Tracked]] = {}
        for t in tracked:
            if t.crl is None and t.shard is not None and t.crl_published:
                by_shard.setdefault((t.issuer_id, t.shard), []).append(t)
        for (issuer_id, shard), group in by_shard.items():
            publications = await self._coord.crl_publications(issuer_id, shard, min(t.seq for t in group))
            for t in group:
                t.crl = next((p for p in publications if p.position >= t.seq), None)
        await watch_agents(self._coord, tracked, self._metrics.observe_relying_party)

    async def _finish(self, responders: Sequence[ResponderState], now: float) -> None:
        ended = [(t, self._complete(t, responders, now)) for t in self._tracked.values()]
        ended = [(t, complete) for t, complete in ended if complete or now - t.committed_at > self._give_up_after]
        if not ended:
            return
        probes = await self._coord.probes_of([t.key for t, _ in ended])  # one read for all of them
        done = [(t, self._timeline_of(t, responders, probes.get(t.key, []), now), complete) for t, complete in ended]
        # Saved first: if saving fails, they stay pending and nothing is counted twice.
        await self._coord.save_timelines(
            [SavedTimeline(t.issuer_id, t.serial, t.seq, tl.to_json()) for t, tl, _ in done]
        )
        for t, timeline, complete in done:
            del self._tracked[t.key]
            self._metrics.observe(timeline)
            if timeline.gone_without:
                gone = ", ".join(timeline.gone_without)
                log.warning("revocation of %s/%x (seq %d): responders gone without it: %s", *t.key, t.seq, gone)
            if not complete:
                missing = timeline.missing()
                # Only relying parties lacking it: optional agents, outside pca's control; not a warning.
                log.log(
                    logging.WARNING if missing else logging.INFO,
                    "revocation of %s/%x (seq %d) gave up after %.0f s; still missing: %s",
                    t.issuer_id,
                    t.serial,
                    t.seq,
                    self._give_up_after,
                    ", ".join([*missing, *(f"relying party {a}" for a in t.agents.waiting())]),
                )

    def _complete(self, t: _Tracked, responders: Sequence[ResponderState], now: float) -> bool:
        """Both channels done (what ``build_timeline`` would say, without building it for every one), and
        every known relying party has it (so its figure is observed; it does not count toward the SLO)."""
        if (t.crl is None and t.crl_published) or t.presigned is None or t.agents.waiting():
            return False
        counted = [r for r in responders if counts(r, t.presigned, now, self.gone_after)]
        return bool(counted) and all(r.responder_id in t.applied for r in counted)

    def _timeline_of(
        self, t: _Tracked, responders: Sequence[ResponderState], probes: Sequence[ProbeResult], now: float
    ) -> Timeline:
        return build_timeline(
            issuer_id=t.issuer_id,
            serial=t.serial,
            seq=t.seq,
            committed_at=t.committed_at,
            superseded=False,
            presigned=t.presigned,
            responders=responders,
            applied=t.applied,
            crl=t.crl,
            probes=probes,
            now=now,
            gone_after=self.gone_after,
            slo_seconds=self.slo_seconds,
            crl_published=t.crl_published,
            installations=list(t.agents.installed.values()),
        )

    async def _gauge_responders(self, responders: Sequence[ResponderState], now: float) -> None:
        down, forget = self._down_after, self._forget_after
        self._gauged = await gauge_responders(
            self._coord, self._metrics, responders, now, down_after=down, forget_after=forget, gauged=self._gauged
        )
