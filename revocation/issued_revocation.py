"""Revoking everything an issuer issued, after its key was compromised (``POST /v1/issuers/{id}/revoke-issued``).

Every certificate recorded under the issuer that is not revoked for good is revoked with one reason (default
``cACompromise``): good ones, and ones on ``certificateHold`` (RFC 5280 5.3.1 allows a hold to become
permanent). Left alone and counted: expired certificates (unless ``include_expired``), and CA certificates
(the issuer's sub-CAs: their status is changed by the issuer routes of their own, admin only). It works for
any issuer pca holds records of, an external one included, whose own certificate need not be revoked first.

Each revocation is an ordinary ``CertificateRevoked`` event with the caller as actor and the request's id, so
OCSP, CRLs, the propagation tracker and the audit trail treat it as any other. Events are appended a batch
at a time (one ``EventLog.append`` each, every event decided on the version its certificate was read at);
when a batch is refused because a certificate changed meanwhile, the batch is read again, the unchanged
ones are appended together again and each changed one is decided again alone. A call revokes at most
``limit`` certificates and says how many remain, so no request runs for minutes: call again until
``remaining`` is 0 (``pca issuer revoke-issued`` does).
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
from collections.abc import Sequence

from revocation.authority import Actor
from revocation.ca import PROFILES
from revocation.ca_status import is_ca_certificate
from revocation.clock import Clock, iso, to_epoch
from revocation.errors import ConcurrencyError, ConflictError, NotFoundError, ValidationError
from revocation.eventlog import EventLog, NewEvent
from revocation.events import REVOCATION_REASONS, CertificateRevoked
from revocation.projection import CertificateRecord, IssuedCertificates

log = logging.getLogger("pca.authority")

DEFAULT_REASON = "cACompromise"
# Permanent reasons only: a hold is temporary, and removeFromCRL is not a reason one revokes with.
REASONS = tuple(r for r in REVOCATION_REASONS if r != "certificateHold")
DEFAULT_LIMIT = 10_000  # revocations per call: about a second or two of appends
MAX_LIMIT = 100_000
BATCH_SIZE = 1_000  # events per EventLog.append
_RETRIES = 5
_ALL = -(2**62)  # a notAfter floor below every certificate's: expired ones included


@dataclasses.dataclass(frozen=True)
class RevokeIssuedOptions:
    reason: str = DEFAULT_REASON
    invalidity_date: datetime.datetime | None = None
    include_expired: bool = False
    limit: int = DEFAULT_LIMIT


@dataclasses.dataclass
class RevokeIssuedSummary:
    """One call's work. ``skipped_ca`` counts the CA certificates met so far in serial order (all of them
    once ``remaining`` is 0); ``remaining`` is what a further call would still look at."""

    issuer_id: str
    reason: str
    revoked_at: datetime.datetime
    revoked: int = 0  # by this call
    already_revoked: int = 0  # revoked for good before this call, or by someone else during it
    skipped_expired: int = 0
    skipped_ca: int = 0
    remaining: int = 0
    first_seq: int | None = None  # the events this call appended
    last_seq: int | None = None

    def to_json(self) -> dict[str, object]:
        out = {k: v for k, v in dataclasses.asdict(self).items() if k != "revoked_at"}
        return {**out, "revoked_at": iso(self.revoked_at)}


def check_reason(reason: str) -> None:
    if reason == "certificateHold":
        raise ValidationError(
            "certificateHold is temporary and cannot revoke everything an issuer issued; "
            f"use a permanent reason such as {DEFAULT_REASON}"
        )
    if reason not in REASONS:
        raise ValidationError(f"reason {reason!r} cannot revoke what an issuer issued; use one of {', '.join(REASONS)}")


class IssuedRevocation:
    def __init__(self, log_: EventLog, view: IssuedCertificates, clock: Clock, batch_size: int = BATCH_SIZE) -> None:
        self._log = log_
        self._view = view
        self._clock = clock
        self._batch_size = batch_size

    async def revoke_issued(self, issuer_id: str, options: RevokeIssuedOptions, actor: Actor) -> RevokeIssuedSummary:
        check_reason(options.reason)
        if not 1 <= options.limit <= MAX_LIMIT:
            raise ValidationError(f"limit must be from 1 to {MAX_LIMIT}, got {options.limit}")
        # Whole seconds: CRLs and OCSP encode no more (as Authority.revoke).
        now = self._clock.now().replace(microsecond=0)
        invalidity = None if options.invalidity_date is None else options.invalidity_date.replace(microsecond=0)
        if invalidity is not None and invalidity > now + datetime.timedelta(seconds=5):
            raise ValidationError(f"invalidity date {invalidity.isoformat()} is in the future")
        if not any(i.issuer_id == issuer_id for i in await self._view.issuers()):
            raise NotFoundError(f"unknown issuer {issuer_id!r}")
        summary = RevokeIssuedSummary(issuer_id, options.reason, now)
        run = _Run(self._log, self._view, summary, invalidity, actor)
        epoch = to_epoch(now)
        summary.already_revoked, expired, _ = await self._view.revocation_counts(issuer_id, epoch)
        summary.skipped_expired = 0 if options.include_expired else expired
        floor = _ALL if options.include_expired else epoch
        after = ""
        while summary.revoked < options.limit:
            page = await self._view.unrevoked_page(issuer_id, after, floor, self._batch_size)
            if not page:
                break
            leaves = await self._leaves(issuer_id, page)
            summary.skipped_ca += len(page) - len(leaves)
            quota = options.limit - summary.revoked
            await run.revoke(leaves[:quota])
            if len(leaves) > quota:
                break
            after = page[-1].serial_hex
        _, expired, unexpired = await self._view.revocation_counts(issuer_id, epoch)
        # What a further call would look at: unrevoked ones not yet reached (or new), less the CAs already met.
        summary.remaining = max(0, unexpired + (expired if options.include_expired else 0) - summary.skipped_ca)
        if summary.revoked:
            log.warning(
                "%d certificates of issuer %s revoked (%s) by %s (request %s), seq %s to %s; %d remain",
                summary.revoked,
                issuer_id,
                options.reason,
                actor.name,
                actor.request_id,
                summary.first_seq,
                summary.last_seq,
                summary.remaining,
            )
        return summary

    async def _leaves(self, issuer_id: str, page: Sequence[CertificateRecord]) -> list[CertificateRecord]:
        """The page less its CA certificates: pca's own (profile ``ca``), and recorded ones whose DER says CA:TRUE."""
        unknown = [c.serial for c in page if c.profile not in PROFILES and c.profile != "ca"]
        cas = set()
        if unknown:
            for rec in await self._view.recorded_certificates(issuer_id, unknown):
                if is_ca_certificate(rec.cert_der):
                    cas.add(rec.serial)
        return [c for c in page if c.profile != "ca" and c.serial not in cas]


class _Run:
    """The appends of one call, and what they counted."""

    def __init__(
        self,
        log_: EventLog,
        view: IssuedCertificates,
        summary: RevokeIssuedSummary,
        invalidity: datetime.datetime | None,
        actor: Actor,
    ) -> None:
        self._log, self._view, self.summary = log_, view, summary
        self._invalidity, self._actor = invalidity, actor

    def _event(self, serial: int, version: int) -> NewEvent:
        s = self.summary
        event = CertificateRevoked(s.issuer_id, f"{serial:x}", s.reason, s.revoked_at, self._invalidity)
        return NewEvent(event, version, self._actor.name, self._actor.request_id)

    async def _append(self, events: list[NewEvent]) -> None:
        recorded = await self._log.append(events)
        if recorded:
            self.summary.first_seq = self.summary.first_seq or recorded[0].seq
            self.summary.last_seq = recorded[-1].seq
            self.summary.revoked += len(recorded)

    async def revoke(self, batch: Sequence[CertificateRecord]) -> None:
        """Revoke ``batch`` in one append; when a certificate changed meanwhile, the unchanged ones again
        together and each changed one alone."""
        versions = {c.serial: c.version for c in batch}
        for _ in range(_RETRIES):
            if not versions:
                return
            try:
                await self._append([self._event(serial, version) for serial, version in versions.items()])
                return
            except ConcurrencyError:
                pass
            fresh = {
                r.serial: r.version for r in await self._view.recorded_certificates(self.summary.issuer_id, [*versions])
            }
            changed = [s for s, v in versions.items() if fresh.get(s) != v]
            for serial in changed:
                del versions[serial]
                await self._alone(serial)
        for serial in versions:  # changing all the time: one by one
            await self._alone(serial)

    async def _alone(self, serial: int) -> None:
        """Decide a certificate that changed during the call again, on its own."""
        for _ in range(_RETRIES):
            found = await self._view.recorded_certificates(self.summary.issuer_id, [serial])
            if not found:
                return
            [rec] = found
            if rec.status == "revoked" and rec.reason != "certificateHold":
                self.summary.already_revoked += 1  # by someone else, meanwhile
                return
            try:
                await self._append([self._event(serial, rec.version)])
                return
            except ConcurrencyError:
                continue
        raise ConflictError(f"certificate {serial:x} changed {_RETRIES} times while revoking it; try again")
