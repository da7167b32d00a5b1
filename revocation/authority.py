"""The application: decisions on issuance and revocation, recorded as events.

Each command loads what it needs from the projection, decides, and appends
events with the stream version it decided on; if another writer got there first,
the command is decided again on the new state (optimistic concurrency).

Opening, generating and using keys runs in a thread (``asyncio.to_thread``): a key in
an HSM or a cloud KMS answers over the network, and the event loop it would block
serves the admin API, and in one process the publisher and the responders too.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import logging
import secrets
import threading
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from revocation import ca
from revocation.ca_status import (
    CACertificateError,
    CAStatusView,
    is_ca_certificate,
    issuer_of_record,
    issuer_problem,
    own_certificate,
)
from revocation.clock import Clock
from revocation.crl_layout import CRLLayout
from revocation.errors import (
    ConcurrencyError,
    ConflictError,
    IntegrityError,
    NotFoundError,
    PCAError,
    ValidationError,
)
from revocation.eventlog import EventLog, NewEvent, RecordedEvent
from revocation.events import (
    REVOCATION_REASONS,
    CertificateHoldReleased,
    CertificateIssued,
    CertificateRevoked,
    IssuerAdded,
    ResponderCertRotated,
    cert_stream,
)
from revocation.keys import (
    KEY_ALGORITHMS,
    KeyRef,
    PublicKey,
    SigningKey,
    destroy_key,
    generate_key,
    generate_private_key,
    open_key,
)
from revocation.keys.usage import CountedKey
from revocation.projection import CertificateRecord, IssuerRecord

_RETRIES = 5

log = logging.getLogger("pca.authority")


@dataclasses.dataclass(frozen=True)
class Actor:
    name: str
    request_id: str


@dataclasses.dataclass(frozen=True)
class IssueRequest:
    subject: str | None = None
    dns: Sequence[str] = ()
    ips: Sequence[str] = ()
    emails: Sequence[str] = ()
    uris: Sequence[str] = ()
    profile: str = "server"
    validity_days: int | None = None
    csr: bytes | None = None
    key_algorithm: str | None = None  # for a generated key when there is no CSR
    issuer_id: str | None = None


@dataclasses.dataclass(frozen=True)
class Issued:
    certificate: x509.Certificate
    private_key_pem: bytes | None
    event: RecordedEvent


@dataclasses.dataclass(frozen=True)
class RevokeOutcome:
    event: RecordedEvent
    created: bool  # False when the same revocation had been recorded before


def parse_serial(text: str) -> int:
    """A serial as lowercase or uppercase hex, optionally with colons; positive."""
    cleaned = text.strip().replace(":", "").lower()
    if cleaned.startswith("0x"):
        cleaned = cleaned[2:]
    if not cleaned or len(cleaned) > 40 or any(ch not in "0123456789abcdef" for ch in cleaned):
        raise ValidationError(f"serial {text!r} is not a hexadecimal number of at most 20 octets")
    value = int(cleaned, 16)
    if value == 0:
        raise ValidationError("serial 0 is not a valid certificate serial")
    return value


class Authority:
    def __init__(
        self,
        log: EventLog,
        view: CAStatusView,
        clock: Clock,
        *,
        key_dir: Path,
        default_issuer: str,
        leaf_validity_days: int,
        key_algorithm: str,
        ocsp_url: str,
        signer_validity_days: int = 30,
        signer_renew_before_days: int = 10,
        crl_layout: CRLLayout | None = None,
    ) -> None:
        if leaf_validity_days < 1:
            raise ValueError(f"leaf_validity_days must be positive, got {leaf_validity_days}")
        self._log = log
        self._view = view
        self._clock = clock
        self._key_dir = key_dir
        self._default_issuer = default_issuer
        self._leaf_validity_days = leaf_validity_days
        self._key_algorithm = key_algorithm
        self._ocsp_url = ocsp_url
        self._signer_validity = datetime.timedelta(days=signer_validity_days)
        self._signer_renew_before = datetime.timedelta(days=signer_renew_before_days)
        self._keys: dict[KeyRef, SigningKey] = {}
        self._keys_lock = threading.Lock()  # keys are opened in threads (see the module docstring)
        # None: every leaf carries its issuer's recorded CRL URL (unsharded, no delta CRLs).
        self._crl_layout = crl_layout

    def _key(self, ref: KeyRef) -> SigningKey:
        """The open key of ``ref`` (opened on first use); call it in a thread, not on the event loop."""
        with self._keys_lock:
            key = self._keys.get(ref)
            if key is None:
                key = self._keys[ref] = CountedKey(open_key(ref), "api")
            return key

    @property
    def ocsp_url(self) -> str:
        """The OCSP URL written into the leaves this authority issues."""
        return self._ocsp_url

    async def issuers(self) -> list[IssuerRecord]:
        return await self._view.issuers()

    async def _issuer(self, issuer_id: str | None) -> IssuerRecord:
        wanted = issuer_id or self._default_issuer
        for rec in await self._view.issuers():
            if rec.issuer_id == wanted:
                return rec
        raise NotFoundError(f"unknown issuer {wanted!r}")

    # --- issuance -------------------------------------------------------------

    async def issue(self, req: IssueRequest, actor: Actor) -> Issued:
        issuer = await self._issuer(req.issuer_id)
        if issuer.key_ref is None or issuer.kind != "intermediate":
            raise ValidationError(f"issuer {issuer.issuer_id!r} does not issue leaf certificates")
        problem = await issuer_problem(self._view, issuer, self._clock.now())
        if problem is not None:
            raise ConflictError(f"{problem}: it issues no more certificates")
        key_pem: bytes | None = None
        subject_text = req.subject
        sans = ca.build_sans(req.dns, req.ips, req.emails, req.uris)
        if req.csr is not None:
            csr = ca.parse_csr(req.csr)
            public: PublicKey = csr.public_key()  # type: ignore[assignment]
            # What the request names wins; only what is taken from the CSR is read (and checked) there.
            csr_subject, csr_sans = ca.csr_names(csr, subject=not subject_text, sans=not sans)
            subject = ca.parse_subject(subject_text) if subject_text else csr_subject
            sans = sans or csr_sans
        else:
            if not subject_text:
                raise ValidationError("subject is required when no CSR is given")
            subject = ca.parse_subject(subject_text)
            algorithm = req.key_algorithm or self._key_algorithm
            if algorithm not in KEY_ALGORITHMS:
                raise ValidationError(f"unknown key algorithm {algorithm!r}; choose one of {', '.join(KEY_ALGORITHMS)}")
            private = await asyncio.to_thread(generate_private_key, algorithm)  # RSA-4096 takes a while
            public = private.public_key()
            key_pem = private.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        # The serial is drawn first: its random bits choose the CRL shard written into the certificate.
        serial = ca.random_serial()
        crl_url, freshest_url = issuer.crl_url, None
        if self._crl_layout is not None:
            shard = self._crl_layout.shard_for(serial)
            crl_url = self._crl_layout.full_url(issuer.issuer_id, shard)
            if self._crl_layout.deltas:
                freshest_url = self._crl_layout.delta_url(issuer.issuer_id, shard)
        key_ref, now = issuer.key_ref, self._clock.now()
        cert = await asyncio.to_thread(
            lambda: ca.issue_leaf(
                issuer.cert,
                self._key(key_ref),
                public,
                subject,
                sans,
                req.profile,
                now,
                self._leaf_validity_days if req.validity_days is None else req.validity_days,
                self._ocsp_url,
                crl_url,
                serial=serial,
                freshest_crl_url=freshest_url,
            )
        )
        event = certificate_issued(issuer.issuer_id, cert, req.profile)
        [recorded] = await self._log.append([NewEvent(event, 0, actor.name, actor.request_id)])
        return Issued(cert, key_pem, recorded)

    # --- revocation -----------------------------------------------------------

    async def find(self, serial: int, issuer_id: str | None = None) -> CertificateRecord:
        found = await self._view.certificates_by_serial(serial)
        if issuer_id is not None:
            found = [c for c in found if c.issuer_id == issuer_id]
        if not found:
            raise NotFoundError(f"no certificate with serial {serial:x}" + (f" from {issuer_id}" if issuer_id else ""))
        if len(found) > 1:
            raise ValidationError(f"serial {serial:x} exists under several issuers; name the issuer")
        return found[0]

    async def revoke(
        self,
        serial: int,
        reason: str,
        actor: Actor,
        *,
        invalidity_date: datetime.datetime | None = None,
        issuer_id: str | None = None,
        allow_ca: bool = False,
    ) -> RevokeOutcome:
        """Revoke a certificate; a CA certificate only with ``allow_ca`` (``revoke_ca`` passes it)."""
        if reason not in REVOCATION_REASONS:
            raise ValidationError(f"unknown revocation reason {reason!r}; use one of {', '.join(REVOCATION_REASONS)}")
        # Whole seconds: CRLs and OCSP encode no more, and the API must show what they say.
        now = self._clock.now().replace(microsecond=0)
        if invalidity_date is not None:
            invalidity_date = invalidity_date.replace(microsecond=0)
        if invalidity_date is not None and invalidity_date > now + datetime.timedelta(seconds=5):
            raise ValidationError(f"invalidity date {invalidity_date.isoformat()} is in the future")
        for _ in range(_RETRIES):
            cert = await self.find(serial, issuer_id)
            if not allow_ca and await self._is_ca(cert):
                raise CACertificateError(cert.serial_hex, await self._issuer_id_of(cert))
            if cert.status == "revoked":
                previous = await self._last_revocation(cert)
                prev_event = previous.event
                if not isinstance(prev_event, CertificateRevoked):
                    raise IntegrityError(f"last revocation of {serial:x} is a {previous.type}", previous.seq)
                if prev_event.reason == reason and prev_event.invalidity_date == invalidity_date:
                    return RevokeOutcome(previous, created=False)
                # RFC 5280 5.3.1: a certificate on hold may be revoked for good; nothing else changes.
                if cert.reason != "certificateHold" or reason == "certificateHold":
                    raise ConflictError(
                        f"certificate {serial:x} is already revoked with reason {cert.reason}"
                        + (" and another invalidity date" if prev_event.reason == reason else "")
                    )
            event = CertificateRevoked(
                issuer_id=cert.issuer_id,
                serial=f"{serial:x}",
                reason=reason,
                revoked_at=now,
                invalidity_date=invalidity_date,
            )
            try:
                [recorded] = await self._log.append([NewEvent(event, cert.version, actor.name, actor.request_id)])
            except ConcurrencyError:
                continue
            return RevokeOutcome(recorded, created=True)
        raise ConflictError(f"certificate {serial:x} changed {_RETRIES} times while revoking it; try again")

    async def revoke_ca(
        self,
        issuer_id: str,
        reason: str,
        actor: Actor,
        *,
        invalidity_date: datetime.datetime | None = None,
    ) -> RevokeOutcome:
        """Revoke issuer ``issuer_id``'s own CA certificate, as recorded under the CA that issued it.

        The parent's CRL and OCSP then list it, and issuance under it stops (``issue``).
        """
        rec = await own_certificate(self._view, issuer_id)
        return await self.revoke(
            rec.serial, reason, actor, invalidity_date=invalidity_date, issuer_id=rec.issuer_id, allow_ca=True
        )

    async def _is_ca(self, cert: CertificateRecord) -> bool:
        if cert.profile == "ca":
            return True
        if cert.profile in ca.PROFILES:  # a leaf pca issued
            return False
        recorded = await self._view.recorded_certificates(cert.issuer_id, [cert.serial])
        return any(is_ca_certificate(r.cert_der) for r in recorded)

    async def _issuer_id_of(self, cert: CertificateRecord) -> str | None:
        found = issuer_of_record(cert, await self._view.issuers())
        return None if found is None else found.issuer_id

    async def _last_revocation(self, cert: CertificateRecord) -> RecordedEvent:
        events = await self._log.read_stream(cert_stream(cert.issuer_id, cert.serial))
        for rec in reversed(events):
            if rec.type == CertificateRevoked.TYPE:
                return rec
        raise NotFoundError(f"certificate {cert.serial_hex} has no revocation event")

    async def release_ca_hold(self, issuer_id: str, actor: Actor) -> RecordedEvent:
        """Release issuer ``issuer_id``'s own CA certificate from ``certificateHold``."""
        rec = await own_certificate(self._view, issuer_id)
        return await self.release_hold(rec.serial, actor, rec.issuer_id, allow_ca=True)

    async def release_hold(
        self, serial: int, actor: Actor, issuer_id: str | None = None, *, allow_ca: bool = False
    ) -> RecordedEvent:
        for _ in range(_RETRIES):
            cert = await self.find(serial, issuer_id)
            if not allow_ca and await self._is_ca(cert):
                raise CACertificateError(cert.serial_hex, await self._issuer_id_of(cert), "release-hold")
            if cert.status != "revoked" or cert.reason != "certificateHold":
                state = "not revoked" if cert.status != "revoked" else f"revoked with reason {cert.reason}"
                raise ConflictError(f"certificate {serial:x} is not on hold ({state})")
            event = CertificateHoldReleased(cert.issuer_id, f"{serial:x}", self._clock.now())
            try:
                [recorded] = await self._log.append([NewEvent(event, cert.version, actor.name, actor.request_id)])
            except ConcurrencyError:
                continue
            return recorded
        raise ConflictError(f"certificate {serial:x} changed {_RETRIES} times while releasing it; try again")

    # --- delegated OCSP signers ----------------------------------------------------

    async def rotate_signers(
        self, actor: Actor, force: bool = False, issuer_id: str | None = None
    ) -> list[RecordedEvent]:
        """Give every issuer whose key we hold (the root too: its OCSP answers for the intermediates it
        issued, a revoked one included) a fresh OCSP signer when its current one nears expiry (only
        ``issuer_id``'s when given). External issuers without a key get theirs through ``pca issuer set-signer``."""
        now = self._clock.now()
        rotated = []
        for issuer in await self._view.issuers():
            if issuer.key_ref is None:
                continue
            if issuer_id is not None and issuer.issuer_id != issuer_id:
                continue
            current = issuer.signer_cert
            if current is not None and not force and current.not_valid_after_utc - now > self._signer_renew_before:
                continue
            event = await asyncio.to_thread(self._new_signer, issuer, issuer.key_ref, now)
            try:
                [rec] = await self._log.append([NewEvent(event, issuer.version, actor.name, actor.request_id)])
            except ConcurrencyError:
                # Another process rotated it; its signer will do, and the key made here is nobody's.
                await asyncio.to_thread(discard_key, KeyRef.from_dict(event.key_ref), issuer.issuer_id)
                continue
            rotated.append(rec)
        return rotated

    def _new_signer(self, issuer: IssuerRecord, key_ref: KeyRef, now: datetime.datetime) -> ResponderCertRotated:
        return new_signer(issuer, self._key(key_ref), self._key_dir, self._key_algorithm, now, self._signer_validity)


def certificate_issued(issuer_id: str, cert: x509.Certificate, profile: str) -> CertificateIssued:
    return CertificateIssued(
        issuer_id=issuer_id,
        serial=f"{cert.serial_number:x}",
        subject=cert.subject.rfc4514_string(),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        cert_der_hex=cert.public_bytes(serialization.Encoding.DER).hex(),
        profile=profile,
    )


def new_signer(
    issuer: IssuerRecord,
    issuer_key: SigningKey,
    key_dir: Path,
    key_algorithm: str,
    now: datetime.datetime,
    validity: datetime.timedelta,
) -> ResponderCertRotated:
    # The signer's key lives where the issuing CA's key lives (same backend, token or region, secrets).
    name = f"{issuer.issuer_id}-ocsp-{now.strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(4)}"
    signer_key = generate_key(issuer_key.ref, name, key_algorithm, key_dir)
    try:
        cert = ca.create_ocsp_signer(issuer.cert, issuer_key, signer_key.public_key(), now, validity.days)
    except BaseException:
        signer_key.close()
        discard_key(signer_key.ref, issuer.issuer_id)
        raise
    signer_key.close()
    return ResponderCertRotated(
        issuer_id=issuer.issuer_id,
        cert_der_hex=cert.public_bytes(serialization.Encoding.DER).hex(),
        key_ref=signer_key.ref.to_dict(),
        not_after=cert.not_valid_after_utc,
    )


def discard_key(ref: KeyRef, issuer_id: str) -> None:
    """Destroy a signer key made for a rotation that did not happen, logging it (a failure is logged too:
    the key is left behind, named, for an operator to remove)."""
    try:
        destroy_key(ref)
    except PCAError as exc:
        log.error("OCSP signer key %s of %s, made for a rotation that did not happen, is left: %s", ref, issuer_id, exc)
        return
    log.warning("OCSP signer key %s of %s destroyed: another process rotated the signer first", ref, issuer_id)


def issuer_added(
    issuer_id: str, kind: str, parent_id: str | None, cert: x509.Certificate, key_ref: KeyRef | None, crl_url: str
) -> IssuerAdded:
    return IssuerAdded(
        issuer_id=issuer_id,
        kind=kind,
        parent_id=parent_id,
        cert_der_hex=cert.public_bytes(serialization.Encoding.DER).hex(),
        key_ref=None if key_ref is None else key_ref.to_dict(),
        crl_url=crl_url,
    )
