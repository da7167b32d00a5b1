"""Parse an OCSP request (RFC 6960 section 4.1) into the one CertID we answer.

This runs once per incoming request, so it leans on cryptography's Rust parser
and does nothing else that costs: the answer is looked up by the caller from
pre-signed responses keyed by these fields.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.x509 import ocsp
from cryptography.x509.oid import OCSPExtensionOID

from revocation import der

# Hash algorithm name -> digest size. SHA-224 is parsed by cryptography but no
# client sends it and we pre-sign no CertIDs with it, so it is refused here.
_DIGEST_SIZES = {"sha1": 20, "sha256": 32, "sha384": 48, "sha512": 64}
_NONCE = OCSPExtensionOID.NONCE


class MalformedRequest(ValueError):
    """The request cannot be answered; the message says why."""


@dataclass(frozen=True, slots=True)
class CertIDRequest:
    hash_algorithm: str
    issuer_name_hash: bytes
    issuer_key_hash: bytes
    serial: int
    has_nonce: bool


def parse_request(data: bytes) -> CertIDRequest:
    """Parse DER ``data``; raises only :class:`MalformedRequest`.

    A signed request is accepted and its signature ignored: the answer is the
    same public, pre-signed response whoever asks.
    """
    try:
        request = ocsp.load_der_ocsp_request(data)
        # hash_algorithm and extensions are decoded lazily, so they can fail too.
        algorithm = request.hash_algorithm.name
        name_hash = request.issuer_name_hash
        key_hash = request.issuer_key_hash
        serial = request.serial_number
        has_nonce = any(ext.oid == _NONCE for ext in request.extensions)
    except NotImplementedError as exc:
        # cryptography says "more than one request" for zero CertIDs as well.
        raise MalformedRequest(_count_message(data)) from exc
    except Exception as exc:  # the parser's error types are no stable API: refuse them all
        raise MalformedRequest(f"invalid OCSP request: {exc}") from exc
    size = _DIGEST_SIZES.get(algorithm)
    if size is None:
        raise MalformedRequest(f"unsupported CertID hash algorithm {algorithm}")
    if len(name_hash) != size or len(key_hash) != size:
        raise MalformedRequest(f"CertID hashes do not have the length of {algorithm} ({size} bytes)")
    return CertIDRequest(algorithm, name_hash, key_hash, serial, has_nonce)


def _count_message(data: bytes) -> str:
    """Explain a request cryptography refused for its number of CertIDs."""
    if _count_cert_ids(data) == 0:
        return "the request contains no CertID"
    return "requests with more than one CertID are not supported"


def _count_cert_ids(data: bytes) -> int | None:
    """Number of entries in requestList, or None if the DER cannot be walked."""
    try:
        _, request_start, _ = der.split_tlv(data)  # OCSPRequest
        _, field, tbs_end = der.split_tlv(data, request_start)  # TBSRequest
        tag, item, list_end = der.split_tlv(data, field)
        while tag in (0xA0, 0xA1):  # skip version and requestorName
            tag, item, list_end = der.split_tlv(data, list_end)
        count = 0
        while item < list_end:
            item = der.split_tlv(data, item)[2]
            count += 1
    except ValueError:
        return None
    return count if list_end <= tbs_end else None
