"""Whether an issuer's own CA certificate still stands: not expired, not revoked by the CA above it.

An issuing CA's certificate is recorded as a certificate of its parent (pca's own intermediate under
the root, with profile ``ca``; an external CA's intermediate under the external root it was imported
with). Revoking it is an admin-only operation of its own (``POST /v1/issuers/{id}/revoke``): the
parent's CRL and OCSP then list it, issuance under it stops with a clear error, and ``/healthz``
names it. Read by the authority (issuing, revoking), the recorder API and the health report.
"""

from __future__ import annotations

import datetime
from typing import Protocol

from cryptography import x509

from revocation.clock import iso
from revocation.errors import ConflictError, NotFoundError, ValidationError
from revocation.projection import CertificateLookup, CertificateRecord, IssuerRecord, RecordedCertificates


class CAStatusView(CertificateLookup, RecordedCertificates, Protocol):
    """What finding a CA certificate's record and telling a CA certificate from a leaf read."""


def is_self_signed(cert: x509.Certificate) -> bool:
    return cert.issuer == cert.subject


def is_ca_certificate(der: bytes) -> bool:
    """True when the DER is a certificate with basicConstraints CA:TRUE."""
    try:
        cert = x509.load_der_x509_certificate(der)
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except (ValueError, x509.ExtensionNotFound):
        return False


def parents_of(issuer: IssuerRecord, issuers: list[IssuerRecord]) -> list[IssuerRecord]:
    """The recorded issuers that may have issued ``issuer``'s certificate: its parent, or any issuer of that name."""
    if is_self_signed(issuer.cert):
        return []
    return [
        other
        for other in issuers
        if other.issuer_id != issuer.issuer_id
        and (other.issuer_id == issuer.parent_id or other.cert.subject == issuer.cert.issuer)
    ]


async def ca_record(
    view: CertificateLookup, issuer: IssuerRecord, issuers: list[IssuerRecord]
) -> CertificateRecord | None:
    """The record of ``issuer``'s own certificate under its parent; None for a root or an unrecorded CA."""
    parents = {p.issuer_id for p in parents_of(issuer, issuers)}
    if not parents:
        return None
    for rec in await view.certificates_by_serial(issuer.cert.serial_number):
        if rec.issuer_id in parents:
            return rec
    return None


async def own_certificate(view: CertificateLookup, issuer_id: str) -> CertificateRecord:
    """The record of issuer ``issuer_id``'s own CA certificate; NotFound or Validation errors say why there is none."""
    issuers = await view.issuers()
    issuer = next((i for i in issuers if i.issuer_id == issuer_id), None)
    if issuer is None:
        raise NotFoundError(f"unknown issuer {issuer_id!r}")
    if is_self_signed(issuer.cert):
        raise ValidationError(
            f"issuer {issuer_id} is a self-signed root: no CA above it can revoke it; remove it from the "
            "relying parties' trust stores instead"
        )
    rec = await ca_record(view, issuer, issuers)
    if rec is None:
        raise NotFoundError(
            f"the CA certificate of issuer {issuer_id} (serial {issuer.cert.serial_number:x}) is not recorded "
            "under any issuer pca knows: register the CA that issued it and import the certificate there first"
        )
    return rec


def issuer_of_record(rec: CertificateRecord, issuers: list[IssuerRecord]) -> IssuerRecord | None:
    """The issuer whose CA certificate ``rec`` is, if it is one pca knows as an issuer."""
    for issuer in issuers:
        if issuer.cert.serial_number == rec.serial and rec.issuer_id in {
            p.issuer_id for p in parents_of(issuer, issuers)
        }:
            return issuer
    return None


def ca_problem(issuer: IssuerRecord, rec: CertificateRecord | None, now: datetime.datetime) -> str | None:
    """Why ``issuer`` may issue nothing more (its certificate expired or revoked), or None."""
    not_after = issuer.cert.not_valid_after_utc
    if not_after <= now:
        return f"the CA certificate of issuer {issuer.issuer_id} expired at {iso(not_after)}"
    if rec is not None and rec.status == "revoked":
        when = "" if rec.revoked_at is None else f" at {iso(rec.revoked_at)}"
        return (
            f"the CA certificate of issuer {issuer.issuer_id} (serial {rec.serial_hex}) was revoked by "
            f"{rec.issuer_id}{when}, reason {rec.reason}"
        )
    return None


async def issuer_problem(view: CertificateLookup, issuer: IssuerRecord, now: datetime.datetime) -> str | None:
    issuers = await view.issuers()
    return ca_problem(issuer, await ca_record(view, issuer, issuers), now)


async def ca_standing(view: CertificateLookup, now: datetime.datetime) -> tuple[dict[str, str], dict[str, str]]:
    """issuer id -> why its CA certificate no longer stands (expired or revoked), for every issuer with such
    a problem; and for each of those whose certificate was revoked, the issuer that replaced it: another CA
    certificate from the same parent CA that stands (``pca issuer create`` after a CA key compromise,
    docs/runbooks.md). A revoked CA that was replaced is history, not an outage."""
    issuers = await view.issuers()
    problems, revoked = {}, set()
    for issuer in issuers:
        rec = await ca_record(view, issuer, issuers)
        problem = ca_problem(issuer, rec, now)
        if problem is not None:
            problems[issuer.issuer_id] = problem
            if rec is not None and rec.status == "revoked" and issuer.cert.not_valid_after_utc > now:
                revoked.add(issuer.issuer_id)
    replaced = {}
    for issuer in issuers:
        if issuer.issuer_id not in revoked:
            continue
        for other in issuers:
            standing = other.issuer_id not in problems and not is_self_signed(other.cert)
            if standing and other.key_ref is not None and other.cert.issuer == issuer.cert.issuer:
                replaced[issuer.issuer_id] = other.issuer_id
                break
    return problems, replaced


class CACertificateError(ConflictError):
    """A CA certificate asked to be revoked by the route for leaves: that takes the explicit operation."""

    def __init__(self, serial_hex: str, issuer_id: str | None, action: str = "revoke") -> None:
        self.issuer_id = issuer_id
        where = (
            f"POST /v1/issuers/{issuer_id}/{action}"
            if issuer_id is not None
            else f"POST /v1/issuers/{{id}}/{action} (register the CA as an issuer first)"
        )
        what = f"the CA certificate of issuer {issuer_id}" if issuer_id is not None else "a CA certificate"
        super().__init__(
            f"certificate {serial_hex} is {what}; changing a CA's status is an admin-only operation of its own: {where}"
        )
