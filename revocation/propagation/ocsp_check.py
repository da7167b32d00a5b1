"""What the prober sends a responder and how it judges the answer, as a TLS client would.

The request names the certificate by the SHA-1 CertID of RFC 5019, computed by
``revocation.certid`` like the responders' index; an answer counts only when it
says "revoked" for that CertID and is signed by the issuer or by an OCSP signer it
delegated to.
"""

from __future__ import annotations

import contextlib
import dataclasses

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID

from revocation.certid import certid_hashes
from revocation.keys import PublicKey, verify_signature


@dataclasses.dataclass(frozen=True)
class ProbedIssuer:
    """An issuer as the prober asks about its certificates: its certificate and its CertID hashes."""

    cert: x509.Certificate
    name_hash: bytes
    key_hash: bytes
    ocsp: bool  # has an OCSP signer, so its certificates are answered by the responders

    @classmethod
    def of(cls, cert: x509.Certificate, *, ocsp: bool) -> ProbedIssuer:
        return cls(cert, *sha1_cert_id_hashes(cert), ocsp)

    def request(self, serial: int) -> bytes:
        return request_der(self.name_hash, self.key_hash, serial)


def sha1_cert_id_hashes(issuer_cert: x509.Certificate) -> tuple[bytes, bytes]:
    """SHA-1 issuerNameHash and issuerKeyHash, the CertID RFC 5019 clients send; no leaf needed."""
    return certid_hashes(issuer_cert, ("sha1",))["sha1"]


def ocsp_request_der(issuer_cert: x509.Certificate, serial: int) -> bytes:
    """A one-CertID OCSP request for ``serial``: SHA-1 and no nonce, what RFC 5019 clients send."""
    return request_der(*sha1_cert_id_hashes(issuer_cert), serial)


def request_der(name_hash: bytes, key_hash: bytes, serial: int) -> bytes:
    """The DER OCSP request for one SHA-1 CertID, without a nonce (RFC 5019 2.1.1)."""
    sha1 = hashes.SHA1()  # noqa: S303 - the CertID hash RFC 5019 clients use
    builder = ocsp.OCSPRequestBuilder().add_certificate_by_hash(name_hash, key_hash, serial, sha1)
    return builder.build().public_bytes(serialization.Encoding.DER)


def says_revoked(data: bytes, issuer_cert: x509.Certificate, serial: int) -> bool:
    """True when ``data`` is a successful OCSP response, signed for the issuer, saying "revoked" for the
    SHA-1 CertID of ``serial`` (the one we ask about; a response may carry other CertIDs beside it)."""
    wanted = (*sha1_cert_id_hashes(issuer_cert), serial)
    try:
        response = ocsp.load_der_ocsp_response(data)
        if response.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
            return False
        answer = next(
            (
                single.certificate_status
                for single in response.responses
                if single.hash_algorithm.name == "sha1"
                and (single.issuer_name_hash, single.issuer_key_hash, single.serial_number) == wanted
            ),
            None,
        )
        if answer != ocsp.OCSPCertStatus.REVOKED:
            return False
        return _signed_for(response, issuer_cert)
    except Exception:  # noqa: BLE001 - whatever a responder sends is "not revoked yet", never a crash
        return False


def _signed_for(response: ocsp.OCSPResponse, issuer_cert: x509.Certificate) -> bool:
    """Signed by the issuer itself or by a delegated OCSP signer it issued (RFC 6960 4.2.2.2)."""
    algorithm = response.signature_hash_algorithm
    if algorithm is None:
        return False
    signers = [issuer_cert]
    for cert in response.certificates:
        try:
            cert.verify_directly_issued_by(issuer_cert)
            usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except (ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
            continue
        if ExtendedKeyUsageOID.OCSP_SIGNING in usage:
            signers.append(cert)
    for signer in signers:
        public: PublicKey = signer.public_key()  # type: ignore[assignment]
        with contextlib.suppress(InvalidSignature, TypeError, ValueError):
            verify_signature(public, response.signature, response.tbs_response_bytes, algorithm)
            return True
    return False
