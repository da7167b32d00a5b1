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

import json
from collections.abc import Sequence
from typing import Any

import asyncpg

from revocation.clock import Clock, parse_iso
from revocation.errors import ConcurrencyError, IntegrityError
from revocation.eventlog import GENESIS_HASH, Listener, NewEvent, RecordedEvent, call_listeners, chain_events, row_hash
from revocation.storage.postgres.db import (
    COMMAND_TIMEOUT,
    CONNECT_TIMEOUT,
    EVENTS_CHANNEL,
    IDLE_IN_TRANSACTION_TIMEOUT,
    PG_ERRORS,
    storage_error,
)
from revocation.storage.postgres.projection import apply_pg

_COLUMNS = "seq, stream, version, type, payload, actor, request_id, recorded_at, prev_hash, hash"

# The key of the advisory lock every append holds until it commits ("pcalog" in ASCII).
APPEND_LOCK_KEY = 0x7063616C6F67
# Held while migrating, so two processes starting at once do not both migrate.
MIGRATE_LOCK_KEY = APPEND_LOCK_KEY + 1

# The channel every append notifies, with the last seq it committed as the payload.
_REBUILD_PAGE = 5000  # events read at a time by rebuild_projection

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
        2,
        # The status projection, the consumers' positions and the OCSP response store: the tables
        # of SQLite's migrations 1 to 3 (revocation.storage.sqlite.db), with PostgreSQL types. Serials stay
        # lowercase hex TEXT, compared bytewise (COLLATE "C") as SQLite compares them.
        """
        CREATE TABLE issuers (
            issuer_id TEXT PRIMARY KEY,
            kind TEXT NOT NULL,
            parent_id TEXT,
            cert_der BYTEA NOT NULL,
            key_ref TEXT,
            crl_url TEXT NOT NULL,
            signer_cert_der BYTEA,
            signer_key_ref TEXT,
            signer_not_after BIGINT,
            version BIGINT NOT NULL,
            updated_seq BIGINT NOT NULL
        );
        CREATE TABLE certificates (
            issuer_id TEXT COLLATE "C" NOT NULL,
            serial TEXT COLLATE "C" NOT NULL,
            status TEXT NOT NULL,
            subject TEXT NOT NULL,
            profile TEXT NOT NULL,
            not_before BIGINT NOT NULL,
            not_after BIGINT NOT NULL,
            cert_der BYTEA NOT NULL,
            revoked_at BIGINT,
            reason TEXT,
            invalidity_date BIGINT,
            version BIGINT NOT NULL,
            updated_seq BIGINT NOT NULL,
            crl_shard INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (issuer_id, serial)
        );
        CREATE INDEX certificates_serial ON certificates (serial);
        CREATE INDEX certificates_status ON certificates (issuer_id, status);
        CREATE INDEX certificates_crl_revoked ON certificates (issuer_id, crl_shard) WHERE status = 'revoked';
        CREATE INDEX certificates_crl_changes ON certificates (issuer_id, crl_shard, updated_seq) WHERE version > 1;
        CREATE TABLE consumers (
            name TEXT PRIMARY KEY,
            position BIGINT NOT NULL,
            updated_at TEXT NOT NULL
        );
        CREATE TABLE ocsp_responses (
            issuer_id TEXT COLLATE "C" NOT NULL,
            serial TEXT COLLATE "C" NOT NULL,
            der BYTEA NOT NULL,
            status TEXT NOT NULL,
            this_update BIGINT NOT NULL,
            next_update BIGINT NOT NULL,
            refresh_at BIGINT NOT NULL,
            source_seq BIGINT NOT NULL,
            change_id BIGINT NOT NULL,
            stored_at DOUBLE PRECISION NOT NULL DEFAULT 0,
            PRIMARY KEY (issuer_id, serial)
        );
        CREATE INDEX ocsp_responses_refresh ON ocsp_responses (refresh_at);
        CREATE UNIQUE INDEX ocsp_responses_change ON ocsp_responses (change_id);
        """,
    ),
    (
        3,
        # Coordination between roles and the propagation tracker's inputs (revocation.storage.postgres.coordination).
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


async def migrate_schema(conn: Any) -> list[int]:
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


async def open_pg_pool(
    dsn: str,
    *,
    min_size: int = 1,
    max_size: int = 10,
    connect_timeout: float = CONNECT_TIMEOUT,
    command_timeout: float = COMMAND_TIMEOUT,
    idle_in_transaction_timeout: float = IDLE_IN_TRANSACTION_TIMEOUT,
    migrate: bool = True,
) -> asyncpg.Pool:
    """The one way to open PostgreSQL: a pool on ``dsn``, its schema migrated unless told not to.

    With ``min_size`` > 0 it connects now. Raises StorageError, without the DSN in its message,
    when the server cannot be reached within ``connect_timeout`` or the migration fails.
    """
    if not 0 <= min_size <= max_size or max_size < 1:
        raise ValueError(f"pool sizes must satisfy 0 <= min_size <= max_size >= 1, got {min_size}, {max_size}")
    if idle_in_transaction_timeout <= 0:
        raise ValueError(f"idle_in_transaction_timeout must be positive, got {idle_in_transaction_timeout}")
    # A startup setting, so that the pool's RESET ALL on each release keeps it.
    idle_ms = str(max(1, round(idle_in_transaction_timeout * 1000)))
    try:
        pool = await asyncpg.create_pool(
            dsn,
            min_size=min_size,
            max_size=max_size,
            timeout=connect_timeout,
            command_timeout=command_timeout,
            server_settings={"idle_in_transaction_session_timeout": idle_ms},
        )
    except PG_ERRORS as exc:
        raise storage_error("connecting to PostgreSQL", exc, dsn) from exc
    if not migrate:
        return pool
    try:
        async with pool.acquire(timeout=connect_timeout) as conn:
            await migrate_schema(conn)
    except BaseException as exc:
        pool.terminate()
        if isinstance(exc, PG_ERRORS):
            raise storage_error("migrating the PostgreSQL schema", exc, dsn) from exc
        raise
    return pool


async def migrate_url(dsn: str, *, connect_timeout: float = CONNECT_TIMEOUT) -> list[int]:
    """Apply pending migrations to the database at ``dsn`` (``pca migrate``); returns the versions applied."""
    pool = await open_pg_pool(dsn, min_size=1, max_size=1, connect_timeout=connect_timeout, migrate=False)
    try:
        async with pool.acquire(timeout=connect_timeout) as conn:
            return await migrate_schema(conn)
    except PG_ERRORS as exc:
        raise storage_error("migrating the PostgreSQL schema", exc, dsn) from exc
    finally:
        await pool.close()


class PostgresEventLog:
    def __init__(self, pool: Any, clock: Clock) -> None:
        self._pool = pool
        self._clock = clock
        # Called with every batch of committed events (the change feed for in-process consumers).
        self.listeners: list[Listener] = []

    @classmethod
    async def open(cls, dsn: str, clock: Clock, *, min_size: int = 1, max_size: int = 10) -> PostgresEventLog:
        """Connect a pool to ``dsn`` and apply the schema migrations; the log owns the pool."""
        return cls(await open_pg_pool(dsn, min_size=min_size, max_size=max_size), clock)

    @property
    def pool(self) -> Any:
        """The asyncpg pool, to share with the PostgreSQL view and response store."""
        return self._pool

    async def close(self) -> None:
        await self._pool.close()

    async def append(self, events: Sequence[NewEvent]) -> list[RecordedEvent]:
        if not events:
            return []
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                recorded = await self._append_locked(conn, events)
        except asyncpg.UniqueViolationError as exc:
            # Cannot happen while every writer takes the lock; a writer that does not is caught here.
            raise ConcurrencyError(f"a stream moved on during the append: {exc}") from exc
        except PG_ERRORS as exc:
            raise storage_error("appending to the event log", exc) from exc
        call_listeners(self.listeners, recorded)
        return recorded

    async def _append_locked(self, conn: Any, events: Sequence[NewEvent]) -> list[RecordedEvent]:
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
        await conn.executemany(
            f"INSERT INTO events ({_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            [row.columns for row in chained],
        )
        await conn.execute("UPDATE log_head SET seq = $1, hash = $2 WHERE id = 1", seq, prev)
        # The projection moves with the log (read-your-write); IntegrityError rolls the append back.
        await apply_pg(conn, records)
        # Delivered to listeners when (and only if) this transaction commits.
        await conn.execute("SELECT pg_notify($1, $2)", EVENTS_CHANNEL, str(seq))
        return records

    async def rebuild_projection(self) -> int:
        """Empty the projection and replay the whole log into it, in one transaction; returns events applied.

        Holds the append lock throughout, so no append interleaves with the replay.
        """
        sql = f"SELECT {_COLUMNS} FROM events WHERE seq > $1 ORDER BY seq LIMIT $2"
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", APPEND_LOCK_KEY)
                await conn.execute("DELETE FROM certificates")
                await conn.execute("DELETE FROM issuers")
                count, after = 0, 0
                while rows := await conn.fetch(sql, after, _REBUILD_PAGE):
                    count += await apply_pg(conn, [_row(r) for r in rows])
                    after = int(rows[-1]["seq"])
        except PG_ERRORS as exc:
            raise storage_error("rebuilding the status projection", exc) from exc
        return count

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
        except PG_ERRORS as exc:
            raise storage_error("reading the event log", exc) from exc

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
        except PG_ERRORS as exc:
            raise storage_error("verifying the event log", exc) from exc
        head_seq, head_hash = (int(head["seq"]), str(head["hash"])) if head else (0, GENESIS_HASH)
        if head_seq != count or head_hash != prev:
            raise IntegrityError(
                f"event log broken at seq {count + 1}: the log head records seq {head_seq}, "
                f"but the chain ends at seq {count} (rows removed from the end?)",
                count + 1,
            )
        return count
