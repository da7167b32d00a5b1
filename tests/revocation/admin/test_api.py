"""The admin API in-process over ASGI: what operators get back, what gets recorded, and how it fails."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import sqlite3
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from pca.runtime import Runtime
from pca.serve import build_authority
from revocation.admin.api import AdminAPI
from revocation.admin.tokens import Principal, TokenStore, add_token
from revocation.clock import FakeClock
from tests.support.admin import admin_client, assert_problem, bearer

MAX_BODY = 8192


@dataclasses.dataclass
class Admin:
    client: httpx.AsyncClient
    rt: Runtime
    tokens: dict[str, str]  # role -> token

    def auth(self, role: str) -> dict[str, str]:
        return {"authorization": f"Bearer {self.tokens[role]}"}

    async def head(self) -> int:
        return await self.rt.log.head()

    async def issue(self, name: str = "svc1", **extra: Any) -> dict[str, Any]:
        body = {"subject": f"CN={name}", "dns": [f"{name}.example"], **extra}
        resp = await self.client.post("/v1/certificates", json=body, headers=self.auth("admin"))
        assert resp.status_code == 201, resp.text
        return dict(resp.json())

    async def revoke(self, serial: str, reason: str, role: str = "revoker", **extra: Any) -> httpx.Response:
        return await self.client.post(
            f"/v1/certificates/{serial}/revoke", json={"reason": reason, **extra}, headers=self.auth(role)
        )


@pytest.fixture
async def admin(runtime: Runtime) -> AsyncIterator[Admin]:
    cfg = runtime.config
    tokens = {
        "admin": cfg.token_file.read_text().strip(),
        "revoker": add_token(cfg.tokens_db, "ops-revoker", "revoker"),
        "auditor": add_token(cfg.tokens_db, "ops-auditor", "auditor"),
    }
    api = AdminAPI(
        build_authority(runtime),
        runtime.log,
        lambda: TokenStore.load(cfg.tokens_db),
        CollectorRegistry(),
        max_body_bytes=MAX_BODY,
        projection=runtime.view,
    )
    transport = httpx.ASGITransport(app=api.app())
    async with httpx.AsyncClient(transport=transport, base_url="http://admin") as client:
        yield Admin(client, runtime, tokens)


def make_csr(common_name: str = "csr-svc", dns: str = "csr-svc.example") -> tuple[str, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(dns)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode(), key


def tampered_csr() -> str:
    pem, _ = make_csr()
    der = bytearray(x509.load_pem_x509_csr(pem.encode()).public_bytes(serialization.Encoding.DER))
    der[-1] ^= 0x01  # inside the signature
    return x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM).decode()


def spki(key: Any) -> bytes:
    return bytes(key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo))


# --- the happy paths ------------------------------------------------------------------------


async def test_issue_with_a_generated_key(admin: Admin) -> None:
    out = await admin.issue("svc1", validity_days=30)

    cert = x509.load_pem_x509_certificate(out["certificate"].encode())
    assert out["serial"] == f"{cert.serial_number:x}"
    assert (out["issuer"], out["subject"]) == ("issuing-ca", "CN=svc1")
    key = serialization.load_pem_private_key(out["private_key"].encode(), password=None)
    assert spki(key.public_key()) == spki(cert.public_key())
    assert out["seq"] == await admin.head()
    issuing = x509.load_pem_x509_certificate((admin.rt.config.data_dir / "issuing-ca.pem").read_bytes())
    cert.verify_directly_issued_by(issuing)


async def test_every_answer_of_an_authenticated_route_says_no_store(admin: Admin) -> None:
    """The answer that carries a private key, the reads, and the refusals: no cache may keep any."""
    out = await admin.issue("nostore")
    answers = [
        await admin.client.post(
            "/v1/certificates", json={"subject": "CN=k", "dns": ["k.example"]}, headers=admin.auth("admin")
        ),
        await admin.client.get(f"/v1/certificates/{out['serial']}", headers=admin.auth("auditor")),
        await admin.revoke(out["serial"], "keyCompromise"),
        await admin.client.get("/v1/events", headers=admin.auth("auditor")),
        await admin.client.get("/v1/events"),  # 401
        await admin.client.post("/v1/certificates", json={}, headers=admin.auth("auditor")),  # 403
        await admin.client.get("/v1/certificates/zz", headers=admin.auth("auditor")),  # 400
    ]
    assert "private_key" in answers[0].json()
    assert [a.headers.get("cache-control") for a in answers] == ["no-store"] * len(answers), [
        (a.status_code, a.headers.get("cache-control")) for a in answers
    ]


async def test_issue_from_a_csr_returns_no_key(admin: Admin) -> None:
    pem, key = make_csr()
    resp = await admin.client.post("/v1/certificates", json={"csr": pem}, headers=admin.auth("admin"))

    assert resp.status_code == 201, resp.text
    out = resp.json()
    assert "private_key" not in out
    assert out["subject"] == "CN=csr-svc"
    cert = x509.load_pem_x509_certificate(out["certificate"].encode())
    assert spki(cert.public_key()) == spki(key.public_key())


async def test_get_certificate_shows_its_status(admin: Admin) -> None:
    out = await admin.issue("svc1")
    serial = out["serial"]

    resp = await admin.client.get(f"/v1/certificates/{serial}", headers=admin.auth("auditor"))
    assert resp.status_code == 200
    body = resp.json()
    assert (body["serial"], body["status"], body["profile"], body["reason"]) == (serial, "good", "server", None)
    assert body["not_after"] == out["not_after"]

    # Upper case with colons names the same certificate.
    spelled = ":".join(serial.upper()[i : i + 2] for i in range(0, len(serial), 2))
    again = await admin.client.get(f"/v1/certificates/{spelled}", headers=admin.auth("auditor"))
    assert again.json() == body


async def test_revoke_then_repeat_identically(admin: Admin) -> None:
    serial = (await admin.issue())["serial"]

    first = await admin.revoke(serial, "keyCompromise", invalidity_date="2026-01-02T03:04:05Z")
    assert first.status_code == 201, first.text
    body = first.json()
    assert (body["serial"], body["status"], body["reason"]) == (serial, "revoked", "keyCompromise")
    assert body["revoked_at"].endswith("Z")
    assert body["invalidity_date"] == "2026-01-02T03:04:05Z"
    assert body["event"]["seq"] == await admin.head()
    assert body["event"]["type"] == "CertificateRevoked"

    head = await admin.head()
    repeat = await admin.revoke(serial, "keyCompromise", invalidity_date="2026-01-02T03:04:05Z")
    assert repeat.status_code == 200
    assert repeat.json()["event"]["seq"] == body["event"]["seq"]
    assert repeat.json()["revoked_at"] == body["revoked_at"]
    assert await admin.head() == head

    status = (await admin.client.get(f"/v1/certificates/{serial}", headers=admin.auth("auditor"))).json()
    assert (status["status"], status["reason"], status["revoked_at"]) == (
        "revoked",
        "keyCompromise",
        body["revoked_at"],
    )


async def test_release_hold(admin: Admin) -> None:
    serial = (await admin.issue())["serial"]
    assert (await admin.revoke(serial, "certificateHold")).status_code == 201

    resp = await admin.client.post(f"/v1/certificates/{serial}/release-hold", headers=admin.auth("revoker"))

    assert resp.status_code == 200, resp.text
    assert resp.json()["status"] == "good"
    assert resp.json()["event"]["type"] == "CertificateHoldReleased"
    status = (await admin.client.get(f"/v1/certificates/{serial}", headers=admin.auth("auditor"))).json()
    assert (status["status"], status["reason"]) == ("good", None)


async def test_events_are_paged_in_order(admin: Admin) -> None:
    start = await admin.head()
    for i in range(5):
        await admin.issue(f"svc{i}")

    resp = await admin.client.get(f"/v1/events?after={start}&limit=2", headers=admin.auth("auditor"))
    assert resp.status_code == 200
    page = resp.json()
    assert [e["seq"] for e in page["events"]] == [start + 1, start + 2]
    assert page["head"] == start + 5

    rest = (await admin.client.get(f"/v1/events?after={start + 2}", headers=admin.auth("auditor"))).json()
    assert [e["seq"] for e in rest["events"]] == [start + 3, start + 4, start + 5]
    assert [e["payload"]["subject"] for e in page["events"] + rest["events"]] == [f"CN=svc{i}" for i in range(5)]


async def test_every_accepted_change_is_an_event_with_its_actor_and_request_id(admin: Admin) -> None:
    start = await admin.head()
    issued = await admin.client.post(
        "/v1/certificates",
        json={"subject": "CN=svc1", "dns": ["svc1.example"]},
        headers={**admin.auth("admin"), "x-request-id": "rid-issue"},
    )
    serial = issued.json()["serial"]
    hold = await admin.client.post(
        f"/v1/certificates/{serial}/revoke",
        json={"reason": "certificateHold"},
        headers={**admin.auth("revoker"), "x-request-id": "rid-hold"},
    )
    release = await admin.client.post(
        f"/v1/certificates/{serial}/release-hold", headers={**admin.auth("revoker"), "x-request-id": "rid-release"}
    )
    assert [issued.status_code, hold.status_code, release.status_code] == [201, 201, 200]
    assert hold.headers["x-request-id"] == "rid-hold"

    events = (await admin.client.get(f"/v1/events?after={start}", headers=admin.auth("auditor"))).json()["events"]

    assert [(e["type"], e["actor"], e["request_id"]) for e in events] == [
        ("CertificateIssued", "admin", "rid-issue"),
        ("CertificateRevoked", "ops-revoker", "rid-hold"),
        ("CertificateHoldReleased", "ops-revoker", "rid-release"),
    ]


async def test_audit_verify_reports_an_intact_and_a_broken_chain(admin: Admin) -> None:
    serial = (await admin.issue())["serial"]
    revocation = (await admin.revoke(serial, "keyCompromise")).json()["event"]["seq"]
    await admin.issue("svc2")

    ok = await admin.client.get("/v1/audit/verify", headers=admin.auth("auditor"))
    assert ok.status_code == 200
    head = await admin.head()
    projection = {"ok": True, "position": head, "certificates": 3, "count": 0, "differences": []}
    assert ok.json() == {"ok": True, "events": head, "projection": projection}

    with contextlib.closing(sqlite3.connect(admin.rt.db.path)) as conn:
        conn.execute(
            "UPDATE events SET payload = replace(payload, 'keyCompromise', 'superseded') WHERE seq = ?", (revocation,)
        )
        conn.commit()

    broken = await admin.client.get("/v1/audit/verify", headers=admin.auth("auditor"))
    assert broken.status_code == 409
    assert broken.json()["ok"] is False
    assert broken.json()["first_bad_seq"] == revocation
    assert f"seq {revocation}" in broken.json()["detail"]


async def test_audit_verify_names_a_projection_that_disagrees_with_the_log(admin: Admin) -> None:
    serial = (await admin.issue())["serial"]
    await admin.revoke(serial, "keyCompromise")
    with contextlib.closing(sqlite3.connect(admin.rt.db.path)) as conn:
        conn.execute("UPDATE certificates SET status = 'good', revoked_at = NULL, reason = NULL WHERE serial = ?",
                     (serial,))  # fmt: skip
        conn.commit()

    broken = await admin.client.get("/v1/audit/verify", headers=admin.auth("auditor"))
    assert broken.status_code == 409
    body = broken.json()
    assert body["ok"] is False and body["events"] == await admin.head()
    assert body["projection"]["count"] == 1
    [difference] = body["projection"]["differences"]
    assert difference.startswith(
        f"certificate issuing-ca/{serial}: the projection has status good (the log says revoked)"
    )
    assert difference in body["detail"]


# --- errors -------------------------------------------------------------------------------

NOT_AN_OBJECT = ["keyCompromise"]


@dataclasses.dataclass(frozen=True)
class Case:
    role: str | None
    method: str
    path: str  # {good} and {revoked} are filled with serials
    status: int
    detail: str
    json: Any = None
    content: bytes | None = None


ERROR_CASES = {
    "unknown-reason": Case(
        "revoker", "POST", "/v1/certificates/{good}/revoke", 400, "'bogus'", json={"reason": "bogus"}
    ),
    "removeFromCRL": Case(
        "revoker", "POST", "/v1/certificates/{good}/revoke", 400, "'removeFromCRL'", json={"reason": "removeFromCRL"}
    ),
    "no-reason": Case("revoker", "POST", "/v1/certificates/{good}/revoke", 400, "reason is required", json={}),
    "malformed-serial": Case(
        "revoker", "POST", "/v1/certificates/zz/revoke", 400, "serial 'zz'", json={"reason": "keyCompromise"}
    ),
    "zero-serial": Case("auditor", "GET", "/v1/certificates/0", 400, "serial 0"),
    "future-invalidity-date": Case(
        "revoker",
        "POST",
        "/v1/certificates/{good}/revoke",
        400,
        "in the future",
        json={"reason": "keyCompromise", "invalidity_date": "2999-01-01T00:00:00Z"},
    ),
    "invalidity-date-not-iso": Case(
        "revoker",
        "POST",
        "/v1/certificates/{good}/revoke",
        400,
        "'last tuesday' is not an ISO 8601 time",
        json={"reason": "keyCompromise", "invalidity_date": "last tuesday"},
    ),
    "invalidity-date-without-zone": Case(
        "revoker",
        "POST",
        "/v1/certificates/{good}/revoke",
        400,
        "no timezone",
        json={"reason": "keyCompromise", "invalidity_date": "2026-01-01T00:00:00"},
    ),
    "csr-bad-signature": Case("admin", "POST", "/v1/certificates", 400, "signature", json={"csr": "TAMPERED"}),
    "csr-unparsable": Case(
        "admin", "POST", "/v1/certificates", 400, "CSR cannot be parsed", json={"csr": "not a CSR at all"}
    ),
    "body-not-json": Case("admin", "POST", "/v1/certificates", 400, "not valid JSON", content=b"{subject: svc1"),
    "body-not-object": Case(
        "revoker", "POST", "/v1/certificates/{good}/revoke", 400, "JSON object", json=NOT_AN_OBJECT
    ),
    "empty-body": Case("revoker", "POST", "/v1/certificates/{good}/revoke", 400, "JSON object", content=b""),
    "validity-not-int": Case(
        "admin",
        "POST",
        "/v1/certificates",
        400,
        "validity_days",
        json={"subject": "CN=x", "dns": ["x.example"], "validity_days": "90"},
    ),
    "dns-not-a-list": Case(
        "admin", "POST", "/v1/certificates", 400, "dns must be a list", json={"subject": "CN=x", "dns": "x.example"}
    ),
    "server-without-san": Case(
        "admin", "POST", "/v1/certificates", 400, "subject alternative name", json={"subject": "CN=x"}
    ),
    "bad-subject": Case(
        "admin", "POST", "/v1/certificates", 400, "RFC 4514", json={"subject": "svc1", "dns": ["x.example"]}
    ),
    "bad-limit": Case("auditor", "GET", "/v1/events?limit=0", 400, "limit='0'"),
    "bad-after": Case("auditor", "GET", "/v1/events?after=-1", 400, "after='-1'"),
    "missing-token": Case(None, "POST", "/v1/certificates/{good}/revoke", 401, "missing bearer token"),
    "wrong-token": Case("wrong", "POST", "/v1/certificates/{good}/revoke", 401, "not valid"),
    "auditor-revoking": Case(
        "auditor", "POST", "/v1/certificates/{good}/revoke", 403, "'auditor'", json={"reason": "keyCompromise"}
    ),
    "revoker-issuing": Case(
        "revoker", "POST", "/v1/certificates", 403, "'revoker'", json={"subject": "CN=x", "dns": ["x.example"]}
    ),
    "auditor-releasing": Case("auditor", "POST", "/v1/certificates/{revoked}/release-hold", 403, "'auditor'"),
    "unknown-serial": Case("auditor", "GET", "/v1/certificates/abcdef0123", 404, "abcdef0123"),
    "revoke-unknown-serial": Case(
        "revoker", "POST", "/v1/certificates/abcdef0123/revoke", 404, "abcdef0123", json={"reason": "keyCompromise"}
    ),
    "unknown-issuer": Case(
        "admin",
        "POST",
        "/v1/certificates",
        404,
        "'nope'",
        json={"subject": "CN=x", "dns": ["x.example"], "issuer": "nope"},
    ),
    "unknown-route": Case("admin", "GET", "/v1/nothing-here", 404, "/v1/nothing-here"),
    "wrong-method": Case("admin", "DELETE", "/v1/certificates/{good}", 405, "DELETE"),
    "revoke-with-another-reason": Case(
        "revoker", "POST", "/v1/certificates/{revoked}/revoke", 409, "already revoked", json={"reason": "superseded"}
    ),
    "release-not-on-hold": Case("revoker", "POST", "/v1/certificates/{good}/release-hold", 409, "not on hold"),
    "release-permanent": Case("revoker", "POST", "/v1/certificates/{revoked}/release-hold", 409, "keyCompromise"),
}


@pytest.mark.parametrize("case", ERROR_CASES.values(), ids=ERROR_CASES.keys())
async def test_errors_are_problem_documents_and_change_nothing(admin: Admin, case: Case) -> None:
    good = (await admin.issue("good"))["serial"]
    revoked = (await admin.issue("revoked"))["serial"]
    assert (await admin.revoke(revoked, "keyCompromise")).status_code == 201
    headers = {} if case.role is None else {"authorization": "Bearer pca_wrong"}
    if case.role in admin.tokens:
        headers = admin.auth(case.role)
    body = case.json
    if isinstance(body, dict) and body.get("csr") == "TAMPERED":
        body = {"csr": tampered_csr()}
    head = await admin.head()

    resp = await admin.client.request(
        case.method,
        case.path.format(good=good, revoked=revoked),
        json=body,
        content=case.content,
        headers=headers,
    )

    assert_problem(resp, case.status, case.detail)
    if case.status == 401:
        assert resp.headers["www-authenticate"].startswith("Bearer")
    assert await admin.head() == head


async def test_wrong_method_names_the_allowed_ones(admin: Admin) -> None:
    serial = (await admin.issue())["serial"]
    resp = await admin.client.delete(f"/v1/certificates/{serial}", headers=admin.auth("admin"))
    assert resp.status_code == 405
    assert set(resp.headers.get("allow", "").replace(" ", "").split(",")) == {"GET", "HEAD"}


async def test_oversized_body_with_content_length_is_refused(admin: Admin) -> None:
    serial = (await admin.issue())["serial"]
    head = await admin.head()
    body = b'{"reason": "keyCompromise", "pad": "' + b"x" * MAX_BODY + b'"}'

    resp = await admin.client.post(
        f"/v1/certificates/{serial}/revoke",
        content=body,
        headers={**admin.auth("revoker"), "content-type": "application/json"},
    )

    assert_problem(resp, 413, f"{MAX_BODY} bytes")
    assert await admin.head() == head


async def test_oversized_streamed_body_without_content_length_is_refused(admin: Admin) -> None:
    serial = (await admin.issue())["serial"]
    head = await admin.head()

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"reason": "keyCompromise", "pad": "'
        for _ in range(4):
            yield b"x" * (MAX_BODY // 2)
        yield b'"}'

    request = admin.client.build_request(
        "POST", f"/v1/certificates/{serial}/revoke", content=chunks(), headers=admin.auth("revoker")
    )
    assert "content-length" not in request.headers
    resp = await admin.client.send(request)

    assert_problem(resp, 413, f"{MAX_BODY} bytes")
    assert await admin.head() == head


async def test_a_body_just_under_the_limit_is_accepted(admin: Admin) -> None:
    serial = (await admin.issue())["serial"]
    prefix = b'{"reason": "keyCompromise"'
    body = prefix + b" " * (MAX_BODY - len(prefix) - 1) + b"}"  # unknown fields are refused: pad with blanks
    assert len(body) == MAX_BODY

    resp = await admin.client.post(
        f"/v1/certificates/{serial}/revoke",
        content=body,
        headers={**admin.auth("revoker"), "content-type": "application/json"},
    )
    assert resp.status_code == 201, resp.text


@pytest.mark.parametrize(
    ("path", "body"),
    [
        pytest.param("/v1/certificates", {"subject": 5, "dns": ["x.example"]}, id="subject-not-string"),
        pytest.param("/v1/certificates", {"csr": 5}, id="csr-not-string"),
        pytest.param("/v1/certificates", {"subject": "CN=x", "dns": ["x.example"], "validity_days": True}, id="bool"),
        pytest.param("/v1/certificates", {"subject": "CN=x", "profile": "client", "emails": ["nope"]}, id="bad-email"),
        pytest.param("/v1/certificates", {"subject": "CN=x", "ips": ["1.2.3"]}, id="bad-ip"),
        pytest.param("/v1/certificates", {"subject": "CN=x", "dns": ["x.example"], "issuer": "root-ca"}, id="root"),
        pytest.param(
            "/v1/certificates",
            {"subject": "CN=x", "dns": ["bücher..example"]},
            id="unicode-dns",
        ),
        pytest.param(
            "/v1/certificates",
            {"subject": "CN=x", "profile": "client", "emails": ["jörg@example.com"]},
            id="unicode-email",
        ),
        pytest.param(
            "/v1/certificates",
            {"subject": "CN=x", "dns": ["x.example"], "key_algorithm": "dsa-1024"},
            id="unknown-key-algorithm",
        ),
        pytest.param(
            "/v1/certificates/{serial}/revoke",
            {"reason": "keyCompromise", "invalidity_date": "0001-01-01T00:00:00+01:00"},
            id="invalidity-date-out-of-range",
        ),
    ],
)
async def test_client_mistakes_are_4xx_never_5xx(admin: Admin, path: str, body: Any) -> None:
    serial = (await admin.issue())["serial"]
    head = await admin.head()

    resp = await admin.client.post(path.format(serial=serial), json=body, headers=admin.auth("admin"))

    assert 400 <= resp.status_code < 500, resp.text
    assert resp.headers["content-type"] == "application/problem+json"
    assert await admin.head() == head


async def test_deeply_nested_json_is_a_400(admin: Admin) -> None:
    serial = (await admin.issue())["serial"]
    resp = await admin.client.post(
        f"/v1/certificates/{serial}/revoke", content=b"[" * (MAX_BODY - 1), headers=admin.auth("revoker")
    )
    assert_problem(resp, 400, "JSON")


async def test_zero_validity_is_a_400(admin: Admin) -> None:
    resp = await admin.client.post(
        "/v1/certificates",
        json={"subject": "CN=x", "dns": ["x.example"], "validity_days": 0},
        headers=admin.auth("admin"),
    )
    assert_problem(resp, 400, "validity")


# --- metrics and health ---------------------------------------------------------------------


async def test_metrics_count_requests_by_route_and_status(admin: Admin) -> None:
    serial = (await admin.issue())["serial"]
    await admin.client.get(f"/v1/certificates/{serial}", headers=admin.auth("auditor"))
    await admin.client.get("/v1/certificates/abcdef99", headers=admin.auth("auditor"))
    await admin.client.get("/v1/certificates/abcdef98", headers=admin.auth("auditor"))

    resp = await admin.client.get("/metrics")

    assert resp.status_code == 200
    counts = {
        (s.labels["route"], s.labels["status"]): s.value
        for family in text_string_to_metric_families(resp.text)
        for s in family.samples
        if s.name == "admin_requests_total"
    }
    assert counts == {("issue", "201"): 1.0, ("get_certificate", "200"): 1.0, ("get_certificate", "404"): 2.0}


async def test_healthz_answers_json(admin: Admin) -> None:
    resp = await admin.client.get("/healthz")
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "application/json"
    assert resp.json()["status"] == "ok"


# --- tokens -------------------------------------------------------------------------------


async def test_tokens_are_stored_hashed_and_authenticate_their_principal(admin: Admin) -> None:
    cfg = admin.rt.config
    stored = cfg.tokens_db.read_text()
    store = TokenStore.load(cfg.tokens_db)
    names = {"admin": "admin", "revoker": "ops-revoker", "auditor": "ops-auditor"}

    for role, token in admin.tokens.items():
        assert token not in stored
        assert token.removeprefix("pca_") not in stored
        assert store.authenticate(token) == Principal(names[role], role)
        flipped = token[:-1] + ("A" if token[-1] != "A" else "B")
        for near_miss in (flipped, token[:-1], token + "x", " " + token, token.upper()):
            assert store.authenticate(near_miss) is None, near_miss
    assert store.authenticate("") is None


async def test_a_token_is_refused_once_the_apis_clock_passes_its_expiry(rt: Runtime, fake_clock: FakeClock) -> None:
    async with admin_client(rt, roles=()) as (client, tokens):
        now = fake_clock.now()
        expires = now + datetime.timedelta(hours=1)
        tokens["day-pass"] = add_token(rt.config.tokens_db, "day-pass", "auditor", now=now, expires=expires)
        assert (await client.get("/v1/events", headers=bearer(tokens, "day-pass"))).status_code == 200
        fake_clock.advance(3600)
        assert_problem(await client.get("/v1/events", headers=bearer(tokens, "day-pass")), 401, "has expired")
