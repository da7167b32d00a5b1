"""SQLite, the embedded backend: one file, WAL, synchronous=FULL.

Every write runs on one writer thread inside ``BEGIN IMMEDIATE ... COMMIT``;
reads run on a separate thread with their own connection (WAL lets them proceed
while a write commits). Callers await both from the event loop.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from revocation.errors import StorageError
from revocation.storage.schema import Schema

T = TypeVar("T")

__all__ = ["SQLiteDatabase", "Schema"]


def _connect(path: Path) -> sqlite3.Connection:
    try:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30.0)
        conn.execute("PRAGMA journal_mode=WAL")
    except sqlite3.DatabaseError as exc:  # the first statement is where a file that is no database shows
        raise StorageError(f"cannot open the SQLite database {path} (paths.database): {str(exc).lower()}") from exc
    # FULL: a commit is on disk before we acknowledge it (an acknowledged revocation is durable).
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


def _legacy_versions(conn: sqlite3.Connection) -> set[int]:
    """The versions recorded by the single schema of old, if this database was made by it."""
    if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'").fetchone():
        return {int(v) for (v,) in conn.execute("SELECT version FROM schema_migrations")}
    return set()


def _apply(conn: sqlite3.Connection, owner: str, version: int, sql: str) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        for statement in sql.split(";"):
            if statement.strip():
                conn.execute(statement)
        conn.execute("INSERT INTO schema_versions VALUES (?, ?, datetime('now'))", (owner, version))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


class SQLiteDatabase:
    """One SQLite file shared by the log, the projection, coordination and the response store.

    Each of them owns its tables and hands its ``Schema`` to ``migrate_sync``.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-writer")
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-reader")
        # Reads of a whole CRL shard (a million rows: seconds) have a thread and connection of their
        # own, so that the API's and the responders' short reads never queue behind them.
        self._bulk_reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-bulk-reader")
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

    def migrate_sync(self, schemas: Sequence[Schema]) -> list[str]:
        """Apply the pending migrations of each schema, in the order given; returns them as "owner version"."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = _connect(self.path)
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_versions (owner TEXT NOT NULL, version INTEGER NOT NULL, "
                "applied_at TEXT NOT NULL, PRIMARY KEY (owner, version))"
            )
            legacy = _legacy_versions(conn)
            applied = []
            for schema in schemas:
                done = {
                    v for (v,) in conn.execute("SELECT version FROM schema_versions WHERE owner = ?", (schema.owner,))
                }
                done |= {schema.legacy[v] for v in legacy if v in schema.legacy}
                for version, sql in schema.migrations:
                    if version in done:
                        continue
                    _apply(conn, schema.owner, version, sql)
                    applied.append(f"{schema.owner} {version}")
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

    async def read_bulk(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """``read`` for large reads (a CRL shard's rows), on a reader of their own."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._bulk_reader, self._run_read, fn)
        except sqlite3.Error as exc:
            raise StorageError(f"reading {self.path}: {exc}") from exc

    def close(self) -> None:
        self._writer.shutdown(wait=True)
        self._reader.shutdown(wait=True)
        self._bulk_reader.shutdown(wait=True)
        with self._lock:
            for conn in self._conns:
                conn.close()
            self._conns.clear()
