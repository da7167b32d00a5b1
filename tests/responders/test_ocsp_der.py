"""OCSP request parsing and hand-built responses, checked by cryptography, asn1crypto and the openssl CLI."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from asn1crypto import ocsp as asn1_ocsp  # type: ignore[import-untyped]
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, OCSPExtensionOID
from hypothesis import given
from hypothesis import strategies as st

from responders.ocsp_request import CertIDRequest, MalformedRequest, parse_request
from responders.ocsp_response import (
    INTERNAL_ERROR,
    MALFORMED_REQUEST,
    REASON_CODES,
    TRY_LATER,
    UNAUTHORIZED,
    CertStatus,
    ResponseTemplate,
)
from revocation.errors import KeyBackendError
from revocation.keys import FileKey, KeyRef, PrivateKey, generate_private_key

NOW = datetime.now(UTC).replace(microsecond=0)
THIS_UPDATE = NOW - timedelta(minutes=5)
NEXT_UPDATE = NOW + timedelta(days=1)
REVOKED_AT = NOW - timedelta(hours=2)
INVALID_SINCE = NOW - timedelta(days=3)
# High bit set, so the INTEGER needs a leading zero byte.
LEAF_SERIAL = 0x8F3A_11C2_0000_0000_0000_0000_0000_0000_0000_42


# --- a small hierarchy: CA -> (delegated OCSP signer, leaf) ------------------------------------------------------


@dataclass(frozen=True)
class PKI:
    ca_key: ec.EllipticCurvePrivateKey
    ca: x509.Certificate
    signer_key: PrivateKey
    signer: x509.Certificate
    leaf: x509.Certificate


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Test PCA"), x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    )


def _cert(
    subject: str,
    public: ec.EllipticCurvePublicKey | rsa.RSAPublicKey,
    issuer: x509.Name,
    issuer_key: PrivateKey,
    **kind: bool,
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .public_key(public)
        .serial_number(LEAF_SERIAL if kind.get("leaf") else x509.random_serial_number())
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=kind.get("ca", False), path_length=None), critical=True)
    )
    if kind.get("ocsp"):
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.OCSP_SIGNING]), critical=False)
        builder = builder.add_extension(x509.OCSPNoCheck(), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def make_pki(signer_key: PrivateKey | None = None) -> PKI:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("Test CA", ca_key.public_key(), _name("Test CA"), ca_key, ca=True)
    signer_key = signer_key or ec.generate_private_key(ec.SECP256R1())
    signer = _cert("Test OCSP signer", signer_key.public_key(), ca.subject, ca_key, ocsp=True)
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = _cert("leaf.example", leaf_key.public_key(), ca.subject, ca_key, leaf=True)
    return PKI(ca_key, ca, signer_key, signer, leaf)


def file_key(key: PrivateKey) -> FileKey:
    return FileKey(KeyRef(backend="file", path="test-signer.pem"), key)


@pytest.fixture(scope="module")
def pki() -> PKI:
    return make_pki()


@pytest.fixture(scope="module")
def template(pki: PKI) -> ResponseTemplate:
    return ResponseTemplate(pki.ca, pki.signer, file_key(pki.signer_key))


def request_der(pki: PKI, algorithm: hashes.HashAlgorithm, nonce: bool = False) -> bytes:
    builder = ocsp.OCSPRequestBuilder().add_certificate(pki.leaf, pki.ca, algorithm)
    if nonce:
        builder = builder.add_extension(x509.OCSPNonce(b"\x01" * 16), critical=False)
    return builder.build().public_bytes(serialization.Encoding.DER)


# --- responses -------------------------------------------------------------------------------------------------


def check_response(pki: PKI, data: bytes) -> list[ocsp.OCSPSingleResponse]:
    """Parse ``data``, check everything that does not depend on the status and return the SingleResponses.

    cryptography's status accessors on the response itself refuse responses with
    two SingleResponses, so the status is checked on each SingleResponse.
    """
    resp = ocsp.load_der_ocsp_response(data)
    assert resp.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL
    public = pki.signer.public_key()
    hash_alg = resp.signature_hash_algorithm
    assert hash_alg is not None
    if isinstance(public, ec.EllipticCurvePublicKey):
        public.verify(resp.signature, resp.tbs_response_bytes, ec.ECDSA(hash_alg))
    else:
        assert isinstance(public, rsa.RSAPublicKey)
        public.verify(resp.signature, resp.tbs_response_bytes, padding.PKCS1v15(), hash_alg)
    assert resp.responder_key_hash == x509.SubjectKeyIdentifier.from_public_key(public).digest
    assert resp.responder_name is None
    assert resp.certificates == [pki.signer]
    assert len(resp.extensions) == 0

    singles = list(resp.responses)
    assert [type(s.hash_algorithm) for s in singles] == [hashes.SHA1, hashes.SHA256]
    for single in singles:
        req = ocsp.load_der_ocsp_request(request_der(pki, single.hash_algorithm))
        assert single.issuer_name_hash == req.issuer_name_hash
        assert single.issuer_key_hash == req.issuer_key_hash
        assert single.serial_number == req.serial_number == LEAF_SERIAL
        assert single.this_update_utc == THIS_UPDATE
        assert single.next_update_utc == NEXT_UPDATE

    # asn1crypto re-encodes the whole structure from scratch: equal bytes mean canonical DER.
    parsed = asn1_ocsp.OCSPResponse.load(data)
    assert parsed.dump(force=True) == data
    return singles


def single_extensions(data: bytes) -> list[object]:
    """The singleExtensions of each SingleResponse, as asn1crypto sees them (cryptography does not expose them)."""
    responses = asn1_ocsp.OCSPResponse.load(data).basic_ocsp_response["tbs_response_data"]["responses"]
    return [r["single_extensions"].native for r in responses]


def test_good_response(pki: PKI, template: ResponseTemplate) -> None:
    data = template.sign(CertStatus(LEAF_SERIAL), THIS_UPDATE, NEXT_UPDATE, produced_at=NOW)
    for single in check_response(pki, data):
        assert single.certificate_status == ocsp.OCSPCertStatus.GOOD
        assert single.revocation_time_utc is None
    assert ocsp.load_der_ocsp_response(data).produced_at_utc == NOW
    assert single_extensions(data) == [None, None]


def test_revoked_response_with_reason_and_invalidity_date(pki: PKI, template: ResponseTemplate) -> None:
    status = CertStatus(LEAF_SERIAL, REVOKED_AT, REASON_CODES["keyCompromise"], INVALID_SINCE)
    data = template.sign(status, THIS_UPDATE, NEXT_UPDATE, produced_at=NOW)
    for single in check_response(pki, data):
        assert single.certificate_status == ocsp.OCSPCertStatus.REVOKED
        assert single.revocation_time_utc == REVOKED_AT
        assert single.revocation_reason == x509.ReasonFlags.key_compromise
    expected = [{"extn_id": "invalidity_date", "critical": False, "extn_value": INVALID_SINCE}]
    assert single_extensions(data) == [expected, expected]


def test_revoked_response_without_reason(pki: PKI, template: ResponseTemplate) -> None:
    for single in check_response(
        pki, template.sign(CertStatus(LEAF_SERIAL, REVOKED_AT), THIS_UPDATE, NEXT_UPDATE, produced_at=NOW)
    ):
        assert single.certificate_status == ocsp.OCSPCertStatus.REVOKED
        assert single.revocation_time_utc == REVOKED_AT
        assert single.revocation_reason is None


@pytest.mark.parametrize("name", sorted(REASON_CODES))
def test_every_reason_code(pki: PKI, template: ResponseTemplate, name: str) -> None:
    status = CertStatus(LEAF_SERIAL, REVOKED_AT, REASON_CODES[name])
    for single in check_response(pki, template.sign(status, THIS_UPDATE, NEXT_UPDATE, produced_at=NOW)):
        reason = single.revocation_reason
        assert reason is not None
        assert reason.name.replace("_", "").lower() == name.lower()


@pytest.mark.parametrize("algorithm", ["rsa-2048", "ec-p384"])
def test_other_signer_key_types(algorithm: str) -> None:
    pki = make_pki(generate_private_key(algorithm))
    template = ResponseTemplate(pki.ca, pki.signer, file_key(pki.signer_key))
    singles = check_response(
        pki, template.sign(CertStatus(LEAF_SERIAL, REVOKED_AT, 4), THIS_UPDATE, NEXT_UPDATE, produced_at=NOW)
    )
    assert [s.revocation_reason for s in singles] == [x509.ReasonFlags.superseded] * 2


def test_issuer_hash_accessors(pki: PKI, template: ResponseTemplate) -> None:
    for name, algorithm in (("sha1", hashes.SHA1()), ("sha256", hashes.SHA256())):
        req = ocsp.load_der_ocsp_request(request_der(pki, algorithm))
        assert template.issuer_name_hash(name) == req.issuer_name_hash
        assert template.issuer_key_hash(name) == req.issuer_key_hash
    with pytest.raises(ValueError, match="sha384"):
        template.issuer_key_hash("sha384")


@pytest.mark.parametrize("serial", [0, 1, 127, 128, 255, 256, 2**159 - 1])
def test_serial_encodings(pki: PKI, template: ResponseTemplate, serial: int) -> None:
    resp = ocsp.load_der_ocsp_response(template.sign(CertStatus(serial), THIS_UPDATE, NEXT_UPDATE, produced_at=NOW))
    assert [s.serial_number for s in resp.responses] == [serial, serial]


@pytest.mark.parametrize(
    "next_update",
    [THIS_UPDATE, THIS_UPDATE - timedelta(seconds=1), THIS_UPDATE + timedelta(microseconds=999_999)],
    ids=["equal", "earlier", "same-second"],
)
def test_next_update_must_follow_this_update(template: ResponseTemplate, next_update: datetime) -> None:
    with pytest.raises(ValueError, match="next_update"):
        template.sign(CertStatus(LEAF_SERIAL), THIS_UPDATE, next_update, produced_at=NOW)


def test_naive_times_are_refused(template: ResponseTemplate) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        template.sign(CertStatus(LEAF_SERIAL), THIS_UPDATE.replace(tzinfo=None), NEXT_UPDATE, produced_at=NOW)


def test_invalid_status_is_refused() -> None:
    with pytest.raises(ValueError, match="revocation time"):
        CertStatus(1, reason=1)
    with pytest.raises(ValueError, match="revocation time"):
        CertStatus(1, invalidity_date=NOW)
    with pytest.raises(ValueError, match="CRLReason"):
        CertStatus(1, REVOKED_AT, reason=7)


def test_signer_from_another_ca_is_refused(pki: PKI) -> None:
    other = make_pki()
    with pytest.raises(ValueError, match="not issued by the CA"):
        ResponseTemplate(pki.ca, other.signer, file_key(other.signer_key))


def test_signer_with_same_name_but_other_issuer_key_is_refused(pki: PKI) -> None:
    impostor_key = ec.generate_private_key(ec.SECP256R1())
    signer = _cert("Test OCSP signer", pki.signer_key.public_key(), pki.ca.subject, impostor_key, ocsp=True)
    with pytest.raises(ValueError, match="not issued by the CA"):
        ResponseTemplate(pki.ca, signer, file_key(pki.signer_key))


def test_signer_without_ocsp_eku_is_refused(pki: PKI) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    signer = _cert("No EKU", key.public_key(), pki.ca.subject, pki.ca_key)
    with pytest.raises(ValueError, match="OCSPSigning"):
        ResponseTemplate(pki.ca, signer, file_key(key))


def test_signer_key_must_match_certificate(pki: PKI) -> None:
    with pytest.raises(KeyBackendError, match="does not match"):
        ResponseTemplate(pki.ca, pki.signer, file_key(ec.generate_private_key(ec.SECP256R1())))


@pytest.mark.parametrize(
    ("constant", "status"),
    [
        (MALFORMED_REQUEST, ocsp.OCSPResponseStatus.MALFORMED_REQUEST),
        (INTERNAL_ERROR, ocsp.OCSPResponseStatus.INTERNAL_ERROR),
        (TRY_LATER, ocsp.OCSPResponseStatus.TRY_LATER),
        (UNAUTHORIZED, ocsp.OCSPResponseStatus.UNAUTHORIZED),
    ],
)
def test_error_responses(constant: bytes, status: ocsp.OCSPResponseStatus) -> None:
    assert ocsp.load_der_ocsp_response(constant).response_status == status


# --- the openssl CLI as an independent verifier -----------------------------------------------------------------


def _pem(path: Path, cert: x509.Certificate) -> str:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return str(path)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI not installed")
@pytest.mark.parametrize("digest", [[], ["-sha256"]], ids=["sha1", "sha256"])
@pytest.mark.parametrize("revoked", [False, True], ids=["good", "revoked"])
def test_openssl_verifies(
    pki: PKI, template: ResponseTemplate, tmp_path: Path, digest: list[str], revoked: bool
) -> None:
    status = CertStatus(LEAF_SERIAL, REVOKED_AT, REASON_CODES["keyCompromise"]) if revoked else CertStatus(LEAF_SERIAL)
    response = tmp_path / "resp.der"
    response.write_bytes(template.sign(status, THIS_UPDATE, NEXT_UPDATE, produced_at=NOW))
    ca = _pem(tmp_path / "ca.pem", pki.ca)
    leaf = _pem(tmp_path / "leaf.pem", pki.leaf)
    # The digest option must come before -cert: it picks the CertID hash for that certificate.
    command = [
        "openssl",
        "ocsp",
        "-respin",
        str(response),
        "-issuer",
        ca,
        *digest,
        "-cert",
        leaf,
        "-CAfile",
        ca,
        "-resp_text",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Response verify OK" in output
    if revoked:
        assert f"{leaf}: revoked" in output
        assert "Reason: keyCompromise" in output
    else:
        assert f"{leaf}: good" in output


# --- requests ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("algorithm", "name"),
    [(hashes.SHA1(), "sha1"), (hashes.SHA256(), "sha256"), (hashes.SHA384(), "sha384"), (hashes.SHA512(), "sha512")],
)
@pytest.mark.parametrize("nonce", [False, True])
def test_parse_request(pki: PKI, algorithm: hashes.HashAlgorithm, name: str, nonce: bool) -> None:
    expected = ocsp.load_der_ocsp_request(request_der(pki, algorithm))
    parsed = parse_request(request_der(pki, algorithm, nonce=nonce))
    assert parsed == CertIDRequest(name, expected.issuer_name_hash, expected.issuer_key_hash, LEAF_SERIAL, nonce)


def test_parsed_request_matches_template(pki: PKI, template: ResponseTemplate) -> None:
    for name, algorithm in (("sha1", hashes.SHA1()), ("sha256", hashes.SHA256())):
        parsed = parse_request(request_der(pki, algorithm))
        assert (parsed.issuer_name_hash, parsed.issuer_key_hash) == (
            template.issuer_name_hash(name),
            template.issuer_key_hash(name),
        )


def _asn1_request(
    cert_ids: list[dict[str, object]], extensions: list[dict[str, object]] | None = None, signature: object = None
) -> bytes:
    tbs: dict[str, object] = {"request_list": [{"req_cert": c} for c in cert_ids]}
    if extensions:
        tbs["request_extensions"] = extensions
    return bytes(asn1_ocsp.OCSPRequest({"tbs_request": tbs, "optional_signature": signature}).dump())


def _cert_id(algorithm: str = "sha1", size: int = 20, serial: int = 5) -> dict[str, object]:
    return {
        "hash_algorithm": {"algorithm": algorithm},
        "issuer_name_hash": b"\x01" * size,
        "issuer_key_hash": b"\x02" * size,
        "serial_number": serial,
    }


def test_request_with_several_cert_ids_is_refused() -> None:
    with pytest.raises(MalformedRequest, match=r"^requests with more than one CertID are not supported$"):
        parse_request(_asn1_request([_cert_id(), _cert_id(serial=6)]))


def test_request_without_cert_id_is_refused() -> None:
    with pytest.raises(MalformedRequest, match="no CertID"):
        parse_request(_asn1_request([]))


@pytest.mark.parametrize(("algorithm", "size"), [("md5", 16), ("sha224", 28)])
def test_unsupported_hash_is_refused(algorithm: str, size: int) -> None:
    with pytest.raises(MalformedRequest):
        parse_request(_asn1_request([_cert_id(algorithm, size)]))


def test_hash_of_wrong_length_is_refused() -> None:
    with pytest.raises(MalformedRequest, match="length"):
        parse_request(_asn1_request([_cert_id("sha256", 20)]))


def test_signed_request_is_accepted() -> None:
    signature = {"signature_algorithm": {"algorithm": "sha256_ecdsa"}, "signature": b"\x30\x00"}
    parsed = parse_request(_asn1_request([_cert_id()], signature=signature))
    assert parsed == CertIDRequest("sha1", b"\x01" * 20, b"\x02" * 20, 5, False)


def test_request_with_trailing_garbage_is_refused(pki: PKI) -> None:
    with pytest.raises(MalformedRequest):
        parse_request(request_der(pki, hashes.SHA1()) + b"\x00")


def test_nonce_is_detected_among_other_extensions() -> None:
    extensions: list[dict[str, object]] = [
        {"extn_id": "1.2.3.4", "extn_value": b"\x05\x00"},
        {"extn_id": OCSPExtensionOID.NONCE.dotted_string, "extn_value": b"\x04\x02ab"},
    ]
    assert parse_request(_asn1_request([_cert_id()], extensions)).has_nonce
    assert not parse_request(_asn1_request([_cert_id()], extensions[:1])).has_nonce


# --- parse_request never raises anything but MalformedRequest -------------------------------------------------------

VALID_REQUEST = _asn1_request([_cert_id("sha256", 32, serial=2**150 + 7)])


def _parse_or_refuse(data: bytes) -> None:
    try:
        assert isinstance(parse_request(data), CertIDRequest)
    except MalformedRequest as exc:
        assert str(exc)


def test_every_truncation_is_refused() -> None:
    assert parse_request(VALID_REQUEST).serial == 2**150 + 7
    for end in range(len(VALID_REQUEST)):
        with pytest.raises(MalformedRequest):
            parse_request(VALID_REQUEST[:end])


@given(st.binary(max_size=512))
def test_arbitrary_bytes(data: bytes) -> None:
    _parse_or_refuse(data)


@given(st.binary(max_size=400).map(lambda tail: b"\x30\x82\x01\x00" + tail))
def test_arbitrary_bytes_behind_a_sequence_header(data: bytes) -> None:
    _parse_or_refuse(data)


@given(st.lists(st.integers(0, len(VALID_REQUEST) * 8 - 1), min_size=1, max_size=8))
def test_bit_flips(bits: list[int]) -> None:
    data = bytearray(VALID_REQUEST)
    for bit in bits:
        data[bit // 8] ^= 0x80 >> (bit % 8)
    _parse_or_refuse(bytes(data))


@given(st.integers(0, len(VALID_REQUEST)), st.integers(0, len(VALID_REQUEST)), st.binary(max_size=16))
def test_splices(start: int, end: int, insert: bytes) -> None:
    _parse_or_refuse(VALID_REQUEST[:start] + insert + VALID_REQUEST[max(start, end) :])
