"""Each component migrates its own tables; a database made by the single schema of old keeps working,
on SQLite and on PostgreSQL."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import asyncpg

from pca.schemas import PG_SCHEMAS, SQLITE_SCHEMAS
from responders.store import StoredResponse
from responders.store.postgres import PostgresResponseStore
from revocation.clock import FakeClock
from revocation.eventlog import GENESIS_HASH
from revocation.storage.postgres.coordination import PostgresCoordination
from revocation.storage.postgres.db import migrate_url, open_pg_pool
from revocation.storage.postgres.log import PostgresEventLog
from revocation.storage.postgres.projection import PostgresStatusView, apply_pg, clear_pg
from revocation.storage.sqlite.db import SQLiteDatabase
from tests.support.events import T0, issued, new, revoked

# The single schema's migrations 1 to 4, as the code before the split created them (abridged to
# the tables, with the same names and columns that matter here).
_OLD = {
    1: """
        CREATE TABLE events (seq INTEGER PRIMARY KEY, stream TEXT NOT NULL, version INTEGER NOT NULL,
            type TEXT NOT NULL, payload TEXT NOT NULL, actor TEXT NOT NULL, request_id TEXT NOT NULL,
            recorded_at TEXT NOT NULL, prev_hash TEXT NOT NULL, hash TEXT NOT NULL, UNIQUE (stream, version));
        CREATE TABLE log_head (id INTEGER PRIMARY KEY CHECK (id = 1), seq INTEGER NOT NULL, hash TEXT NOT NULL);
        CREATE TABLE issuers (issuer_id TEXT PRIMARY KEY, kind TEXT NOT NULL, parent_id TEXT, cert_der BLOB NOT NULL,
            key_ref TEXT, crl_url TEXT NOT NULL, signer_cert_der BLOB, signer_key_ref TEXT, signer_not_after INTEGER,
            version INTEGER NOT NULL, updated_seq INTEGER NOT NULL);
        CREATE TABLE certificates (issuer_id TEXT NOT NULL, serial TEXT NOT NULL, status TEXT NOT NULL,
            subject TEXT NOT NULL, profile TEXT NOT NULL, not_before INTEGER NOT NULL, not_after INTEGER NOT NULL,
            cert_der BLOB NOT NULL, revoked_at INTEGER, reason TEXT, invalidity_date INTEGER,
            version INTEGER NOT NULL, updated_seq INTEGER NOT NULL, PRIMARY KEY (issuer_id, serial));
        CREATE TABLE consumers (name TEXT PRIMARY KEY, position INTEGER NOT NULL, updated_at TEXT NOT NULL);
        CREATE TABLE ocsp_responses (issuer_id TEXT NOT NULL, serial TEXT NOT NULL, der BLOB NOT NULL,
            status TEXT NOT NULL, this_update INTEGER NOT NULL, next_update INTEGER NOT NULL,
            refresh_at INTEGER NOT NULL, source_seq INTEGER NOT NULL, change_id INTEGER NOT NULL,
            PRIMARY KEY (issuer_id, serial));
        CREATE TABLE crl_state (issuer_id TEXT NOT NULL, shard INTEGER NOT NULL, number INTEGER NOT NULL,
            this_update INTEGER NOT NULL, log_position INTEGER NOT NULL, PRIMARY KEY (issuer_id, shard));
        """,
    2: "ALTER TABLE certificates ADD COLUMN crl_shard INTEGER NOT NULL DEFAULT 0",
    3: "ALTER TABLE ocsp_responses ADD COLUMN stored_at REAL NOT NULL DEFAULT 0",
    4: """
        CREATE TABLE leases (name TEXT PRIMARY KEY, holder TEXT NOT NULL, expires_at REAL NOT NULL,
            acquired_at REAL NOT NULL);
        """,
}


def _old_database(path: Path, versions: list[int]) -> None:
    conn = sqlite3.connect(path)
    try:
        conn.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)")
        for version in versions:
            conn.executescript(_OLD[version])
            conn.execute("INSERT INTO schema_migrations VALUES (?, datetime('now'))", (version,))
        conn.execute("INSERT INTO events VALUES (1, 's', 1, 'T', '{}', 'a', 'r', 't', 'p', 'h')")
        conn.commit()
    finally:
        conn.close()


def _tables(path: Path) -> set[str]:
    conn = sqlite3.connect(path)
    try:
        return {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    finally:
        conn.close()


def test_a_database_of_the_single_schema_migrates_only_what_it_lacks(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    _old_database(path, [1, 2, 3])
    db = SQLiteDatabase(path)
    try:
        # Its tables are recognised: only the status-change index (log 2), the crl_state drop, the pending
        # signer columns (projection 4), the expiry index (projection 5) and coordination's tables (old
        # migration 4) remain.
        assert db.migrate_sync(SQLITE_SCHEMAS) == [
            "log 2",
            "projection 3",
            "projection 4",
            "projection 5",
            "coordination 1",
            "coordination 2",
        ]
        assert db.migrate_sync(SQLITE_SCHEMAS) == []
    finally:
        db.close()
    tables = _tables(path)
    assert "crl_state" not in tables
    assert {"events", "certificates", "ocsp_responses", "leases", "propagation_timelines"} <= tables
    conn = sqlite3.connect(path)
    try:
        # The log's rows are untouched.
        assert conn.execute("SELECT seq, hash FROM events").fetchall() == [(1, "h")]
    finally:
        conn.close()


def test_a_fully_migrated_old_database_only_loses_crl_state_and_gains_new_tables(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    _old_database(path, [1, 2, 3, 4])
    db = SQLiteDatabase(path)
    try:
        assert db.migrate_sync(SQLITE_SCHEMAS) == [
            "log 2",
            "projection 3",
            "projection 4",
            "projection 5",
            "coordination 2",
        ]
    finally:
        db.close()
    assert "crl_state" not in _tables(path)


def test_a_new_database_never_has_crl_state(tmp_path: Path) -> None:
    db = SQLiteDatabase(tmp_path / "new.db")
    try:
        db.migrate_sync(SQLITE_SCHEMAS)
    finally:
        db.close()
    assert "crl_state" not in _tables(tmp_path / "new.db")
    assert "ocsp_responses" in _tables(tmp_path / "new.db")


def test_owners_can_migrate_separately(tmp_path: Path) -> None:
    log, _, store, _ = SQLITE_SCHEMAS
    db = SQLiteDatabase(tmp_path / "new.db")
    try:
        assert db.migrate_sync([log]) == ["log 1", "log 2"]
        assert db.migrate_sync([store]) == ["response_store 1", "response_store 2"]
        assert db.migrate_sync(SQLITE_SCHEMAS) == [
            "projection 1",
            "projection 2",
            "projection 3",
            "projection 4",
            "projection 5",
            "coordination 1",
            "coordination 2",
        ]
    finally:
        db.close()


# PostgreSQL's single schema, verbatim as its last version (before 4ad2abd) created it: the log (1), the
# projection and the response store (2), coordination (3), each recorded in schema_migrations.
_OLD_PG = {
    1: f"""
        CREATE TABLE events (
            seq BIGINT PRIMARY KEY,
            stream TEXT NOT NULL,
            version BIGINT NOT NULL,
            type TEXT NOT NULL,
            payload TEXT NOT NULL,
            actor TEXT NOT NULL,
            request_id TEXT NOT NULL,
            recorded_at TEXT NOT NULL,
            prev_hash TEXT NOT NULL,
            hash TEXT NOT NULL,
            UNIQUE (stream, version)
        );
        CREATE TABLE log_head (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            seq BIGINT NOT NULL,
            hash TEXT NOT NULL
        );
        INSERT INTO log_head (id, seq, hash) VALUES (1, 0, '{GENESIS_HASH}');
        """,
    2: """
        CREATE TABLE issuers (
            issuer_id TEXT PRIMARY KEY,
            kind TEXT NOT NULL,
            parent_id TEXT,
            cert_der BYTEA NOT NULL,
            key_ref TEXT,
            crl_url TEXT NOT NULL,
            signer_cert_der BYTEA,
            signer_key_ref TEXT,
            signer_not_after BIGINT,
            version BIGINT NOT NULL,
            updated_seq BIGINT NOT NULL
        );
        CREATE TABLE certificates (
            issuer_id TEXT COLLATE "C" NOT NULL,
            serial TEXT COLLATE "C" NOT NULL,
            status TEXT NOT NULL,
            subject TEXT NOT NULL,
            profile TEXT NOT NULL,
            not_before BIGINT NOT NULL,
            not_after BIGINT NOT NULL,
            cert_der BYTEA NOT NULL,
            revoked_at BIGINT,
            reason TEXT,
            invalidity_date BIGINT,
            version BIGINT NOT NULL,
            updated_seq BIGINT NOT NULL,
            crl_shard INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (issuer_id, serial)
        );
        CREATE INDEX certificates_serial ON certificates (serial);
        CREATE INDEX certificates_status ON certificates (issuer_id, status);
        CREATE INDEX certificates_crl_revoked ON certificates (issuer_id, crl_shard) WHERE status = 'revoked';
        CREATE INDEX certificates_crl_changes ON certificates (issuer_id, crl_shard, updated_seq) WHERE version > 1;
        CREATE TABLE consumers (
            name TEXT PRIMARY KEY,
            position BIGINT NOT NULL,
            updated_at TEXT NOT NULL
        );
        CREATE TABLE ocsp_responses (
            issuer_id TEXT COLLATE "C" NOT NULL,
            serial TEXT COLLATE "C" NOT NULL,
            der BYTEA NOT NULL,
            status TEXT NOT NULL,
            this_update BIGINT NOT NULL,
            next_update BIGINT NOT NULL,
            refresh_at BIGINT NOT NULL,
            source_seq BIGINT NOT NULL,
            change_id BIGINT NOT NULL,
            stored_at DOUBLE PRECISION NOT NULL DEFAULT 0,
            PRIMARY KEY (issuer_id, serial)
        );
        CREATE INDEX ocsp_responses_refresh ON ocsp_responses (refresh_at);
        CREATE UNIQUE INDEX ocsp_responses_change ON ocsp_responses (change_id);
        """,
    3: """
        CREATE TABLE leases (
            name TEXT PRIMARY KEY,
            holder TEXT NOT NULL,
            expires_at DOUBLE PRECISION NOT NULL,
            acquired_at DOUBLE PRECISION NOT NULL
        );
        CREATE TABLE responders (
            responder_id TEXT PRIMARY KEY,
            url TEXT NOT NULL,
            applied_change BIGINT NOT NULL,
            started_at DOUBLE PRECISION NOT NULL,
            last_seen DOUBLE PRECISION NOT NULL
        );
        CREATE TABLE responder_progress (
            id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            responder_id TEXT NOT NULL,
            applied_change BIGINT NOT NULL,
            applied_at DOUBLE PRECISION NOT NULL
        );
        CREATE INDEX responder_progress_change ON responder_progress (responder_id, applied_change);
        CREATE INDEX responder_progress_time ON responder_progress (applied_at);
        CREATE TABLE crl_publications (
            issuer_id TEXT NOT NULL,
            shard INTEGER NOT NULL,
            kind TEXT NOT NULL,
            number BIGINT NOT NULL,
            position BIGINT NOT NULL,
            published_at DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (issuer_id, shard, kind, number)
        );
        CREATE INDEX crl_publications_position ON crl_publications (issuer_id, shard, position);
        CREATE TABLE probes (
            issuer_id TEXT NOT NULL,
            serial TEXT NOT NULL,
            seq BIGINT NOT NULL,
            responder_url TEXT NOT NULL,
            seen_at DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (issuer_id, serial, seq, responder_url)
        );
        CREATE TABLE propagation_timelines (
            issuer_id TEXT NOT NULL,
            serial TEXT NOT NULL,
            seq BIGINT NOT NULL,
            timeline TEXT NOT NULL,
            PRIMARY KEY (issuer_id, serial, seq)
        );
        """,
}
_RESPONSE = StoredResponse("test-ca", 0xA1, b"ocsp-der", "good", 1000, 2000, 1500, 1, change_id=1, stored_at=900.0)


async def _old_pg_schema(conn: asyncpg.Connection, versions: list[int]) -> None:
    """The single schema's migrations ``versions``, applied as its migrate_schema did."""
    async with conn.transaction():
        await conn.execute(
            "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL)"
        )
        for version in versions:
            await conn.execute(_OLD_PG[version])
            await conn.execute("INSERT INTO schema_migrations (version, applied_at) VALUES ($1, now())", version)


async def _old_pg_database(dsn: str) -> None:
    """A database as the single schema of old left it: its tables, its markers, two certificates issued (events and
    projection rows, written by the append of the time, which applied the projection as today's), a stored OCSP
    response with its writer's position, and a lease held."""
    conn = await asyncpg.connect(dsn)
    try:
        await _old_pg_schema(conn, [1, 2, 3])
        await conn.execute(
            "INSERT INTO ocsp_responses (issuer_id, serial, der, status, this_update, next_update, refresh_at, "
            "source_seq, change_id, stored_at) VALUES ('test-ca', 'a1', $1, 'good', 1000, 2000, 1500, 1, 1, 900)",
            _RESPONSE.der,
        )
        await conn.execute("INSERT INTO consumers (name, position, updated_at) VALUES ('presigner', 2, 't')")
        await conn.execute(
            "INSERT INTO leases (name, holder, expires_at, acquired_at) VALUES ('publisher', 'h', 9e9, 1)"
        )
    finally:
        await conn.close()
    pool = await open_pg_pool(dsn, migrate=False)
    try:
        log = PostgresEventLog(pool, FakeClock(T0), project=apply_pg, clear=clear_pg)
        await log.append([new(issued(0xA1)), new(issued(0xA2))])
    finally:
        await pool.close()


async def test_a_postgresql_database_of_the_single_schema_keeps_its_data_and_works(postgres_database: str) -> None:
    dsn = postgres_database
    await _old_pg_database(dsn)
    # pca migrate: what the old schema made is recognised (log 1, projection 1, response_store 1 and coordination 1,
    # by the markers of its migrations 1, 2 and 3, with no statement run); only what came after it is applied.
    assert await migrate_url(dsn, PG_SCHEMAS) == ["log 2", "projection 2", "projection 3", "coordination 2"]
    assert await migrate_url(dsn, PG_SCHEMAS) == []
    # pca serve's open path migrates too, and finds nothing left to do.
    log = await PostgresEventLog.open(dsn, FakeClock(T0), project=apply_pg, clear=clear_pg, schemas=PG_SCHEMAS)
    try:
        pool = log.pool
        assert await pool.fetchval("SELECT count(*) FROM schema_versions") == 4
        # The old rows are all there and read as before.
        old = await log.read(0, 10)
        assert [(r.seq, r.stream) for r in old] == [(1, "cert/test-ca/a1"), (2, "cert/test-ca/a2")]
        assert await log.verify_chain() == 2
        view = PostgresStatusView(pool)
        assert [(c.serial, c.status) for c in await view.issuer_certificates("test-ca")] == [
            (0xA1, "good"),
            (0xA2, "good"),
        ]
        store = PostgresResponseStore(pool)
        assert await store.get("test-ca", 0xA1) == _RESPONSE
        assert await store.position("presigner") == 2
        lease = await PostgresCoordination(pool).lease("publisher")
        assert lease is not None and lease.holder == "h"
        # And the product works on it: a revocation appends after the old chain and moves the projection.
        [rec] = await log.append([new(revoked(0xA1), expected_version=1)])
        assert (rec.seq, rec.prev_hash) == (3, old[-1].hash)
        assert await log.verify_chain() == 3
        certificate = await view.certificate("test-ca", 0xA1)
        assert certificate is not None and (certificate.status, certificate.reason) == ("revoked", "keyCompromise")
        assert await view.position() == 3
    finally:
        await log.close()


async def test_a_postgresql_database_of_the_single_schema_before_its_migration_2_gets_the_projection(
    postgres_database: str,
) -> None:
    """Migration 3 (coordination) came before 2 (projection, response store): such a database has markers 1 and 3."""
    conn = await asyncpg.connect(postgres_database)
    try:
        await _old_pg_schema(conn, [1, 3])
    finally:
        await conn.close()
    assert await migrate_url(postgres_database, PG_SCHEMAS) == [
        "log 2",
        "projection 1",
        "projection 2",
        "projection 3",
        "response_store 1",
        "coordination 2",
    ]
    assert await migrate_url(postgres_database, PG_SCHEMAS) == []
