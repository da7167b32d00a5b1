"""The EventLog contract, run against every implementation: SQLite and PostgreSQL.

Each test gets an empty log on real storage. Tampering is done behind the log's back
with a connection of our own (sqlite3 or asyncpg), as an intruder would.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pca.schemas import PG_SCHEMAS, SQLITE_SCHEMAS
from revocation.clock import FakeClock
from revocation.errors import ConcurrencyError, IntegrityError
from revocation.eventlog import GENESIS_HASH, EventLog, RecordedEvent, row_hash
from revocation.storage.postgres.log import PostgresEventLog
from revocation.storage.postgres.projection import apply_pg, clear_pg
from revocation.storage.sqlite.db import SQLiteDatabase
from revocation.storage.sqlite.log import SQLiteEventLog
from revocation.storage.sqlite.projection import apply_sqlite, clear_sqlite
from tests.support.events import T0, issued, new, revoked
from tests.support.postgres import create_database, drop_database
from tests.support.storage import Raw, follow_while_writing, pg_raw, sqlite_raw

UTC = datetime.UTC


@dataclasses.dataclass
class Subject:
    """A log under test, its clock, and a way to run SQL behind its back (``?`` placeholders)."""

    log: EventLog
    clock: FakeClock
    raw: Raw


@pytest.fixture(params=["sqlite", "postgres"])
async def subject(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Subject]:
    clock = FakeClock(T0)
    if request.param == "sqlite":
        db = SQLiteDatabase(tmp_path / "log.db")
        db.migrate_sync(SQLITE_SCHEMAS)
        try:
            yield Subject(
                SQLiteEventLog(db, clock, project=apply_sqlite, clear=clear_sqlite), clock, sqlite_raw(db.path)
            )
        finally:
            db.close()
    else:
        # The cluster is a plain (session) fixture; the per-test database is made here, since an
        # async fixture cannot be requested dynamically from another one.
        server_dsn: str = request.getfixturevalue("postgres_dsn")
        dsn = await create_database(server_dsn)
        log = await PostgresEventLog.open(dsn, clock, project=apply_pg, clear=clear_pg, schemas=PG_SCHEMAS)
        try:
            yield Subject(log, clock, pg_raw(dsn))
        finally:
            await log.close()
            await drop_database(server_dsn, dsn)


async def test_empty_log(subject: Subject) -> None:
    log = subject.log
    assert await log.head() == 0
    assert await log.read(0, 100) == []
    assert await log.read_index(0, 100) == []
    assert await log.read_stream("cert/test-ca/1") == []
    assert await log.verify_chain() == 0
    assert await log.append([]) == []


async def test_append_assigns_dense_seq_stream_versions_and_chains_hashes(subject: Subject) -> None:
    log, clock = subject.log, subject.clock
    [first] = await log.append([new(issued(0xA1), actor="alice", request_id="r-1")])
    assert (first.seq, first.version, first.stream) == (1, 1, "cert/test-ca/a1")
    assert first.prev_hash == GENESIS_HASH
    assert (first.actor, first.request_id, first.type) == ("alice", "r-1", "CertificateIssued")
    assert first.recorded_at == clock.now()

    clock.advance(10)
    second, third = await log.append([new(revoked(0xA1), expected_version=1), new(issued(0xB2))])
    assert [second.seq, third.seq] == [2, 3]
    # Versions count per stream: the revocation is the second event of A1, B2 starts at 1.
    assert (second.stream, second.version) == ("cert/test-ca/a1", 2)
    assert (third.stream, third.version) == ("cert/test-ca/b2", 1)
    assert second.recorded_at == third.recorded_at == T0 + datetime.timedelta(seconds=10)
    assert second.prev_hash == first.hash
    assert third.prev_hash == second.hash
    assert len({first.hash, second.hash, third.hash}) == 3
    assert await log.head() == 3


async def test_hashes_are_the_shared_row_hash_over_the_stored_text(subject: Subject) -> None:
    """Both implementations store the same text and chain it with the same function."""
    await subject.log.append([new(issued(1)), new(issued(2))])
    rows = await subject.raw(
        "SELECT seq, stream, version, type, payload, actor, request_id, recorded_at, prev_hash, hash "
        "FROM events ORDER BY seq"
    )
    assert [r[0] for r in rows] == [1, 2]
    prev = GENESIS_HASH
    for seq, stream, version, type_, payload, actor, request_id, recorded_at, prev_hash, hash_ in rows:
        assert prev_hash == prev
        assert recorded_at == "2026-03-01T12:00:00.123456Z"
        assert hash_ == row_hash(prev, seq, stream, version, type_, payload, actor, request_id, recorded_at)
        prev = hash_


async def test_read_read_index_and_read_stream_return_exactly_what_was_appended(subject: Subject) -> None:
    log = subject.log
    recorded: list[RecordedEvent] = []
    recorded += await log.append([new(issued(1))])
    recorded += await log.append([new(issued(2))])
    recorded += await log.append([new(revoked(1), expected_version=1)])
    recorded += await log.append([new(issued(3))])

    assert await log.read(0, 100) == recorded
    assert await log.read(1, 2) == recorded[1:3]
    assert await log.read(4, 100) == []
    assert await log.read_index(0, 100) == [(r.seq, r.stream, r.type) for r in recorded]
    assert await log.read_index(2, 1) == [(3, "cert/test-ca/1", "CertificateRevoked")]
    assert await log.read_stream("cert/test-ca/1") == [recorded[0], recorded[2]]
    assert await log.read_stream("cert/test-ca/99") == []
    assert [r.event for r in await log.read(0, 100)] == [issued(1), issued(2), revoked(1), issued(3)]
    assert await log.head() == 4


async def test_stale_expected_version_raises_and_writes_nothing(subject: Subject) -> None:
    log = subject.log
    await log.append([new(issued(1))])
    before = await log.read(0, 100)
    with pytest.raises(ConcurrencyError):
        await log.append([new(revoked(1), expected_version=0)])
    with pytest.raises(ConcurrencyError):
        await log.append([new(issued(1), expected_version=0)])
    with pytest.raises(ConcurrencyError):
        await log.append([new(issued(2), expected_version=3)])
    assert await log.read(0, 100) == before
    assert await log.head() == 1
    # The log carries on from where it was: no seq was burnt by the failures.
    [rec] = await log.append([new(revoked(1), expected_version=1)])
    assert (rec.seq, rec.version, rec.prev_hash) == (2, 2, before[0].hash)
    assert await log.verify_chain() == 2


async def test_a_multi_event_append_is_all_or_nothing(subject: Subject) -> None:
    log = subject.log
    await log.append([new(issued(1))])
    # The third event conflicts: the first two must not be written either.
    with pytest.raises(ConcurrencyError):
        await log.append([new(issued(2)), new(revoked(1), expected_version=1), new(issued(1), expected_version=0)])
    assert await log.head() == 1
    assert [r.seq for r in await log.read(0, 100)] == [1]
    assert await log.read_stream("cert/test-ca/2") == []
    # Two events on one stream in one append: versions count within the append.
    recs = await log.append([new(issued(2)), new(revoked(2), expected_version=1)])
    assert [(r.seq, r.version) for r in recs] == [(2, 1), (3, 2)]
    assert await log.verify_chain() == 3


async def test_a_long_append_reports_each_page_written_and_stays_all_or_nothing(subject: Subject) -> None:
    log = subject.log
    written: list[int] = []
    recs = await log.append([new(issued(serial)) for serial in range(1, 2501)], written.append)
    assert written == [1000, 2000, 2500]  # what pca replay's progress bar counts
    assert (recs[-1].seq, await log.head()) == (2500, 2500)
    # The last event cannot apply (a revocation of a certificate never issued), on the second page: the first
    # page, written and reported, is not kept either.
    written.clear()
    with pytest.raises(IntegrityError):
        await log.append([*(new(issued(serial)) for serial in range(2501, 4001)), new(revoked(9999))], written.append)
    assert written == [1000]
    assert await log.head() == 2500
    assert await log.read(2500, 10) == [] and await log.read_stream(f"cert/test-ca/{9999:x}") == []
    assert await log.verify_chain() == 2500


async def _five(log: EventLog) -> list[RecordedEvent]:
    recs: list[RecordedEvent] = []
    for serial in range(1, 6):
        recs += await log.append([new(issued(serial))])
    return recs


async def test_verify_chain_passes_on_an_intact_log(subject: Subject) -> None:
    await _five(subject.log)
    assert await subject.log.verify_chain() == 5


async def test_verify_chain_names_an_altered_payload(subject: Subject) -> None:
    await _five(subject.log)
    [(payload,)] = await subject.raw("SELECT payload FROM events WHERE seq = 3")
    await subject.raw("UPDATE events SET payload = ? WHERE seq = 3", payload.replace("svc-3", "svc-x"))
    with pytest.raises(IntegrityError, match="seq 3") as info:
        await subject.log.verify_chain()
    assert info.value.seq == 3


async def test_verify_chain_names_a_deleted_middle_row(subject: Subject) -> None:
    await _five(subject.log)
    await subject.raw("DELETE FROM events WHERE seq = 2")
    with pytest.raises(IntegrityError, match="seq 2") as info:
        await subject.log.verify_chain()
    assert info.value.seq == 2


async def test_verify_chain_names_a_deleted_last_row(subject: Subject) -> None:
    await _five(subject.log)
    await subject.raw("DELETE FROM events WHERE seq = 5")
    with pytest.raises(IntegrityError, match="seq 5") as info:
        await subject.log.verify_chain()
    assert info.value.seq == 5


async def test_concurrent_appenders_and_a_follower_see_every_event_once_in_order(subject: Subject) -> None:
    """Gap safety: 8 appenders race; a follower polling ``read(after=last)`` never skips an event.

    If a later seq could commit before an earlier one, the follower would move past the
    earlier one and never see it.
    """
    log = subject.log
    appenders, per_appender = 8, 50
    appended: list[RecordedEvent] = []

    async def appender(index: int) -> None:
        # 25 certificates of our own, each issued then revoked: 50 events on our own streams.
        for n in range(per_appender // 2):
            serial = (index + 1) * 0x10000 + n
            appended.extend(await log.append([new(issued(serial), request_id=f"a{index}-{n}")]))
            await asyncio.sleep(0)
            appended.extend(await log.append([new(revoked(serial), expected_version=1, request_id=f"r{index}-{n}")]))

    async def read_after(last: int) -> list[int]:
        return [rec.seq for rec in await log.read(last, 7)]

    seen = await follow_while_writing([appender(i) for i in range(appenders)], read_after)

    total = appenders * per_appender
    assert len(appended) == total
    assert sorted(r.seq for r in appended) == list(range(1, total + 1))
    assert seen == list(range(1, total + 1))
    assert await log.head() == total
    assert await log.verify_chain() == total
