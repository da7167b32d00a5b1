"""``Coordination`` on PostgreSQL (asyncpg): the same tables and answers as ``SQLiteCoordination``.

The tables are created by the migrations of ``COORDINATION_SCHEMA`` (the CRL installations' by the
second, in ``revocation.storage.postgres.installations``). A lease is taken or
renewed by one ``INSERT ... ON CONFLICT DO UPDATE ... WHERE``: the row lock it takes
makes concurrent claims wait and re-check the condition, so exactly one wins.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from revocation.coordination import (
    SQL_HEARTBEAT,
    CRLPublication,
    LeaseState,
    PresignedState,
    ProbeResult,
    ResponderState,
    SavedTimeline,
    earliest_applied,
    registered_responder,
    stored_time,
)
from revocation.storage.postgres.db import PG_ERRORS, affected, pg_sql, storage_error
from revocation.storage.postgres.installations import INSTALLATIONS_MIGRATION, PostgresInstallations
from revocation.storage.schema import Schema

if TYPE_CHECKING:
    import asyncpg

_PUBLICATION_COLUMNS = "issuer_id, shard, kind, number, position, published_at"


# Times are epoch seconds (DOUBLE PRECISION), as in SQLite.
COORDINATION_SCHEMA = Schema(
    "coordination",
    (
        (
            1,
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
        (2, INSTALLATIONS_MIGRATION),  # what relying parties' CRL sync agents installed
    ),
    # Migration 3 of the single schema of old made these tables.
    legacy={3: 1},
)


_HEARTBEAT = pg_sql(SQL_HEARTBEAT)
_RECORD_APPLIED = (
    "INSERT INTO responder_progress (responder_id, applied_change, applied_at) "
    "SELECT $1::text, $2::bigint, $3::double precision WHERE NOT EXISTS (SELECT 1 FROM responder_progress "
    "WHERE responder_id = $1 AND applied_change >= $2 AND applied_at <= $3)"
)


def _publication(row: Any) -> CRLPublication:
    return CRLPublication(
        str(row["issuer_id"]),
        int(row["shard"]),
        str(row["kind"]),
        int(row["number"]),
        int(row["position"]),
        float(row["published_at"]),
    )


class PostgresCoordination(PostgresInstallations):
    def __init__(self, pool: asyncpg.Pool) -> None:
        """``pool`` is an ``asyncpg.Pool`` on a database migrated by ``revocation.storage.postgres.log``."""
        self._pool = pool

    # --- leases ---

    async def try_lease(self, name: str, holder: str, ttl: float, now: float, *, replacing: str | None = None) -> bool:
        rows = await self._fetch(
            f"taking the {name} lease",
            "INSERT INTO leases AS l (name, holder, expires_at, acquired_at) VALUES ($1, $2, $3, $4) "
            "ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at, "
            "acquired_at = CASE WHEN l.holder = excluded.holder THEN l.acquired_at ELSE excluded.acquired_at END "
            "WHERE l.expires_at <= $4 OR l.holder = $2 OR l.holder = $5 "
            "RETURNING holder",
            name,
            holder,
            now + ttl,
            now,
            replacing,
        )
        return bool(rows)

    async def release_lease(self, name: str, holder: str) -> None:
        await self._execute(
            f"releasing the {name} lease", "DELETE FROM leases WHERE name = $1 AND holder = $2", name, holder
        )

    async def lease(self, name: str) -> LeaseState | None:
        rows = await self._fetch(
            f"reading the {name} lease",
            "SELECT name, holder, expires_at, acquired_at FROM leases WHERE name = $1",
            name,
        )
        if not rows:
            return None
        r = rows[0]
        return LeaseState(str(r["name"]), str(r["holder"]), float(r["expires_at"]), float(r["acquired_at"]))

    # --- responders ---

    async def heartbeat(self, responder_id: str, url: str, applied_change: int, started_at: float, now: float) -> None:
        """Upsert the responder's row (last_seen = now): ``report`` without progress."""
        await self._execute(
            f"recording the heartbeat of responder {responder_id}",
            _HEARTBEAT,
            responder_id,
            url,
            applied_change,
            started_at,
            now,
        )

    async def record_applied(self, responder_id: str, applied_change: int, applied_at: float) -> None:
        """Append one progress row, unless an existing one makes it redundant (see ``report``)."""
        await self._execute(
            f"recording the progress of responder {responder_id}",
            _RECORD_APPLIED,
            responder_id,
            applied_change,
            applied_at,
        )

    async def report(
        self,
        responder_id: str,
        url: str,
        progress: Sequence[tuple[int, float]],
        applied_change: int,
        started_at: float,
        now: float,
    ) -> None:
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                if progress:
                    await conn.executemany(_RECORD_APPLIED, [(responder_id, c, at) for c, at in progress])
                await conn.execute(_HEARTBEAT, responder_id, url, applied_change, started_at, now)
        except PG_ERRORS as exc:
            raise storage_error(f"recording the progress of responder {responder_id}", exc) from exc

    async def responders(self) -> list[ResponderState]:
        rows = await self._fetch(
            "reading the responders",
            "SELECT responder_id, url, applied_change, started_at, last_seen FROM responders ORDER BY responder_id",
        )
        return [registered_responder(r) for r in rows]

    async def first_applied(self, responder_id: str, change_id: int) -> float | None:
        rows = await self._fetch(
            f"reading the progress of responder {responder_id}",
            "SELECT MIN(applied_at) AS at FROM responder_progress WHERE responder_id = $1 AND applied_change >= $2",
            responder_id,
            change_id,
        )
        return None if not rows or rows[0]["at"] is None else float(rows[0]["at"])

    async def applied_times(self, responder_id: str, change_ids: Sequence[int]) -> dict[int, float]:
        if not change_ids:
            return {}
        rows = await self._fetch(
            f"reading the progress of responder {responder_id}",
            "SELECT applied_change, applied_at FROM responder_progress WHERE responder_id = $1 "
            "AND applied_change >= $2",
            responder_id,
            min(change_ids),
        )
        return earliest_applied(((int(r["applied_change"]), float(r["applied_at"])) for r in rows), change_ids)

    async def prune_progress(self, before: float) -> int:
        status = await self._execute(
            "pruning responder progress",
            "DELETE FROM responder_progress AS p WHERE p.applied_at < $1 AND EXISTS ("
            "SELECT 1 FROM responder_progress AS q WHERE q.responder_id = p.responder_id "
            "AND (q.applied_at, q.applied_change, q.id) > (p.applied_at, p.applied_change, p.id))",
            before,
        )
        return affected(status)

    async def forget_responder(self, responder_id: str) -> None:
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                await conn.execute("DELETE FROM responder_progress WHERE responder_id = $1", responder_id)
                await conn.execute("DELETE FROM responders WHERE responder_id = $1", responder_id)
        except PG_ERRORS as exc:
            raise storage_error(f"forgetting responder {responder_id}", exc) from exc

    # --- the tracker's inputs ---

    async def presigned(self, keys: Sequence[tuple[str, int]]) -> dict[tuple[str, int], PresignedState]:
        if not keys:
            return {}
        rows = await self._fetch(
            "reading the response store",
            "SELECT r.issuer_id, r.serial, r.status, r.source_seq, r.change_id, r.stored_at "
            "FROM ocsp_responses r JOIN unnest($1::text[], $2::text[]) AS k (issuer_id, serial) "
            "ON r.issuer_id = k.issuer_id AND r.serial = k.serial",
            [issuer_id for issuer_id, _ in keys],
            [f"{serial:x}" for _, serial in keys],
        )
        out: dict[tuple[str, int], PresignedState] = {}
        for r in rows:
            state = PresignedState(
                str(r["issuer_id"]),
                int(str(r["serial"]), 16),
                str(r["status"]),
                int(r["source_seq"]),
                int(r["change_id"]),
                stored_time(r["stored_at"]),
            )
            out[(state.issuer_id, state.serial)] = state
        return out

    async def last_change(self) -> int:
        rows = await self._fetch("reading the response store", "SELECT MAX(change_id) AS last FROM ocsp_responses")
        return 0 if not rows or rows[0]["last"] is None else int(rows[0]["last"])

    async def record_crl_publication(self, publication: CRLPublication) -> None:
        p = publication
        await self._execute(
            f"recording the publication of {p.kind} CRL {p.number} of {p.issuer_id} shard {p.shard}",
            f"INSERT INTO crl_publications ({_PUBLICATION_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6) "
            "ON CONFLICT DO NOTHING",
            p.issuer_id,
            p.shard,
            p.kind,
            p.number,
            p.position,
            p.published_at,
        )

    async def first_crl(self, issuer_id: str, shard: int, seq: int) -> CRLPublication | None:
        rows = await self._fetch(
            f"reading the CRL publications of {issuer_id}",
            f"SELECT {_PUBLICATION_COLUMNS} FROM crl_publications WHERE issuer_id = $1 AND shard = $2 "
            "AND position >= $3 ORDER BY published_at, position LIMIT 1",
            issuer_id,
            shard,
            seq,
        )
        return _publication(rows[0]) if rows else None

    async def crl_publications(self, issuer_id: str, shard: int, position_from: int) -> list[CRLPublication]:
        rows = await self._fetch(
            f"reading the CRL publications of {issuer_id}",
            f"SELECT {_PUBLICATION_COLUMNS} FROM crl_publications WHERE issuer_id = $1 AND shard = $2 "
            "AND position >= $3 ORDER BY published_at, position",
            issuer_id,
            shard,
            position_from,
        )
        return [_publication(r) for r in rows]

    async def record_probe(self, result: ProbeResult) -> None:
        r = result
        await self._execute(
            f"recording a probe of {r.issuer_id}/{r.serial:x}",
            "INSERT INTO probes (issuer_id, serial, seq, responder_url, seen_at) VALUES ($1, $2, $3, $4, $5) "
            "ON CONFLICT DO NOTHING",
            r.issuer_id,
            f"{r.serial:x}",
            r.seq,
            r.responder_url,
            r.seen_at,
        )

    async def probes(self, issuer_id: str, serial: int) -> list[ProbeResult]:
        rows = await self._fetch(
            f"reading the probes of {issuer_id}/{serial:x}",
            "SELECT seq, responder_url, seen_at FROM probes WHERE issuer_id = $1 AND serial = $2 "
            "ORDER BY seen_at, responder_url",
            issuer_id,
            f"{serial:x}",
        )
        return [
            ProbeResult(issuer_id, serial, int(r["seq"]), str(r["responder_url"]), float(r["seen_at"])) for r in rows
        ]

    async def probes_of(self, keys: Sequence[tuple[str, int]]) -> dict[tuple[str, int], list[ProbeResult]]:
        by_issuer: dict[str, list[str]] = {}
        for issuer_id, serial in keys:
            by_issuer.setdefault(issuer_id, []).append(f"{serial:x}")
        found: dict[tuple[str, int], list[ProbeResult]] = {}
        for issuer_id, serials in by_issuer.items():
            rows = await self._fetch(
                f"reading the probes of {len(serials)} certificates of {issuer_id}",
                "SELECT serial, seq, responder_url, seen_at FROM probes WHERE issuer_id = $1 "
                "AND serial = ANY($2::text[]) ORDER BY seen_at, responder_url",
                issuer_id,
                serials,
            )
            for r in rows:
                serial = int(str(r["serial"]), 16)
                probe = ProbeResult(issuer_id, serial, int(r["seq"]), str(r["responder_url"]), float(r["seen_at"]))
                found.setdefault((issuer_id, serial), []).append(probe)
        return found

    # --- finished timelines ---

    async def save_timeline(self, issuer_id: str, serial: int, seq: int, timeline: dict[str, Any]) -> None:
        await self.save_timelines([SavedTimeline(issuer_id, serial, seq, timeline)])

    async def save_timelines(self, timelines: Sequence[SavedTimeline]) -> None:
        if not timelines:
            return
        rows = [(t.issuer_id, f"{t.serial:x}", t.seq, json.dumps(t.timeline, sort_keys=True)) for t in timelines]
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                await conn.executemany(
                    "INSERT INTO propagation_timelines (issuer_id, serial, seq, timeline) VALUES ($1, $2, $3, $4) "
                    "ON CONFLICT (issuer_id, serial, seq) DO UPDATE SET timeline = excluded.timeline",
                    rows,
                )
        except PG_ERRORS as exc:
            raise storage_error(f"saving {len(rows)} propagation timelines", exc) from exc

    async def timeline(self, issuer_id: str, serial: int, seq: int) -> dict[str, Any] | None:
        rows = await self._fetch(
            f"reading the propagation timeline of {issuer_id}/{serial:x}",
            "SELECT timeline FROM propagation_timelines WHERE issuer_id = $1 AND serial = $2 AND seq = $3",
            issuer_id,
            f"{serial:x}",
            seq,
        )
        if not rows:
            return None
        loaded: dict[str, Any] = json.loads(str(rows[0]["timeline"]))
        return loaded
