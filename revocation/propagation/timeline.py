"""A revocation's propagation timeline: what reached where, and when, as typed values.

``build_timeline`` makes one from stored rows; :meth:`Timeline.to_json` gives the
JSON the admin API serves and the coordination store saves, and
:meth:`Timeline.from_json` reads a saved one back. Times are kept as they are
shown (ISO 8601 strings, seconds from the commit rounded to the microsecond), so
a saved timeline reads back to the same value it was saved from.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

from revocation.clock import iso
from revocation.coordination import CRLInstallation, CRLPublication, PresignedState, ProbeResult, ResponderState

ResponderStateName = Literal["applied", "pending", "gone"]


def _flat_json(value: object) -> dict[str, Any]:
    """A dataclass of plain fields (str, numbers, bool, None) as ``dataclasses.asdict`` gives it, without its
    recursive deep copy: the tracker saves a timeline for every revocation, a thousand a second in a burst."""
    return dict(vars(value))


def epoch_iso(seconds: float) -> str:
    return iso(datetime.datetime.fromtimestamp(seconds, datetime.UTC))


def since(at: float, committed_at: float) -> float:
    """Seconds from the commit, as shown: rounded to the microsecond the ISO times carry."""
    return round(at - committed_at, 6)


def valid_presigned(state: PresignedState | None, seq: int) -> PresignedState | None:
    """The store's row if it is a "revoked" response reflecting the revocation at ``seq``."""
    if state is None or state.status != "revoked" or state.source_seq < seq:
        return None
    return state


def is_live(responder: ResponderState, now: float, gone_after: float) -> bool:
    """Heard from within ``gone_after`` of ``now``; one whose process has ended (on this machine) only up
    to its last heartbeat, so it neither holds a timeline open nor is blamed for one committed after it."""
    if responder.ended:
        return now <= responder.last_seen
    return now - responder.last_seen <= gone_after


def gone_without(
    responder: ResponderState,
    presigned: PresignedState | None,
    applied: bool,
    now: float,
    committed_at: float,
    gone_after: float,
) -> bool:
    """Whether the responder was live at the commit and went gone without applying the revocation: the
    SLO can then be met only by the responders still live, and the timeline says so."""
    stored_at = None if presigned is None else presigned.stored_at
    return (
        not applied
        and not is_live(responder, now, gone_after)
        and is_live(responder, committed_at, gone_after)
        and (stored_at is None or responder.started_at <= stored_at)
    )


def counts(responder: ResponderState, presigned: PresignedState | None, now: float, gone_after: float) -> bool:
    """Whether the responder must have the revocation before ``ocsp_all_responders`` is complete:
    it is live, and it was running when the response was stored (one started later loaded it at
    start and never answered "good")."""
    stored_at = None if presigned is None else presigned.stored_at
    return is_live(responder, now, gone_after) and (stored_at is None or responder.started_at <= stored_at)


@dataclasses.dataclass(frozen=True)
class Moment:
    """When a stage was reached."""

    at: str
    seconds: float

    @classmethod
    def of(cls, at: float, committed_at: float) -> Moment:
        return cls(epoch_iso(at), since(at, committed_at))

    def to_json(self) -> dict[str, Any]:
        return {"at": self.at, "seconds": self.seconds}


@dataclasses.dataclass(frozen=True)
class Unrecorded:
    """A stage reached at a time nobody recorded (a pre-signed row without its storage time)."""

    def to_json(self) -> dict[str, Any]:
        return {"at": None, "seconds": None}


def _moment(data: Mapping[str, Any]) -> Moment | Unrecorded:
    return Unrecorded() if data["at"] is None else Moment(data["at"], data["seconds"])


@dataclasses.dataclass(frozen=True)
class ResponderProgress:
    """One responder's part: whether (and when) it applied the revocation's response."""

    responder_id: str
    url: str
    state: ResponderStateName
    applied_at: str | None
    seconds: float | None
    applied_change: int
    last_seen: str
    counted: bool  # whether ocsp_all_responders waits for it

    def to_json(self) -> dict[str, Any]:
        return _flat_json(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ResponderProgress:
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls)})


@dataclasses.dataclass(frozen=True)
class CRLSighting:
    """The first CRL of the certificate's shard that carries the revocation."""

    at: str
    seconds: float
    kind: str
    number: int
    shard: int

    @classmethod
    def of(cls, crl: CRLPublication, committed_at: float) -> CRLSighting:
        return cls(epoch_iso(crl.published_at), since(crl.published_at, committed_at), crl.kind, crl.number, crl.shard)

    def to_json(self) -> dict[str, Any]:
        return _flat_json(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CRLSighting:
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls)})


@dataclasses.dataclass(frozen=True)
class ProbeSighting:
    """A black-box prober's first "revoked" from one responder URL."""

    responder_url: str
    seen_at: str
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return _flat_json(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ProbeSighting:
        return cls(data["responder_url"], data["seen_at"], data["seconds"])


def probe_sightings(probes: Sequence[ProbeResult], seq: int, committed_at: float) -> tuple[ProbeSighting, ...]:
    """The probes of the revocation at ``seq`` (a certificate's earlier revocations have their own)."""
    return tuple(
        ProbeSighting(p.responder_url, epoch_iso(p.seen_at), since(p.seen_at, committed_at))
        for p in probes
        if p.seq == seq
    )


@dataclasses.dataclass(frozen=True)
class RelyingPartySighting:
    """A relying party's CRL sync agent: its first installation of a CRL of the certificate's shard
    that carries the revocation (published from a log position at or past it)."""

    agent: str
    at: str
    seconds: float
    kind: str
    number: int

    def to_json(self) -> dict[str, Any]:
        return _flat_json(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RelyingPartySighting:
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls)})


def relying_party_sightings(
    installations: Iterable[CRLInstallation],
    seq: int,
    committed_at: float,
    saved: Iterable[RelyingPartySighting] = (),
) -> tuple[RelyingPartySighting, ...]:
    """Per agent, the earliest installation of a CRL published from a position ``>= seq`` (one from
    before the revocation does not list it), merged with sightings saved before; earliest first."""
    best: dict[str, RelyingPartySighting] = {s.agent: s for s in saved}
    for i in installations:
        if i.position < seq:
            continue
        sighting = RelyingPartySighting(
            i.agent, epoch_iso(i.installed_at), since(i.installed_at, committed_at), i.kind, i.number
        )
        known = best.get(i.agent)
        if known is None or sighting.seconds < known.seconds:
            best[i.agent] = sighting
    return tuple(sorted(best.values(), key=lambda s: (s.seconds, s.agent)))


@dataclasses.dataclass(frozen=True)
class Timeline:
    """The propagation of one revocation (the one logged at ``seq``) of a certificate."""

    issuer_id: str
    serial: int
    seq: int
    committed_at: str
    superseded: bool  # released from hold since: nothing is waited for any more
    presigned: Moment | Unrecorded | None
    responders: tuple[ResponderProgress, ...]
    ocsp_all_responders: Moment | None
    crl: CRLSighting | None
    probes: tuple[ProbeSighting, ...]
    pending: tuple[str, ...]  # ids of the counted responders still without it
    slo_seconds: float
    slo_met: bool | None  # None while it can still go either way
    # False for an external issuer whose key pca does not hold: pca publishes no CRL for it.
    crl_published: bool = True
    # Relying parties' CRL sync agents that installed a CRL listing it; optional, never in slo_met or missing().
    relying_parties: tuple[RelyingPartySighting, ...] = ()
    # Responders live at the commit that went gone without it: slo_met is then met by the live ones only.
    gone_without: tuple[str, ...] = ()

    def missing(self) -> list[str]:
        """The channels the revocation has not reached (a CRL only where pca publishes one). Relying
        parties are not channels pca must reach: their agents are optional and outside its control."""
        channels: list[tuple[str, object]] = [("ocsp_all_responders", self.ocsp_all_responders)]
        if self.crl_published:
            channels.append(("crl", self.crl))
        return [name for name, got in channels if not got]

    def to_json(self) -> dict[str, Any]:
        return {
            "issuer_id": self.issuer_id,
            "serial": f"{self.serial:x}",
            "seq": self.seq,
            "committed_at": self.committed_at,
            "superseded": self.superseded,
            "presigned": None if self.presigned is None else self.presigned.to_json(),
            "responders": [r.to_json() for r in self.responders],
            "ocsp_all_responders": None if self.ocsp_all_responders is None else self.ocsp_all_responders.to_json(),
            "crl": None if self.crl is None else self.crl.to_json(),
            "probes": [p.to_json() for p in self.probes],
            "pending": list(self.pending),
            "slo_seconds": self.slo_seconds,
            "slo_met": self.slo_met,
            "crl_published": self.crl_published,
            "relying_parties": [r.to_json() for r in self.relying_parties],
            "gone_without": list(self.gone_without),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Timeline:
        """A timeline as ``to_json`` wrote it (the coordination store keeps them as JSON)."""
        presigned, ocsp, crl = data["presigned"], data["ocsp_all_responders"], data["crl"]
        return cls(
            issuer_id=data["issuer_id"],
            serial=int(data["serial"], 16),
            seq=data["seq"],
            committed_at=data["committed_at"],
            superseded=data["superseded"],
            presigned=None if presigned is None else _moment(presigned),
            responders=tuple(ResponderProgress.from_json(r) for r in data["responders"]),
            ocsp_all_responders=None if ocsp is None else Moment(ocsp["at"], ocsp["seconds"]),
            crl=None if crl is None else CRLSighting.from_json(crl),
            probes=tuple(ProbeSighting.from_json(p) for p in data["probes"]),
            pending=tuple(data["pending"]),
            slo_seconds=data["slo_seconds"],
            slo_met=data["slo_met"],
            crl_published=data.get("crl_published", True),
            # Saved before relying parties were tracked: none.
            relying_parties=tuple(RelyingPartySighting.from_json(r) for r in data.get("relying_parties", ())),
            gone_without=tuple(data.get("gone_without", ())),  # saved before it was recorded: none known
        )


def build_timeline(
    *,
    issuer_id: str,
    serial: int,
    seq: int,
    committed_at: float,
    superseded: bool,
    presigned: PresignedState | None,
    responders: Sequence[ResponderState],
    applied: dict[str, float],
    crl: CRLPublication | None,
    probes: Sequence[ProbeResult],
    now: float,
    gone_after: float,
    slo_seconds: float,
    crl_published: bool = True,
    installations: Sequence[CRLInstallation] = (),
) -> Timeline:
    """The timeline from what was found; ``presigned`` must already be ``valid_presigned``."""
    stored_at = None if presigned is None else presigned.stored_at
    entries: list[ResponderProgress] = []
    counted_times: list[float] = []
    pending: list[str] = []
    missed: list[str] = []
    for r in responders:
        live = is_live(r, now, gone_after)
        at = applied.get(r.responder_id)
        counted = counts(r, presigned, now, gone_after)
        state: ResponderStateName = "gone" if not live else ("applied" if at is not None else "pending")
        entries.append(
            ResponderProgress(
                responder_id=r.responder_id,
                url=r.url,
                state=state,
                applied_at=None if at is None else epoch_iso(at),
                seconds=None if at is None else since(at, committed_at),
                applied_change=r.applied_change,
                last_seen=epoch_iso(r.last_seen),
                counted=counted,
            )
        )
        if gone_without(r, presigned, at is not None, now, committed_at, gone_after):
            missed.append(r.responder_id)
        if counted:
            if at is None:
                pending.append(r.responder_id)
            else:
                counted_times.append(at)
    ocsp = Moment.of(max(counted_times), committed_at) if counted_times and not pending else None
    if superseded and ocsp is None:
        pending = []  # the certificate is good again: nothing is waited for any more
    slo_met: bool | None
    if ocsp is not None:
        slo_met = ocsp.seconds <= slo_seconds
    elif pending and now - committed_at > slo_seconds:
        slo_met = False  # already missed, however it ends
    else:
        slo_met = None
    presigned_moment: Moment | Unrecorded | None
    if presigned is None:
        presigned_moment = None
    elif stored_at is None:
        presigned_moment = Unrecorded()
    else:
        presigned_moment = Moment.of(stored_at, committed_at)
    return Timeline(
        issuer_id=issuer_id,
        serial=serial,
        seq=seq,
        committed_at=epoch_iso(committed_at),
        superseded=superseded,
        presigned=presigned_moment,
        responders=tuple(entries),
        ocsp_all_responders=ocsp,
        crl=None if crl is None else CRLSighting.of(crl, committed_at),
        probes=probe_sightings(probes, seq, committed_at),
        pending=tuple(pending),
        slo_seconds=slo_seconds,
        slo_met=slo_met,
        crl_published=crl_published,
        relying_parties=relying_party_sightings(installations, seq, committed_at),
        gone_without=tuple(missed),
    )
