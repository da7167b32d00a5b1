"""The OCSP responder over HTTP: OCSPApp in front of CachingSource, StoreSource and IssuerIndex.

Responses are pre-signed by the real PreSigner into the CA's SQLite store. Every test that asks
over HTTP runs twice: in-process through httpx's ASGI transport (the ASGI entry uvicorn serves),
and through a real granian server speaking RSGI to the entry ``pca serve`` runs by default
(``pca.public_rsgi.RSGIListener``), over a socket. The fuzzing tests go straight into the ASGI
app. Time moves only through a FakeClock, which the cache and the app read through ``clock=``.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import dataclasses
import datetime
import secrets
from collections.abc import AsyncIterator, Sequence
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from asn1crypto import ocsp as asn1_ocsp  # type: ignore[import-untyped]
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from cryptography.x509.oid import NameOID
from granian.constants import Interfaces
from granian.server.embed import Server as EmbeddedGranian
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from pca.config import Config
from pca.public_rsgi import RSGIListener
from pca.runtime import PrefixDispatcher, Runtime, open_runtime
from pca.serve import build_authority
from responders.app import OCSPApp
from responders.ocsp_response import INTERNAL_ERROR, MALFORMED_REQUEST, TRY_LATER, UNAUTHORIZED
from responders.presigner import PreSigner
from responders.source import CachingSource, IssuerIndex, StoreSource
from responders.store import ResponseStore, StoredResponse
from responders.store.sqlite import SQLiteResponseStore
from revocation.authority import Actor, Authority, IssueRequest
from revocation.clock import FakeClock, to_epoch
from revocation.errors import StorageError
from tests.support.ports import free_port

ACTOR = Actor("tester", "r1")
VALIDITY = 7200
ISSUING = "issuing-ca"
OCSP_REQUEST = {"content-type": "application/ocsp-request"}
RFC5019_CACHE_CONTROL = "max-age={}, public, no-transform, must-revalidate"


# --- stores that misbehave on purpose ---------------------------------------------------------------------------


class SwitchableStore:
    """The real store until ``broken`` is set; then every call raises StorageError, as an unreachable database."""

    def __init__(self, inner: ResponseStore) -> None:
        self._inner = inner
        self.broken = False
        self.change_calls = 0
        self.change_called = asyncio.Event()
        self.changes_delivered = asyncio.Event()

    def _check(self) -> None:
        if self.broken:
            raise StorageError("response store unreachable: connection refused")

    async def put(self, responses: Sequence[StoredResponse], consumer: str, position: int, now_iso: str) -> int:
        self._check()
        return await self._inner.put(responses, consumer, position, now_iso)

    async def get(self, issuer_id: str, serial: int) -> StoredResponse | None:
        self._check()
        return await self._inner.get(issuer_id, serial)

    async def changes(self, after: int, limit: int) -> list[StoredResponse]:
        self.change_calls += 1
        self.change_called.set()
        self._check()
        found = await self._inner.changes(after, limit)
        if found:
            self.changes_delivered.set()
        return found

    async def due(self, now: int, limit: int) -> list[tuple[str, int]]:
        self._check()
        return await self._inner.due(now, limit)

    async def position(self, consumer: str) -> int:
        self._check()
        return await self._inner.position(consumer)

    async def last_change(self) -> int:
        self._check()
        return await self._inner.last_change()


class SlowReadStore(SwitchableStore):
    """Reads at once but answers only when released: a miss fill overtaken by the change feed."""

    def __init__(self, inner: ResponseStore) -> None:
        super().__init__(inner)
        self.read_done = asyncio.Event()
        self.release = asyncio.Event()

    async def get(self, issuer_id: str, serial: int) -> StoredResponse | None:
        found = await super().get(issuer_id, serial)
        self.read_done.set()
        await self.release.wait()
        return found


# --- the environment: a CA, pre-signed responses, a responder ----------------------------------------------------


@dataclasses.dataclass
class Env:
    rt: Runtime
    clock: FakeClock
    authority: Authority
    store: SQLiteResponseStore
    presigner: PreSigner
    executor: concurrent.futures.ThreadPoolExecutor
    issuer: x509.Certificate
    root: x509.Certificate
    leaves: list[x509.Certificate]
    registry: CollectorRegistry = dataclasses.field(default_factory=CollectorRegistry)
    cache: CachingSource | None = None
    app: OCSPApp | None = None
    served: str | None = None  # the URL of a granian server in front of ``app``; None: in-process ASGI

    def now(self) -> float:
        return self.clock.now().timestamp()

    def responder(
        self, source_store: ResponseStore | None = None, *, max_age_cap: int = 3600, poll_interval: float = 0.2
    ) -> OCSPApp:
        """A fresh cache and app on ``source_store`` (the real store by default), with their own registry."""
        source_store = source_store or self.store
        self.registry = CollectorRegistry()
        self.cache = CachingSource(
            StoreSource(source_store), source_store, 1000, poll_interval=poll_interval, clock=self.now
        )
        index = IssuerIndex()
        index.add("root-ca", self.root)
        index.add(ISSUING, self.issuer)
        self.app = OCSPApp(self.cache, index, self.registry, max_age_cap=max_age_cap, clock=self.now)
        return self.app

    def client(self) -> httpx.AsyncClient:
        assert self.app is not None
        if self.served is not None:
            return httpx.AsyncClient(base_url=self.served, timeout=10)
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://responder.test")

    async def __rsgi__(self, scope: Any, protocol: Any) -> None:
        """The RSGI entry of ``pca serve``'s public listener, in front of whichever app is current; every
        path goes to it (prefix ""), as in-process, so that it answers the 404s itself."""
        await RSGIListener(self.app, PrefixDispatcher([]), body_timeout=10, prefix="").__rsgi__(scope, protocol)

    def count(self, result: str) -> float:
        return self.registry.get_sample_value("ocsp_requests_total", {"result": result}) or 0.0

    def close(self) -> None:
        self.rt.close()
        self.executor.shutdown(wait=True)


async def build_env(cfg: Config, leaves: int = 3) -> Env:
    clock = FakeClock(datetime.datetime.now(datetime.UTC).replace(microsecond=0))
    rt = open_runtime(cfg, clock)
    authority = build_authority(rt)
    store = SQLiteResponseStore(rt.db)
    executor = concurrent.futures.ThreadPoolExecutor(2)
    presigner = PreSigner(
        rt.log,
        rt.view,
        store,
        clock,
        executor,
        validity_seconds=VALIDITY,
        refresh_fraction=0.5,
        registry=CollectorRegistry(),
    )
    issuers = {i.issuer_id: i.cert for i in await rt.view.issuers()}
    certs = []
    for i in range(leaves):
        issued = await authority.issue(IssueRequest(subject=f"CN=leaf{i}", dns=[f"leaf{i}.test"]), ACTOR)
        certs.append(issued.certificate)
    await presigner.catch_up()
    env = Env(rt, clock, authority, store, presigner, executor, issuers[ISSUING], issuers["root-ca"], certs)
    env.responder()
    return env


@contextlib.asynccontextmanager
async def granian_rsgi(target: Any) -> AsyncIterator[str]:
    """A real granian server (RSGI, in this process's loop) serving ``target``; yields its URL."""
    port = free_port()
    server = EmbeddedGranian(target, port=port, interface=Interfaces.RSGI, websockets=False, log_enabled=False)
    serving = asyncio.create_task(server.serve())
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(250):  # up within a second or so; 10 s at most. A connection, not a request: none is counted
            with contextlib.suppress(OSError):
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                break
            await asyncio.sleep(0.04)
        yield url
    finally:
        server.stop()
        await serving


@pytest.fixture(params=["asgi", "granian-rsgi"])
async def env(ca_config: Config, request: pytest.FixtureRequest) -> AsyncIterator[Env]:
    environment = await build_env(ca_config)
    try:
        if request.param == "asgi":
            yield environment
        else:
            async with granian_rsgi(environment) as url:
                environment.served = url
                yield environment
    finally:
        environment.close()


# --- requests and responses -----------------------------------------------------------------------------------


def request_der(
    cert: x509.Certificate,
    issuer: x509.Certificate,
    algorithm: hashes.HashAlgorithm | None = None,
    nonce: bytes | None = None,
) -> bytes:
    builder = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, algorithm or hashes.SHA1())
    if nonce is not None:
        builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
    return builder.build().public_bytes(serialization.Encoding.DER)


def request_by_hash(name_hash: bytes, key_hash: bytes, serial: int, algorithm: hashes.HashAlgorithm) -> bytes:
    builder = ocsp.OCSPRequestBuilder().add_certificate_by_hash(name_hash, key_hash, serial, algorithm)
    return builder.build().public_bytes(serialization.Encoding.DER)


def matching_single(resp: ocsp.OCSPResponse, req_der: bytes) -> ocsp.OCSPSingleResponse:
    """The one SingleResponse whose CertID equals the request's, field by field."""
    req = ocsp.load_der_ocsp_request(req_der)
    found = [
        s
        for s in resp.responses
        if s.hash_algorithm.name == req.hash_algorithm.name
        and s.issuer_name_hash == req.issuer_name_hash
        and s.issuer_key_hash == req.issuer_key_hash
        and s.serial_number == req.serial_number
    ]
    assert len(found) == 1, "no SingleResponse for the requested CertID"
    return found[0]


def answered(response: httpx.Response, req_der: bytes) -> ocsp.OCSPSingleResponse:
    """The SingleResponse an HTTP answer gives for the CertID in ``req_der``."""
    assert response.status_code == 200
    return matching_single(ocsp.load_der_ocsp_response(response.content), req_der)


async def post(client: httpx.AsyncClient, body: bytes, path: str = "/ocsp") -> httpx.Response:
    return await client.post(path, content=body, headers=OCSP_REQUEST)


def b64(der: bytes) -> str:
    return base64.b64encode(der).decode()


def status_of(response: httpx.Response) -> ocsp.OCSPResponseStatus:
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/ocsp-response"
    return ocsp.load_der_ocsp_response(response.content).response_status


def tricky_request(leaf: x509.Certificate, issuer: x509.Certificate) -> bytes:
    """A request whose base64 holds '+', '/' and padding, so every GET encoding differs from the others."""
    for length in (16, 17, 19):
        for i in range(256):
            der = request_der(leaf, issuer, nonce=bytes([i]) * length)
            text = b64(der)
            if "+" in text and "/" in text and text.endswith("="):
                return der
    raise AssertionError("no request with '+', '/' and padding in its base64 found")


async def call_asgi(
    app: OCSPApp, method: str, path: str, body: bytes = b"", headers: Sequence[tuple[bytes, bytes]] = ()
) -> tuple[int, dict[bytes, bytes], bytes]:
    """Drive the ASGI app directly, as a server would after decoding the request line."""
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": quote(path).encode(),
        "query_string": b"",
        "root_path": "",
        "headers": list(headers),
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8080),
    }
    pending = [{"type": "http.request", "body": body, "more_body": False}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return pending.pop(0) if pending else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start = sent[0]
    assert start["type"] == "http.response.start"
    return start["status"], dict(start["headers"]), b"".join(m.get("body", b"") for m in sent[1:])


# --- POST and GET answer the CertID asked for ----------------------------------------------------------------


@pytest.mark.parametrize("algorithm", [hashes.SHA1(), hashes.SHA256()], ids=["sha1", "sha256"])
@pytest.mark.parametrize("nonce", [None, b"0123456789abcdef"], ids=["no-nonce", "nonce"])
async def test_post_answers_with_a_response_for_the_requested_cert_id(
    env: Env, algorithm: hashes.HashAlgorithm, nonce: bytes | None
) -> None:
    leaf = env.leaves[0]
    der = request_der(leaf, env.issuer, algorithm, nonce)
    async with env.client() as client:
        response = await post(client, der)

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/ocsp-response"
    assert response.headers["cache-control"] == "no-cache"
    resp = ocsp.load_der_ocsp_response(response.content)
    assert resp.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL
    single = matching_single(resp, der)
    assert single.hash_algorithm.name == algorithm.name
    assert single.certificate_status == ocsp.OCSPCertStatus.GOOD
    stored = await env.store.get(ISSUING, leaf.serial_number)
    assert stored is not None and response.content == stored.der
    assert env.count("good") == 1


@pytest.mark.parametrize("algorithm", [hashes.SHA384(), hashes.SHA512()], ids=["sha384", "sha512"])
async def test_a_hash_algorithm_without_pre_signed_cert_ids_never_gets_a_response_for_another_cert_id(
    env: Env, algorithm: hashes.HashAlgorithm
) -> None:
    der = request_der(env.leaves[0], env.issuer, algorithm)
    async with env.client() as client:
        response = await post(client, der)

    resp = ocsp.load_der_ocsp_response(response.content)
    if resp.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL:
        matching_single(resp, der)
    else:
        assert resp.response_status in (
            ocsp.OCSPResponseStatus.UNAUTHORIZED,
            ocsp.OCSPResponseStatus.MALFORMED_REQUEST,
        )


@pytest.mark.parametrize(
    "encode",
    [
        pytest.param(lambda der: b64(der), id="standard"),
        pytest.param(lambda der: quote(b64(der), safe=""), id="percent-encoded"),
        pytest.param(lambda der: base64.urlsafe_b64encode(der).decode(), id="url-safe"),
        pytest.param(lambda der: b64(der).rstrip("="), id="no-padding"),
        pytest.param(lambda der: base64.urlsafe_b64encode(der).decode().rstrip("="), id="url-safe-no-padding"),
    ],
)
async def test_get_accepts_every_base64_spelling_of_the_request(env: Env, encode: Any) -> None:
    der = tricky_request(env.leaves[1], env.issuer)
    stored = await env.store.get(ISSUING, env.leaves[1].serial_number)
    assert stored is not None
    async with env.client() as client:
        response = await client.get("/ocsp/" + encode(der))

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/ocsp-response"
    assert response.content == stored.der
    assert answered(response, der).certificate_status == ocsp.OCSPCertStatus.GOOD


@pytest.mark.parametrize(("cap", "advance"), [(3600, 0), (100_000, 0), (100_000, 5000)])
async def test_get_carries_rfc5019_caching_headers_never_beyond_next_update(env: Env, cap: int, advance: int) -> None:
    env.responder(max_age_cap=cap)
    leaf = env.leaves[0]
    stored = await env.store.get(ISSUING, leaf.serial_number)
    assert stored is not None
    env.clock.advance(advance)
    async with env.client() as client:
        response = await client.get("/ocsp/" + b64(request_der(leaf, env.issuer)))

    assert response.status_code == 200
    left = stored.next_update - to_epoch(env.clock.now())
    assert response.headers["cache-control"] == RFC5019_CACHE_CONTROL.format(min(left, cap))
    assert parsedate_to_datetime(response.headers["last-modified"]).timestamp() == stored.this_update
    assert parsedate_to_datetime(response.headers["expires"]).timestamp() == stored.next_update
    etag = response.headers["etag"]
    assert etag.startswith('"') and etag.endswith('"') and len(etag) > 2


async def test_a_matching_if_none_match_gets_304_and_head_gets_headers_without_body(env: Env) -> None:
    leaf = env.leaves[0]
    path = "/ocsp/" + b64(request_der(leaf, env.issuer))
    async with env.client() as client:
        first = await client.get(path)
        etag = first.headers["etag"]
        cached = await client.get(path, headers={"if-none-match": etag})
        changed = await client.get(path, headers={"if-none-match": '"something-else"'})
        head = await client.head(path)

    assert cached.status_code == 304
    assert cached.content == b""
    assert cached.headers["etag"] == etag
    assert changed.status_code == 200 and changed.content == first.content
    assert head.status_code == 200
    assert head.content == b""
    assert int(head.headers["content-length"]) == len(first.content)
    for name in ("content-type", "etag", "cache-control", "last-modified", "expires"):
        assert head.headers[name] == first.headers[name]
    assert env.count("not_modified") == 1
    assert env.count("good") == 3


async def test_a_304_announces_no_length_other_than_the_responses(env: Env) -> None:
    path = "/ocsp/" + b64(request_der(env.leaves[0], env.issuer))
    async with env.client() as client:
        first = await client.get(path)
        cached = await client.get(path, headers={"if-none-match": first.headers["etag"]})
    assert cached.status_code == 304
    assert cached.headers.get("content-length") in (None, str(len(first.content)))


# --- what is not ours, and what is not a request ----------------------------------------------------------------


def other_ca_and_leaf(serial: int) -> tuple[x509.Certificate, x509.Certificate]:
    """A CA we do not run, with a leaf carrying ``serial``."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Someone Else's CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "elsewhere")]))
        .issuer_name(ca_name)
        .public_key(leaf_key.public_key())
        .serial_number(serial)
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .sign(ca_key, hashes.SHA256())
    )
    return ca_cert, leaf


async def test_unknown_issuers_and_never_issued_serials_are_unauthorized_never_good(env: Env) -> None:
    leaf = env.leaves[0]
    other_ca, other_leaf = other_ca_and_leaf(leaf.serial_number)  # same serial, another CA
    real = ocsp.load_der_ocsp_request(request_der(leaf, env.issuer, hashes.SHA256()))
    requests = {
        "another CA": request_der(other_leaf, other_ca),
        "right key hash, wrong name hash": request_by_hash(
            b"\x00" * 32, real.issuer_key_hash, leaf.serial_number, hashes.SHA256()
        ),
        "never issued": request_by_hash(
            real.issuer_name_hash, real.issuer_key_hash, secrets.randbits(120) | 1, hashes.SHA256()
        ),
    }
    async with env.client() as client:
        for what, der in requests.items():
            for response in (await post(client, der), await client.get("/ocsp/" + b64(der))):
                assert response.status_code == 200, what
                assert response.content == UNAUTHORIZED, what
                assert status_of(response) == ocsp.OCSPResponseStatus.UNAUTHORIZED, what
    assert env.count("unauthorized") == 2 * len(requests)
    assert env.count("good") == 0


def asn1_request(cert_ids: list[tuple[bytes, bytes, int]]) -> bytes:
    """An OCSPRequest with any number of SHA-1 CertIDs (cryptography's builder allows only one)."""
    return asn1_ocsp.OCSPRequest(
        {
            "tbs_request": {
                "request_list": [
                    {
                        "req_cert": {
                            "hash_algorithm": {"algorithm": "sha1"},
                            "issuer_name_hash": name_hash,
                            "issuer_key_hash": key_hash,
                            "serial_number": serial,
                        }
                    }
                    for name_hash, key_hash, serial in cert_ids
                ]
            }
        }
    ).dump()


async def test_anything_that_is_not_one_certid_request_is_malformed(env: Env) -> None:
    valid = request_der(env.leaves[0], env.issuer)
    req = ocsp.load_der_ocsp_request(valid)
    two = asn1_request(
        [
            (req.issuer_name_hash, req.issuer_key_hash, env.leaves[0].serial_number),
            (req.issuer_name_hash, req.issuer_key_hash, env.leaves[1].serial_number),
        ]
    )
    one = asn1_request([(req.issuer_name_hash, req.issuer_key_hash, env.leaves[0].serial_number)])
    bodies = {
        "garbage": b"hello, responder",
        "truncated": valid[:-7],
        "empty": b"",
        "two CertIDs": two,
        "no CertID": asn1_request([]),
    }
    async with env.client() as client:
        # The asn1crypto encoding itself is fine: with one CertID it is answered.
        assert status_of(await post(client, one)) == ocsp.OCSPResponseStatus.SUCCESSFUL
        for what, body in bodies.items():
            response = await post(client, body)
            assert response.content == MALFORMED_REQUEST, what
            assert status_of(response) == ocsp.OCSPResponseStatus.MALFORMED_REQUEST, what
        for what, path in {
            "bad base64": "/ocsp/not*base64!",
            "base64 of garbage": "/ocsp/" + b64(b"garbage garbage"),
            "base64 of two CertIDs": "/ocsp/" + b64(two),
            "nothing": "/ocsp/",
            "truncated base64": "/ocsp/" + b64(valid)[:-9],
        }.items():
            response = await client.get(path)
            assert response.content == MALFORMED_REQUEST, what
    assert env.count("malformed") == len(bodies) + 5
    assert env.count("good") == 1


async def test_http_level_mistakes_get_4xx_answers(env: Env) -> None:
    valid = request_der(env.leaves[0], env.issuer)

    async def chunked(size: int) -> AsyncIterator[bytes]:
        for _ in range(size // 1000):
            yield b"\x30" * 1000
        yield b"\x30" * (size % 1000)

    async with env.client() as client:
        put = await client.put("/ocsp", content=valid, headers=OCSP_REQUEST)
        assert put.status_code == 405
        assert set(put.headers["allow"].replace(" ", "").split(",")) == {"GET", "HEAD", "POST"}
        assert (await client.delete("/ocsp/" + b64(valid))).status_code == 405

        big = await post(client, b"\x30" * (10 * 1024 + 1))
        assert big.status_code == 413
        streamed = await client.post("/ocsp", content=chunked(10 * 1024 + 1), headers=OCSP_REQUEST)
        assert "content-length" not in streamed.request.headers
        assert streamed.status_code == 413
        # Exactly at the limit is still read (and is garbage, so malformed).
        at_limit = await client.post("/ocsp", content=chunked(10 * 1024), headers=OCSP_REQUEST)
        assert at_limit.status_code == 200 and at_limit.content == MALFORMED_REQUEST

        for headers in ({"content-type": "application/octet-stream"}, {}):
            assert (await client.post("/ocsp", content=valid, headers=headers)).status_code == 415
        with_params = await client.post(
            "/ocsp", content=valid, headers={"content-type": "Application/OCSP-Request; charset=binary"}
        )
        assert status_of(with_params) == ocsp.OCSPResponseStatus.SUCCESSFUL

        assert (await post(client, valid, "/elsewhere")).status_code == 404
        assert (await client.get("/elsewhere/" + b64(valid))).status_code == 404
        assert (await client.get("/ocsp")).status_code == 404
    assert env.count("http_error") == 9


# --- never serve what is no longer valid -----------------------------------------------------------------------


async def test_a_response_past_its_next_update_is_never_served(env: Env) -> None:
    cached_leaf, uncached_leaf = env.leaves[0], env.leaves[1]
    async with env.client() as client:
        assert status_of(await post(client, request_der(cached_leaf, env.issuer))) == (
            ocsp.OCSPResponseStatus.SUCCESSFUL
        )
        stored = await env.store.get(ISSUING, cached_leaf.serial_number)
        assert stored is not None
        env.clock.advance(stored.next_update - to_epoch(env.clock.now()))

        for leaf in (cached_leaf, uncached_leaf):
            response = await client.get("/ocsp/" + b64(request_der(leaf, env.issuer)))
            assert response.content == TRY_LATER
            assert status_of(response) == ocsp.OCSPResponseStatus.TRY_LATER
        assert env.count("try_later") == 2

        # Once the pre-signer has caught up, a fresh response is served again.
        await env.presigner.catch_up()
        response = await client.get("/ocsp/" + b64(request_der(cached_leaf, env.issuer)))
        resp = ocsp.load_der_ocsp_response(response.content)
        single = matching_single(resp, request_der(cached_leaf, env.issuer))
        assert single.this_update_utc == env.clock.now()
        assert single.certificate_status == ocsp.OCSPCertStatus.GOOD


async def test_with_the_store_unreachable_cached_responses_are_served_and_misses_get_try_later(env: Env) -> None:
    flaky = SwitchableStore(env.store)
    env.responder(flaky)
    assert env.cache is not None
    cached_leaf, uncached_leaf = env.leaves[0], env.leaves[1]
    cached_req = "/ocsp/" + b64(request_der(cached_leaf, env.issuer))
    async with env.client() as client:
        first = await client.get(cached_req)
        assert status_of(first) == ocsp.OCSPResponseStatus.SUCCESSFUL

        flaky.broken = True
        assert (await client.get(cached_req)).content == first.content
        miss = await client.get("/ocsp/" + b64(request_der(uncached_leaf, env.issuer)))
        assert miss.content == TRY_LATER
        with pytest.raises(StorageError):
            await env.cache.sync_once()
        assert (await client.get(cached_req)).content == first.content

        # Even the cache stops serving a response once it has expired.
        stored = await env.store.get(ISSUING, cached_leaf.serial_number)
        assert stored is not None
        env.clock.advance(stored.next_update - to_epoch(env.clock.now()))
        assert (await client.get(cached_req)).content == TRY_LATER
    assert env.count("good") == 3
    assert env.count("try_later") == 2


async def test_following_the_change_feed_survives_an_outage_and_catches_up(env: Env) -> None:
    flaky = SwitchableStore(env.store)
    # A long poll interval: the follower moves only when notified, so nothing here depends on timing.
    env.responder(flaky, poll_interval=60.0)
    cache = env.cache
    assert cache is not None
    leaf = env.leaves[0]
    path = "/ocsp/" + b64(request_der(leaf, env.issuer))
    async with env.client() as client:
        first = await client.get(path)
        flaky.broken = True
        follower = asyncio.create_task(cache.follow())
        try:
            await asyncio.wait_for(flaky.change_called.wait(), 10)
            assert not follower.done()
            assert (await client.get(path)).content == first.content

            flaky.broken = False
            await env.authority.revoke(leaf.serial_number, "keyCompromise", ACTOR)
            await env.presigner.catch_up()
            cache.notify()
            await asyncio.wait_for(flaky.changes_delivered.wait(), 10)
            # Let the follower finish applying the batch it was handed.
            last_change = await env.store.last_change()
            for _ in range(100):
                if cache.position >= last_change:
                    break
                await asyncio.sleep(0)
            assert cache.position == last_change
            assert not follower.done()
        finally:
            follower.cancel()
            with pytest.raises(asyncio.CancelledError):
                await follower
        revoked = await client.get(path)
    single = answered(revoked, request_der(leaf, env.issuer))
    assert single.certificate_status == ocsp.OCSPCertStatus.REVOKED


# --- the change feed keeps the cache current --------------------------------------------------------------------


async def test_the_change_feed_replaces_a_cached_good_response_with_the_revoked_one(env: Env) -> None:
    assert env.cache is not None
    env.cache.position = await env.store.last_change()  # a responder that has followed the feed so far
    leaf = env.leaves[0]
    der = request_der(leaf, env.issuer)
    path = "/ocsp/" + b64(der)
    async with env.client() as client:
        assert answered(await client.get(path), der).certificate_status == ocsp.OCSPCertStatus.GOOD
        env.clock.advance(10)
        await env.authority.revoke(leaf.serial_number, "cessationOfOperation", ACTOR)
        await env.presigner.catch_up()

        assert await env.cache.sync_once() == 1
        response = await client.get(path)
    single = answered(response, der)
    assert single.certificate_status == ocsp.OCSPCertStatus.REVOKED
    assert single.revocation_reason == x509.ReasonFlags.cessation_of_operation
    assert env.count("revoked") == 1


async def test_a_certificate_asked_for_before_it_was_signed_is_served_once_the_feed_brings_it(env: Env) -> None:
    assert env.cache is not None
    env.cache.position = await env.store.last_change()
    issued = await env.authority.issue(IssueRequest(subject="CN=late", dns=["late.test"]), ACTOR)
    der = request_der(issued.certificate, env.issuer)
    async with env.client() as client:
        assert (await post(client, der)).content == UNAUTHORIZED
        await env.presigner.catch_up()
        await env.cache.sync_once()
        response = await post(client, der)
    assert answered(response, der).certificate_status == ocsp.OCSPCertStatus.GOOD


async def test_a_slow_miss_fill_never_replaces_a_newer_response_from_the_feed(env: Env) -> None:
    slow = SlowReadStore(env.store)
    env.registry = CollectorRegistry()
    cache = CachingSource(StoreSource(slow), env.store, 1000, clock=env.now)
    cache.position = await env.store.last_change()
    index = IssuerIndex()
    index.add(ISSUING, env.issuer)
    env.app = OCSPApp(cache, index, env.registry, clock=env.now)
    leaf = env.leaves[2]
    der = request_der(leaf, env.issuer)
    path = "/ocsp/" + b64(der)
    async with env.client() as client:
        in_flight = asyncio.create_task(client.get(path))
        await asyncio.wait_for(slow.read_done.wait(), 10)  # it has read the good response

        env.clock.advance(10)
        await env.authority.revoke(leaf.serial_number, "keyCompromise", ACTOR)
        await env.presigner.catch_up()
        assert await cache.sync_once() == 1  # the revoked response is cached now

        slow.release.set()  # the miss fill completes with what it read before
        await in_flight
        after = await client.get(path)
    assert answered(after, der).certificate_status == ocsp.OCSPCertStatus.REVOKED


# --- nothing a client sends crashes the responder ---------------------------------------------------------------


@st.composite
def mutated(draw: st.DrawFn, base: bytes) -> bytes:
    data = bytearray(base)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "set-length"]))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "truncate":
            del data[pos:]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete" and data:
            del data[pos]
        elif op == "set-length" and data:
            data[pos] = draw(st.sampled_from([0x00, 0x7F, 0x80, 0x81, 0x82, 0x84, 0x88, 0xFF]))
    return bytes(data)


def _assert_no_crash(method: str, status: int, headers: dict[bytes, bytes], body: bytes) -> None:
    assert status < 500
    if status == 200 and method == "HEAD":
        # Servers drop HEAD bodies (uvicorn and granian both do); whatever is there must not be an error.
        assert body != INTERNAL_ERROR
    elif status == 200:
        assert headers[b"content-type"] == b"application/ocsp-response"
        assert body != INTERNAL_ERROR
        assert ocsp.load_der_ocsp_response(body).response_status in (
            ocsp.OCSPResponseStatus.SUCCESSFUL,
            ocsp.OCSPResponseStatus.MALFORMED_REQUEST,
            ocsp.OCSPResponseStatus.UNAUTHORIZED,
        )


def test_no_posted_bytes_and_no_get_path_crash_the_responder(ca_config: Config) -> None:
    with asyncio.Runner() as runner:
        environment = runner.run(build_env(ca_config, leaves=1))
        try:
            app = environment.app
            assert app is not None
            valid = request_der(environment.leaves[0], environment.issuer, nonce=b"n" * 16)
            valid256 = request_der(environment.leaves[0], environment.issuer, hashes.SHA256())
            bodies = st.one_of(st.binary(max_size=2000), mutated(valid), mutated(valid256))
            paths = st.one_of(
                st.text(max_size=300),
                mutated(valid).map(b64),
                mutated(valid).map(lambda d: quote(base64.urlsafe_b64encode(d).decode().rstrip("="))),
                st.builds(lambda a, b: a + b64(valid) + b, st.text(max_size=5), st.text(max_size=5)),
            )
            ctype = [(b"content-type", b"application/ocsp-request")]

            @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
            @given(body=bodies)
            def post_never_crashes(body: bytes) -> None:
                _assert_no_crash("POST", *runner.run(call_asgi(app, "POST", "/ocsp", body, ctype)))

            @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
            @given(tail=paths, method=st.sampled_from(["GET", "HEAD"]))
            def get_never_crashes(tail: str, method: str) -> None:
                _assert_no_crash(method, *runner.run(call_asgi(app, method, "/ocsp/" + tail)))

            post_never_crashes()
            get_never_crashes()
            # The valid request itself is answered, so the fuzzing reached the lookup, not only the parser.
            status, _, body = runner.run(call_asgi(app, "POST", "/ocsp", valid, ctype))
            assert status == 200
            assert ocsp.load_der_ocsp_response(body).response_status == ocsp.OCSPResponseStatus.SUCCESSFUL
        finally:
            environment.close()
