"""The OCSP response store and its change feed.

The pre-signer writes signed responses here; responders read them and follow the
change feed (``changes``) to replace what they cache. Every write gets a new,
strictly increasing ``change_id`` (assigned by SQLite's single writer), so a
follower that has seen ``change_id = n`` needs only ``changes(after=n)``.
"""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from revocation.sqlite_db import SQLiteDatabase, get_position, set_position


@dataclasses.dataclass(frozen=True, slots=True)
class StoredResponse:
    issuer_id: str
    serial: int
    der: bytes
    status: str  # "good" or "revoked"
    this_update: int  # epoch seconds
    next_update: int
    refresh_at: int
    source_seq: int  # log position the response reflects
    change_id: int = 0  # assigned by the store


class ResponseStore(Protocol):
    async def put(self, responses: Sequence[StoredResponse], consumer: str, position: int, now_iso: str) -> int:
        """Store responses and the writer's log position in one transaction; returns the last change_id."""
        ...

    async def get(self, issuer_id: str, serial: int) -> StoredResponse | None: ...

    async def changes(self, after: int, limit: int) -> list[StoredResponse]:
        """Responses written with change_id > after, in change order."""
        ...

    async def due(self, now: int, limit: int) -> list[tuple[str, int]]:
        """Keys of responses whose refresh time has come."""
        ...

    async def position(self, consumer: str) -> int: ...

    async def last_change(self) -> int: ...


_COLS = "issuer_id, serial, der, status, this_update, next_update, refresh_at, source_seq, change_id"


def _row(row: tuple[Any, ...]) -> StoredResponse:
    issuer_id, serial, der, status, this_update, next_update, refresh_at, source_seq, change_id = row
    return StoredResponse(
        str(issuer_id),
        int(str(serial), 16),
        bytes(der),
        str(status),
        int(str(this_update)),
        int(str(next_update)),
        int(str(refresh_at)),
        int(str(source_seq)),
        int(str(change_id)),
    )


class SQLiteResponseStore:
    def __init__(self, db: SQLiteDatabase) -> None:
        self._db = db
        # In-process followers are told at once; others poll.
        self.listeners: list[Callable[[], None]] = []

    async def put(self, responses: Sequence[StoredResponse], consumer: str, position: int, now_iso: str) -> int:
        def w(conn: sqlite3.Connection) -> int:
            row = conn.execute("SELECT MAX(change_id) FROM ocsp_responses").fetchone()
            change = int(row[0]) if row and row[0] is not None else 0
            params = []
            for r in responses:
                change += 1
                params.append(
                    (
                        r.issuer_id,
                        f"{r.serial:x}",
                        r.der,
                        r.status,
                        r.this_update,
                        r.next_update,
                        r.refresh_at,
                        r.source_seq,
                        change,
                    )
                )
            conn.executemany(
                f"INSERT INTO ocsp_responses ({_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (issuer_id, serial) DO UPDATE SET der = excluded.der, status = excluded.status, "
                "this_update = excluded.this_update, next_update = excluded.next_update, "
                "refresh_at = excluded.refresh_at, source_seq = excluded.source_seq, change_id = excluded.change_id",
                params,
            )
            if get_position(conn, consumer) < position:
                set_position(conn, consumer, position, now_iso)
            return change

        # Responses are derived from the log and re-signed after a crash: no need to wait for the disk.
        last = await self._db.write(w, durable=False)
        if responses:
            for listener in self.listeners:
                listener()
        return last

    async def get(self, issuer_id: str, serial: int) -> StoredResponse | None:
        def q(conn: sqlite3.Connection) -> StoredResponse | None:
            row = conn.execute(
                f"SELECT {_COLS} FROM ocsp_responses WHERE issuer_id = ? AND serial = ?", (issuer_id, f"{serial:x}")
            ).fetchone()
            return None if row is None else _row(row)

        return await self._db.read(q)

    async def changes(self, after: int, limit: int) -> list[StoredResponse]:
        def q(conn: sqlite3.Connection) -> list[StoredResponse]:
            rows = conn.execute(
                f"SELECT {_COLS} FROM ocsp_responses WHERE change_id > ? ORDER BY change_id LIMIT ?", (after, limit)
            ).fetchall()
            return [_row(r) for r in rows]

        return await self._db.read(q)

    async def due(self, now: int, limit: int) -> list[tuple[str, int]]:
        def q(conn: sqlite3.Connection) -> list[tuple[str, int]]:
            rows = conn.execute(
                "SELECT issuer_id, serial FROM ocsp_responses WHERE refresh_at <= ? ORDER BY refresh_at LIMIT ?",
                (now, limit),
            ).fetchall()
            return [(str(i), int(str(s), 16)) for i, s in rows]

        return await self._db.read(q)

    async def position(self, consumer: str) -> int:
        return await self._db.read(lambda conn: get_position(conn, consumer))

    async def last_change(self) -> int:
        def q(conn: sqlite3.Connection) -> int:
            row = conn.execute("SELECT MAX(change_id) FROM ocsp_responses").fetchone()
            return int(row[0]) if row and row[0] is not None else 0

        return await self._db.read(q)
