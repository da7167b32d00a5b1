"""The propagation tracker on real storage: timelines, the follow loop, its metrics.

Events go through the real event log (SQLite; PostgreSQL in one test). What the
other roles would write (responder heartbeats and progress, CRL publications,
probes) goes through the coordination API; response-store rows are written with
SQL, so their times are chosen. The log's clock and the tracker's wall clock are
fakes: time moves only when a test says so, and ``step()`` drives the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from prometheus_client import CollectorRegistry

from pca.schemas import PG_SCHEMAS, SQLITE_SCHEMAS
from revocation.authority import issuer_added
from revocation.clock import FakeClock
from revocation.coordination import CRLInstallation, CRLPublication, ProbeResult
from revocation.coordination.holders import lease_holder
from revocation.errors import ConfigError, StorageError
from revocation.eventlog import NewEvent, RecordedEvent
from revocation.events import CertificateHoldReleased, CertificateIssued, CertificateRevoked, DomainEvent
from revocation.propagation.timeline import Timeline
from revocation.propagation.tracker import MIN_STEP_SECONDS, PropagationTracker
from revocation.storage.postgres.coordination import PostgresCoordination
from revocation.storage.postgres.log import PostgresEventLog
from revocation.storage.postgres.projection import PostgresStatusView, apply_pg, clear_pg
from revocation.storage.sqlite.coordination import SQLiteCoordination
from revocation.storage.sqlite.db import SQLiteDatabase
from revocation.storage.sqlite.log import SQLiteEventLog
from revocation.storage.sqlite.projection import SQLiteStatusView, apply_sqlite, clear_sqlite
from tests.support import events
from tests.support.postgres import create_database, drop_database
from tests.support.processes import linux_proc, other_process

UTC = datetime.UTC
T0 = datetime.datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
C = T0.timestamp()  # the revocations below commit at this time
ISSUER = "test-ca"
SERIAL = 0xA1


class Wall:
    """The tracker's wall clock (epoch seconds), moved by hand."""

    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def iso_at(seconds_after_commit: float) -> str:
    moment = datetime.datetime.fromtimestamp(C + seconds_after_commit, UTC)
    return moment.isoformat().replace("+00:00", "Z")


def issued(serial: int) -> CertificateIssued:
    # The log and the projection never parse the DER: a stub lands in CRL shard 0.
    return events.issued(
        serial, ISSUER, not_before=T0 - datetime.timedelta(days=1), not_after=T0 + datetime.timedelta(days=90)
    )


@dataclasses.dataclass
class Env:
    log: Any  # SQLiteEventLog | PostgresEventLog
    coord: Any  # SQLiteCoordination | PostgresCoordination
    view: Any
    clock: FakeClock
    wall: Wall
    registry: CollectorRegistry
    tracker: PropagationTracker
    # INSERT OR REPLACE of a response-store row: (serial, status, source_seq, change_id, stored_at).
    store_row: Callable[[int, str, int, int, float], Awaitable[None]]
    raw: Callable[..., Awaitable[list[tuple[Any, ...]]]]

    async def append(self, event: DomainEvent, expected_version: int) -> RecordedEvent:
        [rec] = await self.log.append([events.new(event, expected_version, request_id="req")])
        return rec

    async def issue(self, serial: int = SERIAL) -> RecordedEvent:
        return await self.append(issued(serial), 0)

    async def revoke(
        self, serial: int = SERIAL, reason: str = "keyCompromise", expected_version: int = 1
    ) -> RecordedEvent:
        event = events.revoked(serial, reason, ISSUER, revoked_at=T0)
        return await self.append(event, expected_version)

    async def release(self, serial: int = SERIAL, expected_version: int = 2) -> RecordedEvent:
        event = CertificateHoldReleased(issuer_id=ISSUER, serial=f"{serial:x}", released_at=T0)
        return await self.append(event, expected_version)

    def sample(self, name: str, **labels: str) -> float | None:
        return self.registry.get_sample_value(name, labels)

    def seconds_count(self, channel: str) -> float | None:
        return self.sample("revocation_propagation_seconds_count", channel=channel)

    def seconds_sum(self, channel: str) -> float | None:
        return self.sample("revocation_propagation_seconds_sum", channel=channel)

    def make_tracker(self, **kwargs: Any) -> PropagationTracker:
        self.registry = CollectorRegistry()
        self.tracker = PropagationTracker(self.log, self.view, self.coord, self.registry, now=self.wall, **kwargs)
        return self.tracker


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    path = tmp_path / "pca.db"
    db = SQLiteDatabase(path)
    db.migrate_sync(SQLITE_SCHEMAS)
    clock = FakeClock(T0)
    log, view, coord = (
        SQLiteEventLog(db, clock, project=apply_sqlite, clear=clear_sqlite),
        SQLiteStatusView(db),
        SQLiteCoordination(db),
    )
    wall = Wall(C)
    registry = CollectorRegistry()

    async def raw(sql: str, *params: Any) -> list[tuple[Any, ...]]:
        with contextlib.closing(sqlite3.connect(path)) as conn:
            rows = conn.execute(sql, params).fetchall()
            conn.commit()
            return rows

    async def store_row(serial: int, status: str, source_seq: int, change_id: int, stored_at: float) -> None:
        await raw(
            "INSERT OR REPLACE INTO ocsp_responses (issuer_id, serial, der, status, this_update, next_update, "
            "refresh_at, source_seq, change_id, stored_at) VALUES (?, ?, x'3000', ?, 0, 0, 0, ?, ?, ?)",
            ISSUER,
            f"{serial:x}",
            status,
            source_seq,
            change_id,
            stored_at,
        )

    tracker = PropagationTracker(log, view, coord, registry, now=wall)
    try:
        yield Env(log, coord, view, clock, wall, registry, tracker, store_row, raw)
    finally:
        db.close()


async def revoke_and_presign(env: Env) -> RecordedEvent:
    """Issue SERIAL, revoke it, and store its revoked response (change 7) 0.1 s after the revocation."""
    await env.issue()
    rev = await env.revoke()
    await env.store_row(SERIAL, "revoked", rev.seq, 7, C + 0.1)
    return rev


async def two_responders(env: Env, *, r1_change: int, r2_change: int, seen: float = C + 0.9) -> None:
    await env.coord.heartbeat("r1", "http://r1.test/ocsp", r1_change, C - 100, seen)
    await env.coord.heartbeat("r2", "http://r2.test/ocsp", r2_change, C - 100, seen)


# --- timelines on demand --------------------------------------------------------------------------------


async def test_a_certificate_never_revoked_has_no_timeline(env: Env) -> None:
    assert await env.tracker.timeline(ISSUER, SERIAL) is None
    await env.issue()
    assert await env.tracker.timeline(ISSUER, SERIAL) is None


async def test_timeline_of_a_revocation_on_its_way(env: Env) -> None:
    await env.issue()
    rev = await env.revoke()
    assert rev.recorded_at == T0
    await env.store_row(SERIAL, "revoked", rev.seq, 7, C + 0.1)
    await two_responders(env, r1_change=7, r2_change=6)
    await env.coord.record_applied("r1", 7, C + 0.3)
    await env.coord.record_applied("r2", 6, C + 0.2)
    # A delta built before the revocation, then a full CRL covering it.
    await env.coord.record_crl_publication(CRLPublication(ISSUER, 0, "delta", 4, rev.seq - 1, C + 0.2))
    await env.coord.record_crl_publication(CRLPublication(ISSUER, 0, "full", 5, rev.seq, C + 2.0))
    await env.coord.record_probe(ProbeResult(ISSUER, SERIAL, rev.seq, "http://r1.test/ocsp", C + 0.4))
    await env.coord.record_probe(ProbeResult(ISSUER, SERIAL, rev.seq - 1, "http://r1.test/ocsp", C - 50))
    # A relying party installed the full CRL; another only the delta from before the revocation.
    await env.coord.record_crl_installation(CRLInstallation("nginx-1", ISSUER, 0, "full", 5, rev.seq, C + 3.0))
    await env.coord.record_crl_installation(CRLInstallation("haproxy-2", ISSUER, 0, "delta", 4, rev.seq - 1, C + 0.5))
    env.wall.t = C + 1

    timeline = await env.tracker.timeline(ISSUER, SERIAL)
    assert timeline == {
        "issuer_id": ISSUER,
        "serial": "a1",
        "seq": rev.seq,
        "committed_at": "2026-03-01T12:00:00Z",
        "superseded": False,
        "presigned": {"at": iso_at(0.1), "seconds": 0.1},
        "responders": [
            {
                "responder_id": "r1",
                "url": "http://r1.test/ocsp",
                "state": "applied",
                "applied_at": iso_at(0.3),
                "seconds": 0.3,
                "applied_change": 7,
                "last_seen": iso_at(0.9),
                "counted": True,
            },
            {
                "responder_id": "r2",
                "url": "http://r2.test/ocsp",
                "state": "pending",
                "applied_at": None,
                "seconds": None,
                "applied_change": 6,
                "last_seen": iso_at(0.9),
                "counted": True,
            },
        ],
        "ocsp_all_responders": None,
        "crl": {"at": iso_at(2.0), "seconds": 2.0, "kind": "full", "number": 5, "shard": 0},
        "probes": [{"responder_url": "http://r1.test/ocsp", "seen_at": iso_at(0.4), "seconds": 0.4}],
        "pending": ["r2"],
        "slo_seconds": 5.0,
        "slo_met": None,
        "crl_published": True,
        "relying_parties": [{"agent": "nginx-1", "at": iso_at(3.0), "seconds": 3.0, "kind": "full", "number": 5}],
        "gone_without": [],
    }
    # Still pending past the SLO: already missed.
    env.wall.t = C + 6
    assert (await env.tracker.timeline(ISSUER, SERIAL) or {})["slo_met"] is False

    # r2 catches up: every live responder has it.
    await env.coord.record_applied("r2", 8, C + 0.5)
    await env.coord.heartbeat("r2", "http://r2.test/ocsp", 8, C - 100, C + 5.9)
    timeline = await env.tracker.timeline(ISSUER, SERIAL)
    assert timeline is not None
    assert timeline["ocsp_all_responders"] == {"at": iso_at(0.5), "seconds": 0.5}
    assert (timeline["pending"], timeline["slo_met"]) == ([], True)
    assert [(r["state"], r["seconds"]) for r in timeline["responders"]] == [("applied", 0.3), ("applied", 0.5)]


async def test_a_gone_responder_no_longer_holds_the_ocsp_channel_open(env: Env) -> None:
    await env.issue()
    rev = await env.revoke()
    await env.store_row(SERIAL, "revoked", rev.seq, 3, C + 0.1)
    await env.coord.heartbeat("r1", "", 3, C - 100, C + 31)
    await env.coord.heartbeat("r2", "", 2, C - 100, C + 1)  # its last heartbeat
    await env.coord.record_applied("r1", 3, C + 0.2)

    env.wall.t = C + 31  # r2 silent for exactly gone_after: still live
    timeline = await env.tracker.timeline(ISSUER, SERIAL)
    assert timeline is not None
    assert (timeline["ocsp_all_responders"], timeline["pending"], timeline["slo_met"]) == (None, ["r2"], False)

    env.wall.t = C + 31.5  # now gone
    timeline = await env.tracker.timeline(ISSUER, SERIAL)
    assert timeline is not None
    assert [(r["responder_id"], r["state"], r["counted"]) for r in timeline["responders"]] == [
        ("r1", "applied", True),
        ("r2", "gone", False),
    ]
    assert timeline["ocsp_all_responders"] == {"at": iso_at(0.2), "seconds": 0.2}
    # Met by the live responder only: r2 was live at the commit and never had it.
    assert (timeline["pending"], timeline["slo_met"], timeline["gone_without"]) == ([], True, ["r2"])


async def test_no_live_responder_means_no_ocsp_figure(env: Env) -> None:
    await env.issue()
    rev = await env.revoke()
    await env.store_row(SERIAL, "revoked", rev.seq, 3, C + 0.1)
    timeline = await env.tracker.timeline(ISSUER, SERIAL)
    assert timeline is not None
    assert (timeline["responders"], timeline["ocsp_all_responders"], timeline["pending"]) == ([], None, [])
    assert timeline["slo_met"] is None


async def test_a_responder_started_after_the_response_was_stored_does_not_count(env: Env) -> None:
    """It loaded the revoked response when it started: it never answered "good" for it."""
    await env.issue()
    rev = await env.revoke()
    await env.store_row(SERIAL, "revoked", rev.seq, 3, C + 0.1)
    await env.coord.heartbeat("r1", "", 3, C - 100, C + 100)
    await env.coord.record_applied("r1", 3, C + 0.2)
    await env.coord.heartbeat("late", "", 3, C + 90, C + 100)
    await env.coord.record_applied("late", 3, C + 95)
    env.wall.t = C + 100
    timeline = await env.tracker.timeline(ISSUER, SERIAL)
    assert timeline is not None
    assert [(r["responder_id"], r["state"], r["seconds"], r["counted"]) for r in timeline["responders"]] == [
        ("late", "applied", 95.0, False),
        ("r1", "applied", 0.2, True),
    ]
    assert timeline["ocsp_all_responders"] == {"at": iso_at(0.2), "seconds": 0.2}


async def test_a_store_row_from_before_the_revocation_is_not_presigned(env: Env) -> None:
    await env.issue()
    rev = await env.revoke()
    await env.store_row(SERIAL, "good", rev.seq - 1, 3, C - 10)
    await env.coord.heartbeat("r1", "", 3, C - 100, C + 1)
    await env.coord.record_applied("r1", 3, C - 9)
    timeline = await env.tracker.timeline(ISSUER, SERIAL)
    assert timeline is not None
    assert (timeline["presigned"], timeline["pending"], timeline["responders"][0]["state"]) == (None, ["r1"], "pending")


async def test_a_revocation_released_from_hold_is_superseded(env: Env) -> None:
    await env.issue()
    rev = await env.revoke(reason="certificateHold")
    release = await env.release()
    await env.store_row(SERIAL, "good", release.seq, 4, C + 0.2)
    await env.coord.heartbeat("r1", "", 4, C - 100, C + 1)
    env.wall.t = C + 60
    timeline = await env.tracker.timeline(ISSUER, SERIAL)
    assert timeline is not None
    assert (timeline["seq"], timeline["superseded"], timeline["presigned"]) == (rev.seq, True, None)
    assert (timeline["ocsp_all_responders"], timeline["pending"], timeline["slo_met"]) == (None, [], None)
    # Revoked again: the timeline is the new revocation's.
    again = await env.revoke(reason="keyCompromise", expected_version=3)
    timeline = await env.tracker.timeline(ISSUER, SERIAL)
    assert timeline is not None
    assert (timeline["seq"], timeline["superseded"]) == (again.seq, False)


async def test_the_crl_is_looked_up_in_the_certificates_shard(env: Env) -> None:
    await env.issue()
    rev = await env.revoke()
    await env.raw("UPDATE certificates SET crl_shard = 3 WHERE serial = ?", f"{SERIAL:x}")
    await env.coord.record_crl_publication(CRLPublication(ISSUER, 0, "delta", 9, rev.seq, C + 1))
    await env.coord.record_crl_publication(CRLPublication(ISSUER, 3, "delta", 2, rev.seq, C + 4))
    timeline = await env.tracker.timeline(ISSUER, SERIAL)
    assert timeline is not None
    assert timeline["crl"] == {"at": iso_at(4), "seconds": 4.0, "kind": "delta", "number": 2, "shard": 3}


# --- following the log ----------------------------------------------------------------------------------


async def complete(env: Env, rev: RecordedEvent) -> None:
    """The revocation of SERIAL reaches every channel: store +0.1, r1 +0.3, r2 +0.5, a CRL +2."""
    change = rev.seq + 100
    await env.store_row(SERIAL, "revoked", rev.seq, change, C + 0.1)
    await two_responders(env, r1_change=change, r2_change=change)
    await env.coord.record_applied("r1", change, C + 0.3)
    await env.coord.record_applied("r2", change, C + 0.5)
    await env.coord.record_crl_publication(CRLPublication(ISSUER, 0, "delta", rev.seq, rev.seq, C + 2.0))


async def test_the_tracker_follows_new_revocations_only(env: Env) -> None:
    await env.issue(1)
    await env.revoke(1)
    await env.tracker.step()  # notes where the log stands: seq 2
    await env.tracker.step()
    assert env.tracker.pending == 0

    await env.issue()
    await env.revoke()
    await env.tracker.step()
    assert env.tracker.pending == 1
    assert env.sample("revocation_propagation_pending") == 1


async def test_a_revocation_by_an_issuer_whose_key_pca_lacks_is_done_once_ocsp_has_it(env: Env) -> None:
    """pca publishes no CRL for an external issuer added without its key: OCSP alone completes the
    revocation, the timeline says the CRL is not published, and nothing counts as a missing CRL."""
    ca = x509.load_pem_x509_certificate(_external_ca_pem())
    await env.append(issuer_added(ISSUER, "external", None, ca, None, "http://pki.partner.test/ca.crl"), 0)
    await env.tracker.step()
    rev = await revoke_and_presign(env)
    await env.coord.heartbeat("r1", "http://r1.test/ocsp", 7, C - 100, C + 0.9)
    await env.coord.record_applied("r1", 7, C + 0.3)
    env.wall.t = C + 1

    on_its_way = await env.tracker.timeline(ISSUER, SERIAL)
    assert on_its_way is not None and on_its_way["crl_published"] is False and on_its_way["crl"] is None
    await env.tracker.step()
    assert env.tracker.pending == 0
    saved = await env.coord.timeline(ISSUER, SERIAL, rev.seq)
    assert saved is not None and (saved["crl"], saved["crl_published"], saved["slo_met"]) == (None, False, True)
    assert Timeline.from_json(saved).missing() == []
    assert env.seconds_count("ocsp_all_responders") == 1
    assert env.sample("revocation_propagation_incomplete_total", channel="crl") in (None, 0)


def _external_ca_pem() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Partner CA")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(T0 - datetime.timedelta(days=1))
        .not_valid_after(T0 + datetime.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


async def test_a_finished_revocation_is_measured_and_saved(env: Env) -> None:
    await env.tracker.step()
    rev = await revoke_and_presign(env)
    await two_responders(env, r1_change=7, r2_change=6)
    await env.coord.record_applied("r1", 7, C + 0.3)
    env.wall.t = C + 1
    await env.tracker.step()
    assert env.tracker.pending == 1  # r2 has not got it, no CRL yet
    assert env.seconds_count("ocsp_all_responders") == 0

    await env.coord.record_applied("r2", 7, C + 0.5)
    await env.coord.heartbeat("r2", "http://r2.test/ocsp", 7, C - 100, C + 1.5)
    env.wall.t = C + 1.5
    await env.tracker.step()
    assert env.tracker.pending == 1  # still no CRL

    await env.coord.record_crl_publication(CRLPublication(ISSUER, 0, "delta", 6, rev.seq, C + 2.0))
    await env.coord.record_probe(ProbeResult(ISSUER, SERIAL, rev.seq, "http://r1.test/ocsp", C + 0.75))
    env.wall.t = C + 2.5
    await env.tracker.step()
    assert env.tracker.pending == 0
    assert env.sample("revocation_propagation_pending") == 0
    for channel, seconds in (("presigned", 0.1), ("ocsp_all_responders", 0.5), ("crl", 2.0), ("probe", 0.75)):
        assert env.seconds_count(channel) == 1, channel
        assert env.seconds_sum(channel) == pytest.approx(seconds), channel
    assert env.sample("revocation_propagation_seconds_bucket", channel="ocsp_all_responders", le="0.25") == 0
    assert env.sample("revocation_propagation_seconds_bucket", channel="ocsp_all_responders", le="0.5") == 1
    assert env.sample("revocation_propagation_slo_breaches_total", channel="ocsp_all_responders") == 0
    for channel in ("presigned", "ocsp_all_responders", "crl"):
        assert env.sample("revocation_propagation_incomplete_total", channel=channel) == 0

    saved = await env.coord.timeline(ISSUER, SERIAL, rev.seq)
    assert saved is not None
    assert saved["ocsp_all_responders"] == {"at": iso_at(0.5), "seconds": 0.5}
    assert saved["crl"]["seconds"] == 2.0
    assert saved["probes"] == [{"responder_url": "http://r1.test/ocsp", "seen_at": iso_at(0.75), "seconds": 0.75}]
    assert (saved["slo_met"], saved["superseded"]) == (True, False)
    assert await env.tracker.timeline(ISSUER, SERIAL) == saved

    # The saved timeline outlives the raw rows; and r2 going away later changes nothing in it.
    await env.raw("DELETE FROM responder_progress")
    env.wall.t = C + 3600
    assert await env.tracker.timeline(ISSUER, SERIAL) == saved
    # Another tracker (another process, the API's) answers the same from the stored data.
    other = PropagationTracker(env.log, env.view, env.coord, CollectorRegistry(), now=env.wall)
    assert await other.timeline(ISSUER, SERIAL) == saved


# --- the relying_party channel (CRL sync agents) -------------------------------------------------------


def rp(agent: str, kind: str, number: int, position: int, after_commit: float) -> CRLInstallation:
    return CRLInstallation(agent, ISSUER, 0, kind, number, position, C + after_commit)


async def test_the_tracker_waits_for_known_agents_and_observes_each_once(env: Env) -> None:
    # Known agents installed a CRL of the shard within the hour before the commit; "stale" did not.
    await env.coord.record_crl_installation(rp("nginx-1", "full", 3, 0, -600))
    await env.coord.record_crl_installation(rp("haproxy-2", "full", 3, 0, -60))
    await env.coord.record_crl_installation(rp("stale", "full", 1, 0, -7200))
    await env.tracker.step()
    rev = await revoke_and_presign(env)
    await two_responders(env, r1_change=7, r2_change=7)
    await env.coord.record_applied("r1", 7, C + 0.3)
    await env.coord.record_applied("r2", 7, C + 0.4)
    await env.coord.record_crl_publication(CRLPublication(ISSUER, 0, "delta", 4, rev.seq - 1, C - 0.5))
    await env.coord.record_crl_publication(CRLPublication(ISSUER, 0, "delta", 5, rev.seq, C + 2.0))
    # nginx-1 installs the delta from before the revocation (it does not list it), then the one after.
    await env.coord.record_crl_installation(rp("nginx-1", "delta", 4, rev.seq - 1, 1.0))
    await env.coord.record_crl_installation(rp("nginx-1", "delta", 5, rev.seq, 3.0))
    env.wall.t = C + 3.5
    await env.tracker.step()
    # OCSP and the CRL are done, but haproxy-2 (known) has not installed it: still followed.
    assert env.tracker.pending == 1
    assert (env.seconds_count("relying_party"), env.seconds_sum("relying_party")) == (1, pytest.approx(3.0))
    on_its_way = await env.tracker.timeline(ISSUER, SERIAL)
    assert on_its_way is not None and on_its_way["slo_met"] is True  # agents never decide the SLO
    assert [(r["agent"], r["seconds"]) for r in on_its_way["relying_parties"]] == [("nginx-1", 3.0)]

    env.wall.t = C + 4.5
    await env.tracker.step()  # nothing new: nginx-1 is not observed twice
    assert env.seconds_count("relying_party") == 1
    await env.coord.record_crl_installation(rp("haproxy-2", "delta", 5, rev.seq, 5.0))
    env.wall.t = C + 5.5
    await env.tracker.step()
    assert env.tracker.pending == 0
    assert (env.seconds_count("relying_party"), env.seconds_sum("relying_party")) == (2, pytest.approx(8.0))
    for channel in ("ocsp_all_responders", "crl"):
        assert env.seconds_count(channel) == 1
    saved = await env.coord.timeline(ISSUER, SERIAL, rev.seq)
    assert saved is not None
    assert saved["relying_parties"] == [
        {"agent": "nginx-1", "at": iso_at(3.0), "seconds": 3.0, "kind": "delta", "number": 5},
        {"agent": "haproxy-2", "at": iso_at(5.0), "seconds": 5.0, "kind": "delta", "number": 5},
    ]

    # An agent reporting after the timeline was saved shows when it is served (not in the metrics).
    await env.coord.record_crl_installation(rp("stale", "full", 6, rev.seq + 3, 900.0))
    served = await env.tracker.timeline(ISSUER, SERIAL)
    assert served is not None
    assert [(r["agent"], r["seconds"]) for r in served["relying_parties"]] == [
        ("nginx-1", 3.0),
        ("haproxy-2", 5.0),
        ("stale", 900.0),
    ]
    assert {k: v for k, v in served.items() if k != "relying_parties"} == {
        k: v for k, v in saved.items() if k != "relying_parties"
    }
    assert env.seconds_count("relying_party") == 2


async def test_a_known_agent_that_never_installs_holds_the_revocation_only_until_give_up(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    await env.coord.record_crl_installation(rp("dead-agent", "full", 3, 0, -1800))
    env.make_tracker(give_up_after=60.0)
    await env.tracker.step()
    rev = await revoke_and_presign(env)
    await two_responders(env, r1_change=7, r2_change=7, seen=C + 61)
    await env.coord.record_applied("r1", 7, C + 0.3)
    await env.coord.record_applied("r2", 7, C + 0.4)
    await env.coord.record_crl_publication(CRLPublication(ISSUER, 0, "full", 5, rev.seq, C + 2.0))
    env.wall.t = C + 10
    await env.tracker.step()
    assert env.tracker.pending == 1
    env.wall.t = C + 61
    with caplog.at_level(logging.INFO, logger="pca.tracker"):
        await env.tracker.step()
    assert env.tracker.pending == 0
    [record] = [r for r in caplog.records if "gave up" in r.getMessage()]
    assert record.levelno == logging.INFO and "still missing: relying party dead-agent" in record.getMessage()
    assert env.seconds_count("relying_party") == 0
    # Nothing is counted missing or breached for it: the channel is informative only.
    assert env.sample("revocation_propagation_slo_breaches_total", channel="ocsp_all_responders") == 0
    assert env.sample("revocation_propagation_incomplete_total", channel="relying_party") is None
    saved = await env.coord.timeline(ISSUER, SERIAL, rev.seq)
    assert saved is not None and (saved["slo_met"], saved["relying_parties"]) == (True, [])
    assert Timeline.from_json(saved).missing() == []


async def test_without_known_agents_a_revocation_finishes_as_before(env: Env) -> None:
    await env.tracker.step()
    rev = await revoke_and_presign(env)
    await two_responders(env, r1_change=7, r2_change=7)
    await env.coord.record_applied("r1", 7, C + 0.3)
    await env.coord.record_applied("r2", 7, C + 0.4)
    await env.coord.record_crl_publication(CRLPublication(ISSUER, 0, "full", 5, rev.seq, C + 2.0))
    # An agent never seen before installs it at once: observed, though nobody waited for it.
    await env.coord.record_crl_installation(rp("new-agent", "full", 5, rev.seq, 2.5))
    env.wall.t = C + 3
    await env.tracker.step()
    assert env.tracker.pending == 0
    assert (env.seconds_count("relying_party"), env.seconds_sum("relying_party")) == (1, pytest.approx(2.5))


async def test_a_slow_revocation_counts_as_an_slo_breach(env: Env) -> None:
    await env.tracker.step()
    rev = await revoke_and_presign(env)
    await two_responders(env, r1_change=7, r2_change=7, seen=C + 8)
    await env.coord.record_applied("r1", 7, C + 0.3)
    await env.coord.record_applied("r2", 7, C + 7.0)
    await env.coord.record_crl_publication(CRLPublication(ISSUER, 0, "delta", 6, rev.seq, C + 2.0))
    env.wall.t = C + 8
    await env.tracker.step()
    assert env.tracker.pending == 0
    assert env.seconds_sum("ocsp_all_responders") == pytest.approx(7.0)
    assert env.sample("revocation_propagation_slo_breaches_total", channel="ocsp_all_responders") == 1
    saved = await env.coord.timeline(ISSUER, SERIAL, rev.seq)
    assert saved is not None
    assert saved["slo_met"] is False


async def test_a_responder_that_stops_heartbeating_lets_the_revocation_finish(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    env.make_tracker(down_after=3.0)  # serve.py: three heartbeats
    await env.tracker.step()
    rev = await revoke_and_presign(env)
    await two_responders(env, r1_change=7, r2_change=5, seen=C + 1)  # r2's last heartbeat
    await env.coord.record_applied("r1", 7, C + 0.3)
    await env.coord.record_crl_publication(CRLPublication(ISSUER, 0, "delta", 6, rev.seq, C + 2.0))
    env.wall.t = C + 3.5
    await env.tracker.step()
    assert [env.sample("ocsp_responder_up", responder_id=r) for r in ("r1", "r2")] == [1, 1]
    await env.coord.heartbeat("r1", "http://r1.test/ocsp", 7, C - 100, C + 20)
    env.wall.t = C + 20
    await env.tracker.step()
    # r2, silent for 19 s, is shown down at once, though it is late, not gone: the revocation still waits.
    assert [env.sample("ocsp_responder_up", responder_id=r) for r in ("r1", "r2")] == [1, 0]
    assert env.tracker.pending == 1
    await env.coord.heartbeat("r1", "http://r1.test/ocsp", 7, C - 100, C + 40)
    env.wall.t = C + 40  # r2 silent for 39 s: gone
    await env.tracker.step()
    assert env.tracker.pending == 0
    assert env.seconds_sum("ocsp_all_responders") == pytest.approx(0.3)
    assert env.sample("revocation_propagation_slo_breaches_total", channel="ocsp_all_responders") == 0
    saved = await env.coord.timeline(ISSUER, SERIAL, rev.seq)
    assert saved is not None
    assert [(r["responder_id"], r["state"]) for r in saved["responders"]] == [("r1", "applied"), ("r2", "gone")]
    assert saved["gone_without"] == ["r2"]
    assert "responders gone without it: r2" in caplog.text


@linux_proc
async def test_a_responder_whose_process_on_this_machine_ended_is_gone_and_down_at_once(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    """kill -9 of a responder leaves a fresh heartbeat in the store; its id names its process, which the
    tracker, on the same machine, sees is gone: the revocation does not wait for it, nor blames it."""
    env.make_tracker(down_after=3.0)  # serve.py: three heartbeats
    await env.tracker.step()
    with other_process() as proc:
        dead = lease_holder(proc.pid)
    await env.coord.heartbeat(dead, "http://dead.test/ocsp", 5, C - 100, C - 0.5)  # its last heartbeat
    rev = await revoke_and_presign(env)
    await env.coord.heartbeat("r1", "http://r1.test/ocsp", 7, C - 100, C + 1)
    await env.coord.record_applied("r1", 7, C + 0.3)
    await env.coord.record_crl_publication(CRLPublication(ISSUER, 0, "delta", 6, rev.seq, C + 2.0))
    env.wall.t = C + 2.5  # the dead responder silent for 3 s only: neither down nor gone by its heartbeat
    await env.tracker.step()
    assert env.tracker.pending == 0
    # Gone, not down: no series at all, so an alert on ocsp_responder_up == 0 does not page after a restart.
    assert [env.sample("ocsp_responder_up", responder_id=r) for r in ("r1", dead)] == [1, None]
    saved = await env.coord.timeline(ISSUER, SERIAL, rev.seq)
    assert saved is not None
    assert sorted((r["responder_id"], r["state"]) for r in saved["responders"]) == sorted(
        [("r1", "applied"), (dead, "gone")]
    )
    assert (saved["ocsp_all_responders"]["seconds"], saved["slo_met"], saved["gone_without"]) == (0.3, True, [])
    assert caplog.text.count(f"responder {dead} is gone: its process on this machine has ended") == 1
    await env.tracker.step()  # said once
    assert caplog.text.count(f"responder {dead} is gone") == 1


async def test_giving_up_on_a_responder_is_a_breach_and_the_timeline_stays_live(env: Env) -> None:
    await env.tracker.step()
    rev = await revoke_and_presign(env)
    await two_responders(env, r1_change=7, r2_change=5, seen=C + 600.5)
    await env.coord.record_applied("r1", 7, C + 0.3)
    await env.coord.record_crl_publication(CRLPublication(ISSUER, 0, "delta", 6, rev.seq, C + 2.0))
    env.wall.t = C + 600
    await env.tracker.step()
    assert env.tracker.pending == 1
    env.wall.t = C + 600.5
    await env.tracker.step()
    assert env.tracker.pending == 0
    assert env.seconds_count("ocsp_all_responders") == 0
    assert env.sample("revocation_propagation_incomplete_total", channel="ocsp_all_responders") == 1
    assert env.sample("revocation_propagation_slo_breaches_total", channel="ocsp_all_responders") == 1
    assert (env.seconds_count("presigned"), env.seconds_count("crl")) == (1, 1)
    saved = await env.coord.timeline(ISSUER, SERIAL, rev.seq)
    assert saved is not None
    assert (saved["ocsp_all_responders"], saved["pending"]) == (None, ["r2"])

    # r2 gets there at last: the on-demand timeline says so (the saved one was incomplete).
    await env.coord.record_applied("r2", 7, C + 700)
    timeline = await env.tracker.timeline(ISSUER, SERIAL)
    assert timeline is not None
    assert timeline["ocsp_all_responders"] == {"at": iso_at(700), "seconds": 700.0}


async def test_a_crl_published_after_giving_up_appears_in_the_saved_timeline(env: Env) -> None:
    await env.tracker.step()
    rev = await revoke_and_presign(env)
    await two_responders(env, r1_change=7, r2_change=7, seen=C + 601)
    await env.coord.record_applied("r1", 7, C + 0.3)
    await env.coord.record_applied("r2", 7, C + 0.4)
    env.wall.t = C + 601
    await env.tracker.step()
    assert env.tracker.pending == 0
    assert env.sample("revocation_propagation_incomplete_total", channel="crl") == 1
    assert env.sample("revocation_propagation_slo_breaches_total", channel="ocsp_all_responders") == 0
    assert env.seconds_count("crl") == 0

    await env.coord.record_crl_publication(CRLPublication(ISSUER, 0, "full", 8, rev.seq + 5, C + 3600))
    timeline = await env.tracker.timeline(ISSUER, SERIAL)
    assert timeline is not None
    assert timeline["ocsp_all_responders"] == {"at": iso_at(0.4), "seconds": 0.4}
    assert timeline["crl"] == {"at": iso_at(3600), "seconds": 3600.0, "kind": "full", "number": 8, "shard": 0}


async def test_a_hold_released_while_followed_is_dropped_and_a_new_revocation_replaces_the_old(env: Env) -> None:
    await env.tracker.step()
    await env.issue()
    await env.revoke(reason="certificateHold")
    await env.tracker.step()
    assert env.tracker.pending == 1
    await env.release()
    await env.tracker.step()
    assert env.tracker.pending == 0
    env.wall.t = C + 1000
    await env.tracker.step()
    assert env.seconds_count("presigned") == 0
    assert env.sample("revocation_propagation_incomplete_total", channel="crl") == 0

    # Held, then revoked for good before the hold had propagated: only the newer one is followed.
    await env.issue(0xB2)
    await env.revoke(0xB2, reason="certificateHold")
    final = await env.revoke(0xB2, reason="keyCompromise", expected_version=2)
    env.wall.t = C + 1
    await env.tracker.step()
    assert env.tracker.pending == 1
    await env.store_row(0xB2, "revoked", final.seq, 9, C + 0.1)
    await two_responders(env, r1_change=9, r2_change=9, seen=C + 1)
    await env.coord.record_applied("r1", 9, C + 0.2)
    await env.coord.record_applied("r2", 9, C + 0.2)
    await env.coord.record_crl_publication(CRLPublication(ISSUER, 0, "delta", 1, final.seq, C + 0.5))
    await env.tracker.step()
    assert env.tracker.pending == 0
    assert env.seconds_count("ocsp_all_responders") == 1
    assert await env.coord.timeline(ISSUER, 0xB2, final.seq) is not None
    assert await env.coord.timeline(ISSUER, 0xB2, final.seq - 1) is None


async def test_a_mass_revocation_is_followed_in_batches(env: Env) -> None:
    n = 300
    await env.tracker.step()
    await env.log.append([NewEvent(issued(serial), 0, "tester", "req") for serial in range(1, n + 1)])
    revs = await env.log.append(
        [
            NewEvent(CertificateRevoked(ISSUER, f"{serial:x}", "keyCompromise", T0), 1, "tester", "req")
            for serial in range(1, n + 1)
        ]
    )
    for i, rev in enumerate(revs):
        await env.store_row(i + 1, "revoked", rev.seq, i + 1, C + 0.1)
    # r1 applied the first half at +0.2 and the rest at +0.4; one CRL covers them all.
    await env.coord.heartbeat("r1", "", n, C - 100, C + 1)
    await env.coord.record_applied("r1", n // 2, C + 0.2)
    await env.coord.record_applied("r1", n, C + 0.4)
    await env.coord.record_crl_publication(CRLPublication(ISSUER, 0, "delta", 1, revs[-1].seq, C + 1.0))
    env.wall.t = C + 1
    await env.tracker.step()
    assert env.tracker.pending == 0
    assert env.seconds_count("ocsp_all_responders") == n
    assert env.seconds_sum("ocsp_all_responders") == pytest.approx(n // 2 * 0.2 + n // 2 * 0.4)
    assert env.seconds_count("crl") == n
    assert await env.raw("SELECT COUNT(*) FROM propagation_timelines") == [(n,)]


async def test_beyond_max_pending_revocations_are_counted_not_followed(env: Env) -> None:
    tracker = env.make_tracker(max_pending=2)
    await tracker.step()
    for serial in (1, 2, 3):
        await env.issue(serial)
        await env.revoke(serial)
    await tracker.step()
    assert tracker.pending == 2
    assert env.sample("revocation_propagation_untracked_total") == 1


# --- responder gauges and pruning -----------------------------------------------------------------------


async def test_responder_gauges_follow_heartbeats_and_forget_the_long_gone(env: Env) -> None:
    await env.store_row(1, "good", 1, 7, C)
    await env.coord.heartbeat("r1", "", 5, C - 100, C)
    await env.coord.heartbeat("r2", "", 3, C - 100, C - 40)
    await env.tracker.step()
    assert env.sample("ocsp_responder_lag_changes", responder_id="r1") == 2
    assert env.sample("ocsp_responder_lag_changes", responder_id="r2") == 4
    assert env.sample("ocsp_responder_up", responder_id="r1") == 1
    assert env.sample("ocsp_responder_up", responder_id="r2") == 0

    env.wall.t = C + 3599  # r2 silent for 3639 s: forgotten; r1 for 3599 s: down but kept
    await env.tracker.step()
    assert env.sample("ocsp_responder_up", responder_id="r1") == 0
    assert env.sample("ocsp_responder_up", responder_id="r2") is None
    assert env.sample("ocsp_responder_lag_changes", responder_id="r2") is None
    assert [r.responder_id for r in await env.coord.responders()] == ["r1"]

    # A responder forgotten by another process disappears from the gauges too.
    await env.coord.forget_responder("r1")
    await env.tracker.step()
    assert env.sample("ocsp_responder_up", responder_id="r1") is None


async def test_old_progress_is_pruned(env: Env) -> None:
    await env.coord.record_applied("r1", 1, C - 7200)
    await env.coord.record_applied("r1", 2, C - 7100)
    await env.coord.record_applied("r1", 3, C - 10)
    await env.tracker.step()
    assert await env.raw("SELECT applied_change FROM responder_progress ORDER BY applied_change") == [(3,)]


async def test_crl_installations_older_than_a_day_are_pruned(env: Env) -> None:
    await env.coord.record_crl_installation(rp("nginx-1", "full", 1, 1, -86_500))
    await env.coord.record_crl_installation(rp("nginx-1", "full", 2, 2, -86_300))
    await env.tracker.step()
    assert await env.raw("SELECT agent, number FROM crl_installations") == [("nginx-1", 2)]


def test_bad_settings_are_refused(env: Env) -> None:
    for kwargs, match in (
        ({"slo_seconds": 0}, "slo_seconds"),
        ({"gone_after": -1}, "gone_after"),
        ({"down_after": 31}, "down_after"),
        ({"down_after": 0}, "down_after"),
        ({"poll_seconds": 0}, "poll_seconds"),
        ({"give_up_after": 0}, "give_up_after"),
        ({"give_up_after": 4000}, "keep_progress"),
        ({"forget_after": 10}, "forget_after"),
    ):
        with pytest.raises(ConfigError, match=match):
            PropagationTracker(env.log, env.view, env.coord, CollectorRegistry(), **kwargs)


# --- the loop ------------------------------------------------------------------------------------------


class FlakyCoordination:
    """The real coordination store, unreachable while ``down`` is set."""

    def __init__(self, inner: SQLiteCoordination) -> None:
        self.inner = inner
        self.down = False
        self.failures = 0

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            if self.down:
                self.failures += 1
                raise StorageError("reading the coordination store: database is down")
            return await attr(*args, **kwargs)

        return call


async def until(condition: Callable[[], Awaitable[bool]], tracker: PropagationTracker) -> None:
    """Wake the tracker until ``condition`` holds (bounded, so a broken loop fails rather than hangs)."""
    for _ in range(3000):
        if await condition():
            return
        tracker.wake()
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


async def test_the_loop_survives_an_unreachable_database_and_wakes_on_demand(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    flaky = FlakyCoordination(env.coord)
    registry = CollectorRegistry()
    # A poll this long means only wake() makes it look again.
    tracker = PropagationTracker(env.log, env.view, flaky, registry, poll_seconds=3600, now=env.wall)  # type: ignore[arg-type]
    task = asyncio.create_task(tracker.run())
    try:

        async def started() -> bool:
            return tracker._position is not None

        await until(started, tracker)
        await env.issue()
        rev = await env.revoke()
        flaky.down = True
        with caplog.at_level(logging.WARNING, logger="pca.tracker"):

            async def failing_twice() -> bool:
                return flaky.failures >= 2

            await until(failing_twice, tracker)
        assert "propagation tracker step failed" in caplog.text
        assert "still failing" in caplog.text

        flaky.down = False
        await complete(env, rev)
        env.wall.t = C + 3

        async def finished() -> bool:
            return registry.get_sample_value("revocation_propagation_seconds_count", {"channel": "crl"}) == 1

        await until(finished, tracker)
        assert tracker.pending == 0
        assert registry.get_sample_value("revocation_propagation_seconds_sum", {"channel": "ocsp_all_responders"}) == (
            pytest.approx(0.5)
        )
        assert not task.done()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_a_log_busy_with_commits_makes_the_tracker_step_a_few_times_a_second_not_after_each(env: Env) -> None:
    """Each commit wakes it, and each step looks at every revocation it follows: at a thousand revocations a
    second, stepping after each commit took as much of the server as the admin API did."""
    steps = 0

    class Counting(FlakyCoordination):
        async def responders(self) -> Any:  # read once per step
            nonlocal steps
            steps += 1
            return await self.inner.responders()

    tracker = PropagationTracker(env.log, env.view, Counting(env.coord), CollectorRegistry(), poll_seconds=3600)  # type: ignore[arg-type]
    task = asyncio.create_task(tracker.run())
    try:

        async def started() -> bool:
            return steps >= 1

        await until(started, tracker)
        before, t0 = steps, time.monotonic()
        while time.monotonic() - t0 < 1.0:  # woken every 5 ms for a second
            tracker.wake()
            await asyncio.sleep(0.005)
        assert 1 <= steps - before <= 1.0 / MIN_STEP_SECONDS + 2
        # After a quiet spell, a wake makes it look at once.
        await asyncio.sleep(2 * MIN_STEP_SECONDS)
        before = steps
        tracker.wake()
        for _ in range(100):
            if steps > before:
                break
            await asyncio.sleep(0.01)
        assert steps == before + 1
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


# --- PostgreSQL ----------------------------------------------------------------------------------------


async def test_a_revocation_followed_on_postgresql(postgres_dsn: str) -> None:
    dsn = await create_database(postgres_dsn)
    clock = FakeClock(T0)
    log = await PostgresEventLog.open(dsn, clock, project=apply_pg, clear=clear_pg, schemas=PG_SCHEMAS)
    try:
        pool = log.pool
        coord, view = PostgresCoordination(pool), PostgresStatusView(pool)
        wall = Wall(C)
        registry = CollectorRegistry()
        tracker = PropagationTracker(log, view, coord, registry, now=wall)
        await tracker.step()
        await log.append([NewEvent(issued(SERIAL), 0, "tester", "req")])
        [rev] = await log.append(
            [NewEvent(CertificateRevoked(ISSUER, f"{SERIAL:x}", "keyCompromise", T0), 1, "tester", "req")]
        )
        await pool.execute(
            "INSERT INTO ocsp_responses (issuer_id, serial, der, status, this_update, next_update, refresh_at, "
            "source_seq, change_id, stored_at) VALUES ($1, $2, '\\x3000', 'revoked', 0, 0, 0, $3, 4, $4)",
            ISSUER,
            f"{SERIAL:x}",
            rev.seq,
            C + 0.1,
        )
        await coord.heartbeat("r1", "http://r1.test/ocsp", 4, C - 100, C + 1)
        await coord.record_applied("r1", 4, C + 0.25)
        wall.t = C + 1
        await tracker.step()
        assert tracker.pending == 1
        await coord.record_crl_publication(CRLPublication(ISSUER, 0, "delta", 3, rev.seq, C + 1.5))
        wall.t = C + 2
        await tracker.step()
        assert tracker.pending == 0
        assert registry.get_sample_value("revocation_propagation_seconds_sum", {"channel": "ocsp_all_responders"}) == (
            pytest.approx(0.25)
        )
        assert registry.get_sample_value("ocsp_responder_lag_changes", {"responder_id": "r1"}) == 0
        saved = await coord.timeline(ISSUER, SERIAL, rev.seq)
        assert saved is not None
        assert saved["crl"] == {"at": iso_at(1.5), "seconds": 1.5, "kind": "delta", "number": 3, "shard": 0}
        assert await tracker.timeline(ISSUER, SERIAL) == saved
    finally:
        await log.close()
        await drop_database(postgres_dsn, dsn)
