"""The cheap way through the checks of an import, for the common case; the full way for anything else.

An import checks every certificate's signature against its issuer. ``verify_directly_issued_by``
does that exactly, but it costs a third more than the RSA verification it contains, and reading
``openssl ca``'s newcerts files through ``load_pem_x509_certificate`` and back to DER costs a
third of that again. This module does the same checks with less around them, and only when it can
tell that the answer is the same:

- ``pem_certificate``: the DER of a file holding exactly one PEM block, a ``CERTIFICATE`` whose
  body is strict base64 (the text dump ``openssl ca`` writes before it is skipped, as the PEM
  parser skips it); None for anything else, and the caller reads the file the usual way.
- ``signed_by``: True when the certificate's issuer name is byte for byte the issuer's subject,
  its inner and outer signature algorithms are byte for byte the same, the algorithm is RSA
  PKCS#1 v1.5 with a SHA-2 hash, and the signature verifies with the issuer's RSA key. False
  means "not shown this way": the caller then runs the full check, which gives the verdict and
  its reason. Equal bytes mean equal parsed values, so nothing passes here that the full check
  (names and algorithms compared parsed) would refuse.
"""

from __future__ import annotations

import binascii
import dataclasses
from typing import NamedTuple

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import SignatureAlgorithmOID

_BEGIN = b"-----BEGIN "
_BEGIN_CERTIFICATE = b"-----BEGIN CERTIFICATE-----"
_END_CERTIFICATE = b"-----END CERTIFICATE-----"

# RSA PKCS#1 v1.5 signatures and their hashes: what the RSA verification below checks exactly.
_RSA_PKCS1: dict[x509.ObjectIdentifier, type[hashes.HashAlgorithm]] = {
    SignatureAlgorithmOID.RSA_WITH_SHA224: hashes.SHA224,
    SignatureAlgorithmOID.RSA_WITH_SHA256: hashes.SHA256,
    SignatureAlgorithmOID.RSA_WITH_SHA384: hashes.SHA384,
    SignatureAlgorithmOID.RSA_WITH_SHA512: hashes.SHA512,
}
_PKCS1 = padding.PKCS1v15()


def pem_certificate(data: bytes) -> bytes | None:
    """The DER of the one PEM certificate block in ``data``, or None when it is not that simple."""
    start = data.find(_BEGIN_CERTIFICATE)
    if start < 0 or data.find(_BEGIN, start + 1) >= 0 or data.rfind(_BEGIN, 0, start) >= 0:
        return None
    body = start + len(_BEGIN_CERTIFICATE)
    end = data.find(_END_CERTIFICATE, body)
    if end < 0 or data[body : body + 1] not in (b"\n", b"\r") or data[end - 1 : end] != b"\n":
        return None  # the body not on lines of its own: framing the full reader judges
    text = data[body:end].replace(b"\r\n", b"").replace(b"\n", b"")
    try:
        return binascii.a2b_base64(text, strict_mode=True)
    except binascii.Error:
        return None


def _tlv(der: bytes, at: int) -> tuple[int, int]:
    """(start of the contents, end) of the DER element at ``at``; ValueError when it does not fit."""
    length = der[at + 1]
    contents = at + 2
    if length & 0x80:
        count = length & 0x7F
        if not 0 < count <= 4:
            raise ValueError("unsupported DER length")
        length = int.from_bytes(der[contents : contents + count], "big")
        contents += count
    end = contents + length
    if end > len(der):
        raise ValueError("DER element overruns its container")
    return contents, end


class _Parts(NamedTuple):
    """A certificate's DER cut where the checks need it."""

    tbs: bytes  # the signed part, tbsCertificate
    inner_algorithm: bytes  # tbsCertificate.signature
    issuer: bytes
    subject: bytes
    outer_algorithm: bytes  # signatureAlgorithm
    signature: bytes | None  # signatureValue's bits; None when not whole bytes


def _parts(der: bytes) -> _Parts:
    """Cut a certificate's DER (already parsed by cryptography, so well formed) into ``_Parts``."""
    tbs_at, _ = _tlv(der, 0)  # Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm, signatureValue }
    at, tbs_end = _tlv(der, tbs_at)
    fields: list[bytes] = []
    while at < tbs_end and len(fields) < 6:
        _, end = _tlv(der, at)
        fields.append(der[at:end])
        at = end
    if fields and fields[0][:1] == b"\xa0":  # [0] version
        fields.pop(0)
    # serialNumber, signature, issuer, validity, subject
    if len(fields) < 5:
        raise ValueError("short TBSCertificate")
    _, outer_end = _tlv(der, tbs_end)
    bits_at, bits_end = _tlv(der, outer_end)
    signature = der[bits_at + 1 : bits_end] if der[outer_end] == 0x03 and der[bits_at] == 0 else None
    return _Parts(der[tbs_at:tbs_end], fields[1], fields[2], fields[4], der[tbs_end:outer_end], signature)


@dataclasses.dataclass(frozen=True)
class Issuer:
    """An issuer prepared for ``signed_by``: its certificate, RSA key (if RSA) and subject as DER."""

    cert: x509.Certificate
    rsa_key: rsa.RSAPublicKey | None
    subject_der: bytes | None


def prepare_issuer(cert: x509.Certificate, der: bytes) -> Issuer:
    key = cert.public_key()
    try:
        subject = _parts(der).subject
    except (ValueError, IndexError):
        subject = None
    return Issuer(cert, key if isinstance(key, rsa.RSAPublicKey) else None, subject)


def signed_by(cert: x509.Certificate, der: bytes, issuer: Issuer) -> bool:
    """True when ``issuer`` issued ``cert`` (whose DER is ``der``) as shown above; False: not shown so."""
    if issuer.rsa_key is None or issuer.subject_der is None:
        return False
    hash_type = _RSA_PKCS1.get(cert.signature_algorithm_oid)
    if hash_type is None:
        return False
    try:
        parts = _parts(der)
    except (ValueError, IndexError):
        return False
    if parts.inner_algorithm != parts.outer_algorithm or parts.issuer != issuer.subject_der or parts.signature is None:
        return False
    try:
        issuer.rsa_key.verify(parts.signature, parts.tbs, _PKCS1, hash_type())
    except InvalidSignature:
        return False
    return True
