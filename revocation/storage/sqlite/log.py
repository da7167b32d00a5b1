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
import json
import sqlite3
from collections.abc import Sequence
from typing import Any

from revocation.clock import Clock, parse_iso
from revocation.errors import IntegrityError
from revocation.eventlog import GENESIS_HASH, Listener, NewEvent, RecordedEvent, call_listeners, chain_events, row_hash
from revocation.storage.sqlite.db import SQLiteDatabase
from revocation.storage.sqlite.projection import apply_sqlite

_COLUMNS = "seq, stream, version, type, payload, actor, request_id, recorded_at, prev_hash, hash"

Result = list[RecordedEvent] | BaseException


def _row(row: tuple[Any, ...]) -> RecordedEvent:
    seq, stream, version, type_, payload, actor, request_id, recorded_at, prev_hash, hash_ = row
    return RecordedEvent(
        seq=int(str(seq)),
        stream=str(stream),
        version=int(str(version)),
        type=str(type_),
        payload=json.loads(str(payload)),
        actor=str(actor),
        request_id=str(request_id),
        recorded_at=parse_iso(str(recorded_at)),
        prev_hash=str(prev_hash),
        hash=str(hash_),
    )


class SQLiteEventLog:
    def __init__(self, db: SQLiteDatabase, clock: Clock) -> None:
        self._db = db
        self._clock = clock
        self._pending: list[tuple[Sequence[NewEvent], asyncio.Future[list[RecordedEvent]]]] = []
        self._drainer: asyncio.Task[None] | None = None
        # Called with every batch of committed events (the change feed for in-process consumers).
        self.listeners: list[Listener] = []

    async def append(self, events: Sequence[NewEvent]) -> list[RecordedEvent]:
        if not events:
            return []
        future: asyncio.Future[list[RecordedEvent]] = asyncio.get_running_loop().create_future()
        self._pending.append((events, future))
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                results = await self._db.write(lambda conn, b=batch: self._commit_batch(conn, b))  # type: ignore[misc]
            except BaseException as exc:  # noqa: BLE001 - the whole transaction failed: every waiter learns why
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            committed: list[RecordedEvent] = []
            for (_, fut), result in zip(batch, results, strict=True):
                if isinstance(result, BaseException):
                    if not fut.done():
                        fut.set_exception(result)
                else:
                    committed.extend(result)
                    if not fut.done():
                        fut.set_result(result)
            if committed:
                call_listeners(self.listeners, committed)

    def _commit_batch(
        self, conn: sqlite3.Connection, batch: list[tuple[Sequence[NewEvent], asyncio.Future[list[RecordedEvent]]]]
    ) -> list[Result]:
        head = conn.execute("SELECT seq, hash FROM log_head WHERE id = 1").fetchone()
        seq, prev = (int(head[0]), str(head[1])) if head else (0, GENESIS_HASH)
        results: list[Result] = []
        for events, _ in batch:
            conn.execute("SAVEPOINT append")
            try:
                recorded, seq, prev = self._append_one(conn, events, seq, prev)
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
        self, conn: sqlite3.Connection, events: Sequence[NewEvent], seq: int, prev: str
    ) -> tuple[list[RecordedEvent], int, str]:
        versions = {}
        for stream in {new.event.stream() for new in events}:
            row = conn.execute("SELECT MAX(version) FROM events WHERE stream = ?", (stream,)).fetchone()
            versions[stream] = int(row[0]) if row and row[0] is not None else 0
        rows = chain_events(events, seq, prev, self._clock.now(), versions)
        for row in rows:
            conn.execute(f"INSERT INTO events ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", row.columns)
            apply_sqlite(conn, row.record, row.event)
        last = rows[-1].record
        return [r.record for r in rows], last.seq, last.hash

    async def read(self, after: int, limit: int) -> list[RecordedEvent]:
        def q(conn: sqlite3.Connection) -> list[RecordedEvent]:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM events WHERE seq > ? ORDER BY seq LIMIT ?", (after, limit)
            ).fetchall()
            return [_row(r) for r in rows]

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
            return [_row(r) for r in rows.fetchall()]

        return await self._db.read(q)

    async def head(self) -> int:
        def q(conn: sqlite3.Connection) -> int:
            row = conn.execute("SELECT seq FROM log_head WHERE id = 1").fetchone()
            return 0 if row is None else int(row[0])

        return await self._db.read(q)

    async def verify_chain(self) -> int:
        return await self._db.read(verify_chain_sqlite)

    async def rebuild_projection(self) -> int:
        """Drop the projection and replay the whole log into it; returns events applied."""
        return await self._db.write(_rebuild)


def verify_chain_sqlite(conn: sqlite3.Connection) -> int:
    prev = GENESIS_HASH
    expected_seq = 1
    count = 0
    for row in conn.execute(f"SELECT {_COLUMNS} FROM events ORDER BY seq"):
        seq, stream, version, type_, payload, actor, request_id, recorded_at, prev_hash, hash_ = row
        if seq != expected_seq:
            raise IntegrityError(
                f"event log broken at seq {expected_seq}: row missing (next row is {seq})", expected_seq
            )
        if prev_hash != prev:
            raise IntegrityError(f"event log broken at seq {seq}: prev_hash does not match the previous row", seq)
        digest = row_hash(prev, seq, stream, version, type_, payload, actor, request_id, recorded_at)
        if digest != hash_:
            raise IntegrityError(f"event log broken at seq {seq}: row content does not match its hash", seq)
        prev = digest
        expected_seq += 1
        count += 1
    head = conn.execute("SELECT seq, hash FROM log_head WHERE id = 1").fetchone()
    head_seq, head_hash = (int(head[0]), str(head[1])) if head else (0, GENESIS_HASH)
    if head_seq != count or head_hash != prev:
        raise IntegrityError(
            f"event log broken at seq {count + 1}: the log head records seq {head_seq}, "
            f"but the chain ends at seq {count} (rows removed from the end?)",
            count + 1,
        )
    return count


def _rebuild(conn: sqlite3.Connection) -> int:
    conn.execute("DELETE FROM certificates")
    conn.execute("DELETE FROM issuers")
    count = 0
    for row in conn.execute(f"SELECT {_COLUMNS} FROM events ORDER BY seq").fetchall():
        rec = _row(row)
        apply_sqlite(conn, rec, rec.event)
        count += 1
    return count
