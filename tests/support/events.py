"""Event factories for the event log, projection and propagation tests.

The log and the projection never parse the certificate DER, so ``issued`` puts a stub in by
default; a test that needs a real certificate (its CRL shard) passes ``cert_der_hex``.
"""

from __future__ import annotations

import datetime

from revocation.eventlog import NewEvent
from revocation.events import CertificateIssued, CertificateRevoked, DomainEvent

T0 = datetime.datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=datetime.UTC)
ISSUER = "test-ca"


def issued(
    serial: int,
    issuer: str = ISSUER,
    *,
    subject: str | None = None,
    not_before: datetime.datetime = T0,
    not_after: datetime.datetime = T0 + datetime.timedelta(days=90),
    cert_der_hex: str = "3000",
) -> CertificateIssued:
    """A CertificateIssued event for ``serial`` (subject ``CN=svc-<serial in hex>`` unless given)."""
    return CertificateIssued(
        issuer_id=issuer,
        serial=f"{serial:x}",
        subject=f"CN=svc-{serial:x}" if subject is None else subject,
        not_before=not_before,
        not_after=not_after,
        cert_der_hex=cert_der_hex,
        profile="server",
    )


def revoked(
    serial: int,
    reason: str = "keyCompromise",
    issuer: str = ISSUER,
    *,
    revoked_at: datetime.datetime = T0,
    invalidity: datetime.datetime | None = None,
) -> CertificateRevoked:
    return CertificateRevoked(
        issuer_id=issuer, serial=f"{serial:x}", reason=reason, revoked_at=revoked_at, invalidity_date=invalidity
    )


def new(event: DomainEvent, expected_version: int = 0, actor: str = "tester", request_id: str = "req-1") -> NewEvent:
    return NewEvent(event, expected_version, actor, request_id)
