"""``pca audit verify``'s second half: replay the log and compare the result with the stored projection.

The hash chain covers the log only; the certificate-status projection that OCSP and CRLs are made
from is derived state that anyone with write access to the database can edit (un-revoke a
certificate, delete its row). Here the log is replayed, with the very code that maintains the
projection (``revocation.storage.sqlite.projection.apply_sqlite``), into a throwaway SQLite file,
and every issuer and certificate is compared with what the database holds, on either backend.

Certificates changed by an event after the replayed position (appends during the audit) are left
out of the comparison, as their stored state is newer than the replay's. Certificates are compared
a page at a time, as OCSP and CRLs use them (status, revocation time, reason, invalidity date,
notAfter, CRL shard); memory stays flat, except when the projection holds more certificates
than the log issued, when the issuer's are read whole to name the extra ones.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from revocation.clock import from_epoch, iso
from revocation.errors import IntegrityError
from revocation.eventlog import EventLog
from revocation.projection import CRL_COLUMNS, CRLRecord, IssuerRecord, StatusView, crl_rows
from revocation.storage.sqlite.db import SQLiteDatabase
from revocation.storage.sqlite.projection import PROJECTION_SCHEMA, SQLiteStatusView, apply_sqlite

_PAGE = 5000
MAX_REPORTED = 10  # differences named in a report (all are counted)


@dataclasses.dataclass
class ProjectionReport:
    position: int  # the log was replayed up to this seq
    certificates: int  # certificates compared
    differences: list[str] = dataclasses.field(default_factory=list)  # the first MAX_REPORTED
    count: int = 0  # every difference found

    @property
    def ok(self) -> bool:
        return self.count == 0

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "position": self.position,
            "certificates": self.certificates,
            "count": self.count,
            "differences": self.differences,
        }

    def add(self, text: str) -> None:
        self.count += 1
        if len(self.differences) < MAX_REPORTED:
            self.differences.append(text)


_TIMES = ("not_after", "revoked_at", "invalidity_date")
# CRLRecord fields compared, as OCSP and CRLs use them; "shard" is named as its column.
_FIELDS = ("status", "revoked_at", "reason", "invalidity_date", "not_after", "shard")
_SQL_REPLAYED = f"SELECT {CRL_COLUMNS} FROM certificates WHERE issuer_id = ? AND serial > ? ORDER BY serial LIMIT ?"


def _value(name: str, value: object) -> str:
    if value is None:
        return "none"
    return iso(from_epoch(int(str(value)))) if name in _TIMES else str(value)


def _describe(rec: CRLRecord) -> str:
    if rec.status == "revoked":
        return f"revoked ({rec.reason}, {_value('revoked_at', rec.revoked_at)})"
    return rec.status


async def compare_projection(log: EventLog, view: StatusView) -> ProjectionReport:
    """Replay the whole log and compare; the report names the first differences."""
    with tempfile.TemporaryDirectory(prefix="pca-audit-") as tmp:
        replay_db = SQLiteDatabase(Path(tmp) / "replay.db")
        try:
            replay_db.migrate_sync([PROJECTION_SCHEMA])
            position = 0
            while rows := await log.read(position, _PAGE):
                pairs = [(rec, rec.event) for rec in rows]
                await replay_db.write(lambda conn, p=pairs: apply_sqlite(conn, p), durable=False)  # type: ignore[misc]
                position = rows[-1].seq
            return await _compare(view, replay_db, position)
        finally:
            replay_db.close()


async def audit_report(log: EventLog, view: StatusView | None) -> tuple[dict[str, Any], int]:
    """What ``GET /v1/audit/verify`` answers, and its status: the hash chain walked, then the projection
    (when given) compared with a replay of the log; 409 naming the first bad seq or the first differences."""
    try:
        count = await log.verify_chain()
        if view is None:
            return {"ok": True, "events": count, "projection": None}, 200
        report = await compare_projection(log, view)
    except IntegrityError as exc:
        return {"ok": False, "first_bad_seq": exc.seq, "detail": str(exc)}, 409
    body: dict[str, Any] = {"ok": report.ok, "events": count, "projection": report.to_json()}
    if not report.ok:
        body["detail"] = f"the status projection disagrees with a replay of the log: {report.differences[0]}"
    return body, 200 if report.ok else 409


async def _replayed(db: SQLiteDatabase, issuer_id: str) -> AsyncIterator[list[CRLRecord]]:
    """The replayed certificates of the issuer, a page at a time (memory stays flat)."""
    after = ""
    while True:
        page = await db.read(lambda conn, a=after: crl_rows(conn.execute(_SQL_REPLAYED, (issuer_id, a, _PAGE))))  # type: ignore[misc]
        if not page:
            return
        yield page
        after = f"{page[-1].serial:x}"


async def _compare(stored: StatusView, replay_db: SQLiteDatabase, position: int) -> ProjectionReport:
    report = ProjectionReport(position, 0)
    have = {i.issuer_id: i for i in await stored.issuers()}
    want = {i.issuer_id: i for i in await SQLiteStatusView(replay_db).issuers()}
    for issuer_id in sorted(have.keys() | want.keys()):
        _compare_issuer(report, issuer_id, have.get(issuer_id), want.get(issuer_id))
        replayed = 0
        async for page in _replayed(replay_db, issuer_id):
            replayed += len(page)
            got = {r.serial: r for r in await stored.crl_records(issuer_id, [r.serial for r in page])}
            for want_rec in page:
                got_rec = got.get(want_rec.serial)
                if got_rec is None:
                    report.add(
                        f"certificate {issuer_id}/{want_rec.serial:x}: the log says {_describe(want_rec)}, "
                        "the projection has no such certificate"
                    )
                elif got_rec.updated_seq <= position:  # else changed after the replayed position
                    _compare_certificate(report, issuer_id, got_rec, want_rec)
        report.certificates += replayed
        if (await stored.issuer_counts(issuer_id))[0] > replayed:  # more than the log issued, or issued since
            await _extras(report, stored, replay_db, issuer_id, position)
    return report


async def _extras(
    report: ProjectionReport, stored: StatusView, replay_db: SQLiteDatabase, issuer_id: str, position: int
) -> None:
    """Certificates in the projection that the log never issued (read whole: only when the counts differ)."""
    known = {r.serial async for page in _replayed(replay_db, issuer_id) for r in page}
    for cert in await stored.issuer_certificates(issuer_id, position + 1):
        if cert.serial not in known:
            state = f"revoked ({cert.reason})" if cert.status == "revoked" else cert.status
            report.add(f"certificate {issuer_id}/{cert.serial:x}: in the projection ({state}), never issued in the log")


def _compare_issuer(
    report: ProjectionReport, issuer_id: str, got: IssuerRecord | None, want: IssuerRecord | None
) -> None:
    if want is None:
        report.add(f"issuer {issuer_id}: in the projection, never added in the log")
    elif got is None:
        report.add(f"issuer {issuer_id}: added in the log, missing from the projection")
    elif got != want and got.version <= want.version:  # a higher version: changed after the replayed position
        fields = [f.name for f in dataclasses.fields(IssuerRecord) if getattr(got, f.name) != getattr(want, f.name)]
        report.add(f"issuer {issuer_id}: the projection differs from the log in {', '.join(fields)}")


def _compare_certificate(report: ProjectionReport, issuer_id: str, got: CRLRecord, want: CRLRecord) -> None:
    diffs: Sequence[str] = [
        f"{_label(name)} {_value(name, getattr(got, name))} (the log says {_value(name, getattr(want, name))})"
        for name in _FIELDS
        if getattr(got, name) != getattr(want, name)
    ]
    if diffs:
        report.add(f"certificate {issuer_id}/{want.serial:x}: the projection has {'; '.join(diffs)}")


def _label(name: str) -> str:
    return "crl_shard" if name == "shard" else name
