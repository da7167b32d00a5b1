"""The OCSP response store on PostgreSQL (asyncpg).

Same statements and promises as the SQLite store (``responders.store``). Gap
safety: with several writers, a transaction that took change_id 8 could commit
before the one that took 7, and a follower that read up to 8 would never see 7.
So every ``put`` takes one transaction-scoped advisory lock before it reads the
last change_id; the lock is released only once the transaction has committed,
so change_ids commit in order: once a follower has seen ``change_id = n``,
nothing with ``change_id <= n`` commits later.

A write that stored something notifies ``pca_responses`` with its last change_id
(delivered on commit), so responders in other processes can LISTEN instead of
polling (``revocation.storage.postgres.notify``).

Every statement has a short timeout: a responder whose database is down gets a
StorageError within seconds (and answers ``tryLater``), never hangs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from responders.store import (
    SQL_LAST_CHANGE,
    SQL_PUT,
    SQL_SET_POSITION,
    StoredResponse,
    StoreReads,
    call_listeners,
    put_params,
)
from revocation.storage.postgres.db import PG_ERRORS, RESPONSES_CHANNEL, open_pg_pool, pg_sql, storage_error
from revocation.storage.schema import Schema

if TYPE_CHECKING:
    import asyncpg

# The key of the advisory lock every put holds until it commits ("pcarsp" in ASCII; pg_log's is "pcalog").
CHANGE_LOCK_KEY = 0x706361727370

# The response store's tables and the writers' log positions, SQLite's (responders.store.sqlite)
# with PostgreSQL types.
STORE_SCHEMA = Schema(
    "response_store",
    (
        (
            1,
            """
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
    ),
    # Migration 2 of the single schema of old made these tables.
    legacy={2: 1},
)

TIMEOUT = 5.0  # seconds for a read, connecting included
WRITE_TIMEOUT = 30.0  # seconds for one put (a batch of thousands of responses), connecting included


class PostgresResponseStore(StoreReads):
    """The ResponseStore on PostgreSQL; ``pool`` is an asyncpg pool (``revocation.storage.postgres.db.open_pg_pool``).

    ``wall`` gives the time recorded as ``stored_at`` (a fake one in tests).
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        timeout: float = TIMEOUT,
        write_timeout: float = WRITE_TIMEOUT,
        wall: Callable[[], float] = time.time,
    ) -> None:
        if timeout <= 0 or write_timeout <= 0:
            raise ValueError(f"timeouts must be positive, got timeout={timeout}, write_timeout={write_timeout}")
        self._pool = pool
        self._timeout = timeout
        self._write_timeout = write_timeout
        self._wall = wall
        self._owns_pool = False
        # In-process followers are told after each write that stored something.
        self.listeners: list[Callable[[], None]] = []

    @classmethod
    async def open(cls, dsn: str, *, min_size: int = 1, max_size: int = 10) -> PostgresResponseStore:
        """A store on its own pool (its own tables migrated); ``close`` closes the pool."""
        store = cls(await open_pg_pool(dsn, schemas=[STORE_SCHEMA], min_size=min_size, max_size=max_size))
        store._owns_pool = True
        return store

    async def close(self) -> None:
        if self._owns_pool:
            await self._pool.close()

    async def put(self, responses: Sequence[StoredResponse], consumer: str, position: int, now_iso: str) -> int:
        params = put_params(responses, self._wall())
        try:
            # One bound on the whole write, BEGIN and COMMIT included: a server that stops answering
            # costs a writer write_timeout, not the pool's command timeout per statement.
            async with (
                asyncio.timeout(self._write_timeout),
                self._pool.acquire(timeout=self._timeout) as conn,
                conn.transaction(),
            ):
                await conn.execute("SELECT pg_advisory_xact_lock($1)", CHANGE_LOCK_KEY)
                before = int(await conn.fetchval(SQL_LAST_CHANGE))
                if params:
                    # One statement per row, pipelined: each sees the rows written before it (SQL_PUT).
                    await conn.executemany(pg_sql(SQL_PUT), params)
                await conn.execute(pg_sql(SQL_SET_POSITION), consumer, position, now_iso)
                last = int(await conn.fetchval(SQL_LAST_CHANGE))
                if last > before:
                    await conn.execute("SELECT pg_notify($1, $2)", RESPONSES_CHANNEL, str(last))
        except PG_ERRORS as exc:
            raise storage_error("writing OCSP responses", exc) from exc
        if last > before:
            call_listeners(self.listeners)
        return last

    async def _rows(self, sql: str, *args: Any) -> list[Any]:
        try:
            async with asyncio.timeout(self._timeout), self._pool.acquire() as conn:
                return list(await conn.fetch(pg_sql(sql), *args))
        except PG_ERRORS as exc:
            raise storage_error("reading OCSP responses", exc) from exc
