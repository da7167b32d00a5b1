"""Coordination migration 2 (the CRL installations of relying parties' sync agents) upgrades a database
made before it in place, on SQLite and PostgreSQL: what was there stays, and the new table works."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import asyncpg

from pca.schemas import PG_SCHEMAS, SQLITE_SCHEMAS
from revocation.coordination import CRLInstallation, CRLPublication
from revocation.storage.postgres.coordination import PostgresCoordination
from revocation.storage.postgres.db import migrate_schema, open_pg_pool
from revocation.storage.schema import Schema
from revocation.storage.sqlite.coordination import SQLiteCoordination
from revocation.storage.sqlite.db import SQLiteDatabase

PUBLICATION = CRLPublication("ca", 0, "full", 5, 40, 100.0)
INSTALLATION = CRLInstallation("nginx-1", "ca", 0, "full", 5, 40, 130.0)


def _before(schemas: tuple[Schema, ...]) -> list[Schema]:
    """The schemas as they were before: coordination at version 1."""
    *others, coordination = schemas
    assert coordination.owner == "coordination" and [v for v, _ in coordination.migrations] == [1, 2]
    return [*others, dataclasses.replace(coordination, migrations=coordination.migrations[:1])]


async def test_sqlite_coordination_1_upgrades_in_place(tmp_path: Path) -> None:
    path = tmp_path / "pca.db"
    db = SQLiteDatabase(path)
    try:
        assert db.migrate_sync(_before(SQLITE_SCHEMAS))[-1] == "coordination 1"
        await SQLiteCoordination(db).record_crl_publication(PUBLICATION)
        await SQLiteCoordination(db).save_timeline("ca", 0xA1, 7, {"seq": 7})
    finally:
        db.close()

    db = SQLiteDatabase(path)
    try:
        assert db.migrate_sync(SQLITE_SCHEMAS) == ["coordination 2"]
        assert db.migrate_sync(SQLITE_SCHEMAS) == []
        coord = SQLiteCoordination(db)
        assert await coord.crl_publication("ca", 0, "full", 5) == PUBLICATION
        assert await coord.timeline("ca", 0xA1, 7) == {"seq": 7}
        assert await coord.record_crl_installation(INSTALLATION) == (INSTALLATION, True)
        assert await coord.crl_installations("ca", 0, 40) == [INSTALLATION]
    finally:
        db.close()


async def test_postgres_coordination_1_upgrades_in_place(postgres_database: str) -> None:
    conn = await asyncpg.connect(postgres_database)
    try:
        assert (await migrate_schema(conn, _before(PG_SCHEMAS)))[-1] == "coordination 1"
    finally:
        await conn.close()
    pool = await open_pg_pool(postgres_database, migrate=False)
    try:
        await PostgresCoordination(pool).record_crl_publication(PUBLICATION)
        await PostgresCoordination(pool).save_timeline("ca", 0xA1, 7, {"seq": 7})
    finally:
        await pool.close()

    conn = await asyncpg.connect(postgres_database)
    try:
        assert await migrate_schema(conn, PG_SCHEMAS) == ["coordination 2"]
        assert await migrate_schema(conn, PG_SCHEMAS) == []
        indexes = {
            r["indexname"]
            for r in await conn.fetch("SELECT indexname FROM pg_indexes WHERE tablename = $1", "crl_installations")
        }
        assert {"crl_installations_position", "crl_installations_time"} <= indexes
    finally:
        await conn.close()
    pool = await open_pg_pool(postgres_database, migrate=False)
    try:
        coord = PostgresCoordination(pool)
        assert await coord.crl_publication("ca", 0, "full", 5) == PUBLICATION
        assert await coord.timeline("ca", 0xA1, 7) == {"seq": 7}
        assert await coord.record_crl_installation(INSTALLATION) == (INSTALLATION, True)
        assert await coord.crl_installations("ca", 0, 40) == [INSTALLATION]
    finally:
        await pool.close()
