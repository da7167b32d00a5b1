"""The status projection's reads that are the same statement on SQLite and PostgreSQL.

A backend's view subclasses ``ProjectionReads`` and gives ``_rows``, which runs a statement
written with ``?`` placeholders (``revocation.projection``'s ``SQL_*``) and returns its rows;
what differs between backends (bulk reads by key, snapshots that pair rows with the log
position, the position itself) stays in the backend's own view.
"""

from __future__ import annotations

from typing import Any

from revocation.projection import (
    ANY_SEQ,
    CERT_COLUMNS,
    SQL_CERTIFICATE,
    SQL_CERTIFICATE_DER,
    SQL_CERTIFICATES_BY_SERIAL,
    SQL_CRL_SHARDS,
    SQL_EXPIRING,
    SQL_ISSUER_CERTIFICATES,
    SQL_ISSUER_COUNTS,
    SQL_ISSUER_SIGNING_STATES,
    SQL_ISSUERS,
    SQL_NEWEST_CERTIFICATES,
    SQL_REVOKED,
    CertificateRecord,
    IssuerRecord,
    SigningState,
    cert_row,
    issuer_row,
    signing_rows,
)

# Not revoked for good: good, or on certificateHold (which may still be revoked for good, RFC 5280 5.3.1).
_UNREVOKED = "(status = 'good' OR reason = 'certificateHold')"
# Keyset pages by the primary key (issuer_id, serial): a page costs its own rows, not the issuer's.
SQL_UNREVOKED_PAGE = (
    f"SELECT {CERT_COLUMNS} FROM certificates WHERE issuer_id = ? AND serial > ? AND {_UNREVOKED} "
    "AND not_after > ? ORDER BY serial LIMIT ?"
)
SQL_REVOCATION_COUNTS = (
    "SELECT COALESCE(SUM(CASE WHEN status = 'revoked' AND reason <> 'certificateHold' THEN 1 ELSE 0 END), 0), "
    f"COALESCE(SUM(CASE WHEN {_UNREVOKED} AND not_after <= ? THEN 1 ELSE 0 END), 0), "
    f"COALESCE(SUM(CASE WHEN {_UNREVOKED} AND not_after > ? THEN 1 ELSE 0 END), 0) "
    "FROM certificates WHERE issuer_id = ?"
)


class ProjectionReads:
    async def _rows(self, sql: str, *params: Any) -> list[Any]:
        raise NotImplementedError

    async def issuers(self) -> list[IssuerRecord]:
        return [issuer_row(r) for r in await self._rows(SQL_ISSUERS)]

    async def certificates_by_serial(self, serial: int) -> list[CertificateRecord]:
        return [cert_row(r) for r in await self._rows(SQL_CERTIFICATES_BY_SERIAL, f"{serial:x}")]

    async def certificate(self, issuer_id: str, serial: int) -> CertificateRecord | None:
        rows = await self._rows(SQL_CERTIFICATE, issuer_id, f"{serial:x}")
        return cert_row(rows[0]) if rows else None

    async def certificate_der(self, issuer_id: str, serial: int) -> bytes | None:
        rows = await self._rows(SQL_CERTIFICATE_DER, issuer_id, f"{serial:x}")
        return bytes(rows[0][0]) if rows else None

    async def revoked(self, issuer_id: str) -> list[CertificateRecord]:
        """Every revoked certificate of the issuer (expired ones included)."""
        return [cert_row(r) for r in await self._rows(SQL_REVOKED, issuer_id)]

    async def issuer_certificates(self, issuer_id: str, updated_before: int | None = None) -> list[CertificateRecord]:
        before = ANY_SEQ if updated_before is None else updated_before
        return [cert_row(r) for r in await self._rows(SQL_ISSUER_CERTIFICATES, issuer_id, before)]

    async def issuer_signing_states(self, issuer_id: str, updated_before: int) -> list[SigningState]:
        return signing_rows(await self._rows(SQL_ISSUER_SIGNING_STATES, issuer_id, updated_before))

    async def issuer_counts(self, issuer_id: str) -> tuple[int, int]:
        [(total, revoked)] = await self._rows(SQL_ISSUER_COUNTS, issuer_id)
        return int(total), int(revoked)

    async def expiring_counts(self, now: int, soon: int, later: int) -> dict[str, tuple[int, int]]:
        rows = await self._rows(SQL_EXPIRING, soon, now, later)
        return {str(issuer): (int(near), int(within)) for issuer, near, within in rows}

    async def newest_certificates(self, issuer_id: str, limit: int) -> list[bytes]:
        return [bytes(r[0]) for r in await self._rows(SQL_NEWEST_CERTIFICATES, issuer_id, limit)]

    async def crl_shards(self, issuer_id: str) -> dict[int, int]:
        return {int(shard): int(not_after) for shard, not_after in await self._rows(SQL_CRL_SHARDS, issuer_id)}

    async def unrevoked_page(
        self, issuer_id: str, after: str, not_after_above: int, limit: int
    ) -> list[CertificateRecord]:
        rows = await self._rows(SQL_UNREVOKED_PAGE, issuer_id, after, not_after_above, limit)
        return [cert_row(r) for r in rows]

    async def revocation_counts(self, issuer_id: str, now: int) -> tuple[int, int, int]:
        [(revoked, expired, unexpired)] = await self._rows(SQL_REVOCATION_COUNTS, now, now, issuer_id)
        return int(revoked), int(expired), int(unexpired)
