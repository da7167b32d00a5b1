"""The CRL shard of a recorded certificate, read from its CRL DP: the cheap answers agree with the parse."""

from __future__ import annotations

import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from revocation.crl_layout import shard_from_certificate

NOW = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


def _cert(*urls: str) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "shard test")])
    builder = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(7).not_valid_before(NOW).not_valid_after(NOW + datetime.timedelta(days=1))
    )  # fmt: skip
    if urls:
        points = [x509.DistributionPoint([x509.UniformResourceIdentifier(u)], None, None, None) for u in urls]
        builder = builder.add_extension(x509.CRLDistributionPoints(points), critical=False)
    return builder.sign(key, hashes.SHA256()).public_bytes(Encoding.DER)


@pytest.mark.parametrize(
    ("urls", "shard"),
    [
        (("http://crl.example/issuing-ca-3.crl",), 3),
        (("http://crl.example/issuing-ca.crl",), 0),
        (("http://other.example/legacy.crl", "http://crl.example/issuing-ca-12.crl"), 12),
        (("http://other.example/legacy.crl",), 0),  # another CA's CRL: the issuer's unsharded CRL
        ((), 0),  # no CRL DP
    ],
)
def test_the_shard_a_certificate_names(urls: tuple[str, ...], shard: int) -> None:
    assert shard_from_certificate("issuing-ca", _cert(*urls)) == shard


def test_what_does_not_parse_is_in_shard_zero() -> None:
    der = _cert("http://crl.example/issuing-ca-3.crl")
    assert shard_from_certificate("issuing-ca", der[:-40]) == 0
    assert shard_from_certificate("issuing-ca", b"") == 0
