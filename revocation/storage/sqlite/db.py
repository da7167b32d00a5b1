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
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

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


Outcome = tuple[bool, Any]  # (True, what fn returned) or (False, what it raised)


class _ReadBatches:
    """Reads of one event loop, handed to the reader thread in batches: the first read of a quiet
    moment goes at once, and those that arrive while a batch runs go together after it (as the
    log's group commit does for appends). Each read keeps its own result or error."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, executor: ThreadPoolExecutor, conn: Callable[[], sqlite3.Connection]
    ) -> None:
        self.loop = loop
        self._executor = executor
        self._conn = conn
        self._queue: list[tuple[Callable[[sqlite3.Connection], Any], asyncio.Future[Any]]] = []
        self._running = False

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        future: asyncio.Future[T] = self.loop.create_future()
        self._queue.append((fn, future))
        if not self._running:
            self._submit()
        return await future

    def _submit(self) -> None:
        batch, self._queue = self._queue, []
        try:
            done = self._executor.submit(self._run, [fn for fn, _ in batch])
        except RuntimeError as exc:  # the database was closed
            self._deliver(batch, [(False, exc)] * len(batch))
            return
        self._running = True
        done.add_done_callback(lambda f: self._threadsafe(self._finished, batch, f))

    def _threadsafe(self, callback: Callable[..., None], *args: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # the event loop was closed meanwhile: nobody waits for these reads
            pass

    def _run(self, fns: list[Callable[[sqlite3.Connection], Any]]) -> list[Outcome]:
        conn = self._conn()
        out: list[Outcome] = []
        for fn in fns:
            try:
                out.append((True, fn(conn)))
            except BaseException as exc:  # noqa: BLE001 - handed to its reader, as run_in_executor would
                out.append((False, exc))
        return out

    def _finished(self, batch: list[tuple[Any, asyncio.Future[Any]]], done: Future[list[Outcome]]) -> None:
        self._running = False
        try:
            outcomes = done.result()
        except BaseException as exc:  # noqa: BLE001 - the executor failed the whole job
            outcomes = [(False, exc)] * len(batch)
        self._deliver(batch, outcomes)
        if self._queue:
            self._submit()

    @staticmethod
    def _deliver(batch: list[tuple[Any, asyncio.Future[Any]]], outcomes: list[Outcome]) -> None:
        for (_, future), (ok, value) in zip(batch, outcomes, strict=True):
            if future.done():  # its reader was cancelled
                continue
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)


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
        self._batches: _ReadBatches | None = None
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
        """Run ``fn`` on the reader thread. Reads that arrive while others run there go together
        (``_ReadBatches``): a thousand revocations a second make several reads each, and a hand-off
        to a thread and back per read cost more than most of the reads did."""
        loop = asyncio.get_running_loop()
        batches = self._batches
        if batches is None or batches.loop is not loop:  # first use, or another event loop (asyncio.run again)
            batches = self._batches = _ReadBatches(loop, self._reader, self._conn)
        try:
            return await batches.read(fn)
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
