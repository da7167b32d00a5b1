"""The CRL installations relying parties' sync agents report (``InstallationLog``), on SQLite.

Migration 2 of the coordination owner makes the table; ``SQLiteCoordination`` inherits these methods.
"""

from __future__ import annotations

import dataclasses
import sqlite3
from typing import Any

from revocation.coordination import CRLInstallation, CRLPublication
from revocation.storage.sqlite.db import SQLiteDatabase

# One row per (agent, CRL); ``position`` is copied from the publication so that "installations of
# (issuer, shard) with position >= seq" is one indexed range read.
INSTALLATIONS_MIGRATION = """
    CREATE TABLE crl_installations (
        agent TEXT NOT NULL,
        issuer_id TEXT NOT NULL,
        shard INTEGER NOT NULL,
        kind TEXT NOT NULL,
        number INTEGER NOT NULL,
        position INTEGER NOT NULL,
        installed_at REAL NOT NULL,
        PRIMARY KEY (agent, issuer_id, shard, kind, number)
    );
    CREATE INDEX crl_installations_position ON crl_installations (issuer_id, shard, position);
    CREATE INDEX crl_installations_time ON crl_installations (issuer_id, shard, installed_at);
    CREATE INDEX crl_installations_age ON crl_installations (installed_at);
    """

MAX_STORED = 2**63 - 1  # a CRL number beyond an INTEGER column's range was never published by pca
_COLUMNS = "agent, issuer_id, shard, kind, number, position, installed_at"
_PUBLICATION_COLUMNS = "issuer_id, shard, kind, number, position, published_at"


def _installation(row: tuple[Any, ...]) -> CRLInstallation:
    agent, issuer_id, shard, kind, number, position, installed_at = row
    return CRLInstallation(
        str(agent), str(issuer_id), int(shard), str(kind), int(number), int(position), float(installed_at)
    )


class SQLiteInstallations:
    _db: SQLiteDatabase

    async def crl_publication(self, issuer_id: str, shard: int, kind: str, number: int) -> CRLPublication | None:
        if not 0 <= number <= MAX_STORED or not 0 <= shard <= MAX_STORED:
            return None

        def q(conn: sqlite3.Connection) -> CRLPublication | None:
            row = conn.execute(
                f"SELECT {_PUBLICATION_COLUMNS} FROM crl_publications WHERE issuer_id = ? AND shard = ? "
                "AND kind = ? AND number = ?",
                (issuer_id, shard, kind, number),
            ).fetchone()
            if row is None:
                return None
            i, s, k, n, position, published_at = row
            return CRLPublication(str(i), int(s), str(k), int(n), int(position), float(published_at))

        return await self._db.read(q)

    async def record_crl_installation(self, installation: CRLInstallation) -> tuple[CRLInstallation, bool]:
        i = installation
        key = (i.agent, i.issuer_id, i.shard, i.kind, i.number)

        def w(conn: sqlite3.Connection) -> tuple[CRLInstallation, bool]:
            # Inside the writer's transaction: nobody writes between the read and the write.
            row = conn.execute(
                f"SELECT {_COLUMNS} FROM crl_installations WHERE agent = ? AND issuer_id = ? AND shard = ? "
                "AND kind = ? AND number = ?",
                key,
            ).fetchone()
            if row is None:
                conn.execute(
                    f"INSERT INTO crl_installations ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (*key, i.position, i.installed_at),
                )
                return i, True
            stored = _installation(row)
            if i.installed_at < stored.installed_at:
                conn.execute(
                    "UPDATE crl_installations SET installed_at = ? WHERE agent = ? AND issuer_id = ? AND shard = ? "
                    "AND kind = ? AND number = ?",
                    (i.installed_at, *key),
                )
                stored = dataclasses.replace(stored, installed_at=i.installed_at)
            return stored, False

        return await self._db.write(w, durable=False)

    async def crl_installations(self, issuer_id: str, shard: int, position_from: int) -> list[CRLInstallation]:
        def q(conn: sqlite3.Connection) -> list[CRLInstallation]:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM crl_installations WHERE issuer_id = ? AND shard = ? AND position >= ? "
                "ORDER BY installed_at, agent, position",
                (issuer_id, shard, position_from),
            ).fetchall()
            return [_installation(r) for r in rows]

        return await self._db.read(q)

    async def crl_agents(self, issuer_id: str, shard: int, installed_from: float) -> list[str]:
        def q(conn: sqlite3.Connection) -> list[str]:
            rows = conn.execute(
                "SELECT DISTINCT agent FROM crl_installations WHERE issuer_id = ? AND shard = ? "
                "AND installed_at >= ? ORDER BY agent",
                (issuer_id, shard, installed_from),
            ).fetchall()
            return [str(agent) for (agent,) in rows]

        return await self._db.read(q)

    async def prune_crl_installations(self, before: float) -> int:
        def w(conn: sqlite3.Connection) -> int:
            return conn.execute("DELETE FROM crl_installations WHERE installed_at < ?", (before,)).rowcount

        return await self._db.write(w, durable=False)
