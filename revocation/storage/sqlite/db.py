"""SQLite, the embedded backend: one file, WAL, synchronous=FULL.

Every write runs on one writer thread inside ``BEGIN IMMEDIATE ... COMMIT``;
reads run on a separate thread with their own connection (WAL lets them proceed
while a write commits). Callers await both from the event loop.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from revocation.errors import StorageError

T = TypeVar("T")

# Versioned migrations; each runs once, in order, recorded in schema_migrations.
MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
        CREATE TABLE events (
            seq INTEGER PRIMARY KEY,
            stream TEXT NOT NULL,
            version INTEGER NOT NULL,
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
            seq INTEGER NOT NULL,
            hash TEXT NOT NULL
        );
        CREATE TABLE issuers (
            issuer_id TEXT PRIMARY KEY,
            kind TEXT NOT NULL,
            parent_id TEXT,
            cert_der BLOB NOT NULL,
            key_ref TEXT,
            crl_url TEXT NOT NULL,
            signer_cert_der BLOB,
            signer_key_ref TEXT,
            signer_not_after INTEGER,
            version INTEGER NOT NULL,
            updated_seq INTEGER NOT NULL
        );
        CREATE TABLE certificates (
            issuer_id TEXT NOT NULL,
            serial TEXT NOT NULL,
            status TEXT NOT NULL,
            subject TEXT NOT NULL,
            profile TEXT NOT NULL,
            not_before INTEGER NOT NULL,
            not_after INTEGER NOT NULL,
            cert_der BLOB NOT NULL,
            revoked_at INTEGER,
            reason TEXT,
            invalidity_date INTEGER,
            version INTEGER NOT NULL,
            updated_seq INTEGER NOT NULL,
            PRIMARY KEY (issuer_id, serial)
        );
        CREATE INDEX certificates_serial ON certificates (serial);
        CREATE INDEX certificates_status ON certificates (issuer_id, status);
        CREATE TABLE consumers (
            name TEXT PRIMARY KEY,
            position INTEGER NOT NULL,
            updated_at TEXT NOT NULL
        );
        CREATE TABLE ocsp_responses (
            issuer_id TEXT NOT NULL,
            serial TEXT NOT NULL,
            der BLOB NOT NULL,
            status TEXT NOT NULL,
            this_update INTEGER NOT NULL,
            next_update INTEGER NOT NULL,
            refresh_at INTEGER NOT NULL,
            source_seq INTEGER NOT NULL,
            change_id INTEGER NOT NULL,
            PRIMARY KEY (issuer_id, serial)
        );
        CREATE INDEX ocsp_responses_refresh ON ocsp_responses (refresh_at);
        CREATE UNIQUE INDEX ocsp_responses_change ON ocsp_responses (change_id);
        CREATE TABLE crl_state (
            issuer_id TEXT NOT NULL,
            shard INTEGER NOT NULL,
            number INTEGER NOT NULL,
            this_update INTEGER NOT NULL,
            log_position INTEGER NOT NULL,
            PRIMARY KEY (issuer_id, shard)
        );
        """,
    ),
    (
        2,
        # CRL shards and delta CRLs. crl_shard is the shard named by the CRL distribution point the
        # certificate carries (revocation.crl_layout); every certificate recorded before this was in
        # its issuer's unsharded CRL, shard 0. The partial indexes hold only certificates that were
        # ever revoked, so issuance pays nothing for them and a delta reads only what changed.
        """
        ALTER TABLE certificates ADD COLUMN crl_shard INTEGER NOT NULL DEFAULT 0;
        CREATE INDEX certificates_crl_revoked ON certificates (issuer_id, crl_shard) WHERE status = 'revoked';
        CREATE INDEX certificates_crl_changes ON certificates (issuer_id, crl_shard, updated_seq) WHERE version > 1;
        """,
    ),
    (
        3,
        # When each stored OCSP response was written (epoch seconds): how long a response took to
        # reach the store, and from there the responders. Rows written before this say 0.
        """
        ALTER TABLE ocsp_responses ADD COLUMN stored_at REAL NOT NULL DEFAULT 0;
        """,
    ),
    (
        4,
        # Coordination between roles and the propagation tracker's inputs (revocation.coordination).
        # Times are epoch seconds (REAL).
        """
        CREATE TABLE leases (
            name TEXT PRIMARY KEY,
            holder TEXT NOT NULL,
            expires_at REAL NOT NULL,
            acquired_at REAL NOT NULL
        );
        CREATE TABLE responders (
            responder_id TEXT PRIMARY KEY,
            url TEXT NOT NULL,
            applied_change INTEGER NOT NULL,
            started_at REAL NOT NULL,
            last_seen REAL NOT NULL
        );
        CREATE TABLE responder_progress (
            id INTEGER PRIMARY KEY,
            responder_id TEXT NOT NULL,
            applied_change INTEGER NOT NULL,
            applied_at REAL NOT NULL
        );
        CREATE INDEX responder_progress_change ON responder_progress (responder_id, applied_change);
        CREATE INDEX responder_progress_time ON responder_progress (applied_at);
        CREATE TABLE crl_publications (
            issuer_id TEXT NOT NULL,
            shard INTEGER NOT NULL,
            kind TEXT NOT NULL,
            number INTEGER NOT NULL,
            position INTEGER NOT NULL,
            published_at REAL NOT NULL,
            PRIMARY KEY (issuer_id, shard, kind, number)
        );
        CREATE INDEX crl_publications_position ON crl_publications (issuer_id, shard, position);
        CREATE TABLE probes (
            issuer_id TEXT NOT NULL,
            serial TEXT NOT NULL,
            seq INTEGER NOT NULL,
            responder_url TEXT NOT NULL,
            seen_at REAL NOT NULL,
            PRIMARY KEY (issuer_id, serial, seq, responder_url)
        );
        CREATE TABLE propagation_timelines (
            issuer_id TEXT NOT NULL,
            serial TEXT NOT NULL,
            seq INTEGER NOT NULL,
            timeline TEXT NOT NULL,
            PRIMARY KEY (issuer_id, serial, seq)
        );
        """,
    ),
]


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30.0)
    conn.execute("PRAGMA journal_mode=WAL")
    # FULL: a commit is on disk before we acknowledge it (an acknowledged revocation is durable).
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


class SQLiteDatabase:
    """One SQLite file shared by the log, the projection and the response store."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-writer")
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-reader")
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = _connect(self.path)
            self._local.conn = conn
            with self._lock:
                self._conns.append(conn)
        return conn

    def migrate_sync(self) -> list[int]:
        """Apply pending migrations; returns the versions applied."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = _connect(self.path)
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)"
            )
            done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
            applied = []
            for version, sql in MIGRATIONS:
                if version in done:
                    continue
                conn.execute("BEGIN IMMEDIATE")
                try:
                    for statement in sql.split(";"):
                        if statement.strip():
                            conn.execute(statement)
                    conn.execute(
                        "INSERT INTO schema_migrations VALUES (?, datetime('now'))",
                        (version,),
                    )
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                applied.append(version)
            return applied
        except sqlite3.Error as exc:
            raise StorageError(f"migrating {self.path}: {exc}") from exc
        finally:
            conn.close()

    def _run_write(self, fn: Callable[[sqlite3.Connection], T], durable: bool) -> T:
        conn = self._conn()
        if not durable:
            # Derived state (the response store) can be rebuilt from the log: commit it
            # atomically but without waiting for the disk. The next durable commit syncs it too.
            conn.execute("PRAGMA synchronous=NORMAL")
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        finally:
            if not durable:
                conn.execute("PRAGMA synchronous=FULL")
        return result

    def _run_read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return fn(self._conn())

    async def write(self, fn: Callable[[sqlite3.Connection], T], *, durable: bool = True) -> T:
        """Run ``fn`` in one committed transaction on the writer thread.

        ``durable=False`` is for state derived from the log: atomic, but the commit
        does not wait for the disk.
        """
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._writer, self._run_write, fn, durable)
        except sqlite3.Error as exc:
            raise StorageError(f"writing to {self.path}: {exc}") from exc

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._reader, self._run_read, fn)
        except sqlite3.Error as exc:
            raise StorageError(f"reading {self.path}: {exc}") from exc

    def close(self) -> None:
        self._writer.shutdown(wait=True)
        self._reader.shutdown(wait=True)
        with self._lock:
            for conn in self._conns:
                conn.close()
            self._conns.clear()
