"""The OCSP response store on SQLite: the shared statements (``responders.store``) on one writer thread."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Sequence
from typing import Any

from responders.store import (
    SQL_CHANGES,
    SQL_DUE,
    SQL_GET,
    SQL_LAST_CHANGE,
    SQL_POSITION,
    SQL_PUT,
    SQL_SET_POSITION,
    StoredResponse,
    call_listeners,
    due_keys,
    put_params,
    stored_row,
)
from revocation.storage.sqlite.db import SQLiteDatabase


class SQLiteResponseStore:
    """``wall`` gives the time recorded as ``stored_at`` (a fake one in tests)."""

    def __init__(self, db: SQLiteDatabase, *, wall: Callable[[], float] = time.time) -> None:
        self._db = db
        self._wall = wall
        # In-process followers are told at once; others poll.
        self.listeners: list[Callable[[], None]] = []

    async def put(self, responses: Sequence[StoredResponse], consumer: str, position: int, now_iso: str) -> int:
        params = put_params(responses, self._wall())

        def w(conn: sqlite3.Connection) -> tuple[int, int]:
            before = int(conn.execute(SQL_LAST_CHANGE).fetchone()[0])
            conn.executemany(SQL_PUT, params)
            conn.execute(SQL_SET_POSITION, (consumer, position, now_iso))
            return before, int(conn.execute(SQL_LAST_CHANGE).fetchone()[0])

        # Responses are derived from the log and re-signed after a crash: no need to wait for the disk.
        before, last = await self._db.write(w, durable=False)
        if last > before:
            call_listeners(self.listeners)
        return last

    async def _rows(self, sql: str, *params: object) -> list[tuple[Any, ...]]:
        return await self._db.read(lambda conn: conn.execute(sql, params).fetchall())

    async def get(self, issuer_id: str, serial: int) -> StoredResponse | None:
        rows = await self._rows(SQL_GET, issuer_id, f"{serial:x}")
        return stored_row(rows[0]) if rows else None

    async def changes(self, after: int, limit: int) -> list[StoredResponse]:
        return [stored_row(r) for r in await self._rows(SQL_CHANGES, after, limit)]

    async def due(self, now: int, limit: int) -> list[tuple[str, int]]:
        return due_keys(await self._rows(SQL_DUE, now, limit))

    async def position(self, consumer: str) -> int:
        rows = await self._rows(SQL_POSITION, consumer)
        return int(rows[0][0]) if rows else 0

    async def last_change(self) -> int:
        return int((await self._rows(SQL_LAST_CHANGE))[0][0])
