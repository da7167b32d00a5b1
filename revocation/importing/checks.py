"""The per-certificate work of an import: read it, parse it, check who signed it.

This is the costly part (one RSA or ECDSA signature check per certificate), so it runs on
chunks of certificates, in worker processes when the caller gives a pool; everything here
takes and returns plain, picklable values.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from revocation.errors import PCAError
from revocation.importing.certfiles import issued_by
from revocation.importing.openssl_index import load_issued_certificate


@dataclasses.dataclass(frozen=True)
class NewcertsFile:
    """A certificate ``openssl ca`` stored in its ``new_certs_dir`` under its serial."""

    certs_dir: str
    serial: int


# Where a certificate comes from: its file in newcerts/, or its DER as read from a file.
CertificateSource = NewcertsFile | bytes


@dataclasses.dataclass(frozen=True)
class Checked:
    """A certificate the issuer did sign, with what its CertificateIssued event holds."""

    serial: int
    der: bytes
    subject: str
    not_before: datetime.datetime
    not_after: datetime.datetime


@dataclasses.dataclass(frozen=True)
class Failed:
    """Why a certificate was not accepted (file missing, unparsable, signed by someone else)."""

    message: str


@functools.lru_cache(maxsize=8)
def _issuer(issuer_der: bytes) -> x509.Certificate:
    return x509.load_der_x509_certificate(issuer_der)


def check_certificate(issuer: x509.Certificate, source: CertificateSource) -> Checked | Failed:
    """Load the certificate and check that ``issuer`` issued it (name and signature)."""
    try:
        if isinstance(source, NewcertsFile):
            cert = load_issued_certificate(Path(source.certs_dir), source.serial)
            der = cert.public_bytes(Encoding.DER)
        else:
            der = source
            cert = x509.load_der_x509_certificate(der)
        issued_by(cert, issuer)
        if cert.serial_number <= 0:
            return Failed(f"serial {cert.serial_number} is not positive (RFC 5280 4.1.2.2)")
        return Checked(
            cert.serial_number, der, cert.subject.rfc4514_string(), cert.not_valid_before_utc, cert.not_valid_after_utc
        )
    except PCAError as exc:
        return Failed(str(exc))
    except ValueError as exc:  # a DER that does not decode, or a field cryptography refuses
        return Failed(f"not a valid certificate: {exc}")


def check_chunk(issuer_der: bytes, sources: Sequence[CertificateSource]) -> list[Checked | Failed]:
    """``check_certificate`` for each of ``sources``, in order (the unit of work of a worker process)."""
    issuer = _issuer(issuer_der)
    return [check_certificate(issuer, source) for source in sources]
