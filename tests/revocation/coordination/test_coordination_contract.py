"""The Coordination contract, run against every implementation: SQLite and PostgreSQL.

Each test gets freshly migrated, empty storage. Response-store rows (which the
pre-signer writes) are put in with SQL of our own, as is what a test looks at
behind the implementation's back.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from pca.schemas import PG_SCHEMAS, SQLITE_SCHEMAS
from revocation.coordination import (
    CRLInstallation,
    CRLPublication,
    LeaseState,
    PresignedState,
    ProbeResult,
    ResponderState,
    SavedTimeline,
)
from revocation.coordination.holders import lease_holder
from revocation.storage.postgres.coordination import PostgresCoordination
from revocation.storage.postgres.db import open_pg_pool
from revocation.storage.sqlite.coordination import SQLiteCoordination
from revocation.storage.sqlite.db import SQLiteDatabase
from tests.support.postgres import create_database, drop_database
from tests.support.processes import linux_proc, other_process
from tests.support.storage import pg_raw, pg_raw_many, sqlite_raw, sqlite_raw_many

AnyCoordination = SQLiteCoordination | PostgresCoordination


@dataclasses.dataclass
class Subject:
    coord: AnyCoordination  # the concrete class: the contract covers calls only the tests make
    raw: Callable[..., Awaitable[list[tuple[Any, ...]]]]  # SQL with ``?`` placeholders, behind its back
    raw_many: Callable[[str, list[tuple[Any, ...]]], Awaitable[None]]  # the same, once per row of parameters
    # Another handle on the same storage, as another process would have (its own connections).
    another: Callable[[], Awaitable[AnyCoordination]]


@pytest.fixture(params=["sqlite", "postgres"])
async def subject(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Subject]:
    if request.param == "sqlite":
        path = tmp_path / "coord.db"
        db = SQLiteDatabase(path)
        db.migrate_sync(SQLITE_SCHEMAS)
        others: list[SQLiteDatabase] = []

        async def another_sqlite() -> AnyCoordination:
            other = SQLiteDatabase(path)
            others.append(other)
            return SQLiteCoordination(other)

        try:
            yield Subject(SQLiteCoordination(db), sqlite_raw(path), sqlite_raw_many(path), another_sqlite)
        finally:
            for other in others:
                other.close()
            db.close()
    else:
        server_dsn: str = request.getfixturevalue("postgres_dsn")
        dsn = await create_database(server_dsn)
        pools: list[Any] = []

        async def pool() -> Any:
            made = await open_pg_pool(dsn, schemas=PG_SCHEMAS, migrate=not pools)
            pools.append(made)
            return made

        async def another_pg() -> AnyCoordination:
            return PostgresCoordination(await pool())

        try:
            yield Subject(PostgresCoordination(await pool()), pg_raw(dsn), pg_raw_many(dsn), another_pg)
        finally:
            for made in pools:
                await made.close()
            await drop_database(server_dsn, dsn)


# --- leases -----------------------------------------------------------------------------------------


async def test_lease_acquire_renew_expire_take_over_and_release(subject: Subject) -> None:
    coord = subject.coord
    assert await coord.lease("presigner") is None

    assert await coord.try_lease("presigner", "a", 10.0, 100.0)
    assert await coord.lease("presigner") == LeaseState("presigner", "a", 110.0, 100.0)
    # Held and not expired: b cannot have it.
    assert not await coord.try_lease("presigner", "b", 10.0, 105.0)
    # a renews; when it first took the lease is kept.
    assert await coord.try_lease("presigner", "a", 10.0, 106.0)
    assert await coord.lease("presigner") == LeaseState("presigner", "a", 116.0, 100.0)
    assert not await coord.try_lease("presigner", "b", 10.0, 115.9)
    # Expired (expires_at <= now): b takes it over.
    assert await coord.try_lease("presigner", "b", 10.0, 116.0)
    assert await coord.lease("presigner") == LeaseState("presigner", "b", 126.0, 116.0)
    assert not await coord.try_lease("presigner", "a", 10.0, 117.0)

    # Only the holder can release; then the standby gets it at once.
    await coord.release_lease("presigner", "a")
    assert (await coord.lease("presigner")) == LeaseState("presigner", "b", 126.0, 116.0)
    await coord.release_lease("presigner", "b")
    assert await coord.lease("presigner") is None
    assert await coord.try_lease("presigner", "a", 10.0, 118.0)
    assert await coord.lease("presigner") == LeaseState("presigner", "a", 128.0, 118.0)


async def test_an_unexpired_lease_is_taken_from_the_holder_named_dead_only_while_it_still_holds_it(
    subject: Subject,
) -> None:
    coord = subject.coord
    assert await coord.try_lease("presigner", "dead", 10.0, 100.0)
    assert not await coord.try_lease("presigner", "b", 10.0, 101.0)
    assert not await coord.try_lease("presigner", "b", 10.0, 101.0, replacing="someone-else")
    assert await coord.lease("presigner") == LeaseState("presigner", "dead", 110.0, 100.0)
    assert await coord.try_lease("presigner", "b", 10.0, 101.0, replacing="dead")
    assert await coord.lease("presigner") == LeaseState("presigner", "b", 111.0, 101.0)
    # Another claimant that also saw the dead holder comes too late: the lease has changed hands.
    assert not await coord.try_lease("presigner", "c", 10.0, 102.0, replacing="dead")
    assert await coord.lease("presigner") == LeaseState("presigner", "b", 111.0, 101.0)


async def test_leases_are_independent_by_name(subject: Subject) -> None:
    coord = subject.coord
    assert await coord.try_lease("presigner", "a", 10.0, 100.0)
    assert await coord.try_lease("publisher", "b", 5.0, 100.0)
    assert (await coord.lease("presigner"), await coord.lease("publisher")) == (
        LeaseState("presigner", "a", 110.0, 100.0),
        LeaseState("publisher", "b", 105.0, 100.0),
    )


async def test_concurrent_claims_from_separate_connections_have_exactly_one_winner(subject: Subject) -> None:
    """Eight claimants, each with its own connections (as separate processes), race for a free lease
    and then for the expired one: each time exactly one wins, and the lease names it."""
    claimants = [await subject.another() for _ in range(8)]
    for now in (100.0, 200.0):
        results = await asyncio.gather(
            *(coord.try_lease("publisher", f"holder-{now}-{i}", 10.0, now) for i, coord in enumerate(claimants))
        )
        assert sum(results) == 1
        winner = f"holder-{now}-{results.index(True)}"
        lease = await subject.coord.lease("publisher")
        assert lease is not None
        assert (lease.holder, lease.expires_at, lease.acquired_at) == (winner, now + 10.0, now)


# --- responders ---------------------------------------------------------------------------------------


async def test_heartbeats_upsert_one_row_per_responder(subject: Subject) -> None:
    coord = subject.coord
    assert await coord.responders() == []
    await coord.heartbeat("r2", "http://r2.test/ocsp", 0, 50.0, 51.0)
    await coord.heartbeat("r1", "http://r1.test/ocsp", 3, 50.0, 52.0)
    await coord.heartbeat("r2", "http://r2.test/ocsp", 7, 50.0, 53.0)
    assert await coord.responders() == [
        ResponderState("r1", "http://r1.test/ocsp", 3, 50.0, 52.0),
        ResponderState("r2", "http://r2.test/ocsp", 7, 50.0, 53.0),
    ]
    # A restart under the same id: a new start time.
    await coord.heartbeat("r1", "", 0, 60.0, 60.5)
    assert (await coord.responders())[0] == ResponderState("r1", "", 0, 60.0, 60.5)


@linux_proc
async def test_a_responder_named_after_a_process_of_this_machine_that_ended_reads_as_ended(subject: Subject) -> None:
    """A responder's id names its process as a lease holder does (``host:pid:start@machine``): every reader of
    the registry sees at once that one of this machine has ended (kill -9), by the lease's liveness rule.
    Its heartbeat is as fresh as the live one's; one of another machine, or named otherwise, is never judged."""
    with other_process() as proc:
        killed = lease_holder(proc.pid)
    # Its pid is free here now: it means nothing under another machine's name.
    elsewhere = f"elsewhere:{proc.pid}:12345@000000000000"
    with other_process() as proc:
        running = lease_holder(proc.pid)
        for rid in (killed, running, elsewhere, "ocsp-1", f"ocsp/{proc.pid}"):
            await subject.coord.heartbeat(rid, "", 3, 50.0, 51.0)
        states = {r.responder_id: r for r in await subject.coord.responders()}
        assert {rid: r.ended for rid, r in states.items()} == {
            killed: True,
            running: False,
            elsewhere: False,
            "ocsp-1": False,
            f"ocsp/{proc.pid}": False,
        }
        assert states[killed] == ResponderState(killed, "", 3, 50.0, 51.0, ended=True)
        proc.kill()
        proc.wait()
        assert {r.responder_id for r in await subject.coord.responders() if r.ended} == {killed, running}


async def test_first_applied_is_the_earliest_report_at_or_past_the_change(subject: Subject) -> None:
    coord = subject.coord
    await coord.record_applied("r1", 5, 10.0)
    await coord.record_applied("r1", 9, 12.0)
    await coord.record_applied("r1", 12, 15.0)
    await coord.record_applied("r2", 20, 11.0)

    assert await coord.first_applied("r1", 1) == 10.0
    assert await coord.first_applied("r1", 5) == 10.0
    assert await coord.first_applied("r1", 6) == 12.0
    assert await coord.first_applied("r1", 12) == 15.0
    assert await coord.first_applied("r1", 13) is None
    assert await coord.first_applied("r2", 12) == 11.0
    assert await coord.first_applied("nobody", 1) is None
    assert await coord.applied_times("r1", [13, 1, 6, 12]) == {1: 10.0, 6: 12.0, 12: 15.0}
    assert await coord.applied_times("r1", []) == {}
    assert await coord.applied_times("nobody", [1]) == {}


async def test_one_report_carries_every_poll_with_its_own_time_and_the_heartbeat(subject: Subject) -> None:
    coord = subject.coord
    await coord.report("r1", "http://r1/ocsp", [(5, 10.0), (9, 12.0), (12, 15.0)], 12, 1.0, 15.5)
    await coord.report("r1", "http://r1/ocsp", [], 12, 1.0, 16.5)  # a heartbeat with nothing new

    assert [await coord.first_applied("r1", c) for c in (5, 6, 12, 13)] == [10.0, 12.0, 15.0, None]
    (state,) = await coord.responders()
    assert (state.responder_id, state.url, state.applied_change, state.last_seen) == ("r1", "http://r1/ocsp", 12, 16.5)


async def test_a_report_that_changes_no_answer_is_not_stored(subject: Subject) -> None:
    coord = subject.coord
    await coord.record_applied("r1", 9, 12.0)
    await coord.record_applied("r1", 9, 13.0)  # as far, later
    await coord.record_applied("r1", 4, 14.0)  # less far, later (a restart from an older snapshot)
    assert await subject.raw("SELECT COUNT(*) FROM responder_progress") == [(1,)]
    # Less far but earlier, or further: both can be an answer.
    await coord.record_applied("r1", 4, 11.0)
    await coord.record_applied("r1", 10, 16.0)
    assert await subject.raw("SELECT COUNT(*) FROM responder_progress") == [(3,)]
    assert await coord.applied_times("r1", [3, 5, 10]) == {3: 11.0, 5: 12.0, 10: 16.0}


async def test_prune_progress_keeps_the_newest_row_of_each_responder(subject: Subject) -> None:
    coord = subject.coord
    for change, at in ((5, 10.0), (9, 12.0), (12, 15.0)):
        await coord.record_applied("r1", change, at)
    await coord.record_applied("r2", 3, 11.0)
    await coord.record_applied("r3", 4, 500.0)

    assert await coord.prune_progress(12.0) == 1  # r1's row at 10
    assert await coord.first_applied("r1", 1) == 12.0
    # Everything is old now, but each responder keeps its newest row.
    assert await coord.prune_progress(1000.0) == 1  # r1's row at 12
    rows = await subject.raw("SELECT responder_id, applied_change, applied_at FROM responder_progress")
    assert sorted(rows) == [("r1", 12, 15.0), ("r2", 3, 11.0), ("r3", 4, 500.0)]
    assert await coord.prune_progress(1000.0) == 0


async def test_forget_responder_removes_its_row_and_progress(subject: Subject) -> None:
    coord = subject.coord
    await coord.heartbeat("r1", "", 5, 1.0, 2.0)
    await coord.heartbeat("r2", "", 5, 1.0, 2.0)
    await coord.record_applied("r1", 5, 2.0)
    await coord.record_applied("r2", 5, 2.0)
    await coord.forget_responder("r1")
    await coord.forget_responder("never-seen")
    assert [r.responder_id for r in await coord.responders()] == ["r2"]
    assert await coord.first_applied("r1", 1) is None
    assert await coord.first_applied("r2", 1) == 2.0


# --- the response store, as the tracker reads it ------------------------------------------------------


_PUT_RESPONSE = (
    "INSERT INTO ocsp_responses (issuer_id, serial, der, status, this_update, next_update, refresh_at, "
    "source_seq, change_id, stored_at) VALUES (?, ?, ?, ?, 0, 0, 0, ?, ?, ?)"
)


async def put_response(
    subject: Subject, issuer_id: str, serial: int, status: str, source_seq: int, change_id: int, stored_at: float
) -> None:
    await subject.raw(_PUT_RESPONSE, issuer_id, f"{serial:x}", b"\x30\x00", status, source_seq, change_id, stored_at)


async def test_presigned_reads_the_store_rows_of_the_keys_asked(subject: Subject) -> None:
    coord = subject.coord
    assert await coord.last_change() == 0
    assert await coord.presigned([("ca", 1)]) == {}
    await put_response(subject, "ca", 0xA1, "revoked", 7, 3, 100.5)
    await put_response(subject, "ca", 0xB2, "good", 2, 4, 90.0)
    await put_response(subject, "other", 0xA1, "good", 1, 5, 80.0)
    found = await coord.presigned([("ca", 0xA1), ("ca", 0xB2), ("ca", 0xC3), ("other", 0xA1)])
    assert found == {
        ("ca", 0xA1): PresignedState("ca", 0xA1, "revoked", 7, 3, 100.5),
        ("ca", 0xB2): PresignedState("ca", 0xB2, "good", 2, 4, 90.0),
        ("other", 0xA1): PresignedState("other", 0xA1, "good", 1, 5, 80.0),
    }
    assert await coord.presigned([]) == {}
    assert await coord.last_change() == 5
    # A row written before the store recorded the time says 0: unknown.
    await put_response(subject, "ca", 0xD4, "revoked", 8, 6, 0.0)
    assert await coord.presigned([("ca", 0xD4)]) == {("ca", 0xD4): PresignedState("ca", 0xD4, "revoked", 8, 6, None)}


async def test_presigned_reads_many_keys_at_once(subject: Subject) -> None:
    rows = [("ca", f"{serial:x}", b"\x30\x00", "good", serial, serial, float(serial)) for serial in range(1, 1201)]
    await subject.raw_many(_PUT_RESPONSE, rows)
    keys = [("ca", serial) for serial in range(1, 1301)]
    found = await subject.coord.presigned(keys)
    assert sorted(found) == keys[:1200]
    assert found[("ca", 1200)].change_id == 1200


# --- CRL publications and probes ----------------------------------------------------------------------


async def test_first_crl_is_the_earliest_publication_covering_the_seq(subject: Subject) -> None:
    coord = subject.coord
    full = CRLPublication("ca", 0, "full", 10, 40, 100.0)
    delta = CRLPublication("ca", 0, "delta", 11, 55, 130.0)
    later_full = CRLPublication("ca", 0, "full", 12, 60, 160.0)
    for publication in (later_full, full, delta):
        await coord.record_crl_publication(publication)
    await coord.record_crl_publication(CRLPublication("ca", 1, "delta", 3, 99, 110.0))  # another shard
    await coord.record_crl_publication(CRLPublication("other", 0, "full", 1, 99, 105.0))  # another issuer
    # The same CRL recorded twice (a retried report) keeps the first record.
    await coord.record_crl_publication(CRLPublication("ca", 0, "delta", 11, 55, 999.0))

    assert await coord.first_crl("ca", 0, 40) == full
    assert await coord.first_crl("ca", 0, 41) == delta
    assert await coord.first_crl("ca", 0, 55) == delta
    assert await coord.first_crl("ca", 0, 56) == later_full
    assert await coord.first_crl("ca", 0, 61) is None
    assert await coord.first_crl("ca", 2, 1) is None
    assert await coord.crl_publications("ca", 0, 41) == [delta, later_full]
    assert await coord.crl_publications("ca", 0, 1) == [full, delta, later_full]
    assert await coord.crl_publications("ca", 0, 61) == []


async def test_probes_keep_the_first_report_per_revocation_and_url(subject: Subject) -> None:
    coord = subject.coord
    assert await coord.probes("ca", 0xA1) == []
    b = ProbeResult("ca", 0xA1, 7, "http://b.test/ocsp", 101.0)
    a = ProbeResult("ca", 0xA1, 7, "http://a.test/ocsp", 102.5)
    earlier_revocation = ProbeResult("ca", 0xA1, 3, "http://a.test/ocsp", 50.0)
    for probe in (a, b, earlier_revocation):
        await coord.record_probe(probe)
    await coord.record_probe(ProbeResult("ca", 0xA1, 7, "http://a.test/ocsp", 200.0))
    await coord.record_probe(ProbeResult("ca", 0xB2, 7, "http://a.test/ocsp", 100.0))
    assert await coord.probes("ca", 0xA1) == [earlier_revocation, b, a]


async def test_probes_of_many_certificates_in_one_read_are_each_ones_probes(subject: Subject) -> None:
    coord = subject.coord
    assert await coord.probes_of([]) == {}
    assert await coord.probes_of([("ca", 0xA1)]) == {}
    for probe in (
        ProbeResult("ca", 0xA1, 7, "http://b.test/ocsp", 101.0),
        ProbeResult("ca", 0xA1, 7, "http://a.test/ocsp", 102.5),
        ProbeResult("ca", 0xA1, 3, "http://a.test/ocsp", 50.0),
        ProbeResult("ca", 0xB2, 9, "http://a.test/ocsp", 100.0),
        ProbeResult("other", 0xA1, 4, "http://a.test/ocsp", 10.0),
    ):
        await coord.record_probe(probe)
    # More certificates than one IN (...) holds, most of them never probed.
    keys = [("ca", 0xA1), ("ca", 0xB2), ("other", 0xA1), ("ca", 0xC3)] + [("ca", 0x1000 + n) for n in range(1200)]
    found = await coord.probes_of(keys)
    assert found == {
        ("ca", 0xA1): await coord.probes("ca", 0xA1),
        ("ca", 0xB2): await coord.probes("ca", 0xB2),
        ("other", 0xA1): await coord.probes("other", 0xA1),
    }
    assert [p.seq for p in found[("ca", 0xA1)]] == [3, 7, 7]


# --- CRL installations by relying parties' sync agents ---------------------------------------------


async def test_crl_publication_finds_one_publication_by_its_number(subject: Subject) -> None:
    coord = subject.coord
    full = CRLPublication("ca", 2, "full", 5, 40, 100.0)
    delta = CRLPublication("ca", 2, "delta", 6, 41, 101.0)
    for publication in (full, delta, CRLPublication("ca", 0, "full", 5, 30, 90.0)):
        await coord.record_crl_publication(publication)
    assert await coord.crl_publication("ca", 2, "full", 5) == full
    assert await coord.crl_publication("ca", 2, "delta", 6) == delta
    assert await coord.crl_publication("ca", 2, "delta", 5) is None  # the number of the full, not a delta's
    assert await coord.crl_publication("ca", 1, "full", 5) is None
    assert await coord.crl_publication("other", 2, "full", 5) is None
    # A number (or shard) beyond what a column holds is simply not one pca published.
    assert await coord.crl_publication("ca", 2, "full", 2**159 - 1) is None
    assert await coord.crl_publication("ca", 2**40, "full", 5) is None


async def test_a_reported_installation_keeps_the_earliest_time(subject: Subject) -> None:
    coord = subject.coord
    first = CRLInstallation("nginx-1", "ca", 0, "delta", 6, 41, 120.0)
    assert await coord.record_crl_installation(first) == (first, True)
    # Reported again later (the agent retried): the earliest time stays, and it is not new.
    assert await coord.record_crl_installation(dataclasses.replace(first, installed_at=130.0)) == (first, False)
    # Reported again with an earlier time: that time is kept.
    earlier = dataclasses.replace(first, installed_at=110.0)
    assert await coord.record_crl_installation(earlier) == (earlier, False)
    assert await coord.crl_installations("ca", 0, 0) == [earlier]


async def test_concurrent_reports_of_one_installation_make_one_row(subject: Subject) -> None:
    reporters = [await subject.another() for _ in range(4)]
    base = CRLInstallation("haproxy-7", "ca", 1, "full", 9, 50, 200.0)
    results = await asyncio.gather(
        *(c.record_crl_installation(dataclasses.replace(base, installed_at=200.0 + n)) for n, c in enumerate(reporters))
    )
    assert sum(created for _, created in results) == 1
    assert await subject.coord.crl_installations("ca", 1, 0) == [base]


async def test_installations_of_a_shard_from_a_position(subject: Subject) -> None:
    coord = subject.coord
    old = CRLInstallation("a", "ca", 3, "full", 4, 30, 100.0)
    a_delta = CRLInstallation("a", "ca", 3, "delta", 5, 41, 160.0)
    b_full = CRLInstallation("b", "ca", 3, "full", 6, 45, 150.0)
    a_full = CRLInstallation("a", "ca", 3, "full", 6, 45, 170.0)
    others = [
        CRLInstallation("a", "ca", 0, "full", 6, 45, 150.0),  # another shard
        CRLInstallation("a", "other", 3, "full", 6, 45, 150.0),  # another issuer
    ]
    for installation in (old, a_delta, b_full, a_full, *others):
        await coord.record_crl_installation(installation)
    assert await coord.crl_installations("ca", 3, 41) == [b_full, a_delta, a_full]
    assert await coord.crl_installations("ca", 3, 42) == [b_full, a_full]
    assert await coord.crl_installations("ca", 3, 0) == [old, b_full, a_delta, a_full]
    assert await coord.crl_installations("ca", 3, 46) == []
    assert await coord.crl_installations("ca", 9, 0) == []
    # Which agents installed anything of the shard since a time (those known to follow it).
    assert await coord.crl_agents("ca", 3, 0.0) == ["a", "b"]
    assert await coord.crl_agents("ca", 3, 155.0) == ["a"]
    assert await coord.crl_agents("ca", 3, 171.0) == []
    assert await coord.crl_agents("ca", 2, 0.0) == []

    assert await coord.prune_crl_installations(150.0) == 1  # old, installed at 100
    assert await coord.crl_installations("ca", 3, 0) == [b_full, a_delta, a_full]
    assert await coord.prune_crl_installations(150.0) == 0


# --- finished timelines -------------------------------------------------------------------------------


async def test_timelines_round_trip_and_are_replaced_by_a_later_save(subject: Subject) -> None:
    coord = subject.coord
    timeline = {
        "issuer_id": "ca",
        "serial": "a1",
        "seq": 7,
        "presigned": {"at": "2026-03-01T12:00:00.100000Z", "seconds": 0.1},
        "responders": [{"responder_id": "r1", "state": "applied", "seconds": 0.25}],
        "crl": None,
        "slo_met": True,
    }
    assert await coord.timeline("ca", 0xA1, 7) is None
    await coord.save_timeline("ca", 0xA1, 7, timeline)
    assert await coord.timeline("ca", 0xA1, 7) == timeline
    assert await coord.timeline("ca", 0xA1, 8) is None
    assert await coord.timeline("other", 0xA1, 7) is None

    replaced = {**timeline, "crl": {"at": "2026-03-01T12:01:00Z", "seconds": 60.0}}
    await coord.save_timelines([SavedTimeline("ca", 0xA1, 7, replaced), SavedTimeline("ca", 0xB2, 9, {"seq": 9})])
    assert await coord.timeline("ca", 0xA1, 7) == replaced
    assert await coord.timeline("ca", 0xB2, 9) == {"seq": 9}
    await coord.save_timelines([])
