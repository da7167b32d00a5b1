"""The JSON the admin API answers with for a certificate and an issuer."""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives import serialization

from revocation.clock import iso
from revocation.projection import CertificateRecord, IssuerRecord


def certificate_json(rec: CertificateRecord) -> dict[str, Any]:
    return {
        "serial": rec.serial_hex,
        "issuer": rec.issuer_id,
        "subject": rec.subject,
        "profile": rec.profile,
        "status": rec.status,
        "not_before": iso(rec.not_before),
        "not_after": iso(rec.not_after),
        "revoked_at": None if rec.revoked_at is None else iso(rec.revoked_at),
        "reason": rec.reason,
        "invalidity_date": None if rec.invalidity_date is None else iso(rec.invalidity_date),
    }


def issuer_json(rec: IssuerRecord, ocsp_url: str) -> dict[str, Any]:
    out: dict[str, Any] = {
        "issuer_id": rec.issuer_id,
        "kind": rec.kind,
        "parent_id": rec.parent_id,
        "certificate_pem": rec.cert.public_bytes(serialization.Encoding.PEM).decode(),
        "crl_url": rec.crl_url,
    }
    if rec.signer_cert is not None:  # only issuers with an OCSP signer have pre-signed OCSP responses
        out["ocsp_url"] = ocsp_url
    return out
