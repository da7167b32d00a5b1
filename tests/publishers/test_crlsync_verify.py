"""``publishers.crlsync.verify`` on garbage: any body is refused with a reason, never an unexpected error."""

from __future__ import annotations

import datetime

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from publishers.crlsync.verify import Refused, TrustStore, inspect
from tests.support.crlsync import SigningCA

CA = SigningCA.make()
TRUST = TrustStore([CA.cert])
GOOD = CA.crl(10, idp="http://ca.internal/crl/issuing-ca.crl", serials=[1, 2, 3])
NOW = datetime.datetime.now(datetime.UTC)


def _inspect(body: bytes) -> str:
    try:
        inspect(body, TRUST, NOW)
    except Refused as exc:
        return exc.reason
    return "ok"


def test_the_good_crl_passes() -> None:
    assert _inspect(GOOD) == "ok"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, len(GOOD) - 1), st.integers(1, 255))
@example(9, 1)  # version 0: cryptography raises InvalidVersion, which is no ValueError
def test_any_flipped_byte_is_refused(position: int, flip: int) -> None:
    body = bytearray(GOOD)
    body[position] ^= flip
    assert _inspect(bytes(body)) != "ok"


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2000))
def test_random_bodies_are_refused(body: bytes) -> None:
    assert _inspect(body) != "ok"


@settings(max_examples=100, deadline=None)
@given(st.integers(0, len(GOOD) - 1))
def test_truncated_crls_are_refused(length: int) -> None:
    assert _inspect(GOOD[:length]) == "parse"


def _unused_bits_offset(der: bytes) -> int:
    """Where the signature BIT STRING's unused-bits byte is: the last element's first content byte."""
    from publishers.crlsync.verify import _tlv

    _, outer, _ = _tlv(der, 0)
    _, _, algorithm = _tlv(der, _tlv(der, outer)[2])
    return _tlv(der, algorithm)[1]


def test_a_signature_declaring_unused_bits_is_refused_though_cryptography_verifies_it() -> None:
    """A flipped unused-bits count in the signature BIT STRING: cryptography still verifies the
    signature when the bits declared unused are zero, OpenSSL (nginx, HAProxy) refuses the CRL."""
    from cryptography import x509

    body = next(b for b in (CA.crl(10, serials=[n]) for n in range(1, 200)) if b[-1] % 2 == 0)
    flipped = bytearray(body)
    flipped[_unused_bits_offset(body)] = 1
    crl = x509.load_der_x509_crl(bytes(flipped))
    assert crl.is_signature_valid(CA.cert.public_key())  # type: ignore[arg-type]
    assert _inspect(bytes(flipped)) == "parse"
    assert _inspect(body) == "ok"
