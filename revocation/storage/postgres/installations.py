"""The CRL installations relying parties' sync agents report (``InstallationLog``), on PostgreSQL.

Migration 2 of the coordination owner makes the table; ``PostgresCoordination`` inherits these methods
(and the two query helpers every method there uses).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from revocation.coordination import CRLInstallation, CRLPublication
from revocation.storage.postgres.db import PG_ERRORS, affected, storage_error

if TYPE_CHECKING:
    import asyncpg

# As on SQLite: ``position`` is copied from the publication, so that "installations of (issuer, shard)
# with position >= seq" is one indexed range read.
INSTALLATIONS_MIGRATION = """
    CREATE TABLE crl_installations (
        agent TEXT NOT NULL,
        issuer_id TEXT NOT NULL,
        shard INTEGER NOT NULL,
        kind TEXT NOT NULL,
        number BIGINT NOT NULL,
        position BIGINT NOT NULL,
        installed_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (agent, issuer_id, shard, kind, number)
    );
    CREATE INDEX crl_installations_position ON crl_installations (issuer_id, shard, position);
    CREATE INDEX crl_installations_time ON crl_installations (issuer_id, shard, installed_at);
    CREATE INDEX crl_installations_age ON crl_installations (installed_at);
    """

MAX_NUMBER = 2**63 - 1  # a CRL number beyond BIGINT was never published by pca
MAX_SHARD = 2**31 - 1
_COLUMNS = "agent, issuer_id, shard, kind, number, position, installed_at"


def _installation(row: Any) -> CRLInstallation:
    return CRLInstallation(
        str(row["agent"]),
        str(row["issuer_id"]),
        int(row["shard"]),
        str(row["kind"]),
        int(row["number"]),
        int(row["position"]),
        float(row["installed_at"]),
    )


class PostgresInstallations:
    _pool: asyncpg.Pool

    async def _fetch(self, doing: str, sql: str, *args: Any) -> list[Any]:
        try:
            return list(await self._pool.fetch(sql, *args))
        except PG_ERRORS as exc:
            raise storage_error(doing, exc) from exc

    async def _execute(self, doing: str, sql: str, *args: Any) -> str:
        try:
            return str(await self._pool.execute(sql, *args))
        except PG_ERRORS as exc:
            raise storage_error(doing, exc) from exc

    async def crl_publication(self, issuer_id: str, shard: int, kind: str, number: int) -> CRLPublication | None:
        if not 0 <= number <= MAX_NUMBER or not 0 <= shard <= MAX_SHARD:
            return None
        rows = await self._fetch(
            f"reading the publication of {kind} CRL {number} of {issuer_id} shard {shard}",
            "SELECT issuer_id, shard, kind, number, position, published_at FROM crl_publications "
            "WHERE issuer_id = $1 AND shard = $2 AND kind = $3 AND number = $4",
            issuer_id,
            shard,
            kind,
            number,
        )
        if not rows:
            return None
        r = rows[0]
        return CRLPublication(
            str(r["issuer_id"]),
            int(r["shard"]),
            str(r["kind"]),
            int(r["number"]),
            int(r["position"]),
            float(r["published_at"]),
        )

    async def record_crl_installation(self, installation: CRLInstallation) -> tuple[CRLInstallation, bool]:
        i = installation
        key = (i.agent, i.issuer_id, i.shard, i.kind, i.number)
        where = "agent = $1 AND issuer_id = $2 AND shard = $3 AND kind = $4 AND number = $5"
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                # The insert either makes the row or meets one (waiting for a concurrent insert to commit),
                # so the update that follows always finds it.
                inserted = await conn.fetch(
                    f"INSERT INTO crl_installations ({_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7) "
                    f"ON CONFLICT DO NOTHING RETURNING {_COLUMNS}",
                    *key,
                    i.position,
                    i.installed_at,
                )
                if inserted:
                    return _installation(inserted[0]), True
                rows = await conn.fetch(
                    f"UPDATE crl_installations SET installed_at = LEAST(installed_at, $6) WHERE {where} "
                    f"RETURNING {_COLUMNS}",
                    *key,
                    i.installed_at,
                )
                return _installation(rows[0]), False
        except PG_ERRORS as exc:
            raise storage_error(f"recording the installation of a CRL of {i.issuer_id} by {i.agent}", exc) from exc

    async def crl_installations(self, issuer_id: str, shard: int, position_from: int) -> list[CRLInstallation]:
        rows = await self._fetch(
            f"reading the CRL installations of {issuer_id}",
            f"SELECT {_COLUMNS} FROM crl_installations WHERE issuer_id = $1 AND shard = $2 AND position >= $3 "
            "ORDER BY installed_at, agent, position",
            issuer_id,
            shard,
            position_from,
        )
        return [_installation(r) for r in rows]

    async def crl_agents(self, issuer_id: str, shard: int, installed_from: float) -> list[str]:
        rows = await self._fetch(
            f"reading the CRL sync agents of {issuer_id}",
            "SELECT DISTINCT agent FROM crl_installations WHERE issuer_id = $1 AND shard = $2 "
            "AND installed_at >= $3 ORDER BY agent",
            issuer_id,
            shard,
            installed_from,
        )
        return [str(r["agent"]) for r in rows]

    async def prune_crl_installations(self, before: float) -> int:
        status = await self._execute(
            "pruning CRL installations", "DELETE FROM crl_installations WHERE installed_at < $1", before
        )
        return affected(status)
