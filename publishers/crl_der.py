"""Assemble and sign X.509 v2 CRLs (RFC 5280 section 5) from pre-encoded pieces.

cryptography's CertificateRevocationListBuilder copies its list on every
``add_revoked_certificate`` and builds a Python object per entry, which is slow
for 100,000+ entries. Here an entry costs a few byte concatenations (everything
entries share is encoded once) and the TBSCertList is signed once.
"""

from __future__ import annotations

import calendar
import datetime
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from revocation import der
from revocation.keys import SigningKey

OID_AUTHORITY_KEY_IDENTIFIER = "2.5.29.35"
OID_CRL_NUMBER = "2.5.29.20"
OID_REASON_CODE = "2.5.29.21"
OID_INVALIDITY_DATE = "2.5.29.24"
OID_DELTA_CRL_INDICATOR = "2.5.29.27"
OID_ISSUING_DISTRIBUTION_POINT = "2.5.29.28"
OID_FRESHEST_CRL = "2.5.29.46"

# The CRLReason of a delta CRL entry that takes a certificate off its base CRL (a released hold).
REMOVE_FROM_CRL = 8

# CRLReason codes of RFC 5280 section 5.3.1; 7 is unassigned.
VALID_REASONS = frozenset({0, 1, 2, 3, 4, 5, 6, 8, 9, 10})

# CRLNumber and serial numbers are at most 20 octets, i.e. positive values below 2**159.
MAX_CRL_NUMBER = 2**159 - 1
MAX_SERIAL = 2**159 - 1

_UTC = datetime.UTC
_VERSION_V2 = der.integer(1)
# The key types a CA of ours can sign CRLs with. DSA is left out: no backend issues DSA keys, and
# cryptography deprecates the class (touching it warns as of release 51).
_SIGNING_PUBLIC_KEYS = (
    rsa.RSAPublicKey,
    ec.EllipticCurvePublicKey,
    ed25519.Ed25519PublicKey,
    ed448.Ed448PublicKey,
)
_TWO_DIGITS = [b"%02d" % n for n in range(100)]

# reason -> reasonCode Extension DER; none for None and unspecified (RFC 5280 5.3.1 prefers absence).
_REASON_EXTENSION: dict[int | None, bytes] = {None: b"", 0: b""}
_REASON_EXTENSION.update((code, der.extension(OID_REASON_CODE, der.enumerated(code))) for code in VALID_REASONS if code)
# reason -> complete crlEntryExtensions of an entry without invalidity date ("" = field absent).
_REASON_ONLY = {code: der.sequence(ext) if ext else b"" for code, ext in _REASON_EXTENSION.items()}


@dataclass(frozen=True, slots=True)
class CRLEntry:
    """One revokedCertificates entry."""

    serial: int
    revoked_at: datetime.datetime
    # None and 0 (unspecified) emit no reasonCode: RFC 5280 5.3.1 prefers absence to "unspecified".
    reason: int | None = None
    invalidity_date: datetime.datetime | None = None


def build_crl(
    issuer_cert: x509.Certificate,
    key: SigningKey,
    entries: Iterable[CRLEntry],
    *,
    number: int,
    this_update: datetime.datetime,
    next_update: datetime.datetime,
    extra_extensions: Sequence[bytes] = (),
) -> bytes:
    """Return the DER of a v2 CRL for ``issuer_cert`` signed by ``key``.

    ``entries`` are emitted in the order given. ``extra_extensions`` are
    Extension DERs (``der.extension(...)``) appended after the
    AuthorityKeyIdentifier and CRLNumber this function always adds.
    """
    for name, moment in (("this_update", this_update), ("next_update", next_update)):
        try:
            _require_aware(moment)
        except ValueError as exc:
            raise ValueError(f"{name} {exc}") from exc
    # Compare what will be encoded: both times lose their fractions of a second.
    if next_update.replace(microsecond=0) <= this_update.replace(microsecond=0):
        raise ValueError(f"next_update {next_update.isoformat()} is not after this_update {this_update.isoformat()}")
    if not 0 <= number <= MAX_CRL_NUMBER:
        raise ValueError(f"CRL number {number} is outside 0..2**159-1 (CRLNumber is at most 20 octets)")
    _require_matching_key(key, issuer_cert)

    crl_extensions = der.explicit(
        0,
        der.sequence(
            _authority_key_identifier(issuer_cert),
            der.extension(OID_CRL_NUMBER, der.integer(number)),
            *_checked_extra_extensions(extra_extensions),
        ),
    )
    algorithm = key.signature_algorithm_der()
    parts: list[bytes | bytearray] = [
        _VERSION_V2,
        algorithm,
        issuer_cert.subject.public_bytes(),
        _time(this_update, utc_time_allowed=True),
        _time(next_update, utc_time_allowed=True),
    ]
    revoked = _encode_entries(entries)
    # RFC 5280 5.1.2.6: with no entries the field is absent, not an empty SEQUENCE.
    if revoked:
        parts.append(b"\x30" + der.length(len(revoked)))
        parts.append(revoked)
    parts.append(crl_extensions)
    # Joining once with computed headers avoids copying the (possibly 40 MB) entry list per nesting level.
    tbs = b"".join([b"\x30" + der.length(sum(map(len, parts))), *parts])

    signature = der.bit_string(key.sign(tbs))
    body_length = len(tbs) + len(algorithm) + len(signature)
    return b"".join((b"\x30", der.length(body_length), tbs, algorithm, signature))


def issuing_distribution_point(url: str, *, only_user_certs: bool, only_ca_certs: bool) -> bytes:
    """A critical Issuing Distribution Point extension naming ``url`` (RFC 5280 5.2.5)."""
    if only_user_certs and only_ca_certs:
        raise ValueError("an IDP cannot limit a CRL to both user and CA certificates")
    value = x509.IssuingDistributionPoint(
        full_name=[x509.UniformResourceIdentifier(url)],
        relative_name=None,
        only_contains_user_certs=only_user_certs,
        only_contains_ca_certs=only_ca_certs,
        only_some_reasons=None,
        indirect_crl=False,
        only_contains_attribute_certs=False,
    )
    return der.extension(OID_ISSUING_DISTRIBUTION_POINT, value.public_bytes(), critical=True)


def delta_crl_indicator(base_number: int) -> bytes:
    """A critical Delta CRL Indicator naming the base CRL's number (RFC 5280 5.2.4)."""
    if not 0 <= base_number <= MAX_CRL_NUMBER:
        raise ValueError(f"base CRL number {base_number} is outside 0..2**159-1")
    return der.extension(OID_DELTA_CRL_INDICATOR, der.integer(base_number), critical=True)


def freshest_crl(url: str) -> bytes:
    """A non-critical Freshest CRL extension pointing at the delta CRL (RFC 5280 5.2.6)."""
    point = x509.DistributionPoint([x509.UniformResourceIdentifier(url)], None, None, None)
    return der.extension(OID_FRESHEST_CRL, x509.FreshestCRL([point]).public_bytes())


# serial -> (revocationDate in epoch seconds, reason code or None, invalidity date in epoch seconds or None)
EntryValues = tuple[int, int | None, int | None]


def read_entries(crl_der: bytes) -> dict[int, EntryValues]:
    """The revokedCertificates of a CRL, decoded straight from its DER.

    For checking a CRL before it is published: a million entries decode in a
    second or two (cryptography builds an object per entry). Entry times and
    extensions repeat, so each distinct encoding is decoded once. Raises
    ValueError on anything that is not what ``build_crl`` emits: a repeated
    serial, an unknown entry extension, a malformed structure.
    """
    split = der.split_tlv
    tag, start, end = split(crl_der)
    if tag != der.SEQUENCE or end != len(crl_der):
        raise ValueError("a CRL is a single SEQUENCE")
    tag, pos, tbs_end = split(crl_der, start)
    if tag != der.SEQUENCE:
        raise ValueError("tbsCertList is not a SEQUENCE")
    # version, signature, issuer, thisUpdate, [nextUpdate], [revokedCertificates], [crlExtensions]
    seen_times = 0
    list_start = list_end = -1
    while pos < tbs_end:
        tag, value, next_pos = split(crl_der, pos)
        if tag in (der.UTC_TIME, der.GENERALIZED_TIME):
            seen_times += 1
        elif tag == der.SEQUENCE and seen_times:
            list_start, list_end = value, next_pos
        pos = next_pos
    out: dict[int, EntryValues] = {}
    if list_start < 0:
        return out
    times: dict[bytes, int] = {}
    extensions: dict[bytes, tuple[int | None, int | None]] = {b"": (None, None)}
    data = crl_der
    pos = list_start
    while pos < list_end:
        # Entries are at most ~80 octets: short-form lengths, read inline (a million iterations).
        size = data[pos + 1]
        if data[pos] != der.SEQUENCE or size & 0x80:
            raise ValueError(f"revokedCertificates entry at offset {pos} is not a short SEQUENCE")
        body = pos + 2
        next_pos = body + size
        serial_size = data[body + 1]
        serial_end = body + 2 + serial_size
        if data[body] != der.INTEGER or serial_size & 0x80 or data[body + 2] & 0x80:
            raise ValueError(f"revokedCertificates entry at offset {pos} does not start with a positive serial")
        time_end = serial_end + 2 + data[serial_end + 1]
        if next_pos > list_end or time_end > next_pos:
            raise ValueError(f"revokedCertificates entry at offset {pos} is truncated")
        serial = int.from_bytes(data[body + 2 : serial_end], "big")
        time_tlv = data[serial_end:time_end]
        revoked_at = times.get(time_tlv)
        if revoked_at is None:
            revoked_at = times[time_tlv] = _decode_time(time_tlv)
        ext_tlv = data[time_end:next_pos]
        decoded = extensions.get(ext_tlv)
        if decoded is None:
            decoded = extensions[ext_tlv] = _decode_entry_extensions(ext_tlv)
        if serial in out:
            raise ValueError(f"serial {serial:x} is listed twice")
        out[serial] = (revoked_at, decoded[0], decoded[1])
        pos = next_pos
    return out


def _decode_time(tlv: bytes) -> int:
    tag, start, end = der.split_tlv(tlv)
    text = tlv[start:end].decode("ascii")
    if tag == der.UTC_TIME and len(text) == 13 and text.endswith("Z"):
        year = int(text[:2])
        text = ("19" if year >= 50 else "20") + text
    elif not (tag == der.GENERALIZED_TIME and len(text) == 15 and text.endswith("Z")):
        raise ValueError(f"{tlv.hex()} is not a UTCTime or GeneralizedTime in whole seconds")
    fields = (int(text[0:4]), int(text[4:6]), int(text[6:8]), int(text[8:10]), int(text[10:12]), int(text[12:14]))
    return calendar.timegm((*fields, 0, 0, 0))


def _decode_entry_extensions(tlv: bytes) -> tuple[int | None, int | None]:
    tag, pos, end = der.split_tlv(tlv)
    if tag != der.SEQUENCE or end != len(tlv):
        raise ValueError(f"crlEntryExtensions {tlv[:16].hex()} is not a single SEQUENCE")
    reason: int | None = None
    invalidity: int | None = None
    reason_oid, invalidity_oid = der.oid(OID_REASON_CODE), der.oid(OID_INVALIDITY_DATE)
    while pos < end:
        _, ext_start, ext_end = der.split_tlv(tlv, pos)
        _, _, oid_end = der.split_tlv(tlv, ext_start)
        oid = tlv[ext_start:oid_end]
        tag, value, value_end = der.split_tlv(tlv, oid_end)
        if tag == 0x01:  # critical BOOLEAN
            tag, value, value_end = der.split_tlv(tlv, value_end)
        if tag != der.OCTET_STRING or value_end != ext_end:
            raise ValueError(f"entry extension {_dotted(oid)} is malformed")
        if oid == reason_oid:
            inner_tag, inner_start, inner_end = der.split_tlv(tlv, value)
            if inner_tag != der.ENUMERATED:
                raise ValueError("reasonCode is not an ENUMERATED")
            reason = int.from_bytes(tlv[inner_start:inner_end], "big")
        elif oid == invalidity_oid:
            invalidity = _decode_time(tlv[value:value_end])
        else:
            raise ValueError(f"unexpected entry extension {_dotted(oid)}")
        pos = ext_end
    return reason, invalidity


def verify_crl(crl_der: bytes, issuer_cert: x509.Certificate) -> x509.CertificateRevocationList:
    """Parse ``crl_der`` and check it was issued and signed by ``issuer_cert``; ValueError otherwise."""
    try:
        crl = x509.load_der_x509_crl(crl_der)
    except ValueError as exc:
        raise ValueError(f"CRL does not parse as DER: {exc}") from exc
    if crl.issuer != issuer_cert.subject:
        raise ValueError(
            f"CRL issuer {crl.issuer.rfc4514_string()!r} is not the certificate subject "
            f"{issuer_cert.subject.rfc4514_string()!r}"
        )
    public = issuer_cert.public_key()
    # An issuer key of a type that cannot sign (X25519, X448) or that we do not sign with (DSA) never verifies.
    if isinstance(public, _SIGNING_PUBLIC_KEYS) and crl.is_signature_valid(public):
        return crl
    raise ValueError(f"CRL signature does not verify with the key of {issuer_cert.subject.rfc4514_string()!r}")


def _encode_entries(entries: Iterable[CRLEntry]) -> bytearray:
    """The concatenated revokedCertificates entries, without the outer SEQUENCE header."""
    out = bytearray()
    # Revocations come in bursts (mass revocation, key compromise of a host), so times repeat.
    times: dict[datetime.datetime, bytes] = {}
    with_invalidity: dict[tuple[int | None, datetime.datetime], bytes] = {}
    for entry in entries:
        serial = entry.serial
        if not 0 < serial <= MAX_SERIAL:
            raise ValueError(f"serial {serial} is outside 1..2**159-1 (serial numbers are at most 20 octets)")
        revoked_at = times.get(entry.revoked_at)
        if revoked_at is None:
            try:
                revoked_at = times[entry.revoked_at] = _time(entry.revoked_at, utc_time_allowed=True)
            except ValueError as exc:
                raise ValueError(f"serial {serial}: revoked_at {exc}") from exc
        if entry.invalidity_date is None:
            ext = _REASON_ONLY.get(entry.reason)
            if ext is None:
                raise ValueError(f"serial {serial}: reason {entry.reason!r} is not a CRLReason code (0-6, 8-10)")
        else:
            ext_key = (entry.reason, entry.invalidity_date)
            ext = with_invalidity.get(ext_key)
            if ext is None:
                ext = with_invalidity[ext_key] = _reason_and_invalidity(serial, *ext_key)
        body = serial.to_bytes(serial.bit_length() // 8 + 1, "big")
        size = len(body)
        # An entry holds at most 22 (serial) + 17 (time) + 40 (extensions) = 79 octets,
        # so both length octets are always in short form.
        out += bytes((0x30, size + 2 + len(revoked_at) + len(ext), 0x02, size))
        out += body
        out += revoked_at
        out += ext
    return out


def _reason_and_invalidity(serial: int, reason: int | None, invalidity_date: datetime.datetime) -> bytes:
    """crlEntryExtensions for an entry with an invalidity date."""
    reason_ext = _REASON_EXTENSION.get(reason)
    if reason_ext is None:
        raise ValueError(f"serial {serial}: reason {reason!r} is not a CRLReason code (0-6, 8-10)")
    try:
        when = _time(invalidity_date, utc_time_allowed=False)
    except ValueError as exc:
        raise ValueError(f"serial {serial}: invalidity_date {exc}") from exc
    return der.sequence(reason_ext, der.extension(OID_INVALIDITY_DATE, when))


def _time(moment: datetime.datetime, *, utc_time_allowed: bool) -> bytes:
    """``der.x509_time`` (or ``der.generalized_time``) bytes at a sixth of their strftime's cost."""
    if moment.tzinfo is not _UTC:
        _require_aware(moment)
        moment = moment.astimezone(_UTC)
    year = moment.year
    head: tuple[bytes, ...]
    if utc_time_allowed and 1950 <= year < 2050:
        head = (b"\x17\x0d", _TWO_DIGITS[year % 100])
    else:
        head = (b"\x18\x0f", _TWO_DIGITS[year // 100], _TWO_DIGITS[year % 100])
    return b"".join(
        (
            *head,
            _TWO_DIGITS[moment.month],
            _TWO_DIGITS[moment.day],
            _TWO_DIGITS[moment.hour],
            _TWO_DIGITS[moment.minute],
            _TWO_DIGITS[moment.second],
            b"Z",
        )
    )


def _require_aware(moment: datetime.datetime) -> None:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{moment.isoformat()} has no time zone; CRL times must be timezone-aware")


def _require_matching_key(key: SigningKey, issuer_cert: x509.Certificate) -> None:
    encoding = serialization.Encoding.DER
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(encoding, spki) != issuer_cert.public_key().public_bytes(encoding, spki):
        raise ValueError(
            f"key {key.ref.path or key.ref} does not match the public key of {issuer_cert.subject.rfc4514_string()!r}"
        )


def _authority_key_identifier(issuer_cert: x509.Certificate) -> bytes:
    try:
        key_id = issuer_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    except x509.ExtensionNotFound:
        key_id = x509.SubjectKeyIdentifier.from_public_key(issuer_cert.public_key()).digest
    # AuthorityKeyIdentifier ::= SEQUENCE { keyIdentifier [0] IMPLICIT OCTET STRING, ... }
    return der.extension(OID_AUTHORITY_KEY_IDENTIFIER, der.sequence(der.implicit_primitive(0, key_id)))


def _checked_extra_extensions(extra: Sequence[bytes]) -> list[bytes]:
    """Reject malformed or repeated extensions here rather than in every relying party's parser."""
    seen = {der.oid(OID_AUTHORITY_KEY_IDENTIFIER), der.oid(OID_CRL_NUMBER)}
    for index, ext in enumerate(extra):
        try:
            tag, start, end = der.split_tlv(ext)
            if tag != der.SEQUENCE or end != len(ext):
                raise ValueError("not a single SEQUENCE")
            oid_tag, _, oid_end = der.split_tlv(ext, start)
            if oid_tag != der.OID:
                raise ValueError("does not start with an OID")
        except ValueError as exc:
            raise ValueError(f"extra_extensions[{index}] is not an Extension ({exc}): {ext[:16].hex()}") from exc
        extn_id = ext[start:oid_end]
        if extn_id in seen:
            raise ValueError(f"extra_extensions[{index}] repeats extension {_dotted(extn_id)}")
        seen.add(extn_id)
    return list(extra)


def _dotted(oid_tlv: bytes) -> str:
    """Dotted form of an OID TLV, for error messages."""
    arcs: list[int] = []
    value = 0
    for octet in oid_tlv[2:]:
        value = (value << 7) | (octet & 0x7F)
        if not octet & 0x80:
            arcs.append(value)
            value = 0
    if not arcs:
        return oid_tlv.hex()
    first = min(arcs[0] // 40, 2)
    return ".".join(str(arc) for arc in [first, arcs[0] - 40 * first, *arcs[1:]])
