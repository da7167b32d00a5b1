"""``plan``: a serial met twice in one batch is decided against what its first occurrence records."""

from __future__ import annotations

import datetime

from revocation.authority import Actor
from revocation.events import CertificateIssued, CertificateRevoked
from revocation.importing.checks import Checked
from revocation.importing.plan import (
    ALREADY_PRESENT,
    CONFLICT,
    IMPORTED,
    ISSUER_ITSELF,
    REFUSED,
    REVOCATION_RECORDED,
    Revocation,
    plan,
)

T0 = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
ACTOR = Actor("test", "req")


def _checked(serial: int, der: bytes = b"\x30\x00") -> Checked:
    return Checked(serial, der, f"CN={serial:x}", T0, T0 + datetime.timedelta(days=1))


def test_a_serial_met_twice_in_a_batch_follows_its_first_occurrence() -> None:
    revoked = Revocation(T0, "keyCompromise")
    items = [
        ("a:1", _checked(1), None),
        ("a:2", _checked(2), None),
        ("a:3", _checked(1), revoked),  # the same certificate, revoked: the revocation follows the issuance
        ("a:4", _checked(2), None),  # the same certificate again: nothing to do
        ("a:5", _checked(2, b"\x30\x01"), None),  # other contents for a serial recorded just before
        ("a:6", _checked(3), None),
    ]
    outcomes = plan("ca", items, {}, ACTOR)
    assert [o.result for o in outcomes] == [IMPORTED, IMPORTED, REVOCATION_RECORDED, ALREADY_PRESENT, REFUSED, IMPORTED]
    assert outcomes[4].kind == CONFLICT
    [issued] = outcomes[0].events
    assert isinstance(issued.event, CertificateIssued) and issued.expected_version == 0
    [revocation] = outcomes[2].events
    assert isinstance(revocation.event, CertificateRevoked) and revocation.expected_version == 1


def test_the_issuers_own_certificate_is_not_recorded() -> None:
    """``openssl ca -selfsign`` lists the CA's own certificate in index.txt; a CA's status is not given by
    itself, so importing it records nothing, and says why."""
    ca_der = b"\x30\x03\x02\x01\x07"
    items = [("index.txt:1", _checked(7, ca_der), None), ("index.txt:2", _checked(8), None)]
    outcomes = plan("ca", items, {}, ACTOR, issuer_der=ca_der)
    assert [o.result for o in outcomes] == [ISSUER_ITSELF, IMPORTED]
    assert outcomes[0].events == () and "the issuer's own certificate" in str(outcomes[0])
