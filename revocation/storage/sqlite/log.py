"""The event log on SQLite, with group commit.

Appends that arrive while a commit is on its way to disk wait in a queue and go
into the next transaction together, so concurrent revocations share one fsync.
Each append keeps its own all-or-nothing: a savepoint per append, so one
conflicting append fails alone.

``seq`` is assigned by the single writer (last + 1), so it has no gaps and
commits in order: the ordering promise holds trivially on SQLite.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Iterable, Sequence

from revocation.chain import (
    EVENT_COLUMNS,
    STATUS_CHANGES_INDEX,
    ChainCheck,
    Drop,
    drop_rows,
    projection_drops_sql,
    recorded_event,
)
from revocation.clock import Clock
from revocation.eventlog import (
    GENESIS_HASH,
    AppendProgress,
    Listener,
    NewEvent,
    RebuildProgress,
    RecordedEvent,
    call_listeners,
    chain_events,
)
from revocation.events import DomainEvent
from revocation.storage.sqlite.db import Schema, SQLiteDatabase

# The log's tables; before each owner migrated its own, they were made by migration 1 of the single schema.
LOG_SCHEMA = Schema(
    "log",
    (
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
            """,
        ),
        (2, STATUS_CHANGES_INDEX),
    ),
    legacy={1: 1},
)

_COLUMNS = EVENT_COLUMNS
_IN_CHUNK = 500  # bound parameters per IN (...) query
# "cert/ISSUER/SERIAL": the issuer id is what lies between the first and second "/" after "cert".
_ISSUER_OF_STREAM = "substr(e.stream, 6, instr(substr(e.stream, 6), '/') - 1)"
# The issuer's streams lie between "cert/ISSUER/" and "cert/ISSUER0" ("0" follows "/"): a range of the index.
_DROPS = projection_drops_sql(
    _ISSUER_OF_STREAM, "substr(e.stream, 6 + instr(substr(e.stream, 6), '/'))", "e.stream >= ? AND e.stream < ?"
)
_INSERT_EVENT = f"INSERT INTO events ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"

Result = list[RecordedEvent] | BaseException
_APPEND_PAGE = 1000  # events of one append written at a time (progress is reported after each)
# An append waiting for the next transaction: its events, how to report its progress, its caller's future.
_Pending = tuple[Sequence[NewEvent], AppendProgress | None, asyncio.Future[list[RecordedEvent]]]

# Applies recorded events, in order, to the projection, inside the append transaction (``apply_sqlite``).
_REBUILD_PAGE = 1000  # events read at a time by rebuild_projection (progress is reported after each)
Project = Callable[[sqlite3.Connection, Iterable[tuple[RecordedEvent, DomainEvent]]], None]
# Empties the projection before a rebuild replays the log into it (``clear_sqlite``).
ClearProjection = Callable[[sqlite3.Connection], None]


class SQLiteEventLog:
    def __init__(self, db: SQLiteDatabase, clock: Clock, *, project: Project, clear: ClearProjection) -> None:
        self._db = db
        self._clock = clock
        self._project = project
        self._clear = clear
        self._pending: list[_Pending] = []
        self._drainer: asyncio.Task[None] | None = None
        # Called with every batch of committed events (the change feed for in-process consumers).
        self.listeners: list[Listener] = []

    async def append(self, events: Sequence[NewEvent], progress: AppendProgress | None = None) -> list[RecordedEvent]:
        if not events:
            return []
        future: asyncio.Future[list[RecordedEvent]] = asyncio.get_running_loop().create_future()
        self._pending.append((events, progress, future))
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                results = await self._db.write(lambda conn, b=batch: self._commit_batch(conn, b))  # type: ignore[misc]
            except BaseException as exc:  # noqa: BLE001 - the whole transaction failed: every waiter learns why
                for *_, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            committed: list[RecordedEvent] = []
            for (*_, fut), result in zip(batch, results, strict=True):
                if isinstance(result, BaseException):
                    if not fut.done():
                        fut.set_exception(result)
                else:
                    committed.extend(result)
                    if not fut.done():
                        fut.set_result(result)
            if committed:
                call_listeners(self.listeners, committed)

    def _commit_batch(self, conn: sqlite3.Connection, batch: list[_Pending]) -> list[Result]:
        head = conn.execute("SELECT seq, hash FROM log_head WHERE id = 1").fetchone()
        seq, prev = (int(head[0]), str(head[1])) if head else (0, GENESIS_HASH)
        results: list[Result] = []
        for events, progress, _ in batch:
            conn.execute("SAVEPOINT append")
            try:
                recorded, seq, prev = self._append_one(conn, events, seq, prev, progress)
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting caller
                conn.execute("ROLLBACK TO append")
                conn.execute("RELEASE append")
                # seq and prev stay as they were before this append.
                results.append(exc)
                continue
            conn.execute("RELEASE append")
            results.append(recorded)
        conn.execute(
            "INSERT INTO log_head (id, seq, hash) VALUES (1, ?, ?) "
            "ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash",
            (seq, prev),
        )
        return results

    def _append_one(
        self,
        conn: sqlite3.Connection,
        events: Sequence[NewEvent],
        seq: int,
        prev: str,
        progress: AppendProgress | None,
    ) -> tuple[list[RecordedEvent], int, str]:
        versions = _versions(conn, list({new.event.stream() for new in events}))
        rows = chain_events(events, seq, prev, self._clock.now(), versions)
        for first in range(0, len(rows), _APPEND_PAGE):
            page = rows[first : first + _APPEND_PAGE]
            conn.executemany(_INSERT_EVENT, [row.columns for row in page])
            self._project(conn, [(row.record, row.event) for row in page])
            if progress is not None:
                progress(first + len(page))
        last = rows[-1].record
        return [r.record for r in rows], last.seq, last.hash

    async def read(self, after: int, limit: int) -> list[RecordedEvent]:
        def q(conn: sqlite3.Connection) -> list[RecordedEvent]:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM events WHERE seq > ? ORDER BY seq LIMIT ?", (after, limit)
            ).fetchall()
            return [recorded_event(r) for r in rows]

        return await self._db.read(q)

    async def read_index(self, after: int, limit: int) -> list[tuple[int, str, str]]:
        def q(conn: sqlite3.Connection) -> list[tuple[int, str, str]]:
            rows = conn.execute(
                "SELECT seq, stream, type FROM events WHERE seq > ? ORDER BY seq LIMIT ?", (after, limit)
            ).fetchall()
            return [(int(a), str(b), str(c)) for a, b, c in rows]

        return await self._db.read(q)

    async def read_stream(self, stream: str) -> list[RecordedEvent]:
        def q(conn: sqlite3.Connection) -> list[RecordedEvent]:
            rows = conn.execute(f"SELECT {_COLUMNS} FROM events WHERE stream = ? ORDER BY version", (stream,))
            return [recorded_event(r) for r in rows.fetchall()]

        return await self._db.read(q)

    async def head(self) -> int:
        def q(conn: sqlite3.Connection) -> int:
            row = conn.execute("SELECT seq FROM log_head WHERE id = 1").fetchone()
            return 0 if row is None else int(row[0])

        return await self._db.read(q)

    async def verify_chain(self) -> int:
        return await self._db.read(verify_chain_sqlite)

    async def projection_drops(self, issuer_id: str) -> list[Drop]:
        bounds = (f"cert/{issuer_id}/", f"cert/{issuer_id}0")
        return await self._db.read_bulk(lambda conn: drop_rows(conn.execute(_DROPS, bounds).fetchall()))

    async def rebuild_projection(self, progress: RebuildProgress | None = None) -> int:
        """Drop the projection and replay the whole log into it, in one transaction; returns events applied."""
        sql = f"SELECT {_COLUMNS} FROM events WHERE seq > ? ORDER BY seq LIMIT ?"

        def w(conn: sqlite3.Connection) -> int:
            self._clear(conn)
            total = int(conn.execute("SELECT COUNT(*) FROM events").fetchone()[0])
            count, after = 0, 0
            while records := [recorded_event(row) for row in conn.execute(sql, (after, _REBUILD_PAGE))]:
                self._project(conn, [(rec, rec.event) for rec in records])
                count, after = count + len(records), records[-1].seq
                if progress is not None:
                    progress(count, total)
            return count

        return await self._db.write(w)


def _versions(conn: sqlite3.Connection, streams: list[str]) -> dict[str, int]:
    """The current version of each of ``streams`` that has events (by chunks of ``_IN_CHUNK``)."""
    versions: dict[str, int] = {}
    for first in range(0, len(streams), _IN_CHUNK):
        chunk = streams[first : first + _IN_CHUNK]
        marks = ",".join("?" * len(chunk))
        sql = f"SELECT stream, MAX(version) FROM events WHERE stream IN ({marks}) GROUP BY stream"
        versions.update((str(stream), int(version)) for stream, version in conn.execute(sql, chunk))
    return versions


def verify_chain_sqlite(conn: sqlite3.Connection) -> int:
    check = ChainCheck()
    for row in conn.execute(f"SELECT {_COLUMNS} FROM events ORDER BY seq"):
        check.add(row)
    return check.finish(conn.execute("SELECT seq, hash FROM log_head WHERE id = 1").fetchone())
