"""Domain events: frozen dataclasses with a type name and a payload schema version.

The payload stored in the log is versioned JSON (``{"v": N, ...}``). Old payloads
are brought to the current schema by upcasters registered per (type, version),
so the log never has to be rewritten.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

from revocation.clock import iso, parse_iso
from revocation.errors import IntegrityError

# RFC 5280 CRLReason names and codes (7 is unused).
REASONS: dict[str, int] = {
    "unspecified": 0,
    "keyCompromise": 1,
    "cACompromise": 2,
    "affiliationChanged": 3,
    "superseded": 4,
    "cessationOfOperation": 5,
    "certificateHold": 6,
    "removeFromCRL": 8,
    "privilegeWithdrawn": 9,
    "aACompromise": 10,
}
# removeFromCRL only appears in delta CRLs; an operator cannot revoke with it.
REVOCATION_REASONS = tuple(r for r in REASONS if r != "removeFromCRL")


def cert_stream(issuer_id: str, serial: int) -> str:
    return f"cert/{issuer_id}/{serial:x}"


def issuer_stream(issuer_id: str) -> str:
    return f"issuer/{issuer_id}"


def _time_field(value: str | None) -> datetime.datetime | None:
    return None if value is None else parse_iso(value)


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _field_names(cls: type) -> tuple[str, ...]:
    """The dataclass field names of an event class, looked up once (``to_payload`` runs per event)."""
    names = _FIELD_NAMES.get(cls)
    if names is None:
        names = _FIELD_NAMES[cls] = tuple(f.name for f in dataclasses.fields(cls))
    return names


@dataclasses.dataclass(frozen=True)
class DomainEvent:
    TYPE: ClassVar[str] = ""
    SCHEMA: ClassVar[int] = 1

    def stream(self) -> str:
        raise NotImplementedError

    def to_payload(self) -> dict[str, Any]:
        out: dict[str, Any] = {"v": self.SCHEMA}
        for name in _field_names(type(self)):
            value = getattr(self, name)
            out[name] = iso(value) if isinstance(value, datetime.datetime) else value
        return out

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> DomainEvent:
        data = {k: v for k, v in payload.items() if k != "v"}
        for f in dataclasses.fields(cls):
            if f.type in ("datetime.datetime", "datetime.datetime | None") and f.name in data:
                data[f.name] = _time_field(data[f.name])
        return cls(**data)


@dataclasses.dataclass(frozen=True)
class IssuerAdded(DomainEvent):
    TYPE: ClassVar[str] = "IssuerAdded"
    issuer_id: str
    kind: str  # "root", "intermediate" or "external" (imported, not run by us)
    parent_id: str | None
    cert_der_hex: str
    key_ref: dict[str, str] | None  # None for external issuers: we hold no key
    crl_url: str

    def stream(self) -> str:
        return issuer_stream(self.issuer_id)


@dataclasses.dataclass(frozen=True)
class ResponderCertRotated(DomainEvent):
    TYPE: ClassVar[str] = "ResponderCertRotated"
    issuer_id: str
    cert_der_hex: str
    key_ref: dict[str, str]
    not_after: datetime.datetime

    def stream(self) -> str:
        return issuer_stream(self.issuer_id)


@dataclasses.dataclass(frozen=True)
class OCSPSignerKeyPrepared(DomainEvent):
    """A delegated OCSP signer key made for an issuer whose CA key we do not hold.

    Its CSR goes to the issuer's CA; the certificate that CA issues for it arrives as a
    ``ResponderCertRotated`` naming this key. Until then the current signer (if any) signs.
    """

    TYPE: ClassVar[str] = "OCSPSignerKeyPrepared"
    issuer_id: str
    key_ref: dict[str, str]
    csr_der_hex: str

    def stream(self) -> str:
        return issuer_stream(self.issuer_id)


@dataclasses.dataclass(frozen=True)
class CertificateIssued(DomainEvent):
    TYPE: ClassVar[str] = "CertificateIssued"
    issuer_id: str
    serial: str  # lowercase hex
    subject: str
    not_before: datetime.datetime
    not_after: datetime.datetime
    cert_der_hex: str
    profile: str  # "server", "client" or "imported"

    def stream(self) -> str:
        return cert_stream(self.issuer_id, int(self.serial, 16))


@dataclasses.dataclass(frozen=True)
class CertificateRevoked(DomainEvent):
    TYPE: ClassVar[str] = "CertificateRevoked"
    issuer_id: str
    serial: str
    reason: str
    revoked_at: datetime.datetime
    invalidity_date: datetime.datetime | None = None

    def stream(self) -> str:
        return cert_stream(self.issuer_id, int(self.serial, 16))


@dataclasses.dataclass(frozen=True)
class CertificateHoldReleased(DomainEvent):
    TYPE: ClassVar[str] = "CertificateHoldReleased"
    issuer_id: str
    serial: str
    released_at: datetime.datetime

    def stream(self) -> str:
        return cert_stream(self.issuer_id, int(self.serial, 16))


def token_stream(name: str) -> str:
    return f"token/{name}"


@dataclasses.dataclass(frozen=True)
class TokenCreated(DomainEvent):
    """An admin API token was created (``pca init``, ``pca token create``); the log never holds the secret."""

    TYPE: ClassVar[str] = "TokenCreated"
    name: str
    role: str
    expires: datetime.datetime | None = None

    def stream(self) -> str:
        return token_stream(self.name)


@dataclasses.dataclass(frozen=True)
class TokenRevoked(DomainEvent):
    """An admin API token was revoked (``pca token revoke``): the API refuses it from then on."""

    TYPE: ClassVar[str] = "TokenRevoked"
    name: str
    role: str

    def stream(self) -> str:
        return token_stream(self.name)


@dataclasses.dataclass(frozen=True)
class CheckpointSignerSet(DomainEvent):
    """The key that signs the audit checkpoints of the log's head, and its certificate from an issuing CA
    (``revocation.checkpoints``). Not part of the certificate-status projection."""

    TYPE: ClassVar[str] = "CheckpointSignerSet"
    issuer_id: str
    cert_der_hex: str
    key_ref: dict[str, str]
    not_after: datetime.datetime

    def stream(self) -> str:
        return "audit/checkpoint-signer"


EVENT_TYPES: dict[str, type[DomainEvent]] = {
    cls.TYPE: cls
    for cls in (
        IssuerAdded,
        ResponderCertRotated,
        OCSPSignerKeyPrepared,
        CertificateIssued,
        CertificateRevoked,
        CertificateHoldReleased,
        TokenCreated,
        TokenRevoked,
        CheckpointSignerSet,
    )
}

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]
# (type, from schema version) -> function returning the payload at version + 1.
UPCASTERS: dict[tuple[str, int], Upcaster] = {}

E = TypeVar("E", bound=DomainEvent)


def decode(type_name: str, payload: dict[str, Any]) -> DomainEvent:
    """Turn a stored payload into its event, upcasting old schema versions."""
    cls = EVENT_TYPES.get(type_name)
    if cls is None:
        raise IntegrityError(f"unknown event type {type_name!r}")
    version = int(payload.get("v", 1))
    while version < cls.SCHEMA:
        upcast = UPCASTERS.get((type_name, version))
        if upcast is None:
            raise IntegrityError(f"no upcaster for {type_name} schema {version}")
        payload = upcast(payload)
        version += 1
        payload["v"] = version
    if version > cls.SCHEMA:
        raise IntegrityError(f"{type_name} schema {version} is newer than this code ({cls.SCHEMA})")
    return cls.from_payload(payload)
