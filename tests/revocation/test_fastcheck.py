"""The import's cheap checks agree with the full ones: nothing passes them that the full check refuses."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from revocation.importing.checks import Checked, Failed, NewcertsFile, check_certificate
from revocation.importing.fastcheck import _parts, pem_certificate, prepare_issuer, signed_by
from revocation.importing.openssl_index import newcerts_filename

NOW = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _ca(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, cn: str = "Fast CA") -> x509.Certificate:
    return (
        x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn)).public_key(key.public_key())
        .serial_number(1).not_valid_before(NOW).not_valid_after(NOW + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )  # fmt: skip


def _leaf(
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey,
    serial: int,
    issuer: str = "Fast CA",
    rsa_padding: padding.PSS | None = None,
    hash_alg: hashes.HashAlgorithm | None = None,
) -> x509.Certificate:
    leaf_key = ec.generate_private_key(ec.SECP256R1()).public_key()
    builder = (
        x509.CertificateBuilder().subject_name(_name(f"leaf-{serial:x}")).issuer_name(_name(issuer))
        .public_key(leaf_key).serial_number(serial).not_valid_before(NOW)
        .not_valid_after(NOW + datetime.timedelta(days=10))
    )  # fmt: skip
    return builder.sign(key, hash_alg or hashes.SHA256(), rsa_padding=rsa_padding)


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(65537, 2048)


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(Encoding.DER)


def _agrees(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """``signed_by``'s answer, checked against ``verify_directly_issued_by`` whenever it says yes."""
    fast = signed_by(cert, _der(cert), prepare_issuer(issuer, _der(issuer)))
    if fast:
        cert.verify_directly_issued_by(issuer)  # raises if the fast check let through what the full one refuses
    return fast


def test_a_pem_certificate_after_a_text_dump_decodes_to_its_der(rsa_key: rsa.RSAPrivateKey) -> None:
    cert = _leaf(rsa_key, 0x10)
    pem = cert.public_bytes(Encoding.PEM)
    dump = b"Certificate:\n    Data:\n        Version: 3 (0x2)\n        Serial Number: 16 (0x10)\n"
    assert pem_certificate(pem) == _der(cert)
    assert pem_certificate(dump + pem) == _der(cert)
    assert pem_certificate(pem.replace(b"\n", b"\r\n")) == _der(cert)


@pytest.mark.parametrize(
    "change",
    [
        lambda pem: pem + pem,  # two blocks: the full reader decides which
        lambda pem: pem.replace(b"CERTIFICATE", b"X509 CERTIFICATE"),
        lambda pem: b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n" + pem,
        lambda pem: pem.replace(b"-----END CERTIFICATE-----", b""),
        lambda pem: pem.replace(b"\n", b"\n*", 2),  # not strict base64
        lambda pem: pem.replace(b"-----BEGIN CERTIFICATE-----\n", b"-----BEGIN CERTIFICATE-----\nProc-Type: 4\n\n"),
        lambda pem: b"",
        lambda pem: pem.replace(b"-----\n", b"-----", 1),  # the body on the BEGIN line
        lambda pem: pem.replace(b"\n-----END", b"-----END"),  # END on the body's last line
    ],
)
def test_anything_but_one_plain_pem_certificate_is_left_to_the_full_reader(rsa_key: rsa.RSAPrivateKey, change) -> None:  # type: ignore[no-untyped-def]
    assert pem_certificate(change(_leaf(rsa_key, 0x11).public_bytes(Encoding.PEM))) is None


def test_the_fast_check_passes_exactly_what_the_issuer_signed(rsa_key: rsa.RSAPrivateKey) -> None:
    ca = _ca(rsa_key)
    for hash_alg in (hashes.SHA256(), hashes.SHA384(), hashes.SHA512(), hashes.SHA224()):
        assert _agrees(_leaf(rsa_key, 0x20, hash_alg=hash_alg), ca)
    # the same name, another key: only the signature tells them apart
    impostor = _ca(rsa.generate_private_key(65537, 2048))
    assert not _agrees(_leaf(rsa_key, 0x21), impostor)
    # signed by the key but naming another issuer: the full check refuses it, so must the fast one
    assert not _agrees(_leaf(rsa_key, 0x22, issuer="Other CA"), ca)
    # RSA-PSS and ECDSA are left to the full check, which accepts them
    pss = _leaf(rsa_key, 0x23, rsa_padding=padding.PSS(padding.MGF1(hashes.SHA256()), 32))
    assert not _agrees(pss, ca)
    pss.verify_directly_issued_by(ca)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    assert not _agrees(_leaf(ec_key, 0x24), _ca(ec_key))


def test_a_tampered_signature_fails_both_ways(rsa_key: rsa.RSAPrivateKey) -> None:
    ca = _ca(rsa_key)
    der = bytearray(_der(_leaf(rsa_key, 0x30)))
    der[-1] ^= 1  # the last byte of the signature
    tampered = x509.load_der_x509_certificate(bytes(der))
    assert not signed_by(tampered, bytes(der), prepare_issuer(ca, _der(ca)))
    with pytest.raises(InvalidSignature):
        tampered.verify_directly_issued_by(ca)


def test_newcerts_checks_give_the_same_answers_fast_or_not(rsa_key: rsa.RSAPrivateKey, tmp_path: Path) -> None:
    ca = _ca(rsa_key)
    impostor_key = rsa.generate_private_key(65537, 2048)
    certs = {0x40: _leaf(rsa_key, 0x40), 0x41: _leaf(impostor_key, 0x41), 0x42: _leaf(rsa_key, 0x42)}
    for serial, cert in certs.items():
        dump = b"Certificate:\n    Data: ...\n" if serial == 0x42 else b""
        (tmp_path / newcerts_filename(serial)).write_bytes(dump + cert.public_bytes(Encoding.PEM))
    good = check_certificate(ca, NewcertsFile(str(tmp_path), 0x40))
    assert good == Checked(0x40, _der(certs[0x40]), "CN=leaf-40", NOW, NOW + datetime.timedelta(days=10))
    assert check_certificate(ca, _der(certs[0x40])) == good
    refused = check_certificate(ca, NewcertsFile(str(tmp_path), 0x41))
    assert isinstance(refused, Failed) and "signature does not verify" in refused.message
    assert isinstance(check_certificate(ca, NewcertsFile(str(tmp_path), 0x42)), Checked)
    # a file holding another serial than its name says is refused as before
    (tmp_path / newcerts_filename(0x43)).write_bytes(certs[0x40].public_bytes(Encoding.PEM))
    wrong = check_certificate(ca, NewcertsFile(str(tmp_path), 0x43))
    assert isinstance(wrong, Failed) and "holds serial 40, expected 43" in wrong.message
    missing = check_certificate(ca, NewcertsFile(str(tmp_path), 0x44))
    assert isinstance(missing, Failed) and "does not exist" in missing.message


def test_the_parts_cut_from_the_der_are_those_cryptography_reads(rsa_key: rsa.RSAPrivateKey) -> None:
    ca = _ca(rsa_key)
    for cert in (ca, _leaf(rsa_key, 0x50), _leaf(ec.generate_private_key(ec.SECP256R1()), 0x51)):
        parts = _parts(_der(cert))
        assert parts.tbs == cert.tbs_certificate_bytes
        assert parts.signature == cert.signature
        assert parts.issuer == cert.issuer.public_bytes() and parts.subject == cert.subject.public_bytes()
        assert parts.inner_algorithm == parts.outer_algorithm
