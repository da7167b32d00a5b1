"""An external issuer in pca's log, as ``pca issuer add`` records it, and an OCSP signer for it.

Until ``pca issuer add`` and ``pca issuer set-signer`` exist on this branch, the tests append
their events directly: ``IssuerAdded`` (kind external, no key) and ``ResponderCertRotated`` with
a delegated signer certified by the external CA's own key (the test holds it; pca never does).
"""

from __future__ import annotations

import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from revocation import ca
from revocation.authority import issuer_added
from revocation.eventlog import EventLog, NewEvent
from revocation.events import ResponderCertRotated
from revocation.keys import KeyRef, generate_key, open_key

EXTERNAL = "legacy-ca"
SIGNER_DAYS = 7


def load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


async def add_external_issuer(log: EventLog, ca_pem: Path, issuer_id: str = EXTERNAL) -> x509.Certificate:
    """Record the CA certificate at ``ca_pem`` as an external issuer."""
    cert = load_cert(ca_pem)
    event = issuer_added(issuer_id, "external", None, cert, None, f"http://crl.invalid/{issuer_id}.crl")
    await log.append([NewEvent(event, 0, "tester", "add-external")])
    return cert


async def give_signer(log: EventLog, ca_pem: Path, ca_key: Path, key_dir: Path, issuer_id: str = EXTERNAL) -> None:
    """An OCSP signer for the external issuer, certified with its key (``ca_key``, PEM, unencrypted).

    The issuer's stream is at version 1 (IssuerAdded) when this is called.
    """
    issuer_cert = load_cert(ca_pem)
    issuer_key = open_key(KeyRef("file", path=str(ca_key)))
    signer_key = generate_key(KeyRef("file"), f"{issuer_id}-ocsp", "ec-p256", key_dir)
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    try:
        cert = ca.create_ocsp_signer(issuer_cert, issuer_key, signer_key.public_key(), now, SIGNER_DAYS)
    finally:
        issuer_key.close()
        signer_key.close()
    event = ResponderCertRotated(
        issuer_id=issuer_id,
        cert_der_hex=cert.public_bytes(serialization.Encoding.DER).hex(),
        key_ref=signer_key.ref.to_dict(),
        not_after=cert.not_valid_after_utc,
    )
    await log.append([NewEvent(event, 1, "tester", "set-signer")])
