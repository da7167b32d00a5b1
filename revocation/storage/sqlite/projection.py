"""The certificate-status projection on SQLite: applying events and reading it back.

The statements and the decisions are shared with PostgreSQL (``revocation.projection``);
``SQLiteEventLog`` calls ``apply_sqlite`` inside its append transaction, ``SQLiteStatusView`` reads.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from revocation.errors import IntegrityError
from revocation.eventlog import RecordedEvent
from revocation.events import DomainEvent
from revocation.projection import (
    CERT_COLUMNS,
    CRL_COLUMNS,
    RECORDED_COLUMNS,
    SIGNING_COLUMNS,
    SQL_CRL_CHANGES,
    SQL_CRL_REVOKED,
    SQL_POSITION,
    SQL_REVOKED,
    CertificateRecord,
    CRLRecord,
    ProjectionStep,
    RecordedCertificate,
    SigningState,
    cert_row,
    crl_rows,
    projection_step,
    recorded_rows,
    signing_rows,
)
from revocation.storage.reads import ProjectionReads
from revocation.storage.sqlite.db import Schema, SQLiteDatabase

PROJECTION_SCHEMA = Schema(
    "projection",
    (
        (
            1,
            """
            CREATE TABLE issuers (
                issuer_id TEXT PRIMARY KEY,
                kind TEXT NOT NULL,
                parent_id TEXT,
                cert_der BLOB NOT NULL,
                key_ref TEXT,
                crl_url TEXT NOT NULL,
                signer_cert_der BLOB,
                signer_key_ref TEXT,
                signer_not_after INTEGER,
                version INTEGER NOT NULL,
                updated_seq INTEGER NOT NULL
            );
            CREATE TABLE certificates (
                issuer_id TEXT NOT NULL,
                serial TEXT NOT NULL,
                status TEXT NOT NULL,
                subject TEXT NOT NULL,
                profile TEXT NOT NULL,
                not_before INTEGER NOT NULL,
                not_after INTEGER NOT NULL,
                cert_der BLOB NOT NULL,
                revoked_at INTEGER,
                reason TEXT,
                invalidity_date INTEGER,
                version INTEGER NOT NULL,
                updated_seq INTEGER NOT NULL,
                PRIMARY KEY (issuer_id, serial)
            );
            CREATE INDEX certificates_serial ON certificates (serial);
            CREATE INDEX certificates_status ON certificates (issuer_id, status);
            """,
        ),
        (
            2,
            # CRL shards and delta CRLs. crl_shard is the shard named by the CRL distribution point the
            # certificate carries (revocation.crl_layout); every certificate recorded before this was in
            # its issuer's unsharded CRL, shard 0. The partial indexes hold only certificates that were
            # ever revoked, so issuance pays nothing for them and a delta reads only what changed.
            """
            ALTER TABLE certificates ADD COLUMN crl_shard INTEGER NOT NULL DEFAULT 0;
            CREATE INDEX certificates_crl_revoked ON certificates (issuer_id, crl_shard) WHERE status = 'revoked';
            CREATE INDEX certificates_crl_changes ON certificates (issuer_id, crl_shard, updated_seq) WHERE version > 1;
            """,
        ),
        (
            3,
            # The single schema of old also made crl_state, which nothing ever read or wrote.
            "DROP TABLE IF EXISTS crl_state",
        ),
        (
            4,
            # External issuers (``pca issuer add``): the OCSP signer key waiting for its certificate, and its CSR.
            """
            ALTER TABLE issuers ADD COLUMN pending_signer_key_ref TEXT;
            ALTER TABLE issuers ADD COLUMN pending_signer_csr_der BLOB;
            """,
        ),
        (
            5,
            # certificates_expiring (pca.metrics): the unrevoked certificates by notAfter, so counting those
            # near expiry reads the window alone, not the table (1,000,000 certificates: 16 ms, not 1 s).
            "CREATE INDEX certificates_expiry ON certificates (not_after, issuer_id) WHERE status = 'good'",
        ),
    ),
    # Migrations 1 and 2 of the single schema of old made these tables.
    legacy={1: 1, 2: 2},
)

_IN_CHUNK = 500  # bound parameters per IN (...) query


def apply_sqlite(conn: sqlite3.Connection, applied: Iterable[tuple[RecordedEvent, DomainEvent]]) -> None:
    """Apply recorded events, in order, to the projection tables (inside the append transaction).

    Runs of statements that need no row-count check (issuances, mostly) go through one
    ``executemany``; a guarded update runs alone and raises IntegrityError when the event does
    not follow the stored state (as ``apply_pg`` does on PostgreSQL).
    """
    batch: list[ProjectionStep] = []
    for rec, event in applied:
        step = projection_step(rec, event)
        if step is None:
            continue
        if step.unless_one_row is None:
            if batch and batch[0].sql != step.sql:
                conn.executemany(batch[0].sql, [b.params for b in batch])
                batch.clear()
            batch.append(step)
            continue
        if batch:
            conn.executemany(batch[0].sql, [b.params for b in batch])
            batch.clear()
        if conn.execute(step.sql, step.params).rowcount != 1:
            raise IntegrityError(step.unless_one_row, rec.seq)
    if batch:
        conn.executemany(batch[0].sql, [b.params for b in batch])


def clear_sqlite(conn: sqlite3.Connection) -> None:
    """Empty the projection tables (inside the rebuild transaction, before the log is replayed)."""
    conn.execute("DELETE FROM certificates")
    conn.execute("DELETE FROM issuers")


def _in_chunks(conn: sqlite3.Connection, columns: str, keys: Sequence[tuple[str, int]]) -> Iterator[tuple[Any, ...]]:
    """Rows of ``columns`` of the certificates named by (issuer_id, serial) ``keys``, read by chunks."""
    by_issuer: dict[str, list[str]] = {}
    for issuer_id, serial in keys:
        by_issuer.setdefault(issuer_id, []).append(f"{serial:x}")
    for issuer_id, serials in by_issuer.items():
        for first in range(0, len(serials), _IN_CHUNK):
            chunk = serials[first : first + _IN_CHUNK]
            marks = ",".join("?" * len(chunk))
            yield from conn.execute(
                f"SELECT {columns} FROM certificates WHERE issuer_id = ? AND serial IN ({marks})", (issuer_id, *chunk)
            )


def _position(conn: sqlite3.Connection) -> int:
    row = conn.execute(SQL_POSITION).fetchone()
    return 0 if row is None else int(row[0])


def _snapshot(conn: sqlite3.Connection, sql: str, params: tuple[object, ...]) -> tuple[int, list[tuple[Any, ...]]]:
    # One read transaction, so the position and the rows agree.
    conn.execute("BEGIN")
    try:
        position = _position(conn)
        rows = conn.execute(sql, params).fetchall()
    finally:
        conn.execute("COMMIT")
    return position, rows


def _crl_snapshot(conn: sqlite3.Connection, sql: str, params: tuple[object, ...]) -> tuple[int, list[CRLRecord]]:
    """``_snapshot`` converted to CRLRecords in the reader's thread: a million rows take seconds to
    convert, which on the event loop would stall every request the process serves meanwhile."""
    position, rows = _snapshot(conn, sql, params)
    return position, crl_rows(rows)


class SQLiteStatusView(ProjectionReads):
    def __init__(self, db: SQLiteDatabase) -> None:
        self._db = db

    async def _rows(self, sql: str, *params: Any) -> list[Any]:
        return await self._db.read(lambda conn: conn.execute(sql, params).fetchall())

    async def position(self) -> int:
        """The seq of the last event applied to the projection."""
        return await self._db.read(_position)

    async def certificates_many(self, keys: Sequence[tuple[str, int]]) -> list[CertificateRecord]:
        """The records for (issuer_id, serial) keys that exist, in one read."""
        return await self._db.read(lambda conn: [cert_row(r) for r in _in_chunks(conn, CERT_COLUMNS, keys)])

    async def revoked_snapshot(self, issuer_id: str) -> tuple[int, list[CertificateRecord]]:
        """The log position and the issuer's revoked certificates as of that position, read together."""

        def q(conn: sqlite3.Connection) -> tuple[int, list[CertificateRecord]]:
            position, rows = _snapshot(conn, SQL_REVOKED, (issuer_id,))
            return position, [cert_row(r) for r in rows]

        return await self._db.read_bulk(q)

    async def crl_revoked(self, issuer_id: str, shard: int) -> tuple[int, list[CRLRecord]]:
        return await self._db.read_bulk(lambda conn: _crl_snapshot(conn, SQL_CRL_REVOKED, (issuer_id, shard)))

    async def crl_changes(self, issuer_id: str, shard: int, after: int) -> tuple[int, list[CRLRecord]]:
        return await self._db.read(lambda conn: _crl_snapshot(conn, SQL_CRL_CHANGES, (issuer_id, shard, after)))

    async def crl_records(self, issuer_id: str, serials: Sequence[int]) -> list[CRLRecord]:
        keys = [(issuer_id, serial) for serial in serials]
        return await self._db.read(lambda conn: crl_rows(_in_chunks(conn, CRL_COLUMNS, keys)))

    async def signing_states(self, keys: Sequence[tuple[str, int]]) -> list[SigningState]:
        return await self._db.read(lambda conn: signing_rows(_in_chunks(conn, SIGNING_COLUMNS, keys)))

    async def recorded_certificates(self, issuer_id: str, serials: Sequence[int]) -> list[RecordedCertificate]:
        keys = [(issuer_id, serial) for serial in serials]
        return await self._db.read(lambda conn: recorded_rows(_in_chunks(conn, RECORDED_COLUMNS, keys)))
