"""What a fetched CRL must be before it is installed.

``inspect`` parses a body (DER or PEM, exactly one CRL) and checks what the CRL says about
itself: its signature by a trusted CA allowed to sign CRLs, its times and its number.
``check_against`` compares it with what is installed: numbers never go backwards, a URL keeps
its issuer, the Issuing Distribution Point names the URL, and a delta CRL comes only from a URL
configured as a delta and refers to a base no newer than the installed full CRL.
Every refusal is a ``Refused`` with a short ``reason`` (a metric label) and a sentence.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TypeVar

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

_E = TypeVar("_E", bound=x509.ExtensionType)
_PEM_BEGIN = b"-----BEGIN X509 CRL-----"
_SIGNING_KEYS = (rsa.RSAPublicKey, ec.EllipticCurvePublicKey, ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)
# CRL extensions cryptography decodes; a critical extension outside these is one a relying party may not know.
_KNOWN_CRITICAL = (
    x509.IssuingDistributionPoint,
    x509.DeltaCRLIndicator,
    x509.CRLNumber,
    x509.AuthorityKeyIdentifier,
    x509.FreshestCRL,
    x509.IssuerAlternativeName,
    x509.AuthorityInformationAccess,
)


class Refused(Exception):
    """A CRL (or its download) that is not installed: ``reason`` is a metric label, the text says why."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclasses.dataclass(frozen=True)
class CRLInfo:
    """A verified CRL: its DER and what the agent checks, installs and reports."""

    der: bytes
    issuer: str  # RFC 4514
    issuer_der: bytes
    issuer_key_id: str | None  # AuthorityKeyIdentifier keyIdentifier, lowercase hex
    number: int
    delta_base: int | None  # the Delta CRL Indicator's base number; None for a full CRL
    idp_url: str | None
    freshest_urls: tuple[str, ...]
    this_update: datetime.datetime
    next_update: datetime.datetime

    @property
    def delta(self) -> bool:
        return self.delta_base is not None

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.der).hexdigest()

    def pem(self) -> bytes:
        return x509.load_der_x509_crl(self.der).public_bytes(serialization.Encoding.PEM)


class TrustStore:
    """The CA certificates whose CRLs are accepted (``--ca-bundle``)."""

    def __init__(self, certificates: Iterable[x509.Certificate]) -> None:
        self.certificates = list(certificates)

    @classmethod
    def from_file(cls, path: Path) -> TrustStore:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ValueError(f"cannot read the CA bundle {path}: {exc.strerror or exc}") from exc
        try:
            certs = x509.load_pem_x509_certificates(data)
        except ValueError:
            try:
                certs = [x509.load_der_x509_certificate(data)]
            except ValueError as exc:
                raise ValueError(f"the CA bundle {path} holds no PEM or DER certificate") from exc
        return cls(certs)

    def signer(self, crl: x509.CertificateRevocationList) -> x509.Certificate:
        """The trusted CA that signed ``crl``; Refused when none did."""
        named = [c for c in self.certificates if c.subject == crl.issuer]
        if not named:
            raise Refused("untrusted-issuer", f"issuer {crl.issuer.rfc4514_string()!r} is not in the CA bundle")
        signed = [c for c in named if isinstance(c.public_key(), _SIGNING_KEYS) and _signature_ok(crl, c)]
        if not signed:
            raise Refused(
                "bad-signature",
                f"signature does not verify with the key of any CA named {crl.issuer.rfc4514_string()!r} in the bundle",
            )
        for cert in signed:
            if _may_sign_crls(cert):
                return cert
        raise Refused(
            "ca-key-usage", f"the CA {crl.issuer.rfc4514_string()!r} may not sign CRLs (keyUsage lacks cRLSign)"
        )


def _signature_ok(crl: x509.CertificateRevocationList, cert: x509.Certificate) -> bool:
    try:
        return crl.is_signature_valid(cert.public_key())  # type: ignore[arg-type]
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return False


def _may_sign_crls(cert: x509.Certificate) -> bool:
    """A CA certificate (basicConstraints cA) whose keyUsage, when present, has cRLSign."""
    try:
        if not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
            return False
    except x509.ExtensionNotFound:
        return False
    try:
        return cert.extensions.get_extension_for_class(x509.KeyUsage).value.crl_sign
    except x509.ExtensionNotFound:
        return True  # RFC 5280 4.2.1.3: without keyUsage the key's uses are not restricted


def load_crl(body: bytes) -> x509.CertificateRevocationList:
    """One CRL from a DER or PEM body; Refused("parse") otherwise."""
    stripped = body.strip()
    try:
        if stripped.startswith(b"-----"):
            if stripped.count(b"-----BEGIN") != 1 or not stripped.startswith(_PEM_BEGIN):
                raise ValueError("a PEM body must hold exactly one X509 CRL")
            crl = x509.load_pem_x509_crl(stripped)
        else:
            crl = x509.load_der_x509_crl(body)
        _check_signature_bits(crl.public_bytes(serialization.Encoding.DER))
        return crl
    except Exception as exc:  # on untrusted input, whatever the parser raises (InvalidVersion is no ValueError)
        raise Refused("parse", f"not a CRL ({len(body)} bytes): {str(exc)[:200]}") from exc


def _tlv(der: bytes, at: int) -> tuple[int, int, int]:
    """(tag, start of the content, end) of the DER element at ``at``."""
    tag, first = der[at], der[at + 1]
    if first < 0x80:
        return tag, at + 2, at + 2 + first
    count = first & 0x7F
    start = at + 2 + count
    return tag, start, start + int.from_bytes(der[at + 2 : start], "big")


def _check_signature_bits(der: bytes) -> None:
    """The signature BIT STRING declares no unused bits. cryptography verifies the signature's bytes
    whatever that count says (when the bits it declares unused are zero), but OpenSSL refuses such a
    CRL, so nginx or HAProxy would fail to load a bundle holding one: found by flipping bytes."""
    _, outer, _ = _tlv(der, 0)
    _, _, algorithm = _tlv(der, _tlv(der, outer)[2])
    tag, content, _ = _tlv(der, algorithm)
    if tag != 0x03 or der[content] != 0:
        raise ValueError("the signature is not a BIT STRING without unused bits")


def inspect(
    body: bytes, trust: TrustStore, now: datetime.datetime, max_skew: datetime.timedelta = datetime.timedelta(0)
) -> CRLInfo:
    """Parse ``body`` and check it on its own: signer, times, number, critical extensions."""
    crl = load_crl(body)
    try:
        return _inspect(crl, trust, now, max_skew)
    except Refused:
        raise
    # cryptography parses fields when they are first asked for, and raises more than ValueError on them
    # (DuplicateExtension, UnsupportedGeneralNameType, InvalidVersion, ...): on untrusted input, any is a refusal.
    except Exception as exc:
        raise Refused("parse", f"malformed CRL ({type(exc).__name__}): {str(exc)[:200]}") from exc


def _inspect(
    crl: x509.CertificateRevocationList, trust: TrustStore, now: datetime.datetime, max_skew: datetime.timedelta
) -> CRLInfo:
    try:
        extensions = crl.extensions
    except ValueError as exc:
        raise Refused("parse", f"extensions do not parse: {str(exc)[:200]}") from exc
    for ext in extensions:
        if ext.critical and not isinstance(ext.value, _KNOWN_CRITICAL):
            raise Refused("unsupported-extension", f"unknown critical extension {ext.oid.dotted_string}")
    trust.signer(crl)
    this_update, next_update = crl.last_update_utc, crl.next_update_utc
    if next_update is None:
        raise Refused("no-next-update", "the CRL has no nextUpdate")
    if next_update <= now:
        raise Refused("expired", f"nextUpdate {_iso(next_update)} has passed")
    if this_update > now + max_skew:
        raise Refused("not-yet-valid", f"thisUpdate {_iso(this_update)} is in the future")
    if _value(extensions, x509.CRLNumber) is None:
        raise Refused("no-crl-number", "the CRL has no CRL number")
    return describe(crl)


def describe(crl: x509.CertificateRevocationList) -> CRLInfo:
    """What the agent keeps of a CRL that has a CRL number and a nextUpdate (``inspect`` checked it,
    or the agent installed it before)."""
    extensions = crl.extensions
    number = _value(extensions, x509.CRLNumber)
    if number is None or crl.next_update_utc is None:
        raise ValueError("a CRL without a CRL number or nextUpdate")
    delta = _value(extensions, x509.DeltaCRLIndicator)
    idp = _value(extensions, x509.IssuingDistributionPoint)
    aki = _value(extensions, x509.AuthorityKeyIdentifier)
    freshest = _value(extensions, x509.FreshestCRL)
    return CRLInfo(
        der=crl.public_bytes(serialization.Encoding.DER),
        issuer=crl.issuer.rfc4514_string(),
        issuer_der=crl.issuer.public_bytes(),
        issuer_key_id=aki.key_identifier.hex() if aki is not None and aki.key_identifier else None,
        number=number.crl_number,
        delta_base=delta.crl_number if delta is not None else None,
        idp_url=_idp_url(idp),
        freshest_urls=tuple(
            name.value
            for point in (freshest or [])
            for name in (point.full_name or [])
            if isinstance(name, x509.UniformResourceIdentifier)
        ),
        this_update=crl.last_update_utc,
        next_update=crl.next_update_utc,
    )


def check_floor(info: CRLInfo, number: int, sha256: str) -> None:
    """Against the number and digest the state file remembers for a URL whose CRL is no longer at hand
    (the output file was removed): the number still never goes backwards."""
    if info.number < number:
        raise Refused("number-regressed", f"CRL number {info.number} is below the installed {number}")
    if info.number == number and info.sha256 != sha256:
        raise Refused("number-reused", f"CRL number {info.number} was installed already with other content")


def check_against(
    info: CRLInfo,
    url: str,
    installed: Mapping[str, CRLInfo],
    *,
    full_urls: Iterable[str],
    delta_urls: Iterable[str],
) -> bool:
    """Check ``info`` fetched from ``url`` against what is installed; True when it is new, False when it is
    the installed CRL itself. ``installed`` maps every URL with a CRL to it; ``full_urls`` are the URLs
    configured for CRLs of any kind (``--url``), ``delta_urls`` those configured as deltas only."""
    current = installed.get(url)
    if current is not None:
        if info.issuer_der != current.issuer_der:
            raise Refused("issuer-changed", f"issuer {info.issuer!r} is not the installed CRL's {current.issuer!r}")
        if info.number < current.number:
            raise Refused("number-regressed", f"CRL number {info.number} is below the installed {current.number}")
        if info.number == current.number:
            if info.der == current.der:
                return False
            raise Refused("number-reused", f"CRL number {info.number} is installed already with other content")
    if not info.delta:
        if info.idp_url is not None and info.idp_url != url:
            raise Refused("idp-mismatch", f"Issuing Distribution Point {info.idp_url} is not the URL fetched")
        return True
    # A delta: only where configured as one, explicitly or by the Freshest CRL of an installed full CRL.
    fulls = {u: c for u, c in installed.items() if u != url and not c.delta and c.issuer_der == info.issuer_der}
    if url not in set(delta_urls) and not any(url in c.freshest_urls for c in fulls.values()):
        raise Refused(
            "unexpected-delta",
            "a delta CRL from a URL not configured as a delta (--delta-url, or named in the Freshest CRL "
            "of a full CRL synced from the same issuer)",
        )
    # RFC 5280 5.2.4: a delta's IDP is its base's; so it names the full CRL's URL (or, failing one, its own).
    if info.idp_url is not None and info.idp_url != url and info.idp_url not in set(full_urls):
        raise Refused("idp-mismatch", f"delta's Issuing Distribution Point {info.idp_url} names no configured URL")
    if info.idp_url is not None and info.idp_url in fulls:
        base = fulls[info.idp_url]
    elif info.idp_url is None and len(fulls) == 1:
        [base] = fulls.values()
    else:
        return True
    assert info.delta_base is not None
    if info.delta_base > base.number:
        raise Refused(
            "delta-base-ahead",
            f"delta refers to base CRL number {info.delta_base}, newer than the installed full CRL's {base.number}",
        )
    return True


def _value(extensions: x509.Extensions, kind: type[_E]) -> _E | None:
    try:
        return extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None


def _idp_url(idp: x509.IssuingDistributionPoint | None) -> str | None:
    if idp is None:
        return None
    for name in idp.full_name or []:
        if isinstance(name, x509.UniformResourceIdentifier):
            return name.value
    return None


def _iso(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
