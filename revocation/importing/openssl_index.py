"""Reading an ``openssl ca`` database (``index.txt``) and its ``newcerts/`` directory.

The format, checked against OpenSSL 3.0 ``apps/ca.c`` and what ``openssl ca`` writes:
six tab-separated fields ``status, expiry, revocation, serial (hex), filename, subject``.
The revocation field of an ``R`` line is ``time[,reason[,extra]]`` where ``-crl_compromise``
writes the pseudo-reason ``keyTime`` (and ``-crl_CA_compromise`` ``CAkeyTime``) followed by the
compromise time, and ``-crl_hold`` writes ``holdInstruction`` followed by the instruction as
given (a name or a dotted OID); ``-crl_reason certificateHold`` writes no instruction.
"""

from __future__ import annotations

import dataclasses
import datetime
import re
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Literal

from cryptography import x509

from revocation.errors import NotFoundError, StorageError, ValidationError

Status = Literal["V", "R", "E"]
_STATUSES: tuple[Status, ...] = ("V", "R", "E")
_FIELDS = 6
# A real line is a few hundred bytes; the cap keeps memory bounded on a corrupt file
# (a missing newline would otherwise pull the whole rest of the file into one line).
MAX_LINE_BYTES = 64 * 1024
_SHOWN = 80  # how much of a bad value an error quotes

# openssl's names (compared case-insensitively, as unpack_revinfo does) -> events.REASONS names.
_OPENSSL_REASONS: dict[str, str] = {
    "unspecified": "unspecified",
    "keycompromise": "keyCompromise",
    "cacompromise": "cACompromise",
    "affiliationchanged": "affiliationChanged",
    "superseded": "superseded",
    "cessationofoperation": "cessationOfOperation",
    "certificatehold": "certificateHold",
    "removefromcrl": "removeFromCRL",
    "holdinstruction": "certificateHold",
    "keytime": "keyCompromise",
    "cakeytime": "cACompromise",
}
_WITH_TIME = frozenset({"keytime", "cakeytime"})
_HOLD = "holdinstruction"

# RFC 5280 section 5.3.2 hold instructions, by the short names OBJ_txt2obj accepts.
HOLD_INSTRUCTIONS: dict[str, str] = {
    "holdinstructionnone": "1.2.840.10040.2.1",
    "holdinstructioncallissuer": "1.2.840.10040.2.2",
    "holdinstructionreject": "1.2.840.10040.2.3",
}
_OID = re.compile(r"[0-2](\.(0|[1-9][0-9]*))+")
_SERIAL = re.compile(r"[0-9A-Fa-f]+")
_UTC_TIME = re.compile(r"[0-9]{12}Z")
_GENERALIZED_TIME = re.compile(r"[0-9]{14}Z")


@dataclasses.dataclass(frozen=True)
class IndexEntry:
    """One parsed line of ``index.txt``; every time is timezone-aware UTC."""

    source: str
    line: int
    status: Status
    serial: int
    not_after: datetime.datetime
    revoked_at: datetime.datetime | None
    reason: str | None  # a key of events.REASONS; None when openssl recorded no reason
    invalidity_date: datetime.datetime | None  # the compromise time of -crl_compromise
    hold_instruction: str | None  # dotted OID, only for certificateHold given with -crl_hold
    filename: str
    subject: str

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}"


@dataclasses.dataclass(frozen=True)
class IndexLineError:
    """A line that does not parse: the caller decides whether to skip it or stop."""

    source: str
    line: int
    message: str
    text: str  # the start of the offending line, for the operator

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}"

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


class _BadLine(Exception):
    """Internal: carries the reason a line is refused up to the loop that reports it."""


def _shown(value: str) -> str:
    return repr(value if len(value) <= _SHOWN else value[:_SHOWN] + "...")


def parse_asn1_time(value: str, what: str) -> datetime.datetime:
    """UTCTime ``YYMMDDHHMMSSZ`` (RFC 5280: YY < 50 is 20YY) or GeneralizedTime ``YYYYMMDDHHMMSSZ``."""
    if _UTC_TIME.fullmatch(value):
        yy = int(value[:2])
        year, rest = (2000 + yy if yy < 50 else 1900 + yy), value[2:]
    elif _GENERALIZED_TIME.fullmatch(value):
        year, rest = int(value[:4]), value[4:]
    else:
        raise _BadLine(f"{what} {_shown(value)} is neither YYMMDDHHMMSSZ nor YYYYMMDDHHMMSSZ")
    try:
        return datetime.datetime(
            year, int(rest[0:2]), int(rest[2:4]), int(rest[4:6]), int(rest[6:8]), int(rest[8:10]), tzinfo=datetime.UTC
        )
    except ValueError as exc:
        raise _BadLine(f"{what} {_shown(value)} is not a valid date: {exc}") from None


def _parse_serial(value: str) -> int:
    if not _SERIAL.fullmatch(value):
        raise _BadLine(f"serial {_shown(value)} is not hexadecimal")
    return int(value, 16)


def _parse_hold_instruction(value: str) -> str:
    if _OID.fullmatch(value):
        return value
    oid = HOLD_INSTRUCTIONS.get(value.lower())
    if oid is None:
        raise _BadLine(f"hold instruction {_shown(value)} is neither a known name nor a dotted OID")
    return oid


_Revocation = tuple[datetime.datetime, str | None, datetime.datetime | None, str | None]


def _parse_revocation(field: str) -> _Revocation:
    """``time[,reason[,extra]]``; like openssl, everything after the second comma is the extra."""
    parts = field.split(",", 2)
    revoked_at = parse_asn1_time(parts[0], "revocation time")
    if len(parts) == 1:
        return revoked_at, None, None, None
    name = parts[1]
    key = name.lower()
    reason = _OPENSSL_REASONS.get(key)
    if reason is None:
        raise _BadLine(f"revocation reason {_shown(name)} is not one openssl writes")
    extra = parts[2] if len(parts) == 3 else None
    if key in _WITH_TIME or key == _HOLD:
        if not extra:
            raise _BadLine(f"revocation reason {name} needs a value after it, found none")
        if key == _HOLD:
            return revoked_at, reason, None, _parse_hold_instruction(extra)
        return revoked_at, reason, parse_asn1_time(extra, "compromise time"), None
    if extra is not None:
        # openssl ignores it, but it never writes one: a hand-edited line we should not guess at
        raise _BadLine(f"revocation reason {name} takes no value, found {_shown(extra)}")
    return revoked_at, reason, None, None


def parse_index_line(text: str, source: str, line: int) -> IndexEntry | IndexLineError:
    """One line without its newline; a bad line becomes an ``IndexLineError``, never an exception."""
    try:
        return _parse_line(text, source, line)
    except _BadLine as exc:
        return IndexLineError(source, line, str(exc), text[:_SHOWN])


def _parse_line(text: str, source: str, line: int) -> IndexEntry:
    fields = text.split("\t")
    if len(fields) != _FIELDS:
        raise _BadLine(f"expected {_FIELDS} tab-separated fields, found {len(fields)}")
    status, expiry, revocation, serial_hex, filename, subject = fields
    if status not in _STATUSES:
        raise _BadLine(f"status {_shown(status)} is not one of V, R, E")
    not_after = parse_asn1_time(expiry, "expiry time")
    serial = _parse_serial(serial_hex)
    revoked_at = reason = invalidity = hold = None
    if status == "R":
        if not revocation:
            raise _BadLine("status R without a revocation time")
        revoked_at, reason, invalidity, hold = _parse_revocation(revocation)
    elif revocation:
        raise _BadLine(f"status {status} with a revocation field {_shown(revocation)}")
    return IndexEntry(source, line, status, serial, not_after, revoked_at, reason, invalidity, hold, filename, subject)


def _lines(stream: BinaryIO) -> Iterator[tuple[bytes, bool]]:
    """Lines without their end, and whether each was cut at ``MAX_LINE_BYTES`` (the rest is dropped)."""
    while raw := stream.readline(MAX_LINE_BYTES + 1):
        if len(raw) <= MAX_LINE_BYTES or raw.endswith(b"\n"):
            yield raw.rstrip(b"\r\n") if raw.endswith(b"\n") else raw, False
            continue
        while (rest := stream.readline(MAX_LINE_BYTES)) and not rest.endswith(b"\n"):
            pass  # drain the overlong line without keeping it
        yield raw, True


def read_openssl_index(path: str | Path) -> Iterator[IndexEntry | IndexLineError]:
    """Stream ``index.txt`` line by line; an unreadable file raises, a bad line is yielded as an error."""
    source = str(path)
    try:
        stream = open(path, "rb")  # opened outside the with to wrap only its error
    except FileNotFoundError as exc:
        raise NotFoundError(f"OpenSSL CA database {source} does not exist") from exc
    except OSError as exc:
        raise StorageError(f"cannot open OpenSSL CA database {source}: {exc}") from exc
    with stream:
        for number, (raw, cut) in enumerate(_lines(stream), start=1):
            # openssl writes DNs escaped to ASCII; replacement keeps a stray byte reportable
            text = raw.decode("utf-8", errors="replace")
            if cut:
                yield IndexLineError(source, number, f"line longer than {MAX_LINE_BYTES} bytes", text[:_SHOWN])
            elif text.startswith("#"):
                continue  # TXT_DB_read skips comment lines too
            else:
                yield parse_index_line(text, source, number)


def newcerts_filename(serial: int) -> str:
    """The name ``openssl ca`` gives an issued certificate: upper-case hex, an even number of digits."""
    if serial < 0:
        raise ValidationError(f"serial {serial} is negative; openssl ca never issues one")
    digits = f"{serial:X}"
    return ("0" + digits if len(digits) % 2 else digits) + ".pem"


def load_issued_certificate(certs_dir: str | Path, serial: int) -> x509.Certificate:
    """The certificate ``openssl ca`` stored for ``serial`` in its ``new_certs_dir``."""
    path = Path(certs_dir) / newcerts_filename(serial)
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise NotFoundError(f"no certificate for serial {serial:x}: {path} does not exist") from exc
    except OSError as exc:
        raise StorageError(f"cannot read the certificate for serial {serial:x} at {path}: {exc}") from exc
    try:
        cert = x509.load_pem_x509_certificate(data)
    except ValueError as exc:  # cryptography's text names parser internals
        raise ValidationError(f"{path} is not a PEM certificate: its PEM block does not decode") from exc
    if cert.serial_number != serial:
        # a renamed or copied file would otherwise attach the wrong certificate to the entry
        raise ValidationError(f"{path} holds serial {cert.serial_number:x}, expected {serial:x}")
    return cert
