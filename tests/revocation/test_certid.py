"""One CertID computation for the responder and the prober, from the bytes of the issuer certificate.

The issuer built here is encoded the way another CA might have done it: a
TeletexString and a BMPString in its subject, a multi-valued RDN, and its EC key
as a compressed point. Hashing re-encoded objects instead of those bytes gives
another issuerKeyHash (cryptography writes EC points uncompressed), so a prober
doing that asks about an issuer the responder does not know: the prober's former
``cert_id_hashes`` failed the last two tests here.

cryptography 51 re-encodes every subject its strict DER parser accepts to the same
bytes (string types and RDN order survive), so no loadable name can show the name
half diverging today; the first test pins that the name hashed is the subject's
own bytes, whatever a later parser or encoder does.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from responders.ocsp_request import parse_request
from responders.ocsp_response import CertStatus, ResponseTemplate
from responders.source import IssuerIndex
from revocation import der
from revocation.certid import certid_hashes, subject_name_and_key
from revocation.keys import FileKey, KeyRef
from revocation.propagation.ocsp_check import ocsp_request_der, says_revoked

NOW = datetime.now(UTC).replace(microsecond=0)
SERIAL = 0x5EED_0001
_CN, _O, _OU = "2.5.4.3", "2.5.4.10", "2.5.4.11"
_ECDSA_SHA256 = der.sequence(der.oid("1.2.840.10045.4.3.2"))


def _rdn(*attributes: tuple[str, int, bytes]) -> bytes:
    # DER orders the members of a SET OF by their encodings; cryptography refuses anything else.
    encoded = sorted(der.sequence(der.oid(oid), der.tlv(tag, value)) for oid, tag, value in attributes)
    return der.tlv(0x31, b"".join(encoded))


SUBJECT = der.sequence(
    _rdn((_O, 0x14, b"Teletex Org")),  # TeletexString
    _rdn((_OU, 0x1E, "Unit".encode("utf-16-be")), (_OU, 0x13, b"Second")),  # BMPString + PrintableString
    _rdn((_CN, 0x0C, b"Legacy Issuing CA")),
)


def _legacy_issuer(key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    """A self-signed CA certificate with SUBJECT as its subject and its key as a compressed point."""
    placeholder = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "placeholder subject")])
    template = (
        x509.CertificateBuilder()
        .subject_name(placeholder)
        .issuer_name(placeholder)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    tbs = template.tbs_certificate_bytes
    name = placeholder.public_bytes()
    spki = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    point = key.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint)
    compressed_spki = der.sequence(
        der.sequence(der.oid("1.2.840.10045.2.1"), der.oid("1.2.840.10045.3.1.7")), der.bit_string(point)
    )
    _, start, _ = der.split_tlv(tbs)
    body = tbs[start:].replace(name, SUBJECT).replace(spki, compressed_spki)
    assert body.count(SUBJECT) == 2 and compressed_spki in body, "the template did not have the expected shape"
    new_tbs = der.sequence(body)
    signature = key.sign(new_tbs, ec.ECDSA(hashes.SHA256()))
    return x509.load_der_x509_certificate(der.sequence(new_tbs, _ECDSA_SHA256, der.bit_string(signature)))


def _signer(
    issuer: x509.Certificate, issuer_key: ec.EllipticCurvePrivateKey, key: ec.EllipticCurvePrivateKey
) -> x509.Certificate:
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Legacy OCSP signer")]))
        .issuer_name(issuer.subject)
        .public_key(key.public_key())
        .serial_number(2)
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=30))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.OCSP_SIGNING]), critical=False)
        .sign(issuer_key, hashes.SHA256())
    )


@pytest.fixture(scope="module")
def issuer_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def issuer(issuer_key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    return _legacy_issuer(issuer_key)


def test_the_hashed_bytes_are_those_of_the_certificate(
    issuer: x509.Certificate, issuer_key: ec.EllipticCurvePrivateKey
) -> None:
    point = issuer_key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint
    )
    assert subject_name_and_key(issuer) == (SUBJECT, point)
    hashes_by_alg = certid_hashes(issuer)
    assert set(hashes_by_alg) == {"sha1", "sha256", "sha384", "sha512"}
    for alg, (name_hash, key_hash) in hashes_by_alg.items():
        assert name_hash == hashlib.new(alg, SUBJECT).digest(), alg
        assert key_hash == hashlib.new(alg, point).digest(), alg
    # What a re-encoding would have hashed instead: the test means something only while they differ.
    reencoded_key = x509.SubjectKeyIdentifier.from_public_key(issuer.public_key()).digest
    assert reencoded_key != hashes_by_alg["sha1"][1]


def test_the_probers_request_names_the_issuer_the_responder_indexes(issuer: x509.Certificate) -> None:
    index = IssuerIndex()
    index.add("legacy-ca", issuer)
    request = parse_request(ocsp_request_der(issuer, SERIAL))
    assert (request.hash_algorithm, request.serial) == ("sha1", SERIAL)
    assert index.resolve(request) == "legacy-ca"


def test_the_prober_accepts_the_responders_revoked_answer(
    issuer: x509.Certificate, issuer_key: ec.EllipticCurvePrivateKey
) -> None:
    signer_key = ec.generate_private_key(ec.SECP256R1())
    template = ResponseTemplate(
        issuer, _signer(issuer, issuer_key, signer_key), FileKey(KeyRef("file", "signer.pem"), signer_key)
    )
    status = CertStatus(SERIAL, revoked_at=NOW - timedelta(minutes=1), reason=1)
    response = template.sign(status, NOW - timedelta(minutes=1), NOW + timedelta(hours=1), produced_at=NOW)
    sha1 = next(s for s in ocsp.load_der_ocsp_response(response).responses if s.hash_algorithm.name == "sha1")
    assert (sha1.issuer_name_hash, sha1.issuer_key_hash) == certid_hashes(issuer, ("sha1",))["sha1"]
    assert says_revoked(response, issuer, SERIAL)
    assert not says_revoked(response, issuer, SERIAL + 1)
