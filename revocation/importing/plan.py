"""Deciding what recording a checked certificate means, given what the log already holds.

Shared by ``pca import`` (``revocation.importing.importer``) and the admin API's
``POST /v1/certificates/import``, so that both accept, skip and refuse the same things:

- a serial not recorded yet: ``CertificateIssued`` (profile ``imported``), then, when the source
  says it is revoked, ``CertificateRevoked`` with the source's time, reason and invalidity date;
- the same DER recorded already: nothing, unless the source says revoked and the record is good
  (the revocation is appended) or on hold and the source names another reason (RFC 5280 5.3.1:
  a hold may become a revocation for good);
- the serial recorded with another DER, or revoked here otherwise than the source says: refused,
  the record is never changed.

A certificate the source calls valid but that is revoked here stays revoked: revocations made
after an import are not undone by importing the old database again.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
from collections.abc import Sequence

from revocation.authority import Actor
from revocation.clock import iso, to_epoch
from revocation.eventlog import NewEvent
from revocation.events import REVOCATION_REASONS, CertificateIssued, CertificateRevoked
from revocation.importing.checks import Checked
from revocation.projection import RecordedCertificate

IMPORTED_PROFILE = "imported"
HOLD = "certificateHold"

# What became of one certificate.
IMPORTED = "imported"  # recorded now (and its revocation, if the source has one)
REVOCATION_RECORDED = "revocation recorded"  # known and good here, revoked in the source: revocation appended
ALREADY_PRESENT = "already present"  # nothing to do
# The issuer's own certificate (``openssl ca -selfsign`` lists it in index.txt): a CA's status is not
# given by itself (RFC 5280 6.3.3: a CRL does not cover its own issuer), so it is not recorded.
ISSUER_ITSELF = "the issuer's own certificate"
REFUSED = "refused"

# Why a certificate was refused: it is not acceptable at all, or it contradicts what is recorded.
INVALID = "invalid"
CONFLICT = "conflict"


@dataclasses.dataclass(frozen=True)
class Revocation:
    """A revocation as the source recorded it; times on whole seconds (as CRLs and OCSP carry them)."""

    revoked_at: datetime.datetime
    reason: str
    invalidity_date: datetime.datetime | None = None

    def describe(self) -> str:
        extra = f", invalidity date {iso(self.invalidity_date)}" if self.invalidity_date else ""
        return f"{self.reason} at {iso(self.revoked_at)}{extra}"


@dataclasses.dataclass(frozen=True)
class Outcome:
    """One certificate's fate: ``result`` is one of the constants above; ``events`` are what to append."""

    where: str
    serial: int | None
    result: str
    message: str = ""
    kind: str = ""  # INVALID or CONFLICT for a refusal
    events: tuple[NewEvent, ...] = ()

    @property
    def revoked(self) -> bool:
        """Whether recording it records a revocation."""
        return any(isinstance(e.event, CertificateRevoked) for e in self.events)

    def __str__(self) -> str:
        return f"{self.where}: {self.message}" if self.message else f"{self.where}: {self.result}"


def refused(where: str, message: str, kind: str = INVALID, serial: int | None = None) -> Outcome:
    return Outcome(where, serial, REFUSED, message, kind)


def check_revocation(revocation: Revocation) -> str | None:
    """Why a revocation cannot be recorded, or None."""
    if revocation.reason not in REVOCATION_REASONS:
        return f"revocation reason {revocation.reason} cannot be recorded (use one of {', '.join(REVOCATION_REASONS)})"
    return None


def _fingerprint(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()[:16]


def _same_revocation(record: RecordedCertificate, revocation: Revocation) -> bool:
    invalidity = None if revocation.invalidity_date is None else to_epoch(revocation.invalidity_date)
    return (record.reason, record.revoked_at, record.invalidity_date) == (
        revocation.reason,
        to_epoch(revocation.revoked_at),
        invalidity,
    )


def _recorded_revocation(record: RecordedCertificate) -> str:
    at = "?" if record.revoked_at is None else iso(datetime.datetime.fromtimestamp(record.revoked_at, datetime.UTC))
    return f"{record.reason} at {at}"


def decide(
    issuer_id: str,
    where: str,
    checked: Checked,
    revocation: Revocation | None,
    record: RecordedCertificate | None,
    actor: Actor,
    issuer_der: bytes | None = None,
) -> Outcome:
    """What to append for ``checked`` (the issuer's signature already verified), given its ``record``."""
    serial = checked.serial
    hex_serial = f"{serial:x}"
    if checked.der == issuer_der:
        return Outcome(where, serial, ISSUER_ITSELF, f"serial {hex_serial}: the issuer's own certificate, not recorded")

    def event(e: CertificateIssued | CertificateRevoked, version: int) -> NewEvent:
        return NewEvent(e, version, actor.name, actor.request_id)

    def revoked_event(version: int) -> NewEvent:
        assert revocation is not None
        return event(
            CertificateRevoked(
                issuer_id, hex_serial, revocation.reason, revocation.revoked_at, revocation.invalidity_date
            ),
            version,
        )

    if revocation is not None and (problem := check_revocation(revocation)):
        return refused(where, f"serial {hex_serial}: {problem}", INVALID, serial)
    if record is None:
        issued = CertificateIssued(
            issuer_id=issuer_id,
            serial=hex_serial,
            subject=checked.subject,
            not_before=checked.not_before,
            not_after=checked.not_after,
            cert_der_hex=checked.der.hex(),
            profile=IMPORTED_PROFILE,
        )
        events = (event(issued, 0),) + ((revoked_event(1),) if revocation else ())
        return Outcome(where, serial, IMPORTED, events=events)
    if record.cert_der != checked.der:
        return refused(
            where,
            f"serial {hex_serial} is already recorded for {issuer_id} with different contents "
            f"(recorded SHA-256 {_fingerprint(record.cert_der)}..., this one {_fingerprint(checked.der)}...); "
            "the recorded certificate is kept",
            CONFLICT,
            serial,
        )
    if revocation is None or (record.status == "revoked" and _same_revocation(record, revocation)):
        return Outcome(where, serial, ALREADY_PRESENT)
    if record.status == "good" or (record.reason == HOLD and revocation.reason != HOLD):
        return Outcome(where, serial, REVOCATION_RECORDED, events=(revoked_event(record.version),))
    return refused(
        where,
        f"serial {hex_serial} is recorded revoked ({_recorded_revocation(record)}), the source says "
        f"{revocation.describe()}; the recorded revocation is kept",
        CONFLICT,
        serial,
    )


def as_record(outcome: Outcome, checked: Checked, revocation: Revocation | None) -> RecordedCertificate | None:
    """What the projection will hold once ``outcome``'s events are appended (for a serial seen twice in a batch)."""
    if not outcome.events:
        return None
    version = outcome.events[-1].expected_version + 1
    if revocation is None:
        return RecordedCertificate(checked.serial, checked.der, "good", None, None, None, version)
    invalidity = None if revocation.invalidity_date is None else to_epoch(revocation.invalidity_date)
    return RecordedCertificate(
        checked.serial, checked.der, "revoked", to_epoch(revocation.revoked_at), revocation.reason, invalidity, version
    )


def plan(
    issuer_id: str,
    items: Sequence[tuple[str, Checked, Revocation | None]],
    records: dict[int, RecordedCertificate],
    actor: Actor,
    issuer_der: bytes | None = None,
) -> list[Outcome]:
    """``decide`` for each item in order; a serial met twice is decided against what the first one records."""
    known = dict(records)
    seen: set[int] = set()
    repeated: set[int] = set()
    for _, checked, _ in items:
        (repeated if checked.serial in seen else seen).add(checked.serial)
    outcomes = []
    for where, checked, revocation in items:
        outcome = decide(issuer_id, where, checked, revocation, known.get(checked.serial), actor, issuer_der)
        if checked.serial in repeated:  # what it records is what the next one is decided against
            after = as_record(outcome, checked, revocation)
            if after is not None:
                known[checked.serial] = after
        outcomes.append(outcome)
    return outcomes
