"""The SQLite event log: ordering, optimistic concurrency, group commit, durability, the hash chain.

Storage is always a real SQLite file; tampering is done behind the log's back with a
plain ``sqlite3`` connection, the way an intruder or a careless operator would.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from pca.cli import main as pca_main
from pca.config import Config
from pca.runtime import Runtime
from pca.schemas import SQLITE_SCHEMAS
from pca.serve import build_authority
from revocation.authority import Actor, IssueRequest
from revocation.clock import FakeClock
from revocation.errors import ConcurrencyError, IntegrityError
from revocation.eventlog import NewEvent, RecordedEvent, canonical_payload, row_hash
from revocation.events import (
    EVENT_TYPES,
    UPCASTERS,
    CertificateHoldReleased,
    CertificateRevoked,
    CheckpointSignerSet,
    DomainEvent,
    IssuerAdded,
    OCSPSignerKeyPrepared,
    ResponderCertRotated,
    TokenCreated,
    TokenRevoked,
    decode,
)
from revocation.storage.sqlite.db import SQLiteDatabase
from revocation.storage.sqlite.log import SQLiteEventLog
from revocation.storage.sqlite.projection import apply_sqlite, clear_sqlite
from tests.support.events import ISSUER, T0, issued, new, revoked

UTC = datetime.UTC


def raw_rows(path: Path, sql: str) -> list[tuple[Any, ...]]:
    """Read with a connection of our own, as another process would."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return conn.execute(sql).fetchall()


def raw_write(path: Path, sql: str, params: tuple[Any, ...] = ()) -> None:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute(sql, params)
        conn.commit()


@pytest.fixture
async def fresh(tmp_path: Path) -> AsyncIterator[tuple[SQLiteEventLog, SQLiteDatabase, FakeClock]]:
    """An event log on its own empty database file (no CA events in it)."""
    db = SQLiteDatabase(tmp_path / "log.db")
    db.migrate_sync(SQLITE_SCHEMAS)
    clock = FakeClock(T0)
    try:
        yield SQLiteEventLog(db, clock, project=apply_sqlite, clear=clear_sqlite), db, clock
    finally:
        db.close()


# --- append, read, head ----------------------------------------------------------------


# Appending, chaining and reading back are in the contract suite
# (tests/revocation/storage/test_eventlog_contract.py), which runs on SQLite too. Below:
# what only the SQLite log does, such as writing the projection in the append's transaction.


async def test_stale_expected_version_raises_and_writes_nothing(
    fresh: tuple[SQLiteEventLog, SQLiteDatabase, FakeClock],
) -> None:
    log, db, _ = fresh
    await log.append([new(issued(7))])
    await log.append([new(revoked(7, "certificateHold"), expected_version=1)])

    # Decided on version 1, but the stream is at 2 now.
    with pytest.raises(ConcurrencyError, match="cert/test-ca/7"):
        await log.append([new(revoked(7, "superseded"), expected_version=1)])
    # A new stream must start at version 0.
    with pytest.raises(ConcurrencyError):
        await log.append([new(issued(8), expected_version=3)])

    assert await log.head() == 2
    assert [r.version for r in await log.read_stream("cert/test-ca/7")] == [1, 2]
    assert await log.read_stream("cert/test-ca/8") == []
    assert raw_rows(db.path, "SELECT COUNT(*) FROM events") == [(2,)]
    assert raw_rows(db.path, "SELECT reason FROM certificates WHERE serial = '7'") == [("certificateHold",)]


async def test_append_of_several_events_is_all_or_nothing(
    fresh: tuple[SQLiteEventLog, SQLiteDatabase, FakeClock],
) -> None:
    log, db, _ = fresh
    await log.append([new(issued(1))])

    # The first event is fine on its own; the second is stale, so neither may land.
    with pytest.raises(ConcurrencyError):
        await log.append([new(issued(2)), new(revoked(1), expected_version=0)])

    assert await log.head() == 1
    assert await log.read_stream("cert/test-ca/2") == []
    assert raw_rows(db.path, "SELECT serial FROM certificates") == [("1",)]
    # The log goes on from where it was, without a hole.
    [rec] = await log.append([new(issued(2))])
    assert rec.seq == 2
    assert await log.verify_chain() == 2


# --- group commit ------------------------------------------------------------------------


async def test_group_commit_200_concurrent_appends_get_seqs_without_gaps(runtime: Runtime) -> None:
    start = await runtime.log.head()
    assert start > 0  # pca init recorded the CA hierarchy

    batches: list[list[RecordedEvent]] = []
    runtime.on_commit(batches.append)

    results = await asyncio.gather(*(runtime.log.append([new(issued(0x1000 + i))]) for i in range(200)))

    seqs = [rec.seq for batch in results for rec in batch]
    assert sorted(seqs) == list(range(start + 1, start + 201))
    assert await runtime.log.head() == start + 200
    stored = await runtime.log.read(start, 1000)
    assert [r.seq for r in stored] == list(range(start + 1, start + 201))
    assert {r.stream for r in stored} == {f"cert/test-ca/{0x1000 + i:x}" for i in range(200)}
    assert await runtime.log.verify_chain() == start + 200
    # Grouped: the 200 appends went to disk in fewer transactions than appends.
    assert sum(len(b) for b in batches) == 200
    assert len(batches) < 200


async def test_conflicting_append_in_a_burst_fails_alone(runtime: Runtime) -> None:
    await runtime.log.append([new(issued(0xC0))])
    start = await runtime.log.head()

    appends = [runtime.log.append([new(issued(0x2000 + i))]) for i in range(30)]
    # Stale: the stream is at version 1, this decision was made on version 0.
    appends.insert(15, runtime.log.append([new(revoked(0xC0), expected_version=0)]))
    results = await asyncio.gather(*appends, return_exceptions=True)

    failures = [r for r in results if isinstance(r, BaseException)]
    assert len(failures) == 1
    assert isinstance(results[15], ConcurrencyError)
    committed = sorted(rec.seq for r in results if not isinstance(r, BaseException) for rec in r)
    assert committed == list(range(start + 1, start + 31))
    assert [r.type for r in await runtime.log.read_stream("cert/test-ca/c0")] == ["CertificateIssued"]
    assert await runtime.log.verify_chain() == start + 30


# --- durability -------------------------------------------------------------------------


async def test_an_append_is_on_disk_when_it_returns(runtime: Runtime) -> None:
    [rec] = await runtime.log.append([new(issued(0x1))])

    rows = raw_rows(runtime.db.path, f"SELECT seq, stream, hash FROM events WHERE seq = {rec.seq}")
    assert rows == [(rec.seq, rec.stream, rec.hash)]

    other = SQLiteDatabase(runtime.config.database)
    try:
        assert await SQLiteEventLog(other, FakeClock(), project=apply_sqlite, clear=clear_sqlite).read(
            rec.seq - 1, 10
        ) == [rec]
    finally:
        other.close()


async def test_log_connections_are_wal_with_synchronous_full(runtime: Runtime) -> None:
    def pragmas(conn: sqlite3.Connection) -> tuple[int, str]:
        return conn.execute("PRAGMA synchronous").fetchone()[0], conn.execute("PRAGMA journal_mode").fetchone()[0]

    # FULL is 2: a commit reaches the disk before the append is acknowledged.
    assert await runtime.db.read(pragmas) == (2, "wal")
    assert await runtime.db.write(pragmas) == (2, "wal")


# --- the hash chain -----------------------------------------------------------------------


def audit(config: Config) -> None:
    pca_main(["audit", "verify", "--local", "--config", str(config.path)])


async def test_verify_chain_passes_on_an_intact_log(runtime: Runtime, capsys: pytest.CaptureFixture[str]) -> None:
    for serial in range(1, 6):
        await runtime.log.append([new(issued(serial))])
    head = await runtime.log.head()

    assert await runtime.log.verify_chain() == head
    await asyncio.to_thread(audit, runtime.config)
    assert f"audit OK: {head} events" in capsys.readouterr().out


def _alter_payload(db: Path, seqs: dict[str, int]) -> tuple[int, str]:
    raw_write(
        db,
        "UPDATE events SET payload = replace(payload, 'keyCompromise', 'superseded') WHERE seq = ?",
        (seqs["revocation"],),
    )
    return seqs["revocation"], "does not match its hash"


def _delete_middle(db: Path, seqs: dict[str, int]) -> tuple[int, str]:
    raw_write(db, "DELETE FROM events WHERE seq = ?", (seqs["middle"],))
    return seqs["middle"], "missing"


def _delete_last(db: Path, seqs: dict[str, int]) -> tuple[int, str]:
    raw_write(db, "DELETE FROM events WHERE seq = ?", (seqs["last"],))
    return seqs["last"], "log head"


def _alter_hash(db: Path, seqs: dict[str, int]) -> tuple[int, str]:
    raw_write(db, "UPDATE events SET hash = ? WHERE seq = ?", ("ab" * 32, seqs["middle"]))
    return seqs["middle"], "does not match its hash"


@pytest.mark.parametrize(
    "tamper",
    [_alter_payload, _delete_middle, _delete_last, _alter_hash],
    ids=["payload-altered", "middle-row-deleted", "last-row-deleted", "hash-altered"],
)
async def test_verify_chain_names_the_first_tampered_seq(
    runtime: Runtime,
    capsys: pytest.CaptureFixture[str],
    tamper: Callable[[Path, dict[str, int]], tuple[int, str]],
) -> None:
    for serial in range(1, 5):
        await runtime.log.append([new(issued(serial))])
    [rev] = await runtime.log.append([new(revoked(2), expected_version=1)])
    [last] = await runtime.log.append([new(issued(5))])
    seqs = {"revocation": rev.seq, "middle": rev.seq - 2, "last": last.seq}
    assert await runtime.log.verify_chain() == last.seq

    bad_seq, why = tamper(runtime.db.path, seqs)

    with pytest.raises(IntegrityError, match=why) as caught:
        await runtime.log.verify_chain()
    assert caught.value.seq == bad_seq
    assert f"at seq {bad_seq}:" in str(caught.value)

    with pytest.raises(SystemExit) as exit_info:
        await asyncio.to_thread(audit, runtime.config)
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "AUDIT FAILED" in err
    assert f"at seq {bad_seq}:" in err


# --- the projection is derived state ----------------------------------------------------------


def projection_rows(db: Path) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    return (
        raw_rows(db, "SELECT * FROM certificates ORDER BY issuer_id, serial"),
        raw_rows(db, "SELECT * FROM issuers ORDER BY issuer_id"),
    )


async def test_rebuild_reproduces_the_projection_from_the_log(
    runtime: Runtime, capsys: pytest.CaptureFixture[str]
) -> None:
    authority = build_authority(runtime)
    actor = Actor("tester", "req-1")
    serials = []
    for i in range(4):
        got = await authority.issue(IssueRequest(subject=f"CN=svc{i}", dns=[f"svc{i}.example"]), actor)
        serials.append(got.certificate.serial_number)
    await authority.revoke(serials[0], "keyCompromise", actor)
    await authority.revoke(serials[1], "certificateHold", actor)
    await authority.revoke(serials[2], "certificateHold", actor)
    await authority.release_hold(serials[2], actor)
    await authority.rotate_signers(actor, force=True)
    db = runtime.db.path
    expected = projection_rows(db)
    assert len(expected[0]) == 5  # the issuing CA (under the root) and four leaves

    # Damage the projection the way a bad migration or a manual edit would.
    raw_write(db, "UPDATE certificates SET status = 'good', reason = NULL, revoked_at = NULL")
    raw_write(db, "DELETE FROM certificates WHERE serial = ?", (f"{serials[3]:x}",))
    raw_write(db, "UPDATE issuers SET signer_cert_der = NULL")
    assert projection_rows(db) != expected

    assert await runtime.log.rebuild_projection() == await runtime.log.head()
    assert projection_rows(db) == expected

    raw_write(db, "DELETE FROM certificates")
    raw_write(db, "DELETE FROM issuers")
    await asyncio.to_thread(pca_main, ["rebuild", "--config", str(runtime.config.path)])
    assert projection_rows(db) == expected
    assert f"from {await runtime.log.head()} events" in capsys.readouterr().out
    record = await runtime.view.certificate("issuing-ca", serials[0])
    assert record is not None and (record.status, record.reason) == ("revoked", "keyCompromise")


# --- events and their schema versions ----------------------------------------------------------

SAMPLE_EVENTS: list[DomainEvent] = [
    IssuerAdded(
        issuer_id="issuing-ca",
        kind="intermediate",
        parent_id="root-ca",
        cert_der_hex="3082",
        key_ref={"backend": "file", "path": "/keys/issuing-ca.key"},
        crl_url="http://example/crl/issuing-ca.crl",
    ),
    IssuerAdded(
        issuer_id="partner-ca",
        kind="external",
        parent_id=None,
        cert_der_hex="3082",
        key_ref=None,
        crl_url="http://example/crl/partner-ca.crl",
    ),
    ResponderCertRotated(
        issuer_id="issuing-ca",
        cert_der_hex="3082",
        key_ref={"backend": "file", "path": "/keys/ocsp.key"},
        not_after=T0 + datetime.timedelta(days=30),
    ),
    OCSPSignerKeyPrepared(
        issuer_id="partner-ca",
        key_ref={"backend": "file", "path": "/keys/partner-ca-ocsp.key"},
        csr_der_hex="3082",
    ),
    issued(0xDEADBEEF),
    revoked(0xDEADBEEF),
    CertificateRevoked(
        issuer_id=ISSUER,
        serial="beef",
        reason="keyCompromise",
        revoked_at=T0,
        invalidity_date=T0 - datetime.timedelta(days=2, microseconds=7),
    ),
    CertificateHoldReleased(issuer_id=ISSUER, serial="beef", released_at=T0 + datetime.timedelta(hours=1)),
    CheckpointSignerSet(
        issuer_id="issuing-ca",
        cert_der_hex="3082",
        key_ref={"backend": "file", "path": "/keys/checkpoint.key"},
        not_after=T0 + datetime.timedelta(days=365),
    ),
    TokenCreated(name="ops-alice", role="revoker", expires=T0 + datetime.timedelta(days=90)),
    TokenCreated(name="forever", role="auditor"),
    TokenRevoked(name="ops-alice", role="revoker"),
]


def test_samples_cover_every_event_type() -> None:
    assert {e.TYPE for e in SAMPLE_EVENTS} == set(EVENT_TYPES)


@pytest.mark.parametrize("event", SAMPLE_EVENTS, ids=lambda e: e.TYPE)
def test_payload_round_trip(event: DomainEvent) -> None:
    payload = event.to_payload()
    assert payload["v"] == event.SCHEMA
    assert decode(event.TYPE, payload) == event


@pytest.mark.parametrize("event", SAMPLE_EVENTS, ids=lambda e: e.TYPE)
async def test_every_event_type_survives_the_log(
    event: DomainEvent, fresh: tuple[SQLiteEventLog, SQLiteDatabase, FakeClock]
) -> None:
    log, _, _ = fresh
    # The projection applies what is appended, so give each event what it needs before it.
    setup: dict[str, list[NewEvent]] = {
        "ResponderCertRotated": [new(SAMPLE_EVENTS[0])],
        "OCSPSignerKeyPrepared": [new(SAMPLE_EVENTS[1])],
        "CertificateRevoked": [new(issued(int(getattr(event, "serial", "1"), 16)))],
        "CertificateHoldReleased": [
            new(issued(0xBEEF)),
            new(revoked(0xBEEF, "certificateHold"), expected_version=1),
        ],
    }
    before = setup.get(event.TYPE, [])
    if before:
        await log.append(before)
    [rec] = await log.append([new(event, expected_version=len(before))])
    [stored] = await log.read(rec.seq - 1, 1)
    assert stored.event == event


def test_unknown_event_type_is_an_integrity_error() -> None:
    with pytest.raises(IntegrityError, match="CertificateExploded"):
        decode("CertificateExploded", {"v": 1})


def test_payload_from_a_newer_schema_is_refused() -> None:
    payload = revoked(5).to_payload()
    payload["v"] = CertificateRevoked.SCHEMA + 1
    with pytest.raises(IntegrityError, match="newer"):
        decode("CertificateRevoked", payload)


def test_old_payload_is_upcast(monkeypatch: pytest.MonkeyPatch) -> None:
    # Schema 0 named the reason by its RFC 5280 code; schema 1 by its name.
    old = {"v": 0, "issuer_id": ISSUER, "serial": "5", "reason_code": 1, "revoked_at": "2026-03-01T12:00:00Z"}

    with pytest.raises(IntegrityError, match="no upcaster"):
        decode("CertificateRevoked", dict(old))

    def v0_to_v1(payload: dict[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in payload.items() if k != "reason_code"}
        out["reason"] = {1: "keyCompromise", 4: "superseded"}[payload["reason_code"]]
        return out

    monkeypatch.setitem(UPCASTERS, ("CertificateRevoked", 0), v0_to_v1)
    event = decode("CertificateRevoked", dict(old))
    assert event == CertificateRevoked(
        issuer_id=ISSUER, serial="5", reason="keyCompromise", revoked_at=datetime.datetime(2026, 3, 1, 12, tzinfo=UTC)
    )


# --- migrations -----------------------------------------------------------------------------


def test_migrate_is_idempotent(tmp_path: Path) -> None:
    db = SQLiteDatabase(tmp_path / "new.db")
    try:
        assert db.migrate_sync(SQLITE_SCHEMAS) == [f"{s.owner} {v}" for s in SQLITE_SCHEMAS for v, _ in s.migrations]
        assert db.migrate_sync(SQLITE_SCHEMAS) == []
    finally:
        db.close()
    assert raw_rows(tmp_path / "new.db", "SELECT owner, version FROM schema_versions ORDER BY rowid") == [
        (s.owner, v) for s in SQLITE_SCHEMAS for v, _ in s.migrations
    ]


def test_pca_migrate_on_an_initialised_ca_changes_nothing(
    ca_config: Config, capsys: pytest.CaptureFixture[str]
) -> None:
    before = raw_rows(ca_config.database, "SELECT seq, hash FROM events ORDER BY seq")
    assert before

    pca_main(["migrate", "--config", str(ca_config.path)])

    assert "is up to date" in capsys.readouterr().out
    assert raw_rows(ca_config.database, "SELECT seq, hash FROM events ORDER BY seq") == before


def test_the_hash_and_payload_formats_stay_as_recorded_logs_have_them() -> None:
    # Pinned: a change here would make every existing log fail ``pca audit verify``.
    payload = canonical_payload({"v": 1, "subject": "CN=é", "serial": "ff"})
    assert payload == '{"serial":"ff","subject":"CN=\\u00e9","v":1}'
    digest = row_hash(
        "0" * 64, 1, "cert/ca/ff", 1, "CertificateIssued", payload, "cli:root", "req-1", "2026-01-01T00:00:00Z"
    )
    assert digest == "d6552a0bde647f45c845fb609b13ef641da92de5f5dd6b50e052fe83d33b2931"
