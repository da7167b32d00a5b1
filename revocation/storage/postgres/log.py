"""The event log on PostgreSQL (asyncpg).

Same rows, same hash chain and same promises as the SQLite log
(``revocation.storage.sqlite.log``): ``row_hash`` covers the very text stored in the
row (the canonical payload JSON, ``recorded_at`` as ISO text), so a log can be
verified, or moved, between the two.

Gap-safe ordering: with concurrent writers, a sequence could otherwise commit
out of order (seq 8 visible before seq 7), and a follower that read up to 8
would miss 7 for ever. Here every append takes one transaction-scoped advisory
lock before it reads the head, assigns ``seq = head + 1 ...`` and writes the
new head; the lock is released only when the transaction has committed (and is
visible). So seq values commit one transaction at a time, in order, without
gaps: once a reader has seen ``seq = n``, nothing with ``seq <= n`` commits later.

The status projection (``revocation.storage.postgres.projection``) is applied inside the append
transaction, as on SQLite: once ``append`` returns, a read sees the write. The
append also runs ``pg_notify('pca_events', <last seq>)``, delivered on commit, so
followers in other processes can LISTEN instead of polling
(``revocation.storage.postgres.notify``); in-process ``listeners`` are called after the commit.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import asyncpg

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
from revocation.errors import ConcurrencyError
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
from revocation.storage.postgres.db import EVENTS_CHANNEL, PG_ERRORS, open_pg_pool, storage_error
from revocation.storage.schema import Schema

_COLUMNS = EVENT_COLUMNS
_DROPS = projection_drops_sql(
    "split_part(e.stream, '/', 2)", "split_part(e.stream, '/', 3)", "split_part(e.stream, '/', 2) = $1"
)

# The key of the advisory lock every append holds until it commits ("pcalog" in ASCII).
APPEND_LOCK_KEY = 0x7063616C6F67
_REBUILD_PAGE = 5000  # events read at a time by rebuild_projection
_APPEND_PAGE = 1000  # events of one append written at a time (progress is reported after each)

# The log's tables; before each owner migrated its own, they were made by migration 1 of the single schema.
LOG_SCHEMA = Schema(
    "log",
    (
        (
            1,
            f"""
            CREATE TABLE events (
                seq BIGINT PRIMARY KEY,
                stream TEXT NOT NULL,
                version BIGINT NOT NULL,
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
                seq BIGINT NOT NULL,
                hash TEXT NOT NULL
            );
            INSERT INTO log_head (id, seq, hash) VALUES (1, 0, '{GENESIS_HASH}');
            """,
        ),
        (2, STATUS_CHANGES_INDEX),
    ),
    legacy={1: 1},
)


# Applies recorded events to the projection inside the append transaction; returns how many (``apply_pg``).
Project = Callable[[Any, Sequence[RecordedEvent]], Awaitable[int]]
# Empties the projection before a rebuild replays the log into it (``clear_pg``).
ClearProjection = Callable[[Any], Awaitable[None]]


class PostgresEventLog:
    def __init__(self, pool: asyncpg.Pool, clock: Clock, *, project: Project, clear: ClearProjection) -> None:
        self._pool = pool
        self._clock = clock
        self._project = project
        self._clear = clear
        # Called with every batch of committed events (the change feed for in-process consumers).
        self.listeners: list[Listener] = []

    @classmethod
    async def open(
        cls,
        dsn: str,
        clock: Clock,
        *,
        project: Project,
        clear: ClearProjection,
        schemas: Sequence[Schema],
        min_size: int = 1,
        max_size: int = 10,
    ) -> PostgresEventLog:
        """Connect a pool to ``dsn`` and apply the migrations of ``schemas``; the log owns the pool."""
        pool = await open_pg_pool(dsn, schemas=schemas, min_size=min_size, max_size=max_size)
        return cls(pool, clock, project=project, clear=clear)

    @property
    def pool(self) -> Any:
        """The asyncpg pool, to share with the PostgreSQL view and response store."""
        return self._pool

    async def close(self) -> None:
        await self._pool.close()

    async def append(self, events: Sequence[NewEvent], progress: AppendProgress | None = None) -> list[RecordedEvent]:
        if not events:
            return []
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                recorded = await self._append_locked(conn, events, progress)
        except asyncpg.UniqueViolationError as exc:
            # Cannot happen while every writer takes the lock; a writer that does not is caught here.
            raise ConcurrencyError(f"a stream moved on during the append: {exc}") from exc
        except PG_ERRORS as exc:
            raise storage_error("appending to the event log", exc) from exc
        call_listeners(self.listeners, recorded)
        return recorded

    async def _append_locked(
        self, conn: Any, events: Sequence[NewEvent], progress: AppendProgress | None = None
    ) -> list[RecordedEvent]:
        await conn.execute("SELECT pg_advisory_xact_lock($1)", APPEND_LOCK_KEY)
        head = await conn.fetchrow("SELECT seq, hash FROM log_head WHERE id = 1")
        seq, prev = (int(head["seq"]), str(head["hash"])) if head else (0, GENESIS_HASH)
        versions = {}
        for stream in {new.event.stream() for new in events}:
            found = await conn.fetchval("SELECT MAX(version) FROM events WHERE stream = $1", stream)
            versions[stream] = 0 if found is None else int(found)
        chained = chain_events(events, seq, prev, self._clock.now(), versions)
        records = [row.record for row in chained]
        seq, prev = records[-1].seq, records[-1].hash
        for first in range(0, len(chained), _APPEND_PAGE):
            page = chained[first : first + _APPEND_PAGE]
            await conn.executemany(
                f"INSERT INTO events ({_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                [row.columns for row in page],
            )
            # The projection moves with the log (read-your-write); IntegrityError rolls the append back.
            await self._project(conn, records[first : first + _APPEND_PAGE])
            if progress is not None:
                progress(first + len(page))
        await conn.execute("UPDATE log_head SET seq = $1, hash = $2 WHERE id = 1", seq, prev)
        # Delivered to listeners when (and only if) this transaction commits.
        await conn.execute("SELECT pg_notify($1, $2)", EVENTS_CHANNEL, str(seq))
        return records

    async def rebuild_projection(self, progress: RebuildProgress | None = None) -> int:
        """Empty the projection and replay the whole log into it, in one transaction; returns events applied.

        Holds the append lock throughout, so no append interleaves with the replay.
        """
        sql = f"SELECT {_COLUMNS} FROM events WHERE seq > $1 ORDER BY seq LIMIT $2"
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", APPEND_LOCK_KEY)
                await self._clear(conn)
                total = int(await conn.fetchval("SELECT COUNT(*) FROM events"))
                count, after = 0, 0
                while rows := await conn.fetch(sql, after, _REBUILD_PAGE):
                    count += await self._project(conn, [recorded_event(r) for r in rows])
                    after = int(rows[-1]["seq"])
                    if progress is not None:
                        progress(count, total)
        except PG_ERRORS as exc:
            raise storage_error("rebuilding the status projection", exc) from exc
        return count

    async def read(self, after: int, limit: int) -> list[RecordedEvent]:
        rows = await self._fetch(f"SELECT {_COLUMNS} FROM events WHERE seq > $1 ORDER BY seq LIMIT $2", after, limit)
        return [recorded_event(r) for r in rows]

    async def read_index(self, after: int, limit: int) -> list[tuple[int, str, str]]:
        rows = await self._fetch(
            "SELECT seq, stream, type FROM events WHERE seq > $1 ORDER BY seq LIMIT $2", after, limit
        )
        return [(int(r["seq"]), str(r["stream"]), str(r["type"])) for r in rows]

    async def read_stream(self, stream: str) -> list[RecordedEvent]:
        rows = await self._fetch(f"SELECT {_COLUMNS} FROM events WHERE stream = $1 ORDER BY version", stream)
        return [recorded_event(r) for r in rows]

    async def head(self) -> int:
        rows = await self._fetch("SELECT seq FROM log_head WHERE id = 1")
        return int(rows[0]["seq"]) if rows else 0

    async def _fetch(self, sql: str, *args: Any) -> list[Any]:
        try:
            return list(await self._pool.fetch(sql, *args))
        except PG_ERRORS as exc:
            raise storage_error("reading the event log", exc) from exc

    async def verify_chain(self) -> int:
        """Walk the whole chain in one snapshot; return the number of rows or raise IntegrityError."""
        check = ChainCheck()
        try:
            async with self._pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
                async for row in conn.cursor(f"SELECT {_COLUMNS} FROM events ORDER BY seq", prefetch=1000):
                    check.add(row)
                head = await conn.fetchrow("SELECT seq, hash FROM log_head WHERE id = 1")
        except PG_ERRORS as exc:
            raise storage_error("verifying the event log", exc) from exc
        return check.finish(head)

    async def projection_drops(self, issuer_id: str) -> list[Drop]:
        """The issuer's certificates the log says are revoked and the projection does not (``revocation.chain``)."""
        return drop_rows(await self._fetch(_DROPS, issuer_id))
