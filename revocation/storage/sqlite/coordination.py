"""``Coordination`` on SQLite: the same tables and answers as ``PostgresCoordination``.

Everything here is derived or operational state, not the record: it is committed
without waiting for the disk (``durable=False``).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from typing import Any

from revocation.coordination import (
    SQL_HEARTBEAT,
    CRLPublication,
    LeaseState,
    PresignedState,
    ProbeResult,
    ResponderState,
    SavedTimeline,
    earliest_applied,
    in_chunks,
    registered_responder,
    stored_time,
)
from revocation.storage.sqlite.db import Schema, SQLiteDatabase
from revocation.storage.sqlite.installations import INSTALLATIONS_MIGRATION, SQLiteInstallations

# Times are epoch seconds (REAL).
COORDINATION_SCHEMA = Schema(
    "coordination",
    (
        (
            1,
            """
            CREATE TABLE leases (
                name TEXT PRIMARY KEY,
                holder TEXT NOT NULL,
                expires_at REAL NOT NULL,
                acquired_at REAL NOT NULL
            );
            CREATE TABLE responders (
                responder_id TEXT PRIMARY KEY,
                url TEXT NOT NULL,
                applied_change INTEGER NOT NULL,
                started_at REAL NOT NULL,
                last_seen REAL NOT NULL
            );
            CREATE TABLE responder_progress (
                id INTEGER PRIMARY KEY,
                responder_id TEXT NOT NULL,
                applied_change INTEGER NOT NULL,
                applied_at REAL NOT NULL
            );
            CREATE INDEX responder_progress_change ON responder_progress (responder_id, applied_change);
            CREATE INDEX responder_progress_time ON responder_progress (applied_at);
            CREATE TABLE crl_publications (
                issuer_id TEXT NOT NULL,
                shard INTEGER NOT NULL,
                kind TEXT NOT NULL,
                number INTEGER NOT NULL,
                position INTEGER NOT NULL,
                published_at REAL NOT NULL,
                PRIMARY KEY (issuer_id, shard, kind, number)
            );
            CREATE INDEX crl_publications_position ON crl_publications (issuer_id, shard, position);
            CREATE TABLE probes (
                issuer_id TEXT NOT NULL,
                serial TEXT NOT NULL,
                seq INTEGER NOT NULL,
                responder_url TEXT NOT NULL,
                seen_at REAL NOT NULL,
                PRIMARY KEY (issuer_id, serial, seq, responder_url)
            );
            CREATE TABLE propagation_timelines (
                issuer_id TEXT NOT NULL,
                serial TEXT NOT NULL,
                seq INTEGER NOT NULL,
                timeline TEXT NOT NULL,
                PRIMARY KEY (issuer_id, serial, seq)
            );
            """,
        ),
        (2, INSTALLATIONS_MIGRATION),  # what relying parties' CRL sync agents installed
    ),
    # Migration 4 of the single schema of old made these tables.
    legacy={4: 1},
)


def _publication(row: tuple[Any, ...]) -> CRLPublication:
    issuer_id, shard, kind, number, position, published_at = row
    return CRLPublication(str(issuer_id), int(shard), str(kind), int(number), int(position), float(published_at))


def _presigned(row: tuple[Any, ...]) -> PresignedState:
    issuer_id, serial, status, source_seq, change_id, stored_at = row
    return PresignedState(
        str(issuer_id),
        int(str(serial), 16),
        str(status),
        int(source_seq),
        int(change_id),
        stored_time(stored_at),
    )


_PUBLICATION_COLUMNS = "issuer_id, shard, kind, number, position, published_at"


# A row that an existing one makes redundant (as far, or further, no later) is not stored.
SQL_RECORD_APPLIED = (
    "INSERT INTO responder_progress (responder_id, applied_change, applied_at) "
    "SELECT ?1, ?2, ?3 WHERE NOT EXISTS (SELECT 1 FROM responder_progress "
    "WHERE responder_id = ?1 AND applied_change >= ?2 AND applied_at <= ?3)"
)


class SQLiteCoordination(SQLiteInstallations):
    def __init__(self, db: SQLiteDatabase) -> None:
        self._db = db

    # --- leases ---

    async def try_lease(self, name: str, holder: str, ttl: float, now: float, *, replacing: str | None = None) -> bool:
        def w(conn: sqlite3.Connection) -> bool:
            # Inside the writer's BEGIN IMMEDIATE: no other process writes between the read and the write.
            row = conn.execute("SELECT holder, expires_at FROM leases WHERE name = ?", (name,)).fetchone()
            if row is not None and row[0] not in (holder, replacing) and float(row[1]) > now:
                return False
            conn.execute(
                "INSERT INTO leases (name, holder, expires_at, acquired_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at, "
                "acquired_at = CASE WHEN leases.holder = excluded.holder THEN leases.acquired_at "
                "ELSE excluded.acquired_at END",
                (name, holder, now + ttl, now),
            )
            return True

        return await self._db.write(w, durable=False)

    async def release_lease(self, name: str, holder: str) -> None:
        await self._db.write(
            lambda conn: conn.execute("DELETE FROM leases WHERE name = ? AND holder = ?", (name, holder)),
            durable=False,
        )

    async def lease(self, name: str) -> LeaseState | None:
        def q(conn: sqlite3.Connection) -> LeaseState | None:
            row = conn.execute(
                "SELECT name, holder, expires_at, acquired_at FROM leases WHERE name = ?", (name,)
            ).fetchone()
            return None if row is None else LeaseState(str(row[0]), str(row[1]), float(row[2]), float(row[3]))

        return await self._db.read(q)

    # --- responders ---

    async def heartbeat(self, responder_id: str, url: str, applied_change: int, started_at: float, now: float) -> None:
        """Upsert the responder's row (last_seen = now): ``report`` without progress."""
        await self._db.write(
            lambda conn: conn.execute(SQL_HEARTBEAT, (responder_id, url, applied_change, started_at, now)),
            durable=False,
        )

    async def record_applied(self, responder_id: str, applied_change: int, applied_at: float) -> None:
        """Append one progress row, unless an existing one makes it redundant (see ``report``)."""
        await self._db.write(
            lambda conn: conn.execute(SQL_RECORD_APPLIED, (responder_id, applied_change, applied_at)),
            durable=False,
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
        def w(conn: sqlite3.Connection) -> None:
            # One write for the lot: each is a turn of the single writer that revocations wait for.
            conn.executemany(SQL_RECORD_APPLIED, [(responder_id, change, at) for change, at in progress])
            conn.execute(SQL_HEARTBEAT, (responder_id, url, applied_change, started_at, now))

        await self._db.write(w, durable=False)

    async def responders(self) -> list[ResponderState]:
        def q(conn: sqlite3.Connection) -> list[ResponderState]:
            rows = conn.execute(
                "SELECT responder_id, url, applied_change, started_at, last_seen FROM responders ORDER BY responder_id"
            ).fetchall()
            return [registered_responder(r) for r in rows]

        return await self._db.read(q)

    async def first_applied(self, responder_id: str, change_id: int) -> float | None:
        def q(conn: sqlite3.Connection) -> float | None:
            row = conn.execute(
                "SELECT MIN(applied_at) FROM responder_progress WHERE responder_id = ? AND applied_change >= ?",
                (responder_id, change_id),
            ).fetchone()
            return None if row is None or row[0] is None else float(row[0])

        return await self._db.read(q)

    async def applied_times(self, responder_id: str, change_ids: Sequence[int]) -> dict[int, float]:
        if not change_ids:
            return {}

        def q(conn: sqlite3.Connection) -> list[tuple[int, float]]:
            rows = conn.execute(
                "SELECT applied_change, applied_at FROM responder_progress WHERE responder_id = ? "
                "AND applied_change >= ?",
                (responder_id, min(change_ids)),
            ).fetchall()
            return [(int(c), float(t)) for c, t in rows]

        return earliest_applied(await self._db.read(q), change_ids)

    async def prune_progress(self, before: float) -> int:
        def w(conn: sqlite3.Connection) -> int:
            cur = conn.execute(
                "DELETE FROM responder_progress AS p WHERE p.applied_at < ? AND EXISTS ("
                "SELECT 1 FROM responder_progress AS q WHERE q.responder_id = p.responder_id "
                "AND (q.applied_at, q.applied_change, q.id) > (p.applied_at, p.applied_change, p.id))",
                (before,),
            )
            return cur.rowcount

        return await self._db.write(w, durable=False)

    async def forget_responder(self, responder_id: str) -> None:
        def w(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM responder_progress WHERE responder_id = ?", (responder_id,))
            conn.execute("DELETE FROM responders WHERE responder_id = ?", (responder_id,))

        await self._db.write(w, durable=False)

    # --- the tracker's inputs ---

    async def presigned(self, keys: Sequence[tuple[str, int]]) -> dict[tuple[str, int], PresignedState]:
        columns = "issuer_id, serial, status, source_seq, change_id, stored_at"

        def q(conn: sqlite3.Connection) -> dict[tuple[str, int], PresignedState]:
            out: dict[tuple[str, int], PresignedState] = {}
            for row in _rows_for(conn, keys, f"SELECT {columns} FROM ocsp_responses", ""):
                state = _presigned(row)
                out[(state.issuer_id, state.serial)] = state
            return out

        return await self._db.read(q)

    async def last_change(self) -> int:
        def q(conn: sqlite3.Connection) -> int:
            row = conn.execute("SELECT MAX(change_id) FROM ocsp_responses").fetchone()
            return 0 if row is None or row[0] is None else int(row[0])

        return await self._db.read(q)

    async def record_crl_publication(self, publication: CRLPublication) -> None:
        p = publication
        await self._db.write(
            lambda conn: conn.execute(
                f"INSERT INTO crl_publications ({_PUBLICATION_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT DO NOTHING",
                (p.issuer_id, p.shard, p.kind, p.number, p.position, p.published_at),
            ),
            durable=False,
        )

    async def first_crl(self, issuer_id: str, shard: int, seq: int) -> CRLPublication | None:
        def q(conn: sqlite3.Connection) -> CRLPublication | None:
            row = conn.execute(
                f"SELECT {_PUBLICATION_COLUMNS} FROM crl_publications WHERE issuer_id = ? AND shard = ? "
                "AND position >= ? ORDER BY published_at, position LIMIT 1",
                (issuer_id, shard, seq),
            ).fetchone()
            return None if row is None else _publication(row)

        return await self._db.read(q)

    async def crl_publications(self, issuer_id: str, shard: int, position_from: int) -> list[CRLPublication]:
        def q(conn: sqlite3.Connection) -> list[CRLPublication]:
            rows = conn.execute(
                f"SELECT {_PUBLICATION_COLUMNS} FROM crl_publications WHERE issuer_id = ? AND shard = ? "
                "AND position >= ? ORDER BY published_at, position",
                (issuer_id, shard, position_from),
            ).fetchall()
            return [_publication(r) for r in rows]

        return await self._db.read(q)

    async def record_probe(self, result: ProbeResult) -> None:
        r = result
        await self._db.write(
            lambda conn: conn.execute(
                "INSERT INTO probes (issuer_id, serial, seq, responder_url, seen_at) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT DO NOTHING",
                (r.issuer_id, f"{r.serial:x}", r.seq, r.responder_url, r.seen_at),
            ),
            durable=False,
        )

    async def probes(self, issuer_id: str, serial: int) -> list[ProbeResult]:
        def q(conn: sqlite3.Connection) -> list[ProbeResult]:
            rows = conn.execute(
                "SELECT seq, responder_url, seen_at FROM probes WHERE issuer_id = ? AND serial = ? "
                "ORDER BY seen_at, responder_url",
                (issuer_id, f"{serial:x}"),
            ).fetchall()
            return [ProbeResult(issuer_id, serial, int(seq), str(url), float(at)) for seq, url, at in rows]

        return await self._db.read(q)

    async def probes_of(self, keys: Sequence[tuple[str, int]]) -> dict[tuple[str, int], list[ProbeResult]]:
        def q(conn: sqlite3.Connection) -> dict[tuple[str, int], list[ProbeResult]]:
            found: dict[tuple[str, int], list[ProbeResult]] = {}
            sql = "SELECT issuer_id, serial, seq, responder_url, seen_at FROM probes"
            for issuer_id, serial_hex, seq, url, at in _rows_for(conn, keys, sql, "ORDER BY seen_at, responder_url"):
                serial = int(serial_hex, 16)
                probe = ProbeResult(issuer_id, serial, int(seq), str(url), float(at))
                found.setdefault((issuer_id, serial), []).append(probe)
            return found

        return await self._db.read(q) if keys else {}

    # --- finished timelines ---

    async def save_timeline(self, issuer_id: str, serial: int, seq: int, timeline: dict[str, Any]) -> None:
        await self.save_timelines([SavedTimeline(issuer_id, serial, seq, timeline)])

    async def save_timelines(self, timelines: Sequence[SavedTimeline]) -> None:
        if not timelines:
            return
        rows = [(t.issuer_id, f"{t.serial:x}", t.seq, json.dumps(t.timeline, sort_keys=True)) for t in timelines]
        await self._db.write(
            lambda conn: conn.executemany(
                "INSERT INTO propagation_timelines (issuer_id, serial, seq, timeline) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (issuer_id, serial, seq) DO UPDATE SET timeline = excluded.timeline",
                rows,
            ),
            durable=False,
        )

    async def timeline(self, issuer_id: str, serial: int, seq: int) -> dict[str, Any] | None:
        def q(conn: sqlite3.Connection) -> dict[str, Any] | None:
            row = conn.execute(
                "SELECT timeline FROM propagation_timelines WHERE issuer_id = ? AND serial = ? AND seq = ?",
                (issuer_id, f"{serial:x}", seq),
            ).fetchone()
            if row is None:
                return None
            loaded: dict[str, Any] = json.loads(str(row[0]))
            return loaded

        return await self._db.read(q)


def _rows_for(conn: sqlite3.Connection, keys: Sequence[tuple[str, int]], select: str, order: str) -> list[Any]:
    """Rows of ``select`` (whose table has ``issuer_id`` and hex ``serial`` columns) for these
    (issuer, serial) keys: one query per issuer and chunk of serials, within SQLite's variable limit."""
    by_issuer: dict[str, list[str]] = {}
    for issuer_id, serial in keys:
        by_issuer.setdefault(issuer_id, []).append(f"{serial:x}")
    rows: list[Any] = []
    for issuer_id, serials in by_issuer.items():
        for chunk in in_chunks(serials):
            marks = ",".join("?" * len(chunk))
            sql = f"{select} WHERE issuer_id = ? AND serial IN ({marks}) {order}"
            rows.extend(conn.execute(sql, (issuer_id, *chunk)).fetchall())
    return rows
