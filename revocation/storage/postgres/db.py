"""What every PostgreSQL backend shares: the errors it may raise, timeouts, placeholders.

Every failure of the driver, the socket or a timeout becomes a ``StorageError``
whose message names what was being done and the driver's error, never the DSN
or its password (asyncpg does not put them in its messages; ``redact`` makes
sure of it for the ones we build).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import urllib.parse
from collections.abc import Sequence
from typing import Any

import asyncpg

from revocation.errors import StorageError
from revocation.storage.schema import Schema

log = logging.getLogger("pca.postgres")

# What a PostgreSQL call can raise when the server, the network or the statement fails.
PG_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    OSError,
    TimeoutError,
)

CONNECT_TIMEOUT = 5.0  # seconds to open a connection: a server that is down is reported quickly
COMMAND_TIMEOUT = 60.0  # the pool's default bound on one statement (a full CRL read of a million rows fits)
# The server ends a session left idle inside a transaction this long: a client frozen or cut off while
# it holds a lock (the log's append lock, the response store's change lock) would otherwise keep every
# other writer out, and a standby that took over its lease from writing, until TCP noticed, hours later.
# Our transactions send their statements back to back.
IDLE_IN_TRANSACTION_TIMEOUT = 5.0
# That setting does not cover a client frozen in the middle of the extended protocol: asyncpg prepares a
# statement with Parse/Describe/Flush and only then sends Bind/Execute/Sync, so a client stopped between
# the two leaves its session "active" (waiting to read from the client) with its locks held, and no
# server timeout applies. Every serving process therefore ends such sessions of ours once they have
# waited this long (``reap_stalled_sessions``); a live client sends its next message within milliseconds.
STALLED_SESSION_SECONDS = 2 * IDLE_IN_TRANSACTION_TIMEOUT
# The application_name of our sessions: the reaper ends no one else's.
APPLICATION_NAME = "pca"

# The NOTIFY channels: every role that listens and every writer that notifies uses these names.
EVENTS_CHANNEL = "pca_events"  # payload: the last seq of a committed append
RESPONSES_CHANNEL = "pca_responses"  # payload: the last change_id of a response-store write

# Held while migrating, so two processes starting at once do not both migrate (the log's append lock + 1).
MIGRATE_LOCK_KEY = 0x7063616C6F67 + 1


# The password of a libpq keyword DSN: password=secret or password='a secret'.
_KEYWORD_PASSWORD = re.compile(r"password\s*=\s*('(?:[^'\\]|\\.)*'|\S+)")


def _passwords(dsn: str) -> list[str]:
    found = [match.group(1).strip("'") for match in _KEYWORD_PASSWORD.finditer(dsn)]
    try:
        password = urllib.parse.urlsplit(dsn).password
    except ValueError:
        password = None
    if password:
        found += [password, urllib.parse.unquote(password)]
    return [p for p in found if p]


def redact(text: str, dsn: str | None) -> str:
    """``text`` without the DSN and without the password it carries (URL or keyword form)."""
    if not dsn:
        return text
    text = text.replace(dsn, "<dsn>")
    for password in _passwords(dsn):
        text = text.replace(password, "***")
    return text


def storage_error(doing: str, exc: BaseException, dsn: str | None = None) -> StorageError:
    """A StorageError saying what failed (``doing``) and why, safe to log."""
    reason = str(exc) or type(exc).__name__
    return StorageError(redact(f"{doing}: {type(exc).__name__}: {reason}", dsn))


@functools.lru_cache(maxsize=256)
def pg_sql(sql: str) -> str:
    """``sql`` with SQLite's ``?`` placeholders numbered as PostgreSQL wants (``$1``, ``$2`` ...).

    For the statements the two backends share; they contain no other ``?``.
    """
    parts = sql.split("?")
    return parts[0] + "".join(f"${i}{part}" for i, part in enumerate(parts[1:], start=1))


def affected(status: str) -> int:
    """The row count of an asyncpg command status such as ``UPDATE 1`` or ``INSERT 0 1``."""
    try:
        return int(status.rsplit(" ", 1)[-1])
    except ValueError:
        return 0


async def migrate_schema(conn: Any, schemas: Sequence[Schema]) -> list[str]:
    """Apply the pending migrations of each schema on ``conn``, in the order given; returns them as "owner version"."""
    applied: list[str] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATE_LOCK_KEY)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_versions (owner TEXT NOT NULL, version INTEGER NOT NULL, "
            "applied_at TIMESTAMPTZ NOT NULL, PRIMARY KEY (owner, version))"
        )
        legacy: set[int] = set()
        # A database made when every table shared one schema recorded its versions there.
        if await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL"):
            legacy = {int(r["version"]) for r in await conn.fetch("SELECT version FROM schema_migrations")}
        for schema in schemas:
            rows = await conn.fetch("SELECT version FROM schema_versions WHERE owner = $1", schema.owner)
            done = {int(r["version"]) for r in rows} | {schema.legacy[v] for v in legacy if v in schema.legacy}
            for version, sql in schema.migrations:
                if version in done:
                    continue
                await conn.execute(sql)
                await conn.execute(
                    "INSERT INTO schema_versions (owner, version, applied_at) VALUES ($1, $2, now())",
                    schema.owner,
                    version,
                )
                applied.append(f"{schema.owner} {version}")
    return applied


async def open_pg_pool(
    dsn: str,
    *,
    min_size: int = 1,
    max_size: int = 10,
    connect_timeout: float = CONNECT_TIMEOUT,
    command_timeout: float = COMMAND_TIMEOUT,
    idle_in_transaction_timeout: float = IDLE_IN_TRANSACTION_TIMEOUT,
    schemas: Sequence[Schema] = (),
    migrate: bool = True,
) -> asyncpg.Pool:
    """The one way to open PostgreSQL: a pool on ``dsn``, ``schemas`` migrated unless told not to.

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
            server_settings={"idle_in_transaction_session_timeout": idle_ms, "application_name": APPLICATION_NAME},
        )
    except PG_ERRORS as exc:
        raise storage_error("connecting to PostgreSQL", exc, dsn) from exc
    if not migrate:
        return pool
    try:
        async with pool.acquire(timeout=connect_timeout) as conn:
            await migrate_schema(conn, schemas)
    except BaseException as exc:
        pool.terminate()
        if isinstance(exc, PG_ERRORS):
            raise storage_error("migrating the PostgreSQL schema", exc, dsn) from exc
        raise
    return pool


# Sessions of ours in this database, inside a transaction, stuck waiting for their client's next message.
SQL_STALLED_SESSIONS = (
    "SELECT pid, pg_terminate_backend(pid) AS ended FROM pg_stat_activity "
    "WHERE datname = current_database() AND pid <> pg_backend_pid() AND application_name = $1 "
    "AND state = 'active' AND wait_event_type = 'Client' AND wait_event = 'ClientRead' "
    "AND xact_start IS NOT NULL AND state_change < now() - make_interval(secs => $2)"
)


async def reap_stalled_sessions(pool: asyncpg.Pool, older_than: float = STALLED_SESSION_SECONDS) -> list[int]:
    """End our sessions frozen mid-statement inside a transaction for ``older_than`` seconds; their pids.

    Such a session holds its locks (the log's append lock, the response store's change lock, a
    lease row) until its client wakes, which keeps a standby that took over the lease from writing.
    The client, if it ever wakes, finds its connection closed and its transaction rolled back.
    """
    try:
        async with pool.acquire(timeout=CONNECT_TIMEOUT) as conn:
            rows = await conn.fetch(SQL_STALLED_SESSIONS, APPLICATION_NAME, older_than, timeout=CONNECT_TIMEOUT)
    except PG_ERRORS as exc:
        raise storage_error("ending stalled sessions", exc) from exc
    return [int(r["pid"]) for r in rows if r["ended"]]


async def reap_stalled_sessions_forever(
    pool: asyncpg.Pool, older_than: float = STALLED_SESSION_SECONDS, every: float = IDLE_IN_TRANSACTION_TIMEOUT / 2
) -> None:
    """``reap_stalled_sessions`` every ``every`` seconds, for a serving process's life."""
    warned = False
    while True:
        try:
            for pid in await reap_stalled_sessions(pool, older_than):
                log.warning("ended PostgreSQL session %d: frozen inside a transaction for over %.0fs", pid, older_than)
            warned = False
        except StorageError as exc:
            if not warned:  # once per outage, not every few seconds
                log.warning("cannot look for stalled PostgreSQL sessions: %s", exc)
                warned = True
        await asyncio.sleep(every)


async def migrate_url(dsn: str, schemas: Sequence[Schema], *, connect_timeout: float = CONNECT_TIMEOUT) -> list[str]:
    """Apply the pending migrations of ``schemas`` to the database at ``dsn`` (``pca migrate``); returns them."""
    pool = await open_pg_pool(dsn, min_size=1, max_size=1, connect_timeout=connect_timeout, migrate=False)
    try:
        async with pool.acquire(timeout=connect_timeout) as conn:
            return await migrate_schema(conn, schemas)
    except PG_ERRORS as exc:
        raise storage_error("migrating the PostgreSQL schema", exc, dsn) from exc
    finally:
        await pool.close()
