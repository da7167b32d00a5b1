"""``pca audit verify``'s second half: replay the log and compare the result with the stored projection.

The hash chain covers the log only; the certificate-status projection that OCSP and CRLs are made
from is derived state that anyone with write access to the database can edit (un-revoke a
certificate, delete its row). Here the log is replayed, with the very code that maintains the
projection (``revocation.storage.sqlite.projection.apply_sqlite``), into a throwaway SQLite file,
and every issuer and certificate is compared with what the database holds, on either backend.

Certificates changed by an event after the replayed position (appends during the audit) are left
out of the comparison, as their stored state is newer than the replay's.
"""

from __future__ import annotations

import dataclasses
import datetime
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from revocation.clock import iso
from revocation.eventlog import EventLog
from revocation.projection import CertificateRecord, IssuerRecord, StatusView
from revocation.storage.sqlite.db import SQLiteDatabase
from revocation.storage.sqlite.projection import PROJECTION_SCHEMA, SQLiteStatusView, apply_sqlite

_PAGE = 5000
MAX_REPORTED = 10  # differences named in a report (all are counted)

# The certificate fields compared, as a relying party would notice them.
_FIELDS = ("status", "revoked_at", "reason", "invalidity_date", "not_before", "not_after", "subject", "profile")


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


def _value(value: object) -> str:
    if value is None:
        return "none"
    return iso(value) if isinstance(value, datetime.datetime) else str(value)


def _describe(rec: CertificateRecord) -> str:
    if rec.status == "revoked":
        return f"revoked ({rec.reason}, {_value(rec.revoked_at)})"
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
            return await _compare(view, SQLiteStatusView(replay_db), position)
        finally:
            replay_db.close()


async def _compare(stored: StatusView, replayed: SQLiteStatusView, position: int) -> ProjectionReport:
    report = ProjectionReport(position, 0)
    have = {i.issuer_id: i for i in await stored.issuers()}
    want = {i.issuer_id: i for i in await replayed.issuers()}
    for issuer_id in sorted(have.keys() | want.keys()):
        _compare_issuer(report, issuer_id, have.get(issuer_id), want.get(issuer_id))
        got = {c.serial: c for c in await stored.issuer_certificates(issuer_id, position + 1)}
        expected = {c.serial: c for c in await replayed.issuer_certificates(issuer_id)}
        report.certificates += len(expected)
        absent = sorted(s for s in expected if s not in got)
        if absent:  # changed after the replayed position, or gone from the projection
            later = {r.serial for r in await stored.crl_records(issuer_id, absent) if r.updated_seq > position}
            absent = [s for s in absent if s not in later]
        for serial in absent:
            report.add(
                f"certificate {issuer_id}/{serial:x}: the log says {_describe(expected[serial])}, "
                "the projection has no such certificate"
            )
        for serial in sorted(got.keys() - expected.keys()):
            report.add(
                f"certificate {issuer_id}/{serial:x}: in the projection ({_describe(got[serial])}), "
                "never issued in the log"
            )
        for serial in sorted(got.keys() & expected.keys()):
            _compare_certificate(report, got[serial], expected[serial])
    return report


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


def _compare_certificate(report: ProjectionReport, got: CertificateRecord, want: CertificateRecord) -> None:
    diffs: Sequence[str] = [
        f"{name} {_value(getattr(got, name))} (the log says {_value(getattr(want, name))})"
        for name in _FIELDS
        if getattr(got, name) != getattr(want, name)
    ]
    if diffs:
        report.add(f"certificate {want.issuer_id}/{want.serial:x}: the projection has {'; '.join(diffs)}")
