"""Each component migrates its own tables; a database made by the single schema of old keeps working."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from pca.schemas import SQLITE_SCHEMAS
from revocation.storage.sqlite.db import SQLiteDatabase

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
