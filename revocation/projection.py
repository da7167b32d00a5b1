"""The certificate-status projection: issuers and certificates as the log says.

It is derived state: each backend (``revocation.storage.sqlite.projection``,
``revocation.storage.postgres.projection``) updates it in the same transaction as the append
(so a read after a 2xx sees the write) and ``rebuild_projection`` recreates it
from the log alone. What an event does to it is decided once, by
``projection_step``, for both.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple, Protocol

from cryptography import x509

from revocation.clock import from_epoch, to_epoch
from revocation.crl_layout import shard_from_certificate
from revocation.eventlog import RecordedEvent
from revocation.events import (
    CertificateHoldReleased,
    CertificateIssued,
    CertificateRevoked,
    DomainEvent,
    IssuerAdded,
    OCSPSignerKeyPrepared,
    ResponderCertRotated,
)
from revocation.keys import KeyRef


@dataclasses.dataclass(frozen=True)
class IssuerRecord:
    issuer_id: str
    kind: str
    parent_id: str | None
    cert: x509.Certificate
    key_ref: KeyRef | None
    crl_url: str
    signer_cert: x509.Certificate | None
    signer_key_ref: KeyRef | None
    version: int
    # An external issuer's signer key waiting for its certificate (``pca issuer set-signer``), and its CSR.
    pending_key_ref: KeyRef | None = None
    pending_csr_der: bytes | None = None


@dataclasses.dataclass(frozen=True)
class CertificateRecord:
    issuer_id: str
    serial: int
    status: str  # "good" or "revoked"
    subject: str
    profile: str
    not_before: datetime.datetime
    not_after: datetime.datetime
    revoked_at: datetime.datetime | None
    reason: str | None
    invalidity_date: datetime.datetime | None
    version: int

    @property
    def serial_hex(self) -> str:
        return f"{self.serial:x}"


class CRLRecord(NamedTuple):
    """What a CRL needs of a certificate; times in epoch seconds.

    A tuple, not a dataclass: a full CRL reads a million of these, and a tuple is made four times faster.
    """

    serial: int
    status: str
    not_after: int
    revoked_at: int | None
    reason: str | None
    invalidity_date: int | None
    updated_seq: int  # seq of the last event that changed the certificate
    shard: int  # the CRL shard its CRL distribution point names


class RecordedCertificate(NamedTuple):
    """What an import compares a certificate with: the recorded DER and status; times in epoch seconds."""

    serial: int
    cert_der: bytes
    status: str
    revoked_at: int | None
    reason: str | None
    invalidity_date: int | None
    version: int


class SigningState(NamedTuple):
    """A certificate's status as the pre-signer needs it: plain values, times as epoch seconds."""

    issuer_id: str
    serial: int
    status: str
    revoked_at: int | None
    reason: str | None
    invalidity_date: int | None


class IssuerDirectory(Protocol):
    """The issuers the log has added, each with its certificate, keys and OCSP signer."""

    async def issuers(self) -> list[IssuerRecord]: ...


class CertificateLookup(IssuerDirectory, Protocol):
    """Finding a certificate from its serial alone, as a caller names it: what the authority reads."""

    async def certificates_by_serial(self, serial: int) -> list[CertificateRecord]: ...


class RecordedCertificates(IssuerDirectory, Protocol):
    """What importing and recording certificates read: is each serial recorded, with which DER and status."""

    async def recorded_certificates(self, issuer_id: str, serials: Sequence[int]) -> list[RecordedCertificate]:
        """The records of those of the issuer's ``serials`` that exist, in one read (by the primary key)."""
        ...


class SigningSource(IssuerDirectory, Protocol):
    """What the pre-signer signs from: each certificate's status as plain values, nothing else."""

    async def signing_states(self, keys: Sequence[tuple[str, int]]) -> list[SigningState]:
        """What the pre-signer needs of each existing (issuer_id, serial), in one read, without the rest."""
        ...

    async def issuer_signing_states(self, issuer_id: str, updated_before: int) -> list[SigningState]:
        """Signing states of the issuer's certificates last changed by an event below ``updated_before``."""
        ...


class CRLEntries(Protocol):
    """Certificates as a CRL lists them, looked up by serial."""

    async def crl_records(self, issuer_id: str, serials: Sequence[int]) -> list[CRLRecord]:
        """The current records of these serials of the issuer (those that exist)."""
        ...


class CRLSource(IssuerDirectory, CRLEntries, Protocol):
    """What CRLs are built and checked from: the issuers, their shards and the entries of each."""

    async def crl_shards(self, issuer_id: str) -> dict[int, int]:
        """CRL shard -> the latest notAfter (epoch) of the issuer's certificates recorded in it."""
        ...

    async def crl_revoked(self, issuer_id: str, shard: int) -> tuple[int, list[CRLRecord]]:
        """The log position and the shard's revoked certificates as of that position, read together."""
        ...

    async def crl_changes(self, issuer_id: str, shard: int, after: int) -> tuple[int, list[CRLRecord]]:
        """The log position and the shard's certificates revoked or released by an event after seq ``after``.

        Reads only what changed (a delta CRL's cost follows its changes, not the CRL's size).
        """
        ...


class IssuerStats(IssuerDirectory, Protocol):
    """What ``pca issuer list`` and ``GET /v1/issuers`` show of each issuer's certificates."""

    async def issuer_counts(self, issuer_id: str) -> tuple[int, int]:
        """(certificates recorded, of which revoked) for the issuer."""
        ...

    async def newest_certificates(self, issuer_id: str, limit: int) -> list[bytes]:
        """The DER of the issuer's ``limit`` newest certificates (by notBefore)."""
        ...

    async def expiring_counts(self, now: int, soon: int, later: int) -> dict[str, tuple[int, int]]:
        """issuer -> (unrevoked certificates expiring after ``now`` by ``soon``, and by ``later``)."""
        ...


class IssuedCertificates(RecordedCertificates, Protocol):
    """What revoking everything an issuer issued reads (``revocation.issued_revocation``)."""

    async def unrevoked_page(
        self, issuer_id: str, after: str, not_after_above: int, limit: int
    ) -> list[CertificateRecord]:
        """At most ``limit`` of the issuer's certificates not revoked for good (good, or on certificateHold), with a
        notAfter above ``not_after_above`` and a serial (lowercase hex, compared as text) above ``after``, by serial."""
        ...

    async def revocation_counts(self, issuer_id: str, now: int) -> tuple[int, int, int]:
        """The issuer's certificates (revoked for good, not revoked for good and expired at ``now``, the others)."""
        ...


class StatusView(CertificateLookup, SigningSource, CRLSource, IssuerStats, IssuedCertificates, Protocol):
    """The whole projection as the ``Runtime`` carries it; each consumer takes the narrow protocol it reads.

    The backends also answer reads only the tests make (``certificate``, ``revoked_snapshot``,
    ``position``...): those are on the concrete classes, not here, so no consumer comes to rely on them.
    """

    async def issuer_certificates(self, issuer_id: str, updated_before: int | None = None) -> list[CertificateRecord]:
        """The issuer's certificates, optionally only those last changed by an event below ``updated_before``.

        Read by the load tests, to know which responses to ask for.
        """
        ...


# --- shared by the SQLite and PostgreSQL backends ----------------------------------------------
# Statements are in SQLite's dialect with ``?`` placeholders; PostgreSQL numbers them
# (``revocation.storage.postgres.db.pg_sql``). Both store serials as lowercase hex TEXT and times as epoch seconds.

SIGNING_COLUMNS = "issuer_id, serial, status, revoked_at, reason, invalidity_date"
CERT_COLUMNS = (
    "issuer_id, serial, status, subject, profile, not_before, not_after, revoked_at, reason, invalidity_date, version"
)
RECORDED_COLUMNS = "serial, cert_der, status, revoked_at, reason, invalidity_date, version"
CRL_COLUMNS = "serial, status, not_after, revoked_at, reason, invalidity_date, updated_seq, crl_shard"
ISSUER_COLUMNS = (
    "issuer_id, kind, parent_id, cert_der, key_ref, crl_url, signer_cert_der, signer_key_ref, version, "
    "pending_signer_key_ref, pending_signer_csr_der"
)

# An ``updated_before`` above every seq: "all certificates".
ANY_SEQ = 2**62

SQL_POSITION = "SELECT seq FROM log_head WHERE id = 1"
SQL_ISSUERS = f"SELECT {ISSUER_COLUMNS} FROM issuers ORDER BY updated_seq"
SQL_CERTIFICATES_BY_SERIAL = f"SELECT {CERT_COLUMNS} FROM certificates WHERE serial = ?"
SQL_CERTIFICATE = f"SELECT {CERT_COLUMNS} FROM certificates WHERE issuer_id = ? AND serial = ?"
SQL_CERTIFICATE_DER = "SELECT cert_der FROM certificates WHERE issuer_id = ? AND serial = ?"
SQL_REVOKED = f"SELECT {CERT_COLUMNS} FROM certificates WHERE issuer_id = ? AND status = 'revoked'"
SQL_ISSUER_CERTIFICATES = f"SELECT {CERT_COLUMNS} FROM certificates WHERE issuer_id = ? AND updated_seq < ?"
SQL_ISSUER_SIGNING_STATES = f"SELECT {SIGNING_COLUMNS} FROM certificates WHERE issuer_id = ? AND updated_seq < ?"
SQL_ISSUER_COUNTS = (
    "SELECT COUNT(*), COALESCE(SUM(CASE WHEN status = 'revoked' THEN 1 ELSE 0 END), 0) FROM certificates "
    "WHERE issuer_id = ?"
)
SQL_NEWEST_CERTIFICATES = "SELECT cert_der FROM certificates WHERE issuer_id = ? ORDER BY not_before DESC LIMIT ?"
# Unrevoked, unexpired certificates whose notAfter is at most ``soon`` and ``later`` (epoch seconds).
SQL_EXPIRING = (
    "SELECT issuer_id, COALESCE(SUM(CASE WHEN not_after <= ? THEN 1 ELSE 0 END), 0), COUNT(*) FROM certificates "
    "WHERE status = 'good' AND not_after > ? AND not_after <= ? GROUP BY issuer_id"
)
SQL_CRL_SHARDS = "SELECT crl_shard, MAX(not_after) FROM certificates WHERE issuer_id = ? GROUP BY crl_shard"
# "status = 'revoked'" spelled as in the partial index certificates_crl_revoked, so the database uses it.
SQL_CRL_REVOKED = f"SELECT {CRL_COLUMNS} FROM certificates WHERE issuer_id = ? AND crl_shard = ? AND status = 'revoked'"
# "version > 1" (revoked at least once) selects the partial index certificates_crl_changes.
SQL_CRL_CHANGES = (
    f"SELECT {CRL_COLUMNS} FROM certificates WHERE issuer_id = ? AND crl_shard = ? AND updated_seq > ? AND version > 1"
)


def _opt_time(value: int | None) -> datetime.datetime | None:
    return None if value is None else from_epoch(value)


def cert_row(row: Sequence[Any]) -> CertificateRecord:
    """A CertificateRecord from a row of ``CERT_COLUMNS`` (an sqlite3 tuple or an asyncpg Record)."""
    issuer_id, serial, status, subject, profile, nb, na, rev, reason, inv, version = row
    return CertificateRecord(
        issuer_id=str(issuer_id),
        serial=int(str(serial), 16),
        status=str(status),
        subject=str(subject),
        profile=str(profile),
        not_before=from_epoch(int(str(nb))),
        not_after=from_epoch(int(str(na))),
        revoked_at=_opt_time(rev if isinstance(rev, int) else None),
        reason=None if reason is None else str(reason),
        invalidity_date=_opt_time(inv if isinstance(inv, int) else None),
        version=int(str(version)),
    )


def crl_rows(rows: Iterable[Sequence[Any]]) -> list[CRLRecord]:
    """CRLRecords from rows of ``CRL_COLUMNS``; the hot path of a full CRL, so one comprehension."""
    return [
        CRLRecord(int(serial, 16), status, not_after, revoked_at, reason, invalidity, updated_seq, shard)
        for serial, status, not_after, revoked_at, reason, invalidity, updated_seq, shard in rows
    ]


def recorded_rows(rows: Iterable[Sequence[Any]]) -> list[RecordedCertificate]:
    """RecordedCertificates from rows of ``RECORDED_COLUMNS``."""
    return [
        RecordedCertificate(int(serial, 16), bytes(der), status, revoked_at, reason, invalidity, int(version))
        for serial, der, status, revoked_at, reason, invalidity, version in rows
    ]


def signing_rows(rows: Iterable[Sequence[Any]]) -> list[SigningState]:
    """SigningStates from rows of ``SIGNING_COLUMNS``."""
    return [SigningState(i, int(s, 16), st, r, re, inv) for i, s, st, r, re, inv in rows]


def _key_ref(value: object) -> KeyRef | None:
    return None if value is None else KeyRef.from_dict(json.loads(str(value)))


def issuer_row(row: Sequence[Any]) -> IssuerRecord:
    """An IssuerRecord from a row of ``ISSUER_COLUMNS``."""
    issuer_id, kind, parent, cert_der, key_ref, crl_url, signer_der, signer_ref, version, pending, csr = row
    return IssuerRecord(
        issuer_id=str(issuer_id),
        kind=str(kind),
        parent_id=None if parent is None else str(parent),
        cert=x509.load_der_x509_certificate(bytes(cert_der)),
        key_ref=_key_ref(key_ref),
        crl_url=str(crl_url),
        signer_cert=None if signer_der is None else x509.load_der_x509_certificate(bytes(signer_der)),
        signer_key_ref=_key_ref(signer_ref),
        version=int(str(version)),
        pending_key_ref=_key_ref(pending),
        pending_csr_der=None if csr is None else bytes(csr),
    )


class ProjectionStep(NamedTuple):
    """One statement that applies an event to the projection, in the shared dialect (``?`` placeholders).

    SQLite runs it as is; PostgreSQL numbers the placeholders (``revocation.storage.postgres.db.pg_sql``).
    """

    sql: str
    params: tuple[object, ...]
    # When set, the statement must change exactly one row, or the event is inconsistent with the
    # projection and the append fails with IntegrityError(unless_one_row, seq).
    unless_one_row: str | None = None


_INSERT_ISSUER = (
    "INSERT INTO issuers (issuer_id, kind, parent_id, cert_der, key_ref, crl_url, version, updated_seq) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
# A rotation to the pending key (an external issuer's new signer) ends the wait for its certificate.
_ROTATE_SIGNER = (
    "UPDATE issuers SET signer_cert_der = ?, signer_key_ref = ?, signer_not_after = ?, version = ?, "
    "updated_seq = ?, "
    "pending_signer_csr_der = CASE WHEN pending_signer_key_ref = ? THEN NULL ELSE pending_signer_csr_der END, "
    "pending_signer_key_ref = CASE WHEN pending_signer_key_ref = ? THEN NULL ELSE pending_signer_key_ref END "
    "WHERE issuer_id = ?"
)
_PREPARE_SIGNER = (
    "UPDATE issuers SET pending_signer_key_ref = ?, pending_signer_csr_der = ?, version = ?, updated_seq = ? "
    "WHERE issuer_id = ?"
)
_INSERT_CERT = (
    f"INSERT INTO certificates ({CERT_COLUMNS}, cert_der, updated_seq, crl_shard) "
    "VALUES (?, ?, 'good', ?, ?, ?, ?, NULL, NULL, NULL, ?, ?, ?, ?)"
)
_UPDATE_CERT = (
    "UPDATE certificates SET status = ?, revoked_at = ?, reason = ?, invalidity_date = ?, version = ?, "
    "updated_seq = ? WHERE issuer_id = ? AND serial = ? AND version = ?"
)


def projection_step(rec: RecordedEvent, event: DomainEvent) -> ProjectionStep | None:
    """What applying ``event`` (recorded as ``rec``) does to the projection; the part every backend shares."""
    if isinstance(event, IssuerAdded):
        key_ref = None if event.key_ref is None else json.dumps(event.key_ref)
        return ProjectionStep(
            _INSERT_ISSUER,
            (
                event.issuer_id,
                event.kind,
                event.parent_id,
                bytes.fromhex(event.cert_der_hex),
                key_ref,
                event.crl_url,
                rec.version,
                rec.seq,
            ),
        )
    if isinstance(event, ResponderCertRotated):
        key_ref = json.dumps(event.key_ref)
        return ProjectionStep(
            _ROTATE_SIGNER,
            (
                bytes.fromhex(event.cert_der_hex),
                key_ref,
                to_epoch(event.not_after),
                rec.version,
                rec.seq,
                key_ref,
                key_ref,
                event.issuer_id,
            ),
            f"ResponderCertRotated for unknown issuer {event.issuer_id}",
        )
    if isinstance(event, OCSPSignerKeyPrepared):
        return ProjectionStep(
            _PREPARE_SIGNER,
            (json.dumps(event.key_ref), bytes.fromhex(event.csr_der_hex), rec.version, rec.seq, event.issuer_id),
            f"OCSPSignerKeyPrepared for unknown issuer {event.issuer_id}",
        )
    if isinstance(event, CertificateIssued):
        cert_der = bytes.fromhex(event.cert_der_hex)
        return ProjectionStep(
            _INSERT_CERT,
            (
                event.issuer_id,
                event.serial,
                event.subject,
                event.profile,
                to_epoch(event.not_before),
                to_epoch(event.not_after),
                rec.version,
                cert_der,
                rec.seq,
                # The shard its CRL DP names, fixed once: a later change of crl.shards never moves it.
                shard_from_certificate(event.issuer_id, cert_der),
            ),
        )
    if isinstance(event, CertificateRevoked):
        invalidity = None if event.invalidity_date is None else to_epoch(event.invalidity_date)
        return _cert_status_step(
            rec, event.issuer_id, event.serial, "revoked", to_epoch(event.revoked_at), event.reason, invalidity
        )
    if isinstance(event, CertificateHoldReleased):
        return _cert_status_step(rec, event.issuer_id, event.serial, "good", None, None, None)
    return None


def _cert_status_step(
    rec: RecordedEvent,
    issuer_id: str,
    serial: str,
    status: str,
    revoked_at: int | None,
    reason: str | None,
    invalidity: int | None,
) -> ProjectionStep:
    # Guarded by the previous version: an event that does not follow the stored state changes nothing.
    return ProjectionStep(
        _UPDATE_CERT,
        (status, revoked_at, reason, invalidity, rec.version, rec.seq, issuer_id, serial, rec.version - 1),
        f"{rec.type} out of order for {issuer_id}/{serial} (version {rec.version})",
    )
