"""Signed checkpoints of the event log's head: the hash chain's external anchor.

The hash chain alone proves nothing against someone who can write the database: they can
delete the last rows and rewind ``log_head``, or edit a row and recompute every later hash.
A checkpoint is a small JSON document, signed by a key the database does not hold, saying
"the log had this hash at this seq at this time"; it is published beside the CRLs
(``checkpoints/latest.json`` and ``checkpoints/<seq>.json``) where relying parties and
auditors keep copies. ``pca audit verify --checkpoint FILE|URL`` checks its signature
against the CA certificates (a file, not the database), then that the log still holds that
seq with that hash: a rewound or rewritten log fails, naming the seq.

The document::

    {"checkpoint": {"type": "pca-audit-checkpoint", "log": <hash of seq 1>, "seq": N,
                    "hash": <hash of seq N>, "time": <ISO time>},
     "signature": <base64 of the signature over the canonical JSON of "checkpoint">,
     "certificates": [<PEM of the signer certificate>]}

The signer certificate is issued by an issuing CA, with the extended key usage
``revocation.ca.CHECKPOINT_SIGNING`` only; its key is made where the CA's key lives (file,
PKCS#11 token or KMS) and recorded in the log (``CheckpointSignerSet``), like OCSP signers.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import datetime
import json
import logging
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from revocation import ca
from revocation.ca_status import ca_problem, ca_record
from revocation.clock import iso, parse_iso
from revocation.errors import ConcurrencyError, IntegrityError, PCAError
from revocation.eventlog import EventLog, NewEvent
from revocation.events import CheckpointSignerSet
from revocation.keys import (
    KeyRef,
    SigningKey,
    destroy_key,
    generate_key,
    open_key,
    signature_parameters,
    verify_signature,
)
from revocation.projection import CertificateLookup, IssuerRecord

log_ = logging.getLogger("pca.checkpoints")

DOC_TYPE = "pca-audit-checkpoint"
SIGNER_STREAM = CheckpointSignerSet("", "", {}, datetime.datetime.min).stream()
SIGNER_VALIDITY_DAYS = 365
SIGNER_RENEW_BEFORE = datetime.timedelta(days=30)


class CheckpointError(PCAError):
    """A checkpoint document that cannot be trusted: unreadable, badly signed, or by a signer the CA did not certify."""


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    log: str  # the hash of seq 1: which log this is
    seq: int
    hash: str
    time: datetime.datetime

    def to_json(self) -> dict[str, Any]:
        return {"type": DOC_TYPE, "log": self.log, "seq": self.seq, "hash": self.hash, "time": iso(self.time)}


def _signed_bytes(body: dict[str, Any]) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def sign_checkpoint(checkpoint: Checkpoint, key: SigningKey, cert: x509.Certificate) -> bytes:
    """The signed document (JSON) of ``checkpoint``."""
    body = checkpoint.to_json()
    signature = key.sign(_signed_bytes(body))
    doc = {
        "checkpoint": body,
        "signature": base64.b64encode(signature).decode(),
        "certificates": [cert.public_bytes(serialization.Encoding.PEM).decode()],
    }
    return (json.dumps(doc, indent=1) + "\n").encode()


def read_checkpoint(data: bytes) -> Checkpoint:
    """The checkpoint a document states, without checking its signature (``verify_checkpoint`` does)."""
    try:
        doc = json.loads(data)
        body = doc["checkpoint"]
        if body.get("type") != DOC_TYPE:
            raise CheckpointError(f"not a pca audit checkpoint (type {body.get('type')!r})")
        return Checkpoint(str(body["log"]), int(body["seq"]), str(body["hash"]), parse_iso(str(body["time"])))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"not a readable checkpoint document: {exc!r}") from exc


def load_ca_certificates(path: Path) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read CA certificates from {path}: {exc}") from exc
    return certs


def verify_checkpoint(data: bytes, trusted: Sequence[x509.Certificate]) -> tuple[Checkpoint, x509.Certificate]:
    """Check the document's signature, and that its signer was certified by one of ``trusted`` (CA certificates,
    read from a file the verifier trusts) for checkpoints, at the checkpoint's time. Returns the checkpoint and
    its signer certificate; raises CheckpointError saying what is wrong."""
    checkpoint = read_checkpoint(data)
    doc = json.loads(data)
    try:
        signature = base64.b64decode(str(doc["signature"]), validate=True)
        signer = x509.load_pem_x509_certificate(str(doc["certificates"][0]).encode())
    except (KeyError, IndexError, TypeError, ValueError, binascii.Error) as exc:
        raise CheckpointError(f"checkpoint document without a readable signature or certificate: {exc!r}") from exc
    who = signer.subject.rfc4514_string()
    issuers = [c for c in trusted if c.subject == signer.issuer]
    if not issuers:
        raise CheckpointError(f"checkpoint signer {who} was not issued by any of the trusted CA certificates")
    if not any(_issued_by(signer, issuer) for issuer in issuers):
        raise CheckpointError(f"checkpoint signer {who}: its certificate does not verify with its CA's key")
    try:
        usages = signer.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        usages = x509.ExtendedKeyUsage([])
    if ca.CHECKPOINT_SIGNING not in usages:
        raise CheckpointError(f"certificate {who} is not a checkpoint signer (no checkpoint-signing key usage)")
    if not signer.not_valid_before_utc <= checkpoint.time <= signer.not_valid_after_utc:
        raise CheckpointError(f"checkpoint signer {who} was not valid at the checkpoint's time {iso(checkpoint.time)}")
    public = signer.public_key()
    if not isinstance(public, (ec.EllipticCurvePublicKey, rsa.RSAPublicKey)):
        raise CheckpointError(f"checkpoint signer {who} has an unsupported key type")
    hash_algorithm, _ = signature_parameters(public)
    try:
        verify_signature(public, signature, _signed_bytes(doc["checkpoint"]), hash_algorithm)
    except InvalidSignature:
        raise CheckpointError(f"the checkpoint's signature does not verify with the key of {who}") from None
    return checkpoint, signer


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


async def check_log_against(log: EventLog, checkpoint: Checkpoint) -> None:
    """The log must still hold the checkpointed seq with the checkpointed hash; IntegrityError names the seq."""
    when = iso(checkpoint.time)
    first = await log.read(0, 1)
    if first and first[0].hash != checkpoint.log:
        raise IntegrityError(f"the checkpoint of {when} is of another event log (its seq 1 differs)", 1)
    rows = await log.read(checkpoint.seq - 1, 1)
    if not rows or rows[0].seq != checkpoint.seq:
        head = await log.head()
        raise IntegrityError(
            f"event log broken at seq {checkpoint.seq}: the checkpoint of {when} has seq {checkpoint.seq}, "
            f"but the log ends at seq {head} (rows removed from the end, head rewound?)",
            checkpoint.seq,
        )
    if rows[0].hash != checkpoint.hash:
        raise IntegrityError(
            f"event log broken at seq {checkpoint.seq}: its hash is not the one checkpointed at {when} "
            "(the log was rewritten up to there)",
            checkpoint.seq,
        )


# --- the signer --------------------------------------------------------------------------------


async def current_signer(log: EventLog) -> CheckpointSignerSet | None:
    events = await log.read_stream(SIGNER_STREAM)
    last = events[-1].event if events else None
    return last if isinstance(last, CheckpointSignerSet) else None


async def ensure_signer(
    log: EventLog,
    issuers: CertificateLookup,
    key_dir: Path,
    key_algorithm: str,
    now: datetime.datetime,
    actor: str,
    request_id: str,
) -> CheckpointSignerSet:
    """The checkpoint signer: made on first use (``pca init`` makes it for new installs), renewed
    ``SIGNER_RENEW_BEFORE`` before it expires, and replaced once the CA that certified it no longer stands
    (revoked after a key compromise, or expired) and another does. Certified by the first issuing CA whose
    key we hold and whose certificate stands; while none stands, the current signer goes on signing."""
    events = await log.read_stream(SIGNER_STREAM)
    current = events[-1].event if events else None
    everyone = await issuers.issuers()
    standing = [
        i
        for i in everyone
        if i.kind == "intermediate"
        and i.key_ref is not None
        and ca_problem(i, await ca_record(issuers, i, everyone), now) is None
    ]
    if isinstance(current, CheckpointSignerSet) and current.not_after - now > SIGNER_RENEW_BEFORE:
        if not standing or any(i.issuer_id == current.issuer_id for i in standing):
            return current
        log_.warning(
            "the audit checkpoint signer was certified by issuer %s, whose CA certificate no longer stands: "
            "replacing it with one certified by %s",
            current.issuer_id,
            standing[0].issuer_id,
        )
    issuer = standing[0] if standing else None
    if issuer is None or issuer.key_ref is None:
        raise PCAError(
            "no issuing CA whose key pca holds and whose certificate stands: cannot certify an audit checkpoint signer"
        )
    # Off the event loop: with a KMS or PKCS#11 key, making a key and signing its certificate are round trips.
    event = await asyncio.to_thread(_new_signer, issuer, issuer.key_ref, key_dir, key_algorithm, now)
    try:
        await log.append([NewEvent(event, len(events), actor, request_id)])
    except ConcurrencyError:  # another process made one first: use it, and the key made here is nobody's
        await asyncio.to_thread(discard_signer_key, KeyRef.from_dict(event.key_ref))
        latest = await current_signer(log)
        if latest is None:
            raise
        return latest
    return event


def _new_signer(
    issuer: IssuerRecord, ca_key_ref: KeyRef, key_dir: Path, key_algorithm: str, now: datetime.datetime
) -> CheckpointSignerSet:
    """A new signer key, made where the CA's key lives, and its certificate from the CA (blocking)."""
    ca_key = open_key(ca_key_ref)
    try:
        name = f"audit-checkpoint-{now.strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(4)}"
        signer_key = generate_key(ca_key.ref, name, key_algorithm, key_dir)
        try:
            cert = ca.create_checkpoint_signer(issuer.cert, ca_key, signer_key.public_key(), now, SIGNER_VALIDITY_DAYS)
        except BaseException:
            signer_key.close()
            discard_signer_key(signer_key.ref)
            raise
        signer_key.close()
    finally:
        ca_key.close()
    return CheckpointSignerSet(
        issuer_id=issuer.issuer_id,
        cert_der_hex=cert.public_bytes(serialization.Encoding.DER).hex(),
        key_ref=signer_key.ref.to_dict(),
        not_after=cert.not_valid_after_utc,
    )


def discard_signer_key(ref: KeyRef) -> None:
    """Destroy a signer key that no CheckpointSignerSet names (another process recorded its signer first),
    logging it; a failure is logged too: the key is left behind, named, for an operator to remove."""
    try:
        destroy_key(ref)
    except PCAError as exc:
        log_.error("audit checkpoint signer key %s, made for a signer that was not recorded, is left: %s", ref, exc)
        return
    log_.warning("audit checkpoint signer key %s destroyed: another process recorded a signer first", ref)


def open_signer(signer: CheckpointSignerSet) -> tuple[SigningKey, x509.Certificate]:
    return open_key(KeyRef.from_dict(signer.key_ref)), x509.load_der_x509_certificate(
        bytes.fromhex(signer.cert_der_hex)
    )


def sign_with(signer: CheckpointSignerSet, checkpoint: Checkpoint) -> bytes:
    """The document of ``checkpoint`` signed by ``signer``: opens its key, signs, closes it (blocking: run it
    in a thread, a KMS or PKCS#11 key answers over the network)."""
    key, cert = open_signer(signer)
    try:
        return sign_checkpoint(checkpoint, key, cert)
    finally:
        key.close()
