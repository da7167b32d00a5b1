"""The OCSP response store and its change feed.

The pre-signer writes signed responses here; responders read them and follow the
change feed (``changes``) to replace what they cache. Every write gets a new,
strictly increasing ``change_id``, and writes commit in change order (SQLite's
single writer; a lock on PostgreSQL, ``responders.store.postgres``), so a follower
that has seen ``change_id = n`` needs only ``changes(after=n)``.

A write never moves a response backwards: a response that reflects an older log
position or an older thisUpdate than the stored one is not written (a stale
pre-signer that lost its lease must not put a "good" over a newer "revoked"), and
gets no change_id.

The statements here are shared by both backends (SQLite's ``?`` placeholders;
PostgreSQL numbers them).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol

log = logging.getLogger("pca.store")


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
    stored_at: float = 0.0  # when the store wrote it (epoch seconds); set by the store


class ResponseStore(Protocol):
    async def put(self, responses: Sequence[StoredResponse], consumer: str, position: int, now_iso: str) -> int:
        """Store responses and the writer's log position in one transaction; returns the last change_id.

        A response older than the stored one (lower ``source_seq`` or ``this_update``) is skipped.
        """
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

    async def earliest(self) -> tuple[int, int] | None:
        """The oldest thisUpdate and the earliest nextUpdate of any stored response (None: no response)."""
        ...


_COLS = "issuer_id, serial, der, status, this_update, next_update, refresh_at, source_seq, change_id, stored_at"

SQL_LAST_CHANGE = "SELECT COALESCE(MAX(change_id), 0) FROM ocsp_responses"
# A scan of the table (a million rows: a fraction of a second), every 30 s for pca.metrics.
SQL_EARLIEST = "SELECT MIN(this_update), MIN(next_update) FROM ocsp_responses"
# One row per execution: its change_id is the next one at the time it is written, so only rows
# actually written take one, and in the order written. The WHERE keeps a stored response that
# is newer than the one offered.
SQL_PUT = (
    "INSERT INTO ocsp_responses (issuer_id, serial, der, status, this_update, next_update, refresh_at, "
    "source_seq, stored_at, change_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, "
    "(SELECT COALESCE(MAX(change_id), 0) + 1 FROM ocsp_responses)) "
    "ON CONFLICT (issuer_id, serial) DO UPDATE SET der = excluded.der, status = excluded.status, "
    "this_update = excluded.this_update, next_update = excluded.next_update, refresh_at = excluded.refresh_at, "
    "source_seq = excluded.source_seq, stored_at = excluded.stored_at, change_id = excluded.change_id "
    "WHERE excluded.source_seq >= ocsp_responses.source_seq AND excluded.this_update >= ocsp_responses.this_update"
)
# The writer's position only moves forward.
SQL_SET_POSITION = (
    "INSERT INTO consumers (name, position, updated_at) VALUES (?, ?, ?) "
    "ON CONFLICT (name) DO UPDATE SET position = excluded.position, updated_at = excluded.updated_at "
    "WHERE excluded.position > consumers.position"
)
SQL_GET = f"SELECT {_COLS} FROM ocsp_responses WHERE issuer_id = ? AND serial = ?"
SQL_CHANGES = f"SELECT {_COLS} FROM ocsp_responses WHERE change_id > ? ORDER BY change_id LIMIT ?"
SQL_DUE = "SELECT issuer_id, serial FROM ocsp_responses WHERE refresh_at <= ? ORDER BY refresh_at LIMIT ?"
SQL_POSITION = "SELECT position FROM consumers WHERE name = ?"


def put_params(responses: Sequence[StoredResponse], stored_at: float) -> list[tuple[object, ...]]:
    """The SQL_PUT parameters of each response."""
    return [
        (
            r.issuer_id,
            f"{r.serial:x}",
            r.der,
            r.status,
            r.this_update,
            r.next_update,
            r.refresh_at,
            r.source_seq,
            stored_at,
        )
        for r in responses
    ]


def stored_row(row: Sequence[Any]) -> StoredResponse:
    """A StoredResponse from a row of ``_COLS`` (an sqlite3 tuple or an asyncpg Record)."""
    issuer_id, serial, der, status, this_update, next_update, refresh_at, source_seq, change_id, stored_at = row
    return StoredResponse(
        str(issuer_id),
        int(str(serial), 16),
        bytes(der),
        str(status),
        int(this_update),
        int(next_update),
        int(refresh_at),
        int(source_seq),
        int(change_id),
        float(stored_at),
    )


def earliest_row(row: Sequence[Any]) -> tuple[int, int] | None:
    return None if row[0] is None else (int(row[0]), int(row[1]))


def due_keys(rows: Sequence[Sequence[Any]]) -> list[tuple[str, int]]:
    return [(str(issuer_id), int(str(serial), 16)) for issuer_id, serial in rows]


def call_listeners(listeners: Sequence[Callable[[], None]]) -> None:
    """Tell in-process followers that the store changed; one that fails does not stop the others."""
    for listener in listeners:
        try:
            listener()
        except Exception:
            log.exception("response store listener failed")


class StoreReads:
    """The response store's reads that are one statement (``?`` placeholders) on both backends.

    A backend subclasses it and gives ``_rows``, which runs such a statement and returns its rows.
    """

    async def _rows(self, sql: str, *params: Any) -> list[Any]:
        raise NotImplementedError

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

    async def earliest(self) -> tuple[int, int] | None:
        return earliest_row((await self._rows(SQL_EARLIEST))[0])
