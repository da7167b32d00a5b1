"""The certificate-status projection: issuers and certificates as the log says.

It is derived state: the SQLite backend updates it in the same transaction as
the append (so a read after a 2xx sees the write) and ``rebuild`` recreates it
from the log alone.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import sqlite3
from collections.abc import Sequence
from typing import Any, NamedTuple, Protocol

from cryptography import x509

from revocation.clock import from_epoch, to_epoch
from revocation.crl_layout import shard_from_certificate
from revocation.errors import IntegrityError
from revocation.eventlog import RecordedEvent
from revocation.events import (
    CertificateHoldReleased,
    CertificateIssued,
    CertificateRevoked,
    DomainEvent,
    IssuerAdded,
    ResponderCertRotated,
)
from revocation.keys import KeyRef
from revocation.sqlite_db import SQLiteDatabase


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


class SigningState(NamedTuple):
    """A certificate's status as the pre-signer needs it: plain values, times as epoch seconds."""

    issuer_id: str
    serial: int
    status: str
    revoked_at: int | None
    reason: str | None
    invalidity_date: int | None


class StatusView(Protocol):
    async def issuers(self) -> list[IssuerRecord]: ...

    async def certificates_by_serial(self, serial: int) -> list[CertificateRecord]: ...

    async def certificate(self, issuer_id: str, serial: int) -> CertificateRecord | None: ...

    async def certificate_der(self, issuer_id: str, serial: int) -> bytes | None: ...

    async def revoked(self, issuer_id: str) -> list[CertificateRecord]:
        """Every revoked certificate of the issuer (expired ones included)."""
        ...

    async def position(self) -> int:
        """The seq of the last event applied to the projection."""
        ...

    async def certificates_many(self, keys: Sequence[tuple[str, int]]) -> list[CertificateRecord]:
        """The records for (issuer_id, serial) keys that exist, in one read."""
        ...

    async def issuer_certificates(self, issuer_id: str, updated_before: int | None = None) -> list[CertificateRecord]:
        """The issuer's certificates, optionally only those last changed by an event below ``updated_before``."""
        ...

    async def signing_states(self, keys: Sequence[tuple[str, int]]) -> list[SigningState]:
        """What the pre-signer needs of each existing (issuer_id, serial), in one read, without the rest."""
        ...

    async def issuer_signing_states(self, issuer_id: str, updated_before: int) -> list[SigningState]:
        """Signing states of the issuer's certificates last changed by an event below ``updated_before``."""
        ...

    async def revoked_snapshot(self, issuer_id: str) -> tuple[int, list[CertificateRecord]]:
        """The log position and the issuer's revoked certificates as of that position, read together."""
        ...

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

    async def crl_records(self, issuer_id: str, serials: Sequence[int]) -> list[CRLRecord]:
        """The current records of these serials of the issuer (those that exist)."""
        ...


# --- SQLite -----------------------------------------------------------------

_IN_CHUNK = 500  # bound parameters per IN (...) query

_SIGNING_COLUMNS = "issuer_id, serial, status, revoked_at, reason, invalidity_date"
_CERT_COLUMNS = (
    "issuer_id, serial, status, subject, profile, not_before, not_after, revoked_at, reason, invalidity_date, version"
)


def _opt_time(value: int | None) -> datetime.datetime | None:
    return None if value is None else from_epoch(value)


def _cert_row(row: tuple[Any, ...]) -> CertificateRecord:
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


_CRL_COLUMNS = "serial, status, not_after, revoked_at, reason, invalidity_date, updated_seq, crl_shard"


def _crl_row(row: tuple[Any, ...]) -> CRLRecord:
    return CRLRecord(int(row[0], 16), *row[1:])


def _key_ref(value: object) -> KeyRef | None:
    return None if value is None else KeyRef.from_dict(json.loads(str(value)))


def _issuer_row(row: tuple[Any, ...]) -> IssuerRecord:
    issuer_id, kind, parent, cert_der, key_ref, crl_url, signer_der, signer_ref, version = row
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
    )


def apply_sqlite(conn: sqlite3.Connection, rec: RecordedEvent, event: DomainEvent) -> None:
    """Apply one recorded event to the projection tables (inside the append transaction)."""
    if isinstance(event, IssuerAdded):
        conn.execute(
            "INSERT INTO issuers (issuer_id, kind, parent_id, cert_der, key_ref, crl_url, version, updated_seq) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                event.issuer_id,
                event.kind,
                event.parent_id,
                bytes.fromhex(event.cert_der_hex),
                None if event.key_ref is None else json.dumps(event.key_ref),
                event.crl_url,
                rec.version,
                rec.seq,
            ),
        )
    elif isinstance(event, ResponderCertRotated):
        cur = conn.execute(
            "UPDATE issuers SET signer_cert_der = ?, signer_key_ref = ?, signer_not_after = ?, version = ?, "
            "updated_seq = ? WHERE issuer_id = ?",
            (
                bytes.fromhex(event.cert_der_hex),
                json.dumps(event.key_ref),
                to_epoch(event.not_after),
                rec.version,
                rec.seq,
                event.issuer_id,
            ),
        )
        if cur.rowcount != 1:
            raise IntegrityError(f"ResponderCertRotated for unknown issuer {event.issuer_id}", rec.seq)
    elif isinstance(event, CertificateIssued):
        cert_der = bytes.fromhex(event.cert_der_hex)
        conn.execute(
            f"INSERT INTO certificates ({_CERT_COLUMNS}, cert_der, updated_seq, crl_shard) "
            "VALUES (?, ?, 'good', ?, ?, ?, ?, NULL, NULL, NULL, ?, ?, ?, ?)",
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
    elif isinstance(event, CertificateRevoked):
        _update_cert(
            conn,
            rec,
            event.issuer_id,
            event.serial,
            "revoked",
            to_epoch(event.revoked_at),
            event.reason,
            None if event.invalidity_date is None else to_epoch(event.invalidity_date),
        )
    elif isinstance(event, CertificateHoldReleased):
        _update_cert(conn, rec, event.issuer_id, event.serial, "good", None, None, None)


def _update_cert(
    conn: sqlite3.Connection,
    rec: RecordedEvent,
    issuer_id: str,
    serial: str,
    status: str,
    revoked_at: int | None,
    reason: str | None,
    invalidity: int | None,
) -> None:
    cur = conn.execute(
        "UPDATE certificates SET status = ?, revoked_at = ?, reason = ?, invalidity_date = ?, version = ?, "
        "updated_seq = ? WHERE issuer_id = ? AND serial = ? AND version = ?",
        (status, revoked_at, reason, invalidity, rec.version, rec.seq, issuer_id, serial, rec.version - 1),
    )
    if cur.rowcount != 1:
        raise IntegrityError(f"{rec.type} out of order for {issuer_id}/{serial} (version {rec.version})", rec.seq)


class SQLiteStatusView:
    def __init__(self, db: SQLiteDatabase) -> None:
        self._db = db

    async def issuers(self) -> list[IssuerRecord]:
        def q(conn: sqlite3.Connection) -> list[IssuerRecord]:
            rows = conn.execute(
                "SELECT issuer_id, kind, parent_id, cert_der, key_ref, crl_url, signer_cert_der, signer_key_ref, "
                "version FROM issuers ORDER BY updated_seq"
            ).fetchall()
            return [_issuer_row(r) for r in rows]

        return await self._db.read(q)

    async def certificates_by_serial(self, serial: int) -> list[CertificateRecord]:
        def q(conn: sqlite3.Connection) -> list[CertificateRecord]:
            rows = conn.execute(f"SELECT {_CERT_COLUMNS} FROM certificates WHERE serial = ?", (f"{serial:x}",))
            return [_cert_row(r) for r in rows.fetchall()]

        return await self._db.read(q)

    async def certificate(self, issuer_id: str, serial: int) -> CertificateRecord | None:
        def q(conn: sqlite3.Connection) -> CertificateRecord | None:
            row = conn.execute(
                f"SELECT {_CERT_COLUMNS} FROM certificates WHERE issuer_id = ? AND serial = ?",
                (issuer_id, f"{serial:x}"),
            ).fetchone()
            return None if row is None else _cert_row(row)

        return await self._db.read(q)

    async def certificate_der(self, issuer_id: str, serial: int) -> bytes | None:
        def q(conn: sqlite3.Connection) -> bytes | None:
            row = conn.execute(
                "SELECT cert_der FROM certificates WHERE issuer_id = ? AND serial = ?", (issuer_id, f"{serial:x}")
            ).fetchone()
            return None if row is None else bytes(row[0])

        return await self._db.read(q)

    async def revoked(self, issuer_id: str) -> list[CertificateRecord]:
        def q(conn: sqlite3.Connection) -> list[CertificateRecord]:
            rows = conn.execute(
                f"SELECT {_CERT_COLUMNS} FROM certificates WHERE issuer_id = ? AND status = 'revoked'", (issuer_id,)
            )
            return [_cert_row(r) for r in rows.fetchall()]

        return await self._db.read(q)

    async def position(self) -> int:
        def q(conn: sqlite3.Connection) -> int:
            row = conn.execute("SELECT seq FROM log_head WHERE id = 1").fetchone()
            return 0 if row is None else int(row[0])

        return await self._db.read(q)

    async def certificates_many(self, keys: Sequence[tuple[str, int]]) -> list[CertificateRecord]:
        by_issuer: dict[str, list[str]] = {}
        for issuer_id, serial in keys:
            by_issuer.setdefault(issuer_id, []).append(f"{serial:x}")

        def q(conn: sqlite3.Connection) -> list[CertificateRecord]:
            out: list[CertificateRecord] = []
            for issuer_id, serials in by_issuer.items():
                for first in range(0, len(serials), _IN_CHUNK):
                    chunk = serials[first : first + _IN_CHUNK]
                    marks = ",".join("?" * len(chunk))
                    rows = conn.execute(
                        f"SELECT {_CERT_COLUMNS} FROM certificates WHERE issuer_id = ? AND serial IN ({marks})",
                        (issuer_id, *chunk),
                    )
                    out.extend(_cert_row(r) for r in rows.fetchall())
            return out

        return await self._db.read(q)

    async def issuer_certificates(self, issuer_id: str, updated_before: int | None = None) -> list[CertificateRecord]:
        def q(conn: sqlite3.Connection) -> list[CertificateRecord]:
            rows = conn.execute(
                f"SELECT {_CERT_COLUMNS} FROM certificates WHERE issuer_id = ? AND updated_seq < ?",
                (issuer_id, 2**62 if updated_before is None else updated_before),
            )
            return [_cert_row(r) for r in rows.fetchall()]

        return await self._db.read(q)

    async def revoked_snapshot(self, issuer_id: str) -> tuple[int, list[CertificateRecord]]:
        def q(conn: sqlite3.Connection) -> tuple[int, list[CertificateRecord]]:
            # One read transaction, so the position and the rows agree.
            conn.execute("BEGIN")
            try:
                row = conn.execute("SELECT seq FROM log_head WHERE id = 1").fetchone()
                rows = conn.execute(
                    f"SELECT {_CERT_COLUMNS} FROM certificates WHERE issuer_id = ? AND status = 'revoked'",
                    (issuer_id,),
                ).fetchall()
            finally:
                conn.execute("COMMIT")
            return (0 if row is None else int(row[0])), [_cert_row(r) for r in rows]

        return await self._db.read(q)

    async def crl_shards(self, issuer_id: str) -> dict[int, int]:
        def q(conn: sqlite3.Connection) -> dict[int, int]:
            rows = conn.execute(
                "SELECT crl_shard, MAX(not_after) FROM certificates WHERE issuer_id = ? GROUP BY crl_shard",
                (issuer_id,),
            )
            return {int(shard): int(not_after) for shard, not_after in rows.fetchall()}

        return await self._db.read(q)

    async def crl_revoked(self, issuer_id: str, shard: int) -> tuple[int, list[CRLRecord]]:
        # "status = 'revoked'" spelled as in the partial index certificates_crl_revoked, so SQLite uses it.
        sql = f"SELECT {_CRL_COLUMNS} FROM certificates WHERE issuer_id = ? AND crl_shard = ? AND status = 'revoked'"
        return await self._db.read(lambda conn: _crl_snapshot(conn, sql, (issuer_id, shard)))

    async def crl_changes(self, issuer_id: str, shard: int, after: int) -> tuple[int, list[CRLRecord]]:
        # "version > 1" (revoked at least once) selects the partial index certificates_crl_changes.
        sql = (
            f"SELECT {_CRL_COLUMNS} FROM certificates "
            "WHERE issuer_id = ? AND crl_shard = ? AND updated_seq > ? AND version > 1"
        )
        return await self._db.read(lambda conn: _crl_snapshot(conn, sql, (issuer_id, shard, after)))

    async def crl_records(self, issuer_id: str, serials: Sequence[int]) -> list[CRLRecord]:
        hexes = [f"{serial:x}" for serial in serials]

        def q(conn: sqlite3.Connection) -> list[CRLRecord]:
            out: list[CRLRecord] = []
            for first in range(0, len(hexes), 500):
                chunk = hexes[first : first + 500]
                rows = conn.execute(
                    f"SELECT {_CRL_COLUMNS} FROM certificates WHERE issuer_id = ? "
                    f"AND serial IN ({','.join('?' * len(chunk))})",
                    (issuer_id, *chunk),
                )
                out.extend(_crl_row(r) for r in rows.fetchall())
            return out

        return await self._db.read(q)

    async def signing_states(self, keys: Sequence[tuple[str, int]]) -> list[SigningState]:
        by_issuer: dict[str, list[str]] = {}
        for issuer_id, serial in keys:
            by_issuer.setdefault(issuer_id, []).append(f"{serial:x}")

        def q(conn: sqlite3.Connection) -> list[SigningState]:
            out: list[SigningState] = []
            for issuer_id, serials in by_issuer.items():
                for first in range(0, len(serials), _IN_CHUNK):
                    chunk = serials[first : first + _IN_CHUNK]
                    marks = ",".join("?" * len(chunk))
                    rows = conn.execute(
                        f"SELECT {_SIGNING_COLUMNS} FROM certificates WHERE issuer_id = ? AND serial IN ({marks})",
                        (issuer_id, *chunk),
                    )
                    out.extend(SigningState(i, int(s, 16), st, r, re, inv) for i, s, st, r, re, inv in rows)
            return out

        return await self._db.read(q)

    async def issuer_signing_states(self, issuer_id: str, updated_before: int) -> list[SigningState]:
        def q(conn: sqlite3.Connection) -> list[SigningState]:
            rows = conn.execute(
                f"SELECT {_SIGNING_COLUMNS} FROM certificates WHERE issuer_id = ? AND updated_seq < ?",
                (issuer_id, updated_before),
            )
            return [SigningState(i, int(s, 16), st, r, re, inv) for i, s, st, r, re, inv in rows]

        return await self._db.read(q)


def _crl_snapshot(conn: sqlite3.Connection, sql: str, params: tuple[object, ...]) -> tuple[int, list[CRLRecord]]:
    # One read transaction, so the position and the rows agree.
    conn.execute("BEGIN")
    try:
        head = conn.execute("SELECT seq FROM log_head WHERE id = 1").fetchone()
        rows = conn.execute(sql, params).fetchall()
    finally:
        conn.execute("COMMIT")
    return (0 if head is None else int(head[0])), [_crl_row(r) for r in rows]
