"""A small DER encoder for the structures we assemble by hand.

OCSP responses and CRLs are signed millions of times, so the hot paths build
their DER from pre-encoded pieces instead of going through a generic builder.
These helpers encode the few universal types those structures need; parsing
back is left to cryptography and asn1crypto.
"""

from __future__ import annotations

import datetime

# Universal tags
INTEGER = 0x02
BIT_STRING = 0x03
OCTET_STRING = 0x04
NULL = 0x05
OID = 0x06
ENUMERATED = 0x0A
UTC_TIME = 0x17
GENERALIZED_TIME = 0x18
SEQUENCE = 0x30
SET = 0x31


def length(n: int) -> bytes:
    """Encode a DER length."""
    if n < 0x80:
        return bytes((n,))
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((0x80 | len(body),)) + body


def tlv(tag: int, value: bytes) -> bytes:
    """Encode one tag-length-value."""
    n = len(value)
    if n < 0x80:
        return bytes((tag, n)) + value
    return bytes((tag,)) + length(n) + value


def sequence(*items: bytes) -> bytes:
    return tlv(SEQUENCE, b"".join(items))


def explicit(number: int, value: bytes) -> bytes:
    """A context-specific constructed (EXPLICIT) tag around ``value``."""
    return tlv(0xA0 | number, value)


def implicit_primitive(number: int, value: bytes) -> bytes:
    return tlv(0x80 | number, value)


def integer(value: int) -> bytes:
    if value == 0:
        return b"\x02\x01\x00"
    if value > 0:
        body = value.to_bytes(value.bit_length() // 8 + 1, "big")
    else:
        body = value.to_bytes((value + 1).bit_length() // 8 + 1, "big", signed=True)
    return tlv(INTEGER, body)


def enumerated(value: int) -> bytes:
    return tlv(ENUMERATED, integer(value)[2:])


def octet_string(value: bytes) -> bytes:
    return tlv(OCTET_STRING, value)


def bit_string(value: bytes) -> bytes:
    """A BIT STRING with no unused bits."""
    return tlv(BIT_STRING, b"\x00" + value)


def oid(dotted: str) -> bytes:
    parts = [int(p) for p in dotted.split(".")]
    if len(parts) < 2:
        raise ValueError(f"OID needs at least two arcs: {dotted!r}")
    body = bytearray()
    for arc in [parts[0] * 40 + parts[1], *parts[2:]]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        body.extend(reversed(chunk))
    return tlv(OID, bytes(body))


def _utc(moment: datetime.datetime) -> datetime.datetime:
    if moment.tzinfo is None:
        raise ValueError("times must be timezone-aware")
    return moment.astimezone(datetime.UTC)


def generalized_time(moment: datetime.datetime) -> bytes:
    """GeneralizedTime with whole seconds, as RFC 5280 requires."""
    m = _utc(moment)
    # Formatted by hand: strftime's %Y does not pad years below 1000 to four digits.
    text = f"{m.year:04d}{m.month:02d}{m.day:02d}{m.hour:02d}{m.minute:02d}{m.second:02d}Z"
    return tlv(GENERALIZED_TIME, text.encode())


def x509_time(moment: datetime.datetime) -> bytes:
    """UTCTime through 2049, GeneralizedTime after (RFC 5280 section 4.1.2.5)."""
    m = _utc(moment)
    if 1950 <= m.year < 2050:
        return tlv(UTC_TIME, m.strftime("%y%m%d%H%M%SZ").encode())
    return generalized_time(m)


def extension(oid_dotted: str, value_der: bytes, critical: bool = False) -> bytes:
    parts = [oid(oid_dotted)]
    if critical:
        parts.append(b"\x01\x01\xff")
    parts.append(octet_string(value_der))
    return sequence(*parts)


def split_tlv(data: bytes, offset: int = 0) -> tuple[int, int, int]:
    """Return (tag, start of value, end of value) of the TLV at ``offset``.

    Raises ValueError on truncated input or non-minimal lengths we cannot use.
    """
    if offset + 2 > len(data):
        raise ValueError("truncated DER")
    tag = data[offset]
    first = data[offset + 1]
    pos = offset + 2
    if first < 0x80:
        size = first
    else:
        count = first & 0x7F
        if count == 0 or count > 4 or pos + count > len(data):
            raise ValueError("bad DER length")
        size = int.from_bytes(data[pos : pos + count], "big")
        pos += count
    end = pos + size
    if end > len(data):
        raise ValueError("truncated DER")
    return tag, pos, end
