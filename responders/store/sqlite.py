"""The OCSP response store on SQLite: the shared statements (``responders.store``) on one writer thread."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Sequence
from typing import Any

from responders.store import (
    SQL_LAST_CHANGE,
    SQL_PUT,
    SQL_SET_POSITION,
    StoredResponse,
    StoreReads,
    call_listeners,
    put_params,
)
from revocation.storage.sqlite.db import Schema, SQLiteDatabase

# The response store's tables, and the writers' log positions (``consumers``) that ``put`` records with them.
STORE_SCHEMA = Schema(
    "response_store",
    (
        (
            1,
            """
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
            """,
        ),
        (
            2,
            # When each stored OCSP response was written (epoch seconds): how long a response took to
            # reach the store, and from there the responders. Rows written before this say 0.
            "ALTER TABLE ocsp_responses ADD COLUMN stored_at REAL NOT NULL DEFAULT 0",
        ),
    ),
    # Migrations 1 and 3 of the single schema of old made these tables.
    legacy={1: 1, 3: 2},
)


class SQLiteResponseStore(StoreReads):
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

    async def _rows(self, sql: str, *params: Any) -> list[Any]:
        return await self._db.read(lambda conn: conn.execute(sql, params).fetchall())
