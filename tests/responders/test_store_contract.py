"""The StatusView and ResponseStore contracts, run against SQLite and PostgreSQL alike.

Each test gets empty storage: a SQLite file in tmp_path, or a fresh database on the
throwaway PostgreSQL cluster. Events go in through the backend's own event log (the
projection is applied by the append); the projection is damaged behind the log's back
with a connection of our own, as an operator's mistake would.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import functools
import logging
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from pca.schemas import PG_SCHEMAS, SQLITE_SCHEMAS
from responders.source import FEED_CHECK_SECONDS, CachingSource, NotFound, StoreSource
from responders.store import ResponseStore, StoredResponse
from responders.store.postgres import CHANGE_LOCK_KEY, PostgresResponseStore
from responders.store.sqlite import SQLiteResponseStore
from revocation.clock import FakeClock, to_epoch
from revocation.errors import IntegrityError, StorageError
from revocation.eventlog import NewEvent, RecordedEvent
from revocation.events import (
    CertificateHoldReleased,
    CertificateIssued,
    CertificateRevoked,
    DomainEvent,
    IssuerAdded,
    ResponderCertRotated,
)
from revocation.keys import KeyRef
from revocation.projection import CRLRecord, SigningState, StatusView
from revocation.storage.postgres.db import migrate_schema, open_pg_pool, storage_error
from revocation.storage.postgres.log import PostgresEventLog
from revocation.storage.postgres.projection import PostgresStatusView, apply_pg, clear_pg
from revocation.storage.sqlite.db import SQLiteDatabase
from revocation.storage.sqlite.log import SQLiteEventLog
from revocation.storage.sqlite.projection import SQLiteStatusView, apply_sqlite, clear_sqlite
from tests.support import events
from tests.support.ports import free_port
from tests.support.postgres import create_database, drop_database
from tests.support.storage import Raw, follow_while_writing, pg_raw, sqlite_raw

UTC = datetime.UTC
T0 = datetime.datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
CA = "test-ca"
PARTNER = "partner-ca"
CRL_BASE = "http://ca.test/crl"
CA_KEY_REF = {"backend": "file", "path": "/keys/test-ca.key"}
OCSP_KEY_REF = {"backend": "file", "path": "/keys/ocsp.key"}
_KEY = ec.generate_private_key(ec.SECP256R1())


@functools.cache
def certificate_der(common_name: str, serial: int, crl_url: str | None = None) -> bytes:
    """A real certificate, so the projection can read its CRL distribution point (its shard).

    Cached: an ECDSA signature differs each time, and a test compares what it stored.
    """
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(_KEY.public_key())
        .serial_number(serial)
        .not_valid_before(T0)
        .not_valid_after(T0 + datetime.timedelta(days=365))
    )
    if crl_url is not None:
        point = x509.DistributionPoint([x509.UniformResourceIdentifier(crl_url)], None, None, None)
        builder = builder.add_extension(x509.CRLDistributionPoints([point]), critical=False)
    return builder.sign(_KEY, hashes.SHA256()).public_bytes(Encoding.DER)


CA_DER = certificate_der("Test CA", 1)
PARTNER_DER = certificate_der("Partner CA", 2)
SIGNER_DER = certificate_der("Test CA OCSP", 3)


def shard_url(shard: int, issuer: str = CA) -> str:
    return f"{CRL_BASE}/{issuer}.crl" if shard == 0 else f"{CRL_BASE}/{issuer}-{shard}.crl"


def issued(serial: int, shard: int, days: int, issuer: str = CA) -> CertificateIssued:
    return events.issued(
        serial,
        issuer,
        not_before=T0,
        not_after=T0 + datetime.timedelta(days=days),
        cert_der_hex=certificate_der(f"svc-{serial:x}", serial, shard_url(shard, issuer)).hex(),
    )


def revoked(serial: int, reason: str, invalidity: datetime.datetime | None = None) -> CertificateRevoked:
    return events.revoked(serial, reason, CA, revoked_at=T0, invalidity=invalidity)


def new(event: DomainEvent, expected_version: int = 0) -> NewEvent:
    return events.new(event, expected_version)


@dataclasses.dataclass
class Subject:
    """A backend under test: its log, view and store, the wall clock its store reads for
    ``stored_at`` (set it to move time), and a way to run SQL behind their backs."""

    log: Any  # SQLiteEventLog | PostgresEventLog
    view: StatusView
    store: Any  # SQLiteResponseStore | PostgresResponseStore
    wall: list[float]
    raw: Raw


@pytest.fixture(params=["sqlite", "postgres"])
async def subject(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Subject]:
    clock = FakeClock(T0)
    wall = [1_700_000_000.25]
    if request.param == "sqlite":
        db = SQLiteDatabase(tmp_path / "pca.db")
        db.migrate_sync(SQLITE_SCHEMAS)
        store = SQLiteResponseStore(db, wall=lambda: wall[0])
        try:
            yield Subject(
                SQLiteEventLog(db, clock, project=apply_sqlite, clear=clear_sqlite),
                SQLiteStatusView(db),
                store,
                wall,
                sqlite_raw(db.path),
            )
        finally:
            db.close()
    else:
        server_dsn: str = request.getfixturevalue("postgres_dsn")
        dsn = await create_database(server_dsn)
        log = await PostgresEventLog.open(dsn, clock, project=apply_pg, clear=clear_pg, schemas=PG_SCHEMAS)
        store = PostgresResponseStore(log.pool, wall=lambda: wall[0])
        try:
            yield Subject(log, PostgresStatusView(log.pool), store, wall, pg_raw(dsn))
        finally:
            await log.close()
            await drop_database(server_dsn, dsn)


# --- the status projection --------------------------------------------------------------------------


async def populate(log: Any) -> list[RecordedEvent]:
    """Two issuers, a signer rotation, four certificates in three shards, revocations and a released hold.

    seq: 1 IssuerAdded test-ca, 2 IssuerAdded partner-ca, 3 ResponderCertRotated test-ca,
    4..6 test-ca 0x10 (shard 1), 0x11 (shard 2), 0x12 (shard 0), 7 partner-ca 0x10,
    8 revoke 0x10, 9 hold 0x11, 10 release 0x11, 11 revoke 0x12.
    """
    recs: list[RecordedEvent] = []
    recs += await log.append(
        [
            new(IssuerAdded(CA, "intermediate", "root-ca", CA_DER.hex(), CA_KEY_REF, shard_url(0))),
            new(IssuerAdded(PARTNER, "external", None, PARTNER_DER.hex(), None, shard_url(0, PARTNER))),
        ]
    )
    rotated = ResponderCertRotated(CA, SIGNER_DER.hex(), OCSP_KEY_REF, T0 + datetime.timedelta(days=30))
    recs += await log.append([new(rotated, expected_version=1)])
    recs += await log.append([new(issued(0x10, 1, 90)), new(issued(0x11, 2, 30)), new(issued(0x12, 0, 60))])
    recs += await log.append([new(issued(0x10, 1, 45, issuer=PARTNER))])
    invalidity = T0 - datetime.timedelta(days=2)
    recs += await log.append([new(revoked(0x10, "keyCompromise", invalidity), expected_version=1)])
    recs += await log.append([new(revoked(0x11, "certificateHold"), expected_version=1)])
    released = CertificateHoldReleased(CA, "11", T0 + datetime.timedelta(hours=1))
    recs += await log.append([new(released, expected_version=2)])
    recs += await log.append([new(revoked(0x12, "superseded"), expected_version=1)])
    assert [r.seq for r in recs] == list(range(1, 12))
    return recs


def epoch(days: float = 0) -> int:
    return to_epoch(T0 + datetime.timedelta(days=days))


REV_10 = CRLRecord(0x10, "revoked", epoch(90), epoch(), "keyCompromise", epoch(-2), 8, 1)
GOOD_11 = CRLRecord(0x11, "good", epoch(30), None, None, None, 10, 2)
REV_12 = CRLRecord(0x12, "revoked", epoch(60), epoch(), "superseded", None, 11, 0)


async def test_an_empty_projection(subject: Subject) -> None:
    view = subject.view
    assert await view.issuers() == []
    assert await view.position() == 0
    assert await view.certificate(CA, 1) is None
    assert await view.certificate_der(CA, 1) is None
    assert await view.certificates_by_serial(1) == []
    assert await view.certificates_many([]) == []
    assert await view.certificates_many([(CA, 1)]) == []
    assert await view.signing_states([]) == []
    assert await view.revoked(CA) == []
    assert await view.revoked_snapshot(CA) == (0, [])
    assert await view.crl_shards(CA) == {}
    assert await view.crl_revoked(CA, 0) == (0, [])
    assert await view.crl_changes(CA, 0, 0) == (0, [])
    assert await view.crl_records(CA, []) == []
    assert await view.issuer_certificates(CA) == []
    assert await view.issuer_signing_states(CA, 100) == []


async def test_issuers_follow_issuer_added_and_responder_cert_rotated(subject: Subject) -> None:
    await populate(subject.log)
    partner, ca = await subject.view.issuers()  # by the seq of their last change: the rotation moved test-ca last
    assert (ca.issuer_id, ca.kind, ca.parent_id, ca.crl_url, ca.version) == (
        CA,
        "intermediate",
        "root-ca",
        shard_url(0),
        2,
    )
    assert ca.cert == x509.load_der_x509_certificate(CA_DER)
    assert ca.key_ref == KeyRef.from_dict(CA_KEY_REF)
    assert ca.signer_cert == x509.load_der_x509_certificate(SIGNER_DER)
    assert ca.signer_key_ref == KeyRef.from_dict(OCSP_KEY_REF)
    assert (partner.issuer_id, partner.kind, partner.parent_id, partner.version) == (PARTNER, "external", None, 1)
    assert partner.key_ref is None and partner.signer_cert is None and partner.signer_key_ref is None


async def test_certificates_follow_issued_revoked_and_hold_released(subject: Subject) -> None:
    await populate(subject.log)
    view = subject.view
    rec = await view.certificate(CA, 0x10)
    assert rec is not None
    assert (rec.issuer_id, rec.serial, rec.serial_hex, rec.status, rec.reason, rec.version) == (
        CA,
        0x10,
        "10",
        "revoked",
        "keyCompromise",
        2,
    )
    assert (rec.subject, rec.profile) == ("CN=svc-10", "server")
    assert (rec.not_before, rec.not_after) == (T0, T0 + datetime.timedelta(days=90))
    assert (rec.revoked_at, rec.invalidity_date) == (T0, T0 - datetime.timedelta(days=2))

    released = await view.certificate(CA, 0x11)
    assert released is not None
    assert (released.status, released.revoked_at, released.reason, released.invalidity_date, released.version) == (
        "good",
        None,
        None,
        None,
        3,
    )
    assert await view.certificate_der(CA, 0x12) == bytes.fromhex(issued(0x12, 0, 60).cert_der_hex)
    assert await view.certificate(PARTNER, 0x11) is None

    both = await view.certificates_by_serial(0x10)
    assert sorted((r.issuer_id, r.status) for r in both) == [(PARTNER, "good"), (CA, "revoked")]
    many = await view.certificates_many([(CA, 0x10), (PARTNER, 0x10), (CA, 0x12), (CA, 0x99), (PARTNER, 0x12)])
    assert sorted((r.issuer_id, r.serial) for r in many) == [(PARTNER, 0x10), (CA, 0x10), (CA, 0x12)]
    assert many == [await view.certificate(r.issuer_id, r.serial) for r in many]

    assert sorted(r.serial for r in await view.issuer_certificates(CA)) == [0x10, 0x11, 0x12]
    assert [r.serial for r in await view.issuer_certificates(CA, updated_before=9)] == [0x10]
    assert await view.issuer_certificates(CA, updated_before=4) == []


async def test_revoked_and_the_revoked_snapshot(subject: Subject) -> None:
    await populate(subject.log)
    view = subject.view
    revoked_now = sorted(await view.revoked(CA), key=lambda r: r.serial)
    assert [(r.serial, r.reason) for r in revoked_now] == [(0x10, "keyCompromise"), (0x12, "superseded")]
    position, snapshot = await view.revoked_snapshot(CA)
    assert position == 11
    assert sorted(snapshot, key=lambda r: r.serial) == revoked_now
    assert await view.revoked(PARTNER) == []


async def test_signing_states(subject: Subject) -> None:
    await populate(subject.log)
    view = subject.view
    states = await view.signing_states([(CA, 0x10), (PARTNER, 0x10), (CA, 0x11), (CA, 0x99)])
    assert sorted(states) == sorted(
        [
            SigningState(CA, 0x10, "revoked", epoch(), "keyCompromise", epoch(-2)),
            SigningState(PARTNER, 0x10, "good", None, None, None),
            SigningState(CA, 0x11, "good", None, None, None),
        ]
    )
    assert await view.issuer_signing_states(CA, 9) == [
        SigningState(CA, 0x10, "revoked", epoch(), "keyCompromise", epoch(-2))
    ]
    assert sorted(s.serial for s in await view.issuer_signing_states(CA, 12)) == [0x10, 0x11, 0x12]
    assert await view.issuer_signing_states(PARTNER, 7) == []


async def test_crl_shards_revoked_changes_and_records(subject: Subject) -> None:
    await populate(subject.log)
    view = subject.view
    assert await view.crl_shards(CA) == {0: epoch(60), 1: epoch(90), 2: epoch(30)}
    assert await view.crl_shards(PARTNER) == {1: epoch(45)}
    assert await view.crl_revoked(CA, 1) == (11, [REV_10])
    assert await view.crl_revoked(CA, 0) == (11, [REV_12])
    assert await view.crl_revoked(CA, 2) == (11, [])
    # A delta reads what changed after its base: revoked, or released (listed as removeFromCRL).
    assert await view.crl_changes(CA, 1, 7) == (11, [REV_10])
    assert await view.crl_changes(CA, 1, 8) == (11, [])
    assert await view.crl_changes(CA, 2, 0) == (11, [GOOD_11])
    assert await view.crl_changes(CA, 2, 10) == (11, [])
    assert await view.crl_changes(PARTNER, 1, 0) == (11, [])  # never revoked: not in any delta
    records = await view.crl_records(CA, [0x12, 0x10, 0x11, 0x99])
    assert sorted(records) == [REV_10, GOOD_11, REV_12]
    assert await view.crl_records(PARTNER, [0x11]) == []


async def test_the_projection_moves_with_each_append_and_snapshots_carry_its_position(subject: Subject) -> None:
    await populate(subject.log)
    await subject.log.append([new(issued(0x13, 1, 10))])
    assert await subject.view.position() == 12
    assert await subject.view.crl_revoked(CA, 1) == (12, [REV_10])
    [rec] = await subject.log.append([new(revoked(0x13, "unspecified"), expected_version=1)])
    # Read-your-write: once append returns, every read sees it.
    position, rows = await subject.view.crl_revoked(CA, 1)
    assert position == rec.seq == 13
    assert sorted(r.serial for r in rows) == [0x10, 0x13]
    assert await subject.view.crl_changes(CA, 1, 12) == (
        13,
        [CRLRecord(0x13, "revoked", epoch(10), epoch(), "unspecified", None, 13, 1)],
    )


async def test_an_event_that_does_not_follow_the_projection_is_an_integrity_error_and_writes_nothing(
    subject: Subject,
) -> None:
    log, view = subject.log, subject.view
    await populate(log)
    # A revocation of a certificate the projection never recorded: its stream is new (version 0).
    with pytest.raises(IntegrityError, match="out of order") as info:
        await log.append([new(issued(0x20, 1, 10)), new(revoked(0x21, "keyCompromise"))])
    assert info.value.seq == 13
    rotated = ResponderCertRotated("nobody-ca", SIGNER_DER.hex(), OCSP_KEY_REF, T0)
    with pytest.raises(IntegrityError, match="unknown issuer nobody-ca"):
        await log.append([new(rotated)])
    assert await log.head() == 11
    assert await view.position() == 11
    assert await view.certificate(CA, 0x20) is None
    assert await log.verify_chain() == 11


async def everything(view: StatusView) -> list[Any]:
    """Every read of the view, in a comparable form."""
    keys = [(issuer, serial) for issuer in (CA, PARTNER) for serial in (0x10, 0x11, 0x12)]
    out: list[Any] = [await view.issuers(), await view.position()]
    for issuer in (CA, PARTNER):
        out.append(sorted(await view.issuer_certificates(issuer), key=lambda r: r.serial))
        out.append(sorted(await view.revoked(issuer), key=lambda r: r.serial))
        out.append(await view.crl_shards(issuer))
        for shard in (0, 1, 2):
            position, rows = await view.crl_revoked(issuer, shard)
            out.append((position, sorted(rows)))
            position, rows = await view.crl_changes(issuer, shard, 0)
            out.append((position, sorted(rows)))
    out.append(sorted(await view.signing_states(keys)))
    out.append(sorted(await view.certificates_many(keys), key=lambda r: (r.issuer_id, r.serial)))
    return out


async def test_rebuild_projection_recreates_it_from_the_log_alone(subject: Subject) -> None:
    await populate(subject.log)
    expected = await everything(subject.view)
    # Damage the projection the way a bad migration or a manual edit would.
    await subject.raw("UPDATE certificates SET status = 'good', reason = NULL, revoked_at = NULL")
    await subject.raw("DELETE FROM certificates WHERE serial = ?", "11")
    await subject.raw("UPDATE issuers SET signer_cert_der = NULL")
    assert await everything(subject.view) != expected

    assert await subject.log.rebuild_projection() == 11
    assert await everything(subject.view) == expected
    # The log carries on after a rebuild.
    await subject.log.append([new(revoked(0x11, "keyCompromise"), expected_version=3)])
    assert (await subject.view.crl_revoked(CA, 2))[0] == 12


async def test_listeners_hear_each_committed_append_and_one_failing_does_not_stop_the_others(
    subject: Subject,
) -> None:
    heard: list[list[int]] = []

    def broken(_events: list[RecordedEvent]) -> None:
        raise RuntimeError("listener bug")

    subject.log.listeners[:] = [broken, lambda events: heard.append([e.seq for e in events])]
    await subject.log.append([new(issued(0x30, 1, 10)), new(issued(0x31, 1, 10))])
    await subject.log.append([new(issued(0x32, 1, 10))])
    with pytest.raises(IntegrityError):
        await subject.log.append([new(revoked(0x33, "keyCompromise"))])
    assert heard == [[1, 2], [3]]


# --- the response store -----------------------------------------------------------------------------


def response(
    serial: int, status: str = "good", this_update: int = 1000, source_seq: int = 1, issuer: str = CA
) -> StoredResponse:
    der = f"{issuer}/{serial:x}/{status}/{this_update}/{source_seq}".encode()
    return StoredResponse(issuer, serial, der, status, this_update, this_update + 3600, this_update + 1800, source_seq)


def without_store_fields(stored: StoredResponse | None) -> StoredResponse | None:
    return None if stored is None else dataclasses.replace(stored, change_id=0, stored_at=0.0)


async def test_an_empty_store(subject: Subject) -> None:
    store: ResponseStore = subject.store
    assert await store.get(CA, 1) is None
    assert await store.changes(0, 100) == []
    assert await store.due(2**40, 100) == []
    assert await store.position("presigner") == 0
    assert await store.last_change() == 0


async def test_put_get_changes_due_position_and_last_change(subject: Subject) -> None:
    store: ResponseStore = subject.store
    a, b = response(0xA, this_update=1000), response(0xB, "revoked", this_update=2000, issuer=PARTNER)
    assert await store.put([a, b], "presigner", 7, "2026-03-01T12:00:00Z") == 2
    got = await store.get(CA, 0xA)
    assert got == dataclasses.replace(a, change_id=1, stored_at=subject.wall[0])
    assert await store.get(PARTNER, 0xB) == dataclasses.replace(b, change_id=2, stored_at=subject.wall[0])
    assert await store.get(PARTNER, 0xA) is None
    assert [(c.issuer_id, c.serial, c.change_id) for c in await store.changes(0, 100)] == [
        (CA, 0xA, 1),
        (PARTNER, 0xB, 2),
    ]
    assert [c.serial for c in await store.changes(1, 100)] == [0xB]
    assert [c.serial for c in await store.changes(0, 1)] == [0xA]
    assert await store.changes(2, 100) == []
    # Due: refresh_at has come (a at 2800, b at 3800), oldest first.
    assert await store.due(2799, 10) == []
    assert await store.due(2800, 10) == [(CA, 0xA)]
    assert await store.due(5000, 10) == [(CA, 0xA), (PARTNER, 0xB)]
    assert await store.due(5000, 1) == [(CA, 0xA)]
    assert await store.position("presigner") == 7
    assert await store.position("someone-else") == 0
    assert await store.last_change() == 2

    # The writer's position only moves forward, and an empty put still records it.
    assert await store.put([], "presigner", 9, "2026-03-01T12:00:01Z") == 2
    assert await store.position("presigner") == 9
    await store.put([], "presigner", 3, "2026-03-01T12:00:02Z")
    assert await store.position("presigner") == 9


async def test_change_ids_strictly_increase_and_a_rewrite_moves_the_response_to_the_end(subject: Subject) -> None:
    store: ResponseStore = subject.store
    await store.put([response(1), response(2), response(3)], "p", 1, "t")
    subject.wall[0] += 60
    assert await store.put([response(2, "revoked", this_update=1100, source_seq=5)], "p", 5, "t") == 4
    changes = await store.changes(0, 100)
    assert [(c.serial, c.change_id) for c in changes] == [(1, 1), (3, 3), (2, 4)]
    rewritten = await store.get(CA, 2)
    assert rewritten is not None
    assert (rewritten.status, rewritten.source_seq, rewritten.change_id) == ("revoked", 5, 4)
    assert rewritten.stored_at == subject.wall[0]
    assert [c.serial for c in await store.changes(3, 100)] == [2]
    # The same key twice in one put: both are written in order, the last one stays.
    assert (
        await store.put([response(1, this_update=1200, source_seq=6), response(1, "revoked", 1300, 6)], "p", 6, "t")
        == 6
    )
    assert [(c.serial, c.status, c.change_id) for c in await store.changes(4, 100)] == [(1, "revoked", 6)]


async def test_put_never_replaces_a_response_with_one_from_an_older_log_position(subject: Subject) -> None:
    """A stale pre-signer (it lost its lease) must not put an old "good" over a newer "revoked"."""
    store: ResponseStore = subject.store
    heard: list[int] = []
    store.listeners.append(lambda: heard.append(1))
    newer = response(1, "revoked", this_update=2000, source_seq=10)
    assert await store.put([newer], "presigner", 10, "t") == 1
    assert heard == [1]

    older_position = response(1, "good", this_update=3000, source_seq=9)
    older_time = response(1, "good", this_update=1999, source_seq=11)
    assert await store.put([older_position, older_time], "stale", 9, "t") == 1  # nothing written
    assert without_store_fields(await store.get(CA, 1)) == newer
    assert await store.last_change() == 1
    assert [c.change_id for c in await store.changes(0, 10)] == [1]
    assert heard == [1]  # nothing written, nobody woken

    # Rows not written take no change_id: the next write gets the very next one.
    other = response(2, source_seq=9)
    assert await store.put([older_position, other], "stale", 9, "t") == 2
    assert [(c.serial, c.change_id) for c in await store.changes(0, 10)] == [(1, 1), (2, 2)]

    # The same position and time (a re-sign of the same state) and anything newer are written.
    same = response(1, "revoked", this_update=2000, source_seq=10)
    assert await store.put([dataclasses.replace(same, der=b"re-signed")], "presigner", 10, "t") == 3
    refreshed = response(1, "revoked", this_update=2600, source_seq=10)
    assert await store.put([refreshed], "presigner", 10, "t") == 4
    assert without_store_fields(await store.get(CA, 1)) == refreshed


async def test_a_cache_reads_the_feed_again_once_the_store_is_restored_from_an_older_backup(
    subject: Subject, caplog: pytest.LogCaptureFixture
) -> None:
    """A responder that stays up while its database is restored holds a position past the restored feed's end:
    a revocation stored after the restore is numbered at or below it. Without a fresh start from the feed's
    beginning the responder would keep answering good from its cache until nextUpdate."""
    store: ResponseStore = subject.store
    mono = [0.0]
    cache = CachingSource(StoreSource(store), store, 100, clock=lambda: 2000.0, monotonic=lambda: mono[0])
    await store.put([response(1), response(2), response(3)], "p", 3, "t")  # the backup is taken here
    await store.put([response(4), response(5)], "p", 5, "t")
    while await cache.sync_once() > 0:
        pass
    assert cache.position == 5 and (await cache.response(CA, 2)).status == "good"
    await subject.raw("DELETE FROM ocsp_responses WHERE change_id > 3")  # what the restored database holds
    assert await store.put([response(2, "revoked", this_update=1100, source_seq=6)], "p", 6, "t") == 4

    await cache.sync_once()
    assert (await cache.response(CA, 2)).status == "good"  # not yet compared with the feed's end
    mono[0] += FEED_CHECK_SECONDS
    with caplog.at_level(logging.WARNING, logger="pca.responder"):
        while await cache.sync_once() > 0:
            pass
    assert (await cache.response(CA, 2)).status == "revoked"
    assert cache.position == 4
    with pytest.raises(NotFound):
        await cache.response(CA, 5)  # lost with the restore: not answered from the cache
    assert "change feed ends at 4, behind this responder's position 5" in caplog.text


async def test_concurrent_writers_and_a_follower_see_every_change_once_in_order(subject: Subject) -> None:
    """Gap safety: 8 writers race; a follower polling ``changes(after=last)`` never skips a change.

    If change 8 could commit before change 7, a follower at 8 would never see 7.
    """
    store: ResponseStore = subject.store
    writers, puts, per_put = 8, 20, 3

    async def writer(index: int) -> None:
        for n in range(puts):
            base = (index + 1) * 0x10000 + n * per_put
            batch = [response(base + k, source_seq=n + 1) for k in range(per_put)]
            await store.put(batch, f"writer-{index}", n + 1, "t")
            await asyncio.sleep(0)

    async def read_after(last: int) -> list[int]:
        return [change.change_id for change in await store.changes(last, 7)]

    seen = await follow_while_writing([writer(i) for i in range(writers)], read_after)
    total = writers * puts * per_put
    assert seen == list(range(1, total + 1))
    assert len({change.serial for change in await store.changes(0, total)}) == total  # every row kept its own
    assert await store.last_change() == total


# --- PostgreSQL only: an unreachable or silent server ---------------------------------------------------

PASSWORD = "s3cret-Pa55"


def closed_port_dsn() -> str:
    return f"postgresql://u:{PASSWORD}@127.0.0.1:{free_port()}/x"


async def test_an_unreachable_server_is_a_quick_storage_error_that_does_not_name_the_password() -> None:
    dsn = closed_port_dsn()
    started = time.monotonic()
    with pytest.raises(StorageError) as info:
        await open_pg_pool(dsn)
    assert time.monotonic() - started < 5
    assert PASSWORD not in str(info.value) and dsn not in str(info.value)
    assert "connecting to PostgreSQL" in str(info.value)

    # A store whose database goes away after it started: every call fails fast, the same way.
    pool = await open_pg_pool(dsn, min_size=0, migrate=False)
    store = PostgresResponseStore(pool)
    try:
        for call in (store.get(CA, 1), store.changes(0, 10), store.put([response(1)], "p", 1, "t")):
            started = time.monotonic()
            with pytest.raises(StorageError) as info:
                await call
            assert time.monotonic() - started < 5
            assert PASSWORD not in str(info.value)
    finally:
        await pool.close()


@pytest.mark.parametrize(
    "dsn",
    [
        f"postgresql://u:{PASSWORD}@db:5432/pca",
        f"postgresql://u:{PASSWORD}%21@db/pca",
        f"host=db password='{PASSWORD}' user=u",
    ],
)
def test_storage_errors_never_carry_the_dsn_or_its_password(dsn: str) -> None:
    error = storage_error("connecting to PostgreSQL", OSError(f"failed for {dsn} ({PASSWORD}!)"), dsn)
    assert PASSWORD not in str(error) and dsn not in str(error)
    assert str(error).startswith("connecting to PostgreSQL: OSError: failed for <dsn>")


async def test_a_server_that_never_answers_is_a_storage_error_after_the_timeout() -> None:
    """A half-open network: the TCP connection opens, nothing ever comes back."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        dsn = f"postgresql://u:{PASSWORD}@127.0.0.1:{port}/x"
        pool = await open_pg_pool(dsn, min_size=0, migrate=False, connect_timeout=0.5)
        store = PostgresResponseStore(pool, timeout=0.5, write_timeout=0.5)
        try:
            started = time.monotonic()
            with pytest.raises(StorageError) as info:
                await store.get(CA, 1)
            assert time.monotonic() - started < 3
            assert PASSWORD not in str(info.value)
        finally:
            pool.terminate()


async def test_a_put_that_times_out_writes_nothing_and_leaves_the_store_usable(postgres_database: str) -> None:
    """A writer stuck behind another (here: one holding the change lock) gives up after write_timeout."""
    pool = await open_pg_pool(postgres_database, schemas=PG_SCHEMAS)
    store = PostgresResponseStore(pool, write_timeout=0.3)
    blocker = await asyncpg.connect(postgres_database)
    try:
        async with blocker.transaction():
            await blocker.execute("SELECT pg_advisory_xact_lock($1)", CHANGE_LOCK_KEY)
            started = time.monotonic()
            with pytest.raises(StorageError, match="writing OCSP responses"):
                await store.put([response(1)], "p", 1, "t")
            assert time.monotonic() - started < 2
        assert await store.last_change() == 0
        assert await store.put([response(1)], "p", 1, "t") == 1
        assert await store.position("p") == 1
    finally:
        await blocker.close()
        await pool.close()


async def test_a_writer_paused_inside_a_transaction_does_not_block_the_others_for_long(postgres_database: str) -> None:
    """A writer that stops while it holds the change lock (a process frozen by SIGSTOP or a paused VM, a
    host cut off) must not keep every other writer out until TCP notices, which takes hours: the server
    ends a session that has been idle inside a transaction for ``idle_in_transaction_timeout``. (A
    pre-signer that took over the lease of a frozen one could otherwise not store a response.)"""
    frozen_pool = await open_pg_pool(
        postgres_database, schemas=PG_SCHEMAS, min_size=1, max_size=1, idle_in_transaction_timeout=0.5
    )
    pool = await open_pg_pool(postgres_database, migrate=False)
    store = PostgresResponseStore(pool, write_timeout=30)
    try:
        frozen = await frozen_pool.acquire()
        await frozen.execute("BEGIN")
        await frozen.execute("SELECT pg_advisory_xact_lock($1)", CHANGE_LOCK_KEY)
        # ... and sends nothing more.
        assert await store.put([response(1)], "p", 1, "t") == 1
        with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError, OSError)):
            await frozen.execute("COMMIT")  # when it wakes, its session is gone: it writes nothing
        await frozen_pool.release(frozen)
        for _ in range(2):  # the pool resets each connection it takes back (RESET ALL): the setting stays
            async with pool.acquire() as conn:
                await conn.execute("SET idle_in_transaction_session_timeout = 0")
                assert await conn.fetchval("SHOW idle_in_transaction_session_timeout") == "0"
            async with pool.acquire() as conn:
                assert await conn.fetchval("SHOW idle_in_transaction_session_timeout") == "5s"
    finally:
        frozen_pool.terminate()
        await pool.close()

    with pytest.raises(ValueError, match="idle_in_transaction_timeout"):
        await open_pg_pool(postgres_database, idle_in_transaction_timeout=0)


async def test_pg_migrations_are_idempotent(postgres_database: str) -> None:
    conn = await asyncpg.connect(postgres_database)
    try:
        first = await migrate_schema(conn, PG_SCHEMAS)
        assert first[:3] == ["log 1", "log 2", "projection 1"]
        assert await migrate_schema(conn, PG_SCHEMAS) == []
        columns = {
            r["column_name"]: r["data_type"]
            for r in await conn.fetch(
                "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'ocsp_responses'"
            )
        }
        assert columns["stored_at"] == "double precision"
        assert columns["der"] == "bytea"
        assert columns["change_id"] == "bigint"
    finally:
        await conn.close()
