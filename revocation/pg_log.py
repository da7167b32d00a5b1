"""The event log on PostgreSQL (asyncpg).

Same rows, same hash chain and same promises as the SQLite log
(``revocation.sqlite_log``): ``row_hash`` covers the very text stored in the
row (the canonical payload JSON, ``recorded_at`` as ISO text), so a log can be
verified, or moved, between the two.

Gap-safe ordering: with concurrent writers, a sequence could otherwise commit
out of order (seq 8 visible before seq 7), and a follower that read up to 8
would miss 7 for ever. Here every append takes one transaction-scoped advisory
lock before it reads the head, assigns ``seq = head + 1 ...`` and writes the
new head; the lock is released only when the transaction has committed (and is
visible). So seq values commit one transaction at a time, in order, without
gaps: once a reader has seen ``seq = n``, nothing with ``seq <= n`` commits later.

The status projection is not applied here (yet): this log is the source of truth only.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import asyncpg

from revocation.clock import Clock, parse_iso
from revocation.errors import ConcurrencyError, IntegrityError, StorageError
from revocation.eventlog import GENESIS_HASH, NewEvent, RecordedEvent, chain_events, row_hash

_COLUMNS = "seq, stream, version, type, payload, actor, request_id, recorded_at, prev_hash, hash"

# The key of the advisory lock every append holds until it commits ("pcalog" in ASCII).
APPEND_LOCK_KEY = 0x7063616C6F67
# Held while migrating, so two processes starting at once do not both migrate.
MIGRATE_LOCK_KEY = APPEND_LOCK_KEY + 1

MIGRATIONS: list[tuple[int, str]] = [
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
    (
        3,
        # Coordination between roles and the propagation tracker's inputs (revocation.pg_coordination).
        # Times are epoch seconds (DOUBLE PRECISION), as in SQLite.
        """
        CREATE TABLE leases (
            name TEXT PRIMARY KEY,
            holder TEXT NOT NULL,
            expires_at DOUBLE PRECISION NOT NULL,
            acquired_at DOUBLE PRECISION NOT NULL
        );
        CREATE TABLE responders (
            responder_id TEXT PRIMARY KEY,
            url TEXT NOT NULL,
            applied_change BIGINT NOT NULL,
            started_at DOUBLE PRECISION NOT NULL,
            last_seen DOUBLE PRECISION NOT NULL
        );
        CREATE TABLE responder_progress (
            id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            responder_id TEXT NOT NULL,
            applied_change BIGINT NOT NULL,
            applied_at DOUBLE PRECISION NOT NULL
        );
        CREATE INDEX responder_progress_change ON responder_progress (responder_id, applied_change);
        CREATE INDEX responder_progress_time ON responder_progress (applied_at);
        CREATE TABLE crl_publications (
            issuer_id TEXT NOT NULL,
            shard INTEGER NOT NULL,
            kind TEXT NOT NULL,
            number BIGINT NOT NULL,
            position BIGINT NOT NULL,
            published_at DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (issuer_id, shard, kind, number)
        );
        CREATE INDEX crl_publications_position ON crl_publications (issuer_id, shard, position);
        CREATE TABLE probes (
            issuer_id TEXT NOT NULL,
            serial TEXT NOT NULL,
            seq BIGINT NOT NULL,
            responder_url TEXT NOT NULL,
            seen_at DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (issuer_id, serial, seq, responder_url)
        );
        CREATE TABLE propagation_timelines (
            issuer_id TEXT NOT NULL,
            serial TEXT NOT NULL,
            seq BIGINT NOT NULL,
            timeline TEXT NOT NULL,
            PRIMARY KEY (issuer_id, serial, seq)
        );
        """,
    ),
]


def _row(row: Any) -> RecordedEvent:
    return RecordedEvent(
        seq=int(row["seq"]),
        stream=str(row["stream"]),
        version=int(row["version"]),
        type=str(row["type"]),
        payload=json.loads(str(row["payload"])),
        actor=str(row["actor"]),
        request_id=str(row["request_id"]),
        recorded_at=parse_iso(str(row["recorded_at"])),
        prev_hash=str(row["prev_hash"]),
        hash=str(row["hash"]),
    )


async def migrate(conn: Any) -> list[int]:
    """Apply pending migrations on ``conn``; returns the versions applied."""
    applied: list[int] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATE_LOCK_KEY)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations "
            "(version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL)"
        )
        done = {int(r["version"]) for r in await conn.fetch("SELECT version FROM schema_migrations")}
        for version, sql in MIGRATIONS:
            if version in done:
                continue
            await conn.execute(sql)
            await conn.execute("INSERT INTO schema_migrations (version, applied_at) VALUES ($1, now())", version)
            applied.append(version)
    return applied


class PostgresEventLog:
    def __init__(self, pool: Any, clock: Clock) -> None:
        self._pool = pool
        self._clock = clock

    @classmethod
    async def open(cls, dsn: str, clock: Clock, *, min_size: int = 1, max_size: int = 10) -> PostgresEventLog:
        """Connect a pool to ``dsn`` and apply the log's schema migrations."""
        try:
            pool = await asyncpg.create_pool(dsn, min_size=min_size, max_size=max_size)
        except (OSError, asyncpg.PostgresError) as exc:
            raise StorageError(f"connecting to PostgreSQL: {exc}") from exc
        try:
            async with pool.acquire() as conn:
                await migrate(conn)
        except BaseException as exc:
            await pool.close()
            if isinstance(exc, asyncpg.PostgresError):
                raise StorageError(f"migrating the event log: {exc}") from exc
            raise
        return cls(pool, clock)

    async def close(self) -> None:
        await self._pool.close()

    async def append(self, events: Sequence[NewEvent]) -> list[RecordedEvent]:
        if not events:
            return []
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                return await self._append_locked(conn, events)
        except asyncpg.UniqueViolationError as exc:
            # Cannot happen while every writer takes the lock; a writer that does not is caught here.
            raise ConcurrencyError(f"a stream moved on during the append: {exc}") from exc
        except asyncpg.PostgresError as exc:
            raise StorageError(f"appending to the event log: {exc}") from exc

    async def _append_locked(self, conn: Any, events: Sequence[NewEvent]) -> list[RecordedEvent]:
        await conn.execute("SELECT pg_advisory_xact_lock($1)", APPEND_LOCK_KEY)
        head = await conn.fetchrow("SELECT seq, hash FROM log_head WHERE id = 1")
        seq, prev = (int(head["seq"]), str(head["hash"])) if head else (0, GENESIS_HASH)
        versions = {}
        for stream in {new.event.stream() for new in events}:
            found = await conn.fetchval("SELECT MAX(version) FROM events WHERE stream = $1", stream)
            versions[stream] = 0 if found is None else int(found)
        chained = chain_events(events, seq, prev, self._clock.now(), versions)
        rows = [row.columns for row in chained]
        seq, prev = chained[-1].record.seq, chained[-1].record.hash
        await conn.executemany(
            f"INSERT INTO events ({_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)", rows
        )
        await conn.execute("UPDATE log_head SET seq = $1, hash = $2 WHERE id = 1", seq, prev)
        return [row.record for row in chained]

    async def read(self, after: int, limit: int) -> list[RecordedEvent]:
        rows = await self._fetch(f"SELECT {_COLUMNS} FROM events WHERE seq > $1 ORDER BY seq LIMIT $2", after, limit)
        return [_row(r) for r in rows]

    async def read_index(self, after: int, limit: int) -> list[tuple[int, str, str]]:
        rows = await self._fetch(
            "SELECT seq, stream, type FROM events WHERE seq > $1 ORDER BY seq LIMIT $2", after, limit
        )
        return [(int(r["seq"]), str(r["stream"]), str(r["type"])) for r in rows]

    async def read_stream(self, stream: str) -> list[RecordedEvent]:
        rows = await self._fetch(f"SELECT {_COLUMNS} FROM events WHERE stream = $1 ORDER BY version", stream)
        return [_row(r) for r in rows]

    async def head(self) -> int:
        rows = await self._fetch("SELECT seq FROM log_head WHERE id = 1")
        return int(rows[0]["seq"]) if rows else 0

    async def _fetch(self, sql: str, *args: Any) -> list[Any]:
        try:
            return list(await self._pool.fetch(sql, *args))
        except asyncpg.PostgresError as exc:
            raise StorageError(f"reading the event log: {exc}") from exc

    async def verify_chain(self) -> int:
        """Walk the whole chain in one snapshot; return the number of rows or raise IntegrityError."""
        try:
            async with self._pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
                prev = GENESIS_HASH
                expected_seq = 1
                count = 0
                async for row in conn.cursor(f"SELECT {_COLUMNS} FROM events ORDER BY seq", prefetch=1000):
                    seq = int(row["seq"])
                    if seq != expected_seq:
                        raise IntegrityError(
                            f"event log broken at seq {expected_seq}: row missing (next row is {seq})", expected_seq
                        )
                    if row["prev_hash"] != prev:
                        raise IntegrityError(
                            f"event log broken at seq {seq}: prev_hash does not match the previous row", seq
                        )
                    digest = row_hash(
                        prev,
                        seq,
                        str(row["stream"]),
                        int(row["version"]),
                        str(row["type"]),
                        str(row["payload"]),
                        str(row["actor"]),
                        str(row["request_id"]),
                        str(row["recorded_at"]),
                    )
                    if digest != row["hash"]:
                        raise IntegrityError(f"event log broken at seq {seq}: row content does not match its hash", seq)
                    prev = digest
                    expected_seq += 1
                    count += 1
                head = await conn.fetchrow("SELECT seq, hash FROM log_head WHERE id = 1")
        except asyncpg.PostgresError as exc:
            raise StorageError(f"verifying the event log: {exc}") from exc
        head_seq, head_hash = (int(head["seq"]), str(head["hash"])) if head else (0, GENESIS_HASH)
        if head_seq != count or head_hash != prev:
            raise IntegrityError(
                f"event log broken at seq {count + 1}: the log head records seq {head_seq}, "
                f"but the chain ends at seq {count} (rows removed from the end?)",
                count + 1,
            )
        return count
