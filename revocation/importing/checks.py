"""The per-certificate work of an import: read it, parse it, check who signed it.

This is the costly part (one RSA or ECDSA signature check per certificate), so it runs on
chunks of certificates, in worker processes when the caller gives a pool; everything here
takes and returns plain, picklable values.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import os
from collections.abc import Sequence
from typing import NamedTuple

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from revocation.errors import PCAError
from revocation.importing.certfiles import issued_by
from revocation.importing.fastcheck import Issuer, pem_certificate, prepare_issuer, signed_by
from revocation.importing.openssl_index import load_issued_certificate, newcerts_filename


class NewcertsFile(NamedTuple):
    """A certificate ``openssl ca`` stored in its ``new_certs_dir`` under its serial.

    A tuple: one goes to a worker process per certificate, and a tuple pickles cheaply.
    """

    certs_dir: str
    serial: int


# Where a certificate comes from: its file in newcerts/, or its DER as read from a file.
CertificateSource = NewcertsFile | bytes


class Checked(NamedTuple):
    """A certificate the issuer did sign, with what its CertificateIssued event holds.

    A tuple: a large import sends one per certificate from the worker processes back.
    """

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
def _issuer(issuer_der: bytes) -> Issuer:
    return prepare_issuer(x509.load_der_x509_certificate(issuer_der), issuer_der)


def _newcerts_der(source: NewcertsFile) -> bytes | None:
    """The DER of a newcerts file in the common case (one PEM block, text dump or not); None otherwise."""
    try:
        fd = os.open(os.path.join(source.certs_dir, newcerts_filename(source.serial)), os.O_RDONLY)
    except (OSError, PCAError):
        return None  # missing, unreadable, bad serial: load_issued_certificate says why
    try:
        chunks = []
        while block := os.read(fd, 1 << 16):
            chunks.append(block)
    except OSError:
        return None
    finally:
        os.close(fd)
    return pem_certificate(b"".join(chunks))


def _read(source: CertificateSource) -> bytes | None:
    return None if isinstance(source, bytes) else _newcerts_der(source)


def _load(source: CertificateSource, der: bytes | None) -> tuple[x509.Certificate, bytes]:
    """The certificate of ``source`` and its DER; ``der`` is what ``_read`` found in its file."""
    if isinstance(source, bytes):
        return x509.load_der_x509_certificate(source), source
    if der is not None:
        try:
            cert = x509.load_der_x509_certificate(der)
        except ValueError:
            pass  # the full read names the problem
        else:
            if cert.serial_number == source.serial:
                return cert, der
    cert = load_issued_certificate(source.certs_dir, source.serial)
    return cert, cert.public_bytes(Encoding.DER)


def check_certificate(issuer: x509.Certificate | Issuer, source: CertificateSource) -> Checked | Failed:
    """Load the certificate and check that ``issuer`` issued it (name and signature)."""
    prepared = issuer if isinstance(issuer, Issuer) else prepare_issuer(issuer, issuer.public_bytes(Encoding.DER))
    return _check(prepared, source, _read(source))


def _check(issuer: Issuer, source: CertificateSource, read: bytes | None) -> Checked | Failed:
    try:
        cert, der = _load(source, read)
        if not signed_by(cert, der, issuer):
            issued_by(cert, issuer.cert)  # the full check: its verdict, and its reason for a refusal
        if cert.serial_number <= 0:
            return Failed(f"serial {cert.serial_number} is not positive (RFC 5280 4.1.2.2)")
        return Checked(
            cert.serial_number, der, cert.subject.rfc4514_string(), cert.not_valid_before_utc, cert.not_valid_after_utc
        )
    except PCAError as exc:
        return Failed(str(exc))
    except ValueError:  # a DER that does not decode, or a field cryptography refuses (its text names parser internals)
        return Failed("not a valid certificate: its DER does not parse")


def check_chunk(issuer_der: bytes, sources: Sequence[CertificateSource]) -> list[Checked | Failed]:
    """``check_certificate`` for each of ``sources``, in order (the unit of work of a worker process)."""
    issuer = _issuer(issuer_der)
    # Every file of the chunk read first, then every check: a sixth faster than one file and its
    # check after the other (the checks run with their code and the issuer's key warm in the CPU caches).
    read = [_read(source) for source in sources]
    return [_check(issuer, source, der) for source, der in zip(sources, read, strict=True)]
