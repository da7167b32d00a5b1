"""Structure-aware fuzzing of the OCSP responder: a million malformed and odd requests, no 5xx.

    python -m loadtests.ocsp_fuzz [--inputs 1000000] [--http-inputs 20000] [--seed 5019] [--smoke]

The inputs (``loadtests.fuzz_inputs``) go to the responder ``pca serve`` runs, on a CA with
pre-signed responses: most of them straight into its ASGI app in this process (as uvicorn
would hand them over: the path percent-decoded once), a slice over real sockets to ``pca
serve`` under uvicorn and under granian. Every answer must be a well-formed OCSP response
(successful, malformedRequest or unauthorized; a successful one for the very CertID asked
whenever the request was sent intact) or a clean 4xx, never a 5xx, ``internalError`` or
``tryLater``; the servers must be up and answering at the end. Reports inputs per second
and counts by outcome; the first failures are kept with their input.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import time
from typing import Any
from urllib.parse import unquote

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp
from prometheus_client import CollectorRegistry

from loadtests.common import build_template, emit, log, parser, scratch
from loadtests.fuzz_inputs import Chooser, Input, Known, RandomChooser, make_input
from loadtests.pcaserver import PcaServer
from pca.config import Config
from pca.runtime import Runtime, open_runtime
from responders.app import OCSPApp
from responders.ocsp_response import INTERNAL_ERROR, TRY_LATER
from responders.source import CachingSource, IssuerIndex, StoreSource
from responders.store.sqlite import SQLiteResponseStore
from revocation.certid import certid_hashes
from revocation.clock import SystemClock

CLEAN_4XX = frozenset((400, 404, 405, 408, 413, 414, 415, 431))
FINE = frozenset(
    (
        ocsp.OCSPResponseStatus.SUCCESSFUL,
        ocsp.OCSPResponseStatus.MALFORMED_REQUEST,
        ocsp.OCSPResponseStatus.UNAUTHORIZED,
    )
)
KEPT_FAILURES = 20


class Failure(AssertionError):
    """An answer the responder must never give."""


@dataclasses.dataclass
class Tally:
    inputs: int = 0
    seconds: float = 0.0
    outcomes: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    by_kind: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    failures: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    failure_count: int = 0
    closed: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # inputs a server hung up on

    def add(self, inp: Input, outcome: str) -> None:
        self.inputs += 1
        self.outcomes[outcome] += 1
        self.by_kind[inp.kind] += 1

    def fail(self, inp: Input, why: str) -> None:
        self.inputs += 1
        self.failure_count += 1
        self.outcomes["FAILURE"] += 1
        if len(self.failures) < KEPT_FAILURES:
            self.failures.append(_example(inp, why))

    def to_json(self) -> dict[str, Any]:
        return {
            "inputs": self.inputs,
            "seconds": round(self.seconds, 2),
            "inputs_per_s": round(self.inputs / self.seconds) if self.seconds else None,
            "outcomes": dict(self.outcomes.most_common()),
            "by_kind": dict(self.by_kind),
            "failures": self.failure_count,
            "first_failures": self.failures,
            "closed_without_an_answer": self.closed,
        }


def _example(inp: Input, why: str) -> dict[str, Any]:
    return {
        "why": why,
        "method": inp.method,
        "target": inp.target[:300],
        "target_length": len(inp.target),
        "headers": [[k.decode("latin-1"), v.decode("latin-1")[:100]] for k, v in inp.headers],
        "body_length": len(inp.body),
        "body_hex": inp.body[:300].hex(),
    }


# --- the oracle ------------------------------------------------------------------------------------------------

_parsed: dict[bytes, ocsp.OCSPResponse] = {}  # the responder's answers are few distinct bodies


def judge(inp: Input, status: int, headers: dict[bytes, bytes], body: bytes) -> str:
    """The outcome's name; raises Failure for an answer the responder must never give."""
    if status >= 500:
        raise Failure(f"HTTP {status}")
    if status == 304:
        return "304 not modified"
    if status != 200:
        if status not in CLEAN_4XX:
            raise Failure(f"unexpected HTTP {status}")
        return f"http {status}"
    if inp.method == "HEAD":
        return "200 HEAD"
    if headers.get(b"content-type") != b"application/ocsp-response":
        raise Failure(f"200 with content-type {headers.get(b'content-type')!r}")
    if body in (INTERNAL_ERROR, TRY_LATER):
        raise Failure("internalError" if body == INTERNAL_ERROR else "tryLater from a healthy store")
    resp = _parsed.get(body)
    if resp is None:
        try:
            resp = ocsp.load_der_ocsp_response(body)
        except ValueError as exc:
            raise Failure(f"an answer that is no OCSP response: {exc}") from None
        if len(_parsed) < 10_000:
            _parsed[body] = resp
    if resp.response_status not in FINE:
        raise Failure(f"OCSP status {resp.response_status.name}")
    if resp.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL and inp.der is not None:
        # Pre-signed responses carry a SingleResponse per CertID hash (SHA-1 and SHA-256): one must be the asked one.
        req = ocsp.load_der_ocsp_request(inp.der)
        asked = (req.hash_algorithm.name, req.issuer_name_hash, req.issuer_key_hash, req.serial_number)
        singles = {
            (r.hash_algorithm.name, r.issuer_name_hash, r.issuer_key_hash, r.serial_number) for r in resp.responses
        }
        if asked not in singles:
            raise Failure(f"a successful response for another CertID than the one asked (serial {req.serial_number:x})")
    return f"ocsp {resp.response_status.name.lower()}"


# --- the responder in this process ------------------------------------------------------------------------


@dataclasses.dataclass
class Responder:
    rt: Runtime
    app: OCSPApp
    known: Known

    def close(self) -> None:
        self.rt.close()


def known_of(cfg: Config, rt_issuers: list[Any], good: list[int], revoked: list[int]) -> Known:
    issuing = next(i.cert for i in rt_issuers if i.issuer_id == "issuing-ca")
    root = next(i.cert for i in rt_issuers if i.issuer_id == "root-ca")
    hashes_ = {alg: pair for alg, pair in certid_hashes(issuing).items()}
    # A CA the responder does not serve: the root's name over the issuing CA's key.
    other = (certid_hashes(root)["sha1"][0], hashes_["sha1"][1][::-1])
    return Known(hashes_, tuple(good), tuple(revoked), other)


async def open_responder(cfg: Config, good: list[int], revoked: list[int]) -> Responder:
    """The responder as ``pca serve`` builds it (pca.roles.responder), on the CA's store."""
    rt = open_runtime(cfg, SystemClock())
    store = SQLiteResponseStore(rt.db)
    cache = CachingSource(StoreSource(store), store, cfg.ocsp.cache_size, poll_interval=1.0, clock=rt.clock.time)
    index = IssuerIndex()
    issuers = await rt.view.issuers()
    for issuer in issuers:
        index.add(issuer.issuer_id, issuer.cert)
    app = OCSPApp(cache, index, CollectorRegistry(), prefix="/ocsp", clock=rt.clock.time)
    return Responder(rt, app, known_of(cfg, issuers, good, revoked))


async def call_app(app: OCSPApp, inp: Input) -> tuple[int, dict[bytes, bytes], bytes]:
    """One input through the ASGI app, as uvicorn hands it over (path percent-decoded once)."""
    raw_path, _, query = inp.target.partition("?")
    headers = [*inp.headers, (b"content-length", b"%d" % len(inp.body))] if inp.method == "POST" else list(inp.headers)
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": inp.method,
        "scheme": "http",
        "path": unquote(raw_path),
        "raw_path": raw_path.encode("latin-1"),
        "query_string": query.encode("latin-1"),
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8080),
    }
    body = inp.body
    half = len(body) // 2
    pending = [
        {"type": "http.request", "body": body[:half], "more_body": True},
        {"type": "http.request", "body": body[half:]},
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return pending.pop(0) if pending else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent[0]["status"], dict(sent[0]["headers"]), b"".join(m.get("body", b"") for m in sent[1:])


async def fuzz_app(app: OCSPApp, known: Known, chooser: Chooser, count: int, tally: Tally) -> None:
    started = time.perf_counter()
    for _ in range(count):
        inp = make_input(chooser, known)
        try:
            tally.add(inp, judge(inp, *await call_app(app, inp)))
        except Failure as exc:
            tally.fail(inp, str(exc))
    tally.seconds += time.perf_counter() - started


# --- real servers over sockets ----------------------------------------------------------------------------


class RawClient:
    """HTTP/1.1 over one kept-alive socket, the request line and body exactly as given."""

    def __init__(self, host: str, port: int) -> None:
        self._addr = (host, port)
        self._io: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def close(self) -> None:
        if self._io is not None:
            writer = self._io[1]
            self._io = None
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    async def send(self, inp: Input) -> tuple[int, dict[bytes, bytes], bytes] | None:
        """The answer, or None when the server closed the connection without one.

        A kept-alive connection the server closed after its previous answer (as after refusing a
        huge body) is no answer to this input: it is sent again on a new connection.
        """
        reused = self._io is not None
        answer = await self._send(inp)
        if answer is None and reused:
            answer = await self._send(inp)
        return answer

    async def _send(self, inp: Input) -> tuple[int, dict[bytes, bytes], bytes] | None:
        if self._io is None:
            self._io = await asyncio.open_connection(*self._addr)
        reader, writer = self._io
        head = [f"{inp.method} {inp.target} HTTP/1.1", f"Host: {self._addr[0]}:{self._addr[1]}"]
        lines = [line.encode("latin-1") for line in head] + [k + b": " + v for k, v in inp.headers]
        if inp.body or inp.method == "POST":
            lines.append(b"Content-Length: %d" % len(inp.body))
        try:
            writer.write(b"\r\n".join(lines) + b"\r\n\r\n" + inp.body)
            async with asyncio.timeout(30):
                status_line = await reader.readuntil(b"\r\n")
                raw_headers = await reader.readuntil(b"\r\n\r\n")
                headers: dict[bytes, bytes] = {}
                for line in raw_headers.split(b"\r\n"):
                    name, sep, value = line.partition(b":")
                    if sep:
                        headers[name.strip().lower()] = value.strip()
                length = int(headers.get(b"content-length", b"0"))
                body = b"" if inp.method == "HEAD" else await reader.readexactly(length)
        except (ConnectionError, asyncio.IncompleteReadError, OSError):
            await self.close()
            return None
        if headers.get(b"connection", b"").lower() == b"close":
            await self.close()
        return int(status_line.split(b" ", 2)[1]), headers, body


async def fuzz_server(host: str, port: int, known: Known, chooser: Chooser, count: int, tally: Tally) -> None:
    client = RawClient(host, port)
    started = time.perf_counter()
    try:
        for _ in range(count):
            inp = make_input(chooser, known)
            answer = await client.send(inp)
            if answer is None:
                tally.add(inp, "closed without an answer")
                if len(tally.closed) < KEPT_FAILURES:
                    tally.closed.append(_example(inp, "closed without an answer"))
                continue
            try:
                tally.add(inp, judge(inp, *answer))
            except Failure as exc:
                tally.fail(inp, str(exc))
    finally:
        await client.close()
        tally.seconds += time.perf_counter() - started


def still_answers(server: PcaServer, known: Known) -> bool:
    """The server is up and answers a valid request with a successful, signed response."""
    import httpx

    server.check_alive()
    req = ocsp.OCSPRequestBuilder().add_certificate_by_hash(*known.hashes["sha1"], known.good[0], hashes.SHA1())
    der = req.build().public_bytes(serialization.Encoding.DER)
    headers = {"content-type": "application/ocsp-request"}
    r = httpx.post(server.public_url + "/ocsp", content=der, headers=headers, timeout=10)
    ok = (
        r.status_code == 200
        and ocsp.load_der_ocsp_response(r.content).response_status == ocsp.OCSPResponseStatus.SUCCESSFUL
    )
    return ok and httpx.get(server.admin_url + "/healthz", timeout=10).status_code == 200


# --- the scenario -----------------------------------------------------------------------------------------------


def run(*, smoke: bool, inputs: int, http_inputs: int, seed: int, certificates: int) -> dict[str, Any]:
    if smoke:
        inputs, http_inputs, certificates = min(inputs, 3000), min(http_inputs, 300), min(certificates, 50)
    with scratch("fuzz") as work:
        log(f"ocsp_fuzz: recording and pre-signing {certificates} certificates")
        template = build_template(work / "template", certificates, revoked_every=4, presign_workers=1)
        revoked = sorted(template.population.revoked)
        good = template.population.good()
        cfg = template.cfg

        async def in_process() -> tuple[Tally, Known]:
            responder = await open_responder(cfg, good, revoked)
            try:
                tally = Tally()
                log(f"ocsp_fuzz: {inputs:,} inputs into the responder's ASGI app")
                await fuzz_app(responder.app, responder.known, RandomChooser(seed), inputs, tally)
                return tally, responder.known
            finally:
                responder.close()

        app_tally, known = asyncio.run(in_process())
        servers: dict[str, Any] = {}
        for n, (kind, workers) in enumerate((("uvicorn", 1), ("granian", 1))):
            with PcaServer(cfg, server=kind, workers=workers) as server:
                host, port = cfg.public_listen
                tally = Tally()
                log(f"ocsp_fuzz: {http_inputs:,} inputs to {server.label} over sockets")
                asyncio.run(fuzz_server(host, port, known, RandomChooser(seed + 1 + n), http_inputs, tally))
                up = still_answers(server, known)
                servers[server.label] = {**tally.to_json(), "up_and_answering_after": up}
                if not up:
                    tally.failure_count += 1
    total_failures = app_tally.failure_count + sum(s["failures"] for s in servers.values())
    total_failures += sum(not s["up_and_answering_after"] for s in servers.values())
    return {
        "scenario": "ocsp_fuzz",
        "params": {"inputs": inputs, "http_inputs_per_server": http_inputs, "seed": seed, "certificates": certificates},
        "in_process": app_tally.to_json(),
        "servers": servers,
        "failures": total_failures,
    }


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--inputs", type=int, default=1_000_000, help="inputs into the in-process ASGI app")
    p.add_argument("--http-inputs", type=int, default=20_000, help="inputs over sockets to each real server")
    p.add_argument("--seed", type=int, default=5019)
    p.add_argument("--certificates", type=int, default=1000, help="certificates recorded (1 in 4 revoked)")
    args = p.parse_args()
    result = run(
        smoke=args.smoke,
        inputs=args.inputs,
        http_inputs=args.http_inputs,
        seed=args.seed,
        certificates=args.certificates,
    )
    emit(result, args.json_out)
    if result["failures"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
