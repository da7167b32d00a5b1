"""What the OCSP fuzzer sends: HTTP requests to a responder, built with knowledge of their structure.

One grammar, two drivers: every choice goes through a ``Chooser``, which is either a seeded
``random.Random`` (``RandomChooser``: a million inputs in minutes, for the benchmark) or a
Hypothesis ``data`` object (``HypothesisChooser``: shrinking, for the tests). The grammar
knows the OCSPRequest ASN.1 (RFC 6960 4.1.1) and builds requests field by field around the
CertIDs the responder really holds, then breaks them at the field level (missing, repeated,
reordered or retagged fields, wrong hash lengths, odd serials, extensions, nesting) and at the
byte level (flips, truncations, lengths that lie), and wraps them in HTTP the way clients and
attackers do (base64 alphabets, padding, percent-encoding good and bad, very long paths,
wrong content types, huge bodies, other methods and paths).
"""

from __future__ import annotations

import base64
import dataclasses
import random
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar
from urllib.parse import quote

T = TypeVar("T")
OCSP_REQUEST = b"application/ocsp-request"
# Bytes that may stand in a request target on the wire as they are; everything else is percent-encoded.
WIRE_SAFE = "".join(chr(i) for i in range(33, 127))
OID = {
    "sha1": bytes.fromhex("06052b0e03021a"),
    "sha256": bytes.fromhex("0609608648016503040201"),
    "sha384": bytes.fromhex("0609608648016503040202"),
    "sha512": bytes.fromhex("0609608648016503040203"),
    "sha224": bytes.fromhex("0609608648016503040204"),
    "md5": bytes.fromhex("06082a864886f70d0205"),
}
NONCE_OID = bytes.fromhex("06092b0601050507300102")
NULL = b"\x05\x00"


class Chooser(Protocol):
    def below(self, n: int) -> int:
        """An integer in [0, n)."""
        ...

    def blob(self, max_size: int) -> bytes: ...


class RandomChooser:
    def __init__(self, seed: int) -> None:
        self._rng = random.Random(seed)
        self._random = self._rng.random

    def below(self, n: int) -> int:
        return int(self._random() * n)

    def blob(self, max_size: int) -> bytes:
        return self._rng.randbytes(int(self._random() * (max_size + 1)))


class HypothesisChooser:
    """Choices drawn from Hypothesis (``st.data()``), so failures shrink to small inputs."""

    def __init__(self, data: Any) -> None:
        from hypothesis import strategies as st

        self._data = data
        self._st = st

    def below(self, n: int) -> int:
        return int(self._data.draw(self._st.integers(0, max(0, n - 1))))

    def blob(self, max_size: int) -> bytes:
        return bytes(self._data.draw(self._st.binary(max_size=max_size)))


def pick(c: Chooser, items: Sequence[T]) -> T:
    return items[c.below(len(items))]


def chance(c: Chooser, one_in: int) -> bool:
    return c.below(one_in) == 0


@dataclasses.dataclass(frozen=True)
class Known:
    """What the responder holds: the issuer's CertID hashes per algorithm and serials of each kind."""

    hashes: dict[str, tuple[bytes, bytes]]  # algorithm -> (issuer name hash, issuer key hash)
    good: tuple[int, ...]
    revoked: tuple[int, ...]
    other_issuer: tuple[bytes, bytes]  # SHA-1 hashes of a CA the responder does not serve


@dataclasses.dataclass(frozen=True)
class Input:
    kind: str  # which generator made it, for the counts
    method: str
    target: str  # the request target as sent on the wire (path and query)
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes
    der: bytes | None = None  # the OCSPRequest carried, byte for byte, when it is carried faithfully


# --- DER --------------------------------------------------------------------------------------------------


def der_len(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def tlv(tag: int, content: bytes) -> bytes:
    return bytes([tag]) + der_len(len(content)) + content


def seq(*parts: bytes) -> bytes:
    return tlv(0x30, b"".join(parts))


def der_int(value: int) -> bytes:
    size = max(1, (value.bit_length() + 8) // 8)
    return tlv(0x02, value.to_bytes(size, "big", signed=True))


def _odd_length(c: Chooser, tag: int, content: bytes) -> bytes:
    """A TLV whose length is encoded oddly or lies: long form with zeros, indefinite, too long, too short."""
    n = len(content)
    forms = [
        bytes([0x81, n]) if n < 256 else der_len(n),  # non-minimal long form
        b"\x84" + n.to_bytes(4, "big"),
        b"\x80",  # indefinite (BER, not DER)
        der_len(n + 1 + c.below(1000)),  # longer than what follows
        der_len(max(0, n - 1 - c.below(max(1, n)))),  # shorter
        b"\x89" + b"\xff" * 9,  # a length no one can hold
        b"\x84\xff\xff\xff\xff",
    ]
    return bytes([tag]) + pick(c, forms) + content


def _serial(c: Chooser, k: Known) -> int:
    kinds: list[Callable[[], int]] = [
        lambda: pick(c, k.good),
        lambda: pick(c, k.revoked),
        lambda: pick(c, k.good) + 1 + c.below(1000),  # unknown to the responder
        lambda: 0,
        lambda: -1 - c.below(1 << 64),
        lambda: pick(c, k.good) + (1 << 168),  # beyond any certificate's serial
        lambda: pick(c, k.good) | (1 << (8 * (21 + c.below(200)))),  # very long INTEGERs
        lambda: int.from_bytes(c.blob(24), "big"),
    ]
    return pick(c, kinds)()


def _extensions(c: Chooser) -> bytes:
    exts = []
    for _ in range(1 + c.below(3)):
        if chance(c, 2):
            nonce = c.blob(pick(c, (0, 16, 32, 128, 600)))
            exts.append(seq(NONCE_OID, tlv(0x04, tlv(0x04, nonce) if chance(c, 2) else nonce)))
        else:  # an unknown extension, sometimes critical
            oid = tlv(0x06, b"\x2b\x06\x01\x04\x01" + c.blob(6).replace(b"\x80", b"\x01"))
            critical = tlv(0x01, b"\xff") if chance(c, 2) else b""
            exts.append(seq(oid, critical, tlv(0x04, c.blob(40))))
    if chance(c, 5):
        exts.append(exts[0])  # a duplicate
    return seq(*exts)


def cert_id(c: Chooser, k: Known, wild: bool) -> bytes:
    if not wild:  # what clients send: SHA-1 or SHA-256, a serial the responder holds (or not)
        algorithm = pick(c, ("sha1", "sha1", "sha256"))
        name_hash, key_hash = k.hashes[algorithm]
        serial = pick(c, (pick(c, k.good), pick(c, k.revoked), pick(c, k.good) + 1 + c.below(1000)))
        return seq(seq(OID[algorithm], NULL), tlv(0x04, name_hash), tlv(0x04, key_hash), der_int(serial))
    algorithm = pick(c, ("sha1", "sha1", "sha256", "sha384", "sha512", "sha224", "md5"))
    name_hash, key_hash = k.hashes.get(algorithm, k.hashes["sha1"])
    if chance(c, 10):
        name_hash, key_hash = k.other_issuer
    if chance(c, 8):  # a hash of the wrong length
        name_hash = name_hash[: c.below(len(name_hash) + 1)] + c.blob(4)
    if chance(c, 12):
        key_hash = c.blob(70)
    params = pick(c, (NULL, b"", NULL, tlv(0x04, b"x"), NULL + NULL))
    alg = seq(OID[algorithm], params)
    fields = [alg, tlv(0x04, name_hash), tlv(0x04, key_hash), der_int(_serial(c, k))]
    return _shuffle_fields(c, fields, wild)


def _shuffle_fields(c: Chooser, fields: list[bytes], wild: bool) -> bytes:
    """SEQUENCE of ``fields``, now and then (when ``wild``) with one missing, repeated, moved or retagged."""
    if not wild:
        return seq(*fields)
    fields = list(fields)
    if chance(c, 6) and fields:
        op = c.below(4)
        i = c.below(len(fields))
        if op == 0:
            del fields[i]
        elif op == 1:
            fields.insert(i, fields[i])
        elif op == 2:
            fields.insert(c.below(len(fields)), fields.pop(i))
        else:
            fields[i] = bytes([pick(c, (0x04, 0x02, 0x30, 0x31, 0xA0, 0x05, 0x1F))]) + fields[i][1:]
    if chance(c, 20):
        return _odd_length(c, 0x30, b"".join(fields))
    return seq(*fields)


def ocsp_request(c: Chooser, k: Known, wild: bool) -> bytes:
    """An OCSPRequest built field by field: as clients send it, or (``wild``) broken in one of many ways."""
    requests = []
    count = pick(c, (1, 1, 1, 1, 0, 2, 3, 40)) if wild else 1
    for _ in range(min(count, 3)):
        single = [cert_id(c, k, wild)]
        if wild and chance(c, 8):
            single.append(tlv(0xA0, _extensions(c)))
        requests.append(_shuffle_fields(c, single, wild))
    requests += requests[-1:] * (count - len(requests))  # many: the same one repeated
    tbs = []
    if wild and chance(c, 6):
        tbs.append(tlv(0xA0, der_int(pick(c, (0, 1, 2, -1, 1 << 70)))))
    if wild and chance(c, 10):  # requestorName: a directoryName with garbage inside
        tbs.append(tlv(0xA1, tlv(0xA4, seq(c.blob(30)))))
    tbs.append(seq(*requests))
    if chance(c, 3):  # a nonce (clients' usual extension) or, when wild, anything
        tbs.append(tlv(0xA2, _extensions(c) if wild else seq(seq(NONCE_OID, tlv(0x04, tlv(0x04, c.blob(32)))))))
    parts = [_shuffle_fields(c, tbs, wild)]
    if wild and chance(c, 15):  # optionalSignature: ignored by the responder, but parsed
        sig = seq(seq(tlv(0x06, bytes.fromhex("2a8648ce3d040302"))), tlv(0x03, b"\x00" + c.blob(72)))
        parts.append(tlv(0xA0, sig))
    return _shuffle_fields(c, parts, wild)


def _nest(depth: int, tag: int) -> bytes:
    out = b""
    for _ in range(depth):
        out = tlv(tag, out)
    return out


_DEEP = tuple(_nest(depth, tag) for depth in (10, 100, 1000, 3000) for tag in (0x30, 0xA0, 0x31))


def nested_garbage(c: Chooser) -> bytes:
    """Deep nesting, indefinite lengths and random TLVs: what breaks recursive parsers."""
    kind = c.below(4)
    if kind == 0:
        return pick(c, _DEEP)
    if kind == 1:
        return b"\x30\x80" * pick(c, (10, 100, 2000)) + b"\x00\x00" * c.below(50)
    if kind == 2:
        return b"".join(tlv(c.below(256), c.blob(12)) for _ in range(1 + c.below(30)))
    return c.blob(300)


def byte_mutate(c: Chooser, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(1 + c.below(4)):
        pos = c.below(max(1, len(out)))
        op = c.below(5)
        if op == 0 and out:
            out[pos] ^= 1 << c.below(8)
        elif op == 1:
            del out[pos:]
        elif op == 2:
            out[pos:pos] = c.blob(8)
        elif op == 3 and out:
            del out[pos]
        elif out:
            out[pos] = pick(c, (0x00, 0x7F, 0x80, 0x81, 0x82, 0x84, 0x88, 0xFF))
    return bytes(out)


def request_bytes(c: Chooser, k: Known) -> tuple[bytes, bool]:
    """A body or GET payload, and whether it is exactly what the grammar built (no byte-level damage)."""
    choice = c.below(20)
    if choice < 8:
        return ocsp_request(c, k, wild=False), True
    if choice < 14:
        return ocsp_request(c, k, wild=True), True
    if choice < 18:
        return byte_mutate(c, ocsp_request(c, k, wild=c.below(2) == 0)), False
    return nested_garbage(c), False


# --- HTTP ---------------------------------------------------------------------------------------------------


def wire(target: str) -> str:
    """What a client can put in the request line: every byte outside printable ASCII percent-encoded."""
    return quote(target, safe=WIRE_SAFE)


def _b64_path(c: Chooser, der: bytes) -> tuple[str, bool]:
    """The GET path segment for ``der``; True when the responder must decode it back to ``der``."""
    std = base64.b64encode(der).decode()
    url = base64.urlsafe_b64encode(der).decode()
    faithful = [
        lambda: quote(std, safe=""),
        lambda: std,  # '+' and '/' unencoded, as some clients send
        lambda: url,
        lambda: url.rstrip("="),
        lambda: std.rstrip("="),
        lambda: quote(quote(std, safe=""), safe=""),  # encoded twice: the responder decodes twice
    ]
    broken = [
        lambda: std[: c.below(len(std) + 1)],  # cut
        lambda: _inject(c, std, pick(c, ("%", "%zz", "%0", "%00", "%ff", "%e2%82", "!", "*", "\x00", "é", "==", " "))),
        lambda: std + "=" * (1 + c.below(4)),
        lambda: std.replace("A", "-", 1).replace("B", "/", 1) + "_",  # mixed alphabets
        lambda: "=" + std,
        lambda: (std * (1 + c.below(3)))[: 20000 + c.below(30000)],  # very long
        lambda: quote(c.blob(200).decode("latin-1"), safe=""),
    ]
    if chance(c, 3):
        return pick(c, broken)(), False
    return pick(c, faithful)(), True


def _inject(c: Chooser, text: str, what: str) -> str:
    i = c.below(len(text) + 1)
    return text[:i] + what + text[i:]


def get_input(c: Chooser, k: Known) -> Input:
    der, intact = request_bytes(c, k)
    segment, faithful = _b64_path(c, der)
    method = "HEAD" if chance(c, 8) else "GET"
    headers: list[tuple[bytes, bytes]] = []
    if chance(c, 10):
        headers.append((b"if-none-match", pick(c, (b"*", b'"0-0"', c.blob(20).hex().encode()))))
    prefix = pick(c, ("/ocsp/", "/ocsp/", "/ocsp/", "/ocsp//", "/ocsp/./"))
    return Input("get", method, wire(prefix + segment), tuple(headers), b"", der if intact and faithful else None)


def post_input(c: Chooser, k: Known) -> Input:
    body, intact = request_bytes(c, k)
    ctype = pick(
        c,
        (
            *(OCSP_REQUEST,) * 12,
            b"Application/OCSP-Request; charset=binary",
            b"application/ocsp-request;",
            b"application/ocsp-response",
            b"text/plain",
            b"",
            None,
        ),
    )
    if chance(c, 40):  # huge: over the 10 KB limit, announced or not
        body, intact = body + c.blob(64) * 200 + b"\x00" * pick(c, (10_241, 100_000, 1_000_000)), False
    headers = [] if ctype is None else [(b"content-type", ctype)]
    path = pick(c, ("/ocsp", "/ocsp", "/ocsp/", "/ocsp?x=1"))
    return Input("post", "POST", path, tuple(headers), body, body if intact else None)


def other_input(c: Chooser, k: Known) -> Input:
    method = pick(c, ("PUT", "DELETE", "OPTIONS", "PATCH", "TRACE", "GET", "POST"))
    path = pick(c, ("/ocsp", "/ocspx/AAAA", "/", "/OCSP/MEMwQTA", "/ocsp/..%2f..%2fetc%2fpasswd", "/ocsp%2fx"))
    headers = ((b"content-type", OCSP_REQUEST),) if chance(c, 2) else ()
    return Input("other", method, wire(path), headers, c.blob(64))


def make_input(c: Chooser, k: Known) -> Input:
    n = c.below(20)
    if n < 10:
        return get_input(c, k)
    if n < 19:
        return post_input(c, k)
    return other_input(c, k)
