"""What roles in separate processes tell each other through the database.

- Leases: exactly one pre-signer and one CRL publisher are active at a time; a
  standby takes over when the holder stops renewing.
- Responder heartbeats and progress: each responder reports which response-store
  change it has applied and when, so the propagation tracker can say when a
  revocation reached every live responder.
- CRL publications: which CRL (issuer, shard, kind, number) was published when,
  covering the log up to which seq.
- Probes: what a black-box prober saw over HTTP, beside the internal figures.
- CRL installations: which CRL each relying party's sync agent (``pca crl-sync``) installed when.
- Finished propagation timelines, kept after the raw progress rows are pruned.

Times are epoch seconds as floats (wall clock; hosts are expected to run NTP).

Everything here is derived or operational state, not the record: the SQLite backend
commits it without waiting for the disk (``durable=False``). The backends are
``revocation.storage.sqlite.coordination`` and ``revocation.storage.postgres.coordination``;
each creates its own tables.
"""

from __future__ import annotations

import bisect
import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from revocation.coordination.holders import holder_is_dead


@dataclasses.dataclass(frozen=True)
class LeaseState:
    name: str
    holder: str
    expires_at: float
    acquired_at: float  # when ``holder`` took the lease over (renewals keep it)


@dataclasses.dataclass(frozen=True)
class ResponderState:
    responder_id: str
    url: str  # where the responder answers (as it was told to advertise); may be empty
    applied_change: int  # the last response-store change_id it has applied to its cache
    started_at: float
    last_seen: float  # time of its last heartbeat
    # Its id names a process of this machine that has ended (``holders.holder_is_dead``): it is gone now,
    # whatever its last heartbeat says. Never True for a responder on another host or container.
    ended: bool = False


@dataclasses.dataclass(frozen=True)
class PresignedState:
    """The response store's row for one certificate, as the tracker needs it."""

    issuer_id: str
    serial: int
    status: str
    source_seq: int
    change_id: int
    stored_at: float | None  # None for a row written before the store recorded the time (stored as 0)


@dataclasses.dataclass(frozen=True)
class CRLPublication:
    issuer_id: str
    shard: int
    kind: str  # "full" or "delta"
    number: int
    position: int  # the CRL reflects the log up to this seq
    published_at: float


@dataclasses.dataclass(frozen=True)
class CRLInstallation:
    """A CRL pca published, installed by a relying party's CRL sync agent."""

    agent: str
    issuer_id: str
    shard: int
    kind: str  # "full" or "delta"
    number: int
    position: int  # the publication's: the CRL reflects the log up to this seq
    installed_at: float


@dataclasses.dataclass(frozen=True)
class ProbeResult:
    issuer_id: str
    serial: int
    seq: int  # the revocation's seq
    responder_url: str
    seen_at: float  # when the prober first got "revoked" from this responder


@dataclasses.dataclass(frozen=True)
class SavedTimeline:
    issuer_id: str
    serial: int
    seq: int  # the revocation's seq
    timeline: dict[str, Any]  # JSON-able


class LeaseStore(Protocol):
    """Leases that keep a role running in one process at a time."""

    async def try_lease(self, name: str, holder: str, ttl: float, now: float, *, replacing: str | None = None) -> bool:
        """Acquire ``name`` for ``holder`` or renew it if ``holder`` already holds it.

        Succeeds when the lease is free, expired (``expires_at <= now``) or held by
        ``holder`` (or by ``replacing``: a holder known to be dead, whose unexpired lease
        is taken over at once); then ``expires_at = now + ttl``. Atomic across processes:
        if the lease has changed hands since ``replacing`` was read, it fails.
        """
        ...

    async def lease(self, name: str) -> LeaseState | None:
        """Who holds ``name`` and until when (None: nobody ever has, or it was released)."""
        ...

    async def release_lease(self, name: str, holder: str) -> None:
        """Give the lease up (only if ``holder`` holds it), so a standby takes over at once."""
        ...


class ResponderRegistry(Protocol):
    """The live responders and how far each has applied the response store's changes."""

    async def report(
        self,
        responder_id: str,
        url: str,
        progress: Sequence[tuple[int, float]],
        applied_change: int,
        started_at: float,
        now: float,
    ) -> None:
        """Append a progress row (applied_change, applied_at) for each of ``progress``, then upsert the
        responder's row (last_seen = now), in one transaction: what a responder sends after each poll that
        applied changes. A progress row that an existing one makes redundant (as far, or further, no later)
        is not stored: it could never change an answer of ``first_applied``."""
        ...

    async def responders(self) -> list[ResponderState]: ...

    async def first_applied(self, responder_id: str, change_id: int) -> float | None:
        """The earliest ``applied_at`` of a progress row of the responder with ``applied_change >= change_id``."""
        ...

    async def applied_times(self, responder_id: str, change_ids: Sequence[int]) -> dict[int, float]:
        """``first_applied`` for many changes in one read; changes not applied yet are left out."""
        ...

    async def prune_progress(self, before: float) -> int:
        """Delete progress rows older than ``before`` (keeping each responder's newest); returns how many."""
        ...

    async def forget_responder(self, responder_id: str) -> None:
        """Delete the responder's row and its progress (a responder long gone)."""
        ...


class PresignedPositions(Protocol):
    """Where the response store stands: which change stored each certificate's response, and the latest."""

    async def presigned(self, keys: Sequence[tuple[str, int]]) -> dict[tuple[str, int], PresignedState]:
        """The response store's current rows for these (issuer_id, serial) keys (those that exist)."""
        ...

    async def last_change(self) -> int:
        """The response store's highest change_id (0 when empty)."""
        ...


class PublicationLog(Protocol):
    """Which CRL was published when, covering the log up to which seq."""

    async def record_crl_publication(self, publication: CRLPublication) -> None:
        """Record a publication; recording the same (issuer, shard, kind, number) again keeps the first."""
        ...

    async def first_crl(self, issuer_id: str, shard: int, seq: int) -> CRLPublication | None:
        """The earliest publication of the issuer's shard with ``position >= seq``."""
        ...

    async def crl_publications(self, issuer_id: str, shard: int, position_from: int) -> list[CRLPublication]:
        """Publications of the issuer's shard with ``position >= position_from``, earliest first
        (``first_crl`` for many seqs in one read)."""
        ...


class InstallationLog(Protocol):
    """Which published CRL each relying party's sync agent installed, and when."""

    async def crl_publication(self, issuer_id: str, shard: int, kind: str, number: int) -> CRLPublication | None:
        """The recorded publication of that CRL; None if pca never published it (any number may be asked)."""
        ...

    async def record_crl_installation(self, installation: CRLInstallation) -> tuple[CRLInstallation, bool]:
        """Record an installation; a second report of the same (agent, issuer, shard, kind, number) keeps the
        earliest ``installed_at``. Returns the stored row and whether it is new."""
        ...

    async def crl_installations(self, issuer_id: str, shard: int, position_from: int) -> list[CRLInstallation]:
        """Installations of CRLs of the issuer's shard with ``position >= position_from``, earliest first."""
        ...

    async def crl_agents(self, issuer_id: str, shard: int, installed_from: float) -> list[str]:
        """The agents (sorted) that installed any CRL of the issuer's shard at or after ``installed_from``."""
        ...

    async def prune_crl_installations(self, before: float) -> int:
        """Delete installations older than ``before``; returns how many."""
        ...


class ProbeStore(Protocol):
    """What black-box probers saw over HTTP."""

    async def record_probe(self, result: ProbeResult) -> None:
        """Record what a prober saw; a second report for the same revocation and URL keeps the first."""
        ...

    async def probes(self, issuer_id: str, serial: int) -> list[ProbeResult]:
        """Every probe of the certificate (all its revocations), earliest first."""
        ...

    async def probes_of(self, keys: Sequence[tuple[str, int]]) -> dict[tuple[str, int], list[ProbeResult]]:
        """``probes`` of many certificates (issuer_id, serial) in one read; those without probes are left out."""
        ...


class TimelineArchive(Protocol):
    """Finished propagation timelines, kept after the progress rows they came from are pruned."""

    async def save_timelines(self, timelines: Sequence[SavedTimeline]) -> None:
        """Save each (replacing one saved before for the same revocation), in one transaction:
        a mass revocation finishes at once."""
        ...

    async def timeline(self, issuer_id: str, serial: int, seq: int) -> dict[str, Any] | None: ...


class Coordination(
    LeaseStore,
    ResponderRegistry,
    PresignedPositions,
    PublicationLog,
    InstallationLog,
    ProbeStore,
    TimelineArchive,
    Protocol,
):
    """The whole coordination store as the ``Runtime`` carries it; each consumer takes the narrow protocol
    it uses.

    The backends also answer calls only the tests make (``heartbeat``, ``record_applied``,
    ``save_timeline``): those are on the concrete classes, not here, so no consumer comes to rely on them.
    """


def registered_responder(row: Sequence[Any]) -> ResponderState:
    """A row (responder_id, url, applied_change, started_at, last_seen) of the ``responders`` table, as
    every reader of the registry sees it: ``ended`` when its id (``host:pid:start@machine``, what
    ``lease_holder`` names a process) is a process of this machine that is no longer running."""
    rid, url, applied, started, seen = row
    return ResponderState(str(rid), str(url), int(applied), float(started), float(seen), holder_is_dead(str(rid)))


def earliest_applied(rows: Iterable[tuple[int, float]], change_ids: Sequence[int]) -> dict[int, float]:
    """For each change, the earliest time of a (applied_change, applied_at) row that reached it."""
    ordered = sorted(rows)
    changes = [change for change, _ in ordered]
    # suffix_min[i]: the earliest time among rows i.. (those at least as far as row i).
    suffix_min: list[float] = []
    best = float("inf")
    for _, at in reversed(ordered):
        best = min(best, at)
        suffix_min.append(best)
    suffix_min.reverse()
    out: dict[int, float] = {}
    for change in change_ids:
        i = bisect.bisect_left(changes, change)
        if i < len(ordered):
            out[change] = suffix_min[i]
    return out


def stored_time(value: object) -> float | None:
    """A response's ``stored_at`` column as a time: rows written before the column existed hold 0."""
    if value is None:
        return None
    seconds = float(str(value))
    return seconds if seconds > 0 else None


def in_chunks(items: Sequence[Any], size: int = 500) -> Iterable[Sequence[Any]]:
    for first in range(0, len(items), size):
        yield items[first : first + size]


# Shared by both backends (PostgreSQL through pg_sql, which numbers the ? placeholders).
SQL_HEARTBEAT = (
    "INSERT INTO responders (responder_id, url, applied_change, started_at, last_seen) "
    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (responder_id) DO UPDATE SET url = excluded.url, "
    "applied_change = excluded.applied_change, started_at = excluded.started_at, "
    "last_seen = excluded.last_seen"
)
