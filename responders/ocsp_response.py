"""Build pre-signed OCSP responses (RFC 6960, RFC 5019 profile) from a template.

Every certificate's response is re-signed at each refresh, so everything that
does not depend on the certificate or the time is encoded once per issuer in
:class:`ResponseTemplate`; a response is then a handful of concatenations and
one signature.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from revocation import der
from revocation.certid import subject_name_and_key
from revocation.events import REASONS
from revocation.keys import SigningKey, check_key_matches

# Unsigned OCSPResponses carrying only a responseStatus (RFC 6960 4.2.1).
MALFORMED_REQUEST = b"\x30\x03\x0a\x01\x01"
INTERNAL_ERROR = b"\x30\x03\x0a\x01\x02"
TRY_LATER = b"\x30\x03\x0a\x01\x03"
UNAUTHORIZED = b"\x30\x03\x0a\x01\x06"

REASON_CODES = REASONS  # RFC 5280 CRLReason names -> codes, defined once with the events
_VALID_REASONS = frozenset(REASON_CODES.values())

# responseStatus successful + the responseType of responseBytes.
_SUCCESSFUL = der.enumerated(0)
_BASIC_TYPE = der.oid("1.3.6.1.5.5.7.48.1.1")
_GOOD = der.implicit_primitive(0, b"")
_INVALIDITY_DATE = "2.5.29.24"

# NULL parameters, as OpenSSL and Java put them in the CertIDs they send.
_CERT_ID_HASHES = {
    "sha1": (hashlib.sha1, der.sequence(der.oid("1.3.14.3.2.26"), b"\x05\x00")),
    "sha256": (hashlib.sha256, der.sequence(der.oid("2.16.840.1.101.3.4.2.1"), b"\x05\x00")),
}


@dataclass(frozen=True, slots=True)
class CertStatus:
    serial: int
    revoked_at: datetime | None = None  # None means good
    reason: int | None = None  # CRLReason code, only when revoked
    invalidity_date: datetime | None = None  # only when revoked

    def __post_init__(self) -> None:
        if self.revoked_at is None and (self.reason is not None or self.invalidity_date is not None):
            raise ValueError(f"serial {self.serial:x}: a reason or invalidity date needs a revocation time")
        if self.reason is not None and self.reason not in _VALID_REASONS:
            raise ValueError(f"serial {self.serial:x}: {self.reason} is not a CRLReason code")


class ResponseTemplate:
    """Everything constant in the responses of one issuer and one signer."""

    def __init__(self, issuer_cert: x509.Certificate, signer_cert: x509.Certificate, signer_key: SigningKey) -> None:
        _check_signer(issuer_cert, signer_cert)
        signer_public = signer_cert.public_key()
        if not isinstance(signer_public, (ec.EllipticCurvePublicKey, rsa.RSAPublicKey)):
            raise TypeError(f"the OCSP signer has an unsupported key type {type(signer_public).__name__}")
        check_key_matches(signer_key, signer_public, "the OCSP signer")
        issuer_name, issuer_key = subject_name_and_key(issuer_cert)
        self._name_hashes: dict[str, bytes] = {}
        self._key_hashes: dict[str, bytes] = {}
        prefixes: dict[str, bytes] = {}
        for alg, (hash_fn, alg_id) in _CERT_ID_HASHES.items():
            name_hash = self._name_hashes[alg] = hash_fn(issuer_name).digest()
            key_hash = self._key_hashes[alg] = hash_fn(issuer_key).digest()
            prefixes[alg] = alg_id + der.octet_string(name_hash) + der.octet_string(key_hash)
        self._sha1_prefix = prefixes["sha1"]
        self._sha256_prefix = prefixes["sha256"]
        signer_key_hash = hashlib.sha1(subject_name_and_key(signer_cert)[1], usedforsecurity=False).digest()
        self._responder_id = der.explicit(2, der.octet_string(signer_key_hash))
        self._signature_algorithm = signer_key.signature_algorithm_der()
        self._certs = der.explicit(0, der.sequence(signer_cert.public_bytes(serialization.Encoding.DER)))
        self._key = signer_key

    def issuer_name_hash(self, alg: str) -> bytes:
        """issuerNameHash of the issuer's CertIDs for ``alg`` ("sha1" or "sha256")."""
        return self._name_hashes[_known(alg)]

    def issuer_key_hash(self, alg: str) -> bytes:
        """issuerKeyHash of the issuer's CertIDs for ``alg`` ("sha1" or "sha256")."""
        return self._key_hashes[_known(alg)]

    def tbs(self, status: CertStatus, this_update: datetime, next_update: datetime, produced_at: datetime) -> bytes:
        """The ResponseData (DER) for ``status``: what the signer signs.

        ``produced_at`` comes from the caller's clock: only whole seconds are encoded, and a caller
        that passes whole seconds (as the pre-signer does) lets the encoded time be cached.
        """
        # Shared by both SingleResponses: certStatus, thisUpdate, nextUpdate, singleExtensions.
        tail = _cert_status(status) + _validity(this_update, next_update)
        if status.invalidity_date is not None:
            invalidity = der.extension(_INVALIDITY_DATE, der.generalized_time(status.invalidity_date))
            tail += der.explicit(1, der.sequence(invalidity))
        serial = der.integer(status.serial)
        # SHA-1 first: RFC 5019 clients send SHA-1 and some read only the first response.
        responses = der.sequence(
            der.sequence(der.sequence(self._sha1_prefix + serial) + tail),
            der.sequence(der.sequence(self._sha256_prefix + serial) + tail),
        )
        return der.sequence(self._responder_id + _time(produced_at) + responses)

    def assemble(self, tbs: bytes, signature: bytes) -> bytes:
        """The complete OCSPResponse (DER) from :meth:`tbs`'s output and the signer's signature of it."""
        basic = der.sequence(tbs + self._signature_algorithm + der.bit_string(signature) + self._certs)
        return der.sequence(_SUCCESSFUL + der.explicit(0, der.sequence(_BASIC_TYPE + der.octet_string(basic))))

    def sign(self, status: CertStatus, this_update: datetime, next_update: datetime, produced_at: datetime) -> bytes:
        """A complete, signed OCSPResponse (DER) for ``status``."""
        tbs = self.tbs(status, this_update, next_update, produced_at)
        return self.assemble(tbs, self._key.sign(tbs))

    def sign_many(
        self,
        statuses: Sequence[CertStatus],
        this_update: datetime,
        next_update: datetime,
        produced_at: datetime,
    ) -> list[bytes]:
        """Signed OCSPResponses for ``statuses``, in order, with one batch call to the signing key."""
        tbs = self.tbs
        all_tbs = [tbs(status, this_update, next_update, produced_at) for status in statuses]
        assemble = self.assemble
        return [assemble(t, s) for t, s in zip(all_tbs, self._key.sign_many(all_tbs), strict=True)]


# A refresh signs every response with the same times, and encoding a time costs
# about as much as assembling the rest of the response: remember the last few.
_time = functools.lru_cache(maxsize=64)(der.generalized_time)


@functools.lru_cache(maxsize=64)
def _validity(this_update: datetime, next_update: datetime) -> bytes:
    """thisUpdate and nextUpdate of a SingleResponse."""
    this_der = der.generalized_time(this_update)
    next_der = der.generalized_time(next_update)
    # Compare what is encoded, since the times are truncated to whole seconds;
    # the fixed-width YYYYMMDDHHMMSSZ strings sort like the times they stand for.
    if next_der[2:] <= this_der[2:]:
        raise ValueError("next_update must be later than this_update")
    return this_der + der.explicit(0, next_der)


def _cert_status(status: CertStatus) -> bytes:
    if status.revoked_at is None:
        return _GOOD
    revoked = der.generalized_time(status.revoked_at)
    if status.reason is not None:
        revoked += der.explicit(0, der.enumerated(status.reason))
    return der.tlv(0xA1, revoked)


def _known(alg: str) -> str:
    if alg not in _CERT_ID_HASHES:
        raise ValueError(f"no CertIDs with hash {alg!r}; use one of {', '.join(_CERT_ID_HASHES)}")
    return alg


def _check_signer(issuer_cert: x509.Certificate, signer_cert: x509.Certificate) -> None:
    """A delegated responder must be issued by the CA and carry id-kp-OCSPSigning (RFC 6960 4.2.2.2)."""
    try:
        signer_cert.verify_directly_issued_by(issuer_cert)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise ValueError(
            f"the OCSP signer {signer_cert.subject.rfc4514_string()} is not issued by the CA: {exc}"
        ) from exc
    try:
        usages = list(signer_cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        usages = []  # cryptography 51 refuses an empty ExtendedKeyUsage, so no placeholder object
    if ExtendedKeyUsageOID.OCSP_SIGNING not in usages:
        raise ValueError(f"the OCSP signer {signer_cert.subject.rfc4514_string()} lacks the OCSPSigning EKU")
