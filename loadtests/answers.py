"""OCSP requests as RFC 5019 clients send them, and checks of what a responder answers.

    python -m loadtests.answers SPEC.json     # check a sample; prints JSON (used inside a network namespace)

A spec names the base URL, GET paths and POST bodies with the serial and status each
must answer. Every target of every scenario is checked the same way: the answer must be
a successful OCSP response holding a SingleResponse for the asked serial with the asked
SHA-1 CertID (issuer name and key hashes) and the expected status.
"""

from __future__ import annotations

import base64
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from revocation.certid import certid_hashes

OCSP_REQUEST = "application/ocsp-request"


@dataclass(frozen=True)
class Probe:
    serial: int
    revoked: bool
    der: bytes  # the OCSP request

    def get_path(self, prefix: str) -> str:
        """``prefix`` + "/" + the percent-encoded base64 request (RFC 6960 appendix A.1)."""
        return prefix.rstrip("/") + "/" + quote(base64.b64encode(self.der).decode(), safe="")


class IssuerHashes:
    def __init__(self, issuer: x509.Certificate) -> None:
        self.name_hash, self.key_hash = certid_hashes(issuer)["sha1"]

    def probe(self, serial: int, revoked: bool) -> Probe:
        req = ocsp.OCSPRequestBuilder().add_certificate_by_hash(self.name_hash, self.key_hash, serial, hashes.SHA1())
        return Probe(serial, revoked, req.build().public_bytes(serialization.Encoding.DER))


def probes(issuer: x509.Certificate, serials: list[int], revoked: frozenset[int] | set[int]) -> list[Probe]:
    h = IssuerHashes(issuer)
    return [h.probe(s, s in revoked) for s in serials]


def verdict(body: bytes, probe: Probe, name_hash: bytes, key_hash: bytes) -> str | None:
    """None when the answer is right for ``probe``, else what is wrong."""
    try:
        resp = ocsp.load_der_ocsp_response(body)
    except ValueError as exc:
        return f"not an OCSP response: {exc}"
    if resp.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
        return f"status {resp.response_status.name}"
    for single in resp.responses:
        if (
            single.serial_number == probe.serial
            and isinstance(single.hash_algorithm, hashes.SHA1)
            and single.issuer_name_hash == name_hash
            and single.issuer_key_hash == key_hash
        ):
            want = ocsp.OCSPCertStatus.REVOKED if probe.revoked else ocsp.OCSPCertStatus.GOOD
            if single.certificate_status != want:
                return f"serial {probe.serial:x}: {single.certificate_status.name}, expected {want.name}"
            return None
    return f"no SingleResponse with the asked SHA-1 CertID for serial {probe.serial:x}"


def is_revoked(body: bytes, serial: int) -> bool:
    try:
        resp = ocsp.load_der_ocsp_response(body)
        if resp.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
            return False
        return any(
            s.serial_number == serial and s.certificate_status == ocsp.OCSPCertStatus.REVOKED for s in resp.responses
        )
    except ValueError:
        return False


@dataclass(frozen=True)
class CheckSpec:
    base_url: str
    get_prefix: str | None  # None: GET not checked
    post_path: str | None  # None: POST not checked
    name_hash: bytes
    key_hash: bytes
    probes: list[Probe]

    def to_json(self) -> dict[str, Any]:
        return {
            "base_url": self.base_url,
            "get_prefix": self.get_prefix,
            "post_path": self.post_path,
            "name_hash": self.name_hash.hex(),
            "key_hash": self.key_hash.hex(),
            "probes": [[p.serial, p.revoked, p.der.hex()] for p in self.probes],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CheckSpec:
        return cls(
            data["base_url"],
            data["get_prefix"],
            data["post_path"],
            bytes.fromhex(data["name_hash"]),
            bytes.fromhex(data["key_hash"]),
            [Probe(int(s), bool(r), bytes.fromhex(d)) for s, r, d in data["probes"]],
        )


def check(spec: CheckSpec, wait: float = 0.0) -> dict[str, Any]:
    """Ask every probe by GET and by POST (as the spec says); returns counts and the first problems.

    With ``wait`` > 0, first retry the first probe until it answers right (the target is
    starting, or its cache filling). Every connection carries a full request: `openssl ocsp`
    misbehaves after a connection that is opened and closed without one.
    """
    problems: list[str] = []
    checked = 0
    with httpx.Client(base_url=spec.base_url, timeout=10) as client:

        def ask(method: str, probe: Probe) -> str | None:
            if method == "GET":
                assert spec.get_prefix is not None
                r = client.get(probe.get_path(spec.get_prefix))
            else:
                assert spec.post_path is not None
                r = client.post(spec.post_path, content=probe.der, headers={"content-type": OCSP_REQUEST})
            if r.status_code != 200:
                return f"{method} {probe.serial:x}: HTTP {r.status_code}"
            wrong = verdict(r.content, probe, spec.name_hash, spec.key_hash)
            return None if wrong is None else f"{method} {wrong}"

        methods = [m for m, on in (("GET", spec.get_prefix), ("POST", spec.post_path)) if on is not None]
        if wait > 0:
            deadline = time.monotonic() + wait
            while True:
                try:
                    if all(ask(m, p) is None for m in methods for p in spec.probes[:5]):
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    break
                time.sleep(0.2)
        for method in methods:
            for probe in spec.probes:
                try:
                    wrong = ask(method, probe)
                except httpx.HTTPError as exc:
                    wrong = f"{method} {probe.serial:x}: {type(exc).__name__} {exc}"
                checked += 1
                if wrong is not None:
                    problems.append(wrong)
    return {"checked": checked, "wrong": len(problems), "problems": problems[:5]}


def main() -> None:
    spec = CheckSpec.from_json(json.loads(Path(sys.argv[1]).read_text()))
    wait = float(sys.argv[2]) if len(sys.argv) > 2 else 0.0
    print(json.dumps(check(spec, wait)))


if __name__ == "__main__":
    main()
