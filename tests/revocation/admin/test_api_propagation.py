"""The admin API's propagation endpoints, in-process over ASGI.

The real AdminAPI on a real CA database; the tracker and the coordination store
are small fakes (their own authors test the real ones), so these tests pin down
what the API does with them: which keys it asks for, what it stores, and every
way a request can be wrong.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from cryptography import x509
from prometheus_client import CollectorRegistry

from pca.cli import main as pca_main
from pca.runtime import Runtime
from pca.serve import build_authority
from revocation.admin.api import AdminAPI
from revocation.admin.tokens import Principal, TokenStore, add_token
from revocation.coordination import ProbeResult
from revocation.propagation.timeline import CRLSighting, Moment, ProbeSighting, Timeline
from tests.support.admin import assert_problem


class FakeTracker:
    def __init__(self) -> None:
        self.timelines: dict[tuple[str, int], Timeline] = {}
        self.asked: list[tuple[str, int]] = []

    async def find_timeline(self, issuer_id: str, serial: int) -> Timeline | None:
        self.asked.append((issuer_id, serial))
        return self.timelines.get((issuer_id, serial))


class FakeCoordination:
    def __init__(self) -> None:
        self.probes: list[ProbeResult] = []

    async def record_probe(self, result: ProbeResult) -> None:
        self.probes.append(result)


@dataclasses.dataclass
class Env:
    rt: Runtime
    tokens: dict[str, str]
    tracker: FakeTracker
    coordination: FakeCoordination
    client: httpx.AsyncClient  # API with tracker and coordination
    bare: httpx.AsyncClient  # API with neither

    def auth(self, role: str) -> dict[str, str]:
        return {"authorization": f"Bearer {self.tokens[role]}"}

    async def issue(self, name: str) -> str:
        resp = await self.client.post(
            "/v1/certificates", json={"subject": f"CN={name}", "dns": [f"{name}.example"]}, headers=self.auth("admin")
        )
        assert resp.status_code == 201, resp.text
        return str(resp.json()["serial"])

    async def revoke(self, serial: str) -> dict[str, Any]:
        resp = await self.client.post(
            f"/v1/certificates/{serial}/revoke", json={"reason": "keyCompromise"}, headers=self.auth("admin")
        )
        assert resp.status_code == 201, resp.text
        return dict(resp.json()["event"])


@pytest.fixture
async def env(runtime: Runtime) -> AsyncIterator[Env]:
    cfg = runtime.config
    tokens = {
        "admin": cfg.token_file.read_text().strip(),
        "revoker": add_token(cfg.tokens_db, "ops-revoker", "revoker"),
        "auditor": add_token(cfg.tokens_db, "ops-auditor", "auditor"),
        "prober": add_token(cfg.tokens_db, "blackbox", "prober"),
    }
    tracker, coordination = FakeTracker(), FakeCoordination()

    def api(**wiring: Any) -> httpx.AsyncClient:
        app = AdminAPI(
            build_authority(runtime),
            runtime.log,
            lambda: TokenStore.load(cfg.tokens_db),
            CollectorRegistry(),
            **wiring,
        ).app()
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://admin")

    async with api(tracker=tracker, coordination=coordination) as client, api() as bare:
        yield Env(runtime, tokens, tracker, coordination, client, bare)


# --- GET /v1/certificates/{serial}/propagation ------------------------------------------------


async def test_propagation_returns_the_trackers_timeline(env: Env) -> None:
    serial = await env.issue("svc1")
    seq = (await env.revoke(serial))["seq"]
    env.tracker.timelines[("issuing-ca", int(serial, 16))] = Timeline(
        issuer_id="issuing-ca",
        serial=int(serial, 16),
        seq=seq,
        committed_at="2026-01-01T00:00:00Z",
        superseded=False,
        presigned=Moment("2026-01-01T00:00:00.200000Z", 0.2),
        responders=(),
        ocsp_all_responders=None,
        crl=CRLSighting("2026-01-01T00:00:03Z", 3.0, "delta", 7, 0),
        probes=(ProbeSighting("http://r1.example/ocsp", "2026-01-01T00:00:01Z", 1.0),),
        pending=(),
        slo_seconds=5.0,
        slo_met=True,
    )
    timeline = env.tracker.timelines[("issuing-ca", int(serial, 16))].to_json()
    shown = {"issuer_id": "issuing-ca", "serial": serial, "seq": seq, "slo_met": True, "responders": []}
    assert {key: timeline[key] for key in shown} == shown

    for role in ("auditor", "prober", "revoker", "admin"):
        resp = await env.client.get(f"/v1/certificates/{serial}/propagation", headers=env.auth(role))
        assert resp.status_code == 200, resp.text
        assert resp.json() == timeline

    spelled = serial.upper()
    named = await env.client.get(
        f"/v1/certificates/{spelled}/propagation?issuer=issuing-ca", headers=env.auth("auditor")
    )
    assert named.json() == timeline
    assert set(env.tracker.asked) == {("issuing-ca", int(serial, 16))}


async def test_propagation_of_a_never_revoked_certificate_is_a_404(env: Env) -> None:
    serial = await env.issue("svc1")
    resp = await env.client.get(f"/v1/certificates/{serial}/propagation", headers=env.auth("auditor"))
    assert_problem(resp, 404, "never revoked")
    assert serial in resp.json()["detail"]


@pytest.mark.parametrize(
    ("path", "status", "detail"),
    [
        pytest.param("/v1/certificates/abcdef0123/propagation", 404, "abcdef0123", id="unknown-serial"),
        pytest.param("/v1/certificates/{serial}/propagation?issuer=root-ca", 404, "from root-ca", id="other-issuer"),
        pytest.param("/v1/certificates/zz/propagation", 400, "serial 'zz'", id="malformed-serial"),
        pytest.param("/v1/certificates/0/propagation", 400, "serial 0", id="zero-serial"),
    ],
)
async def test_propagation_errors(env: Env, path: str, status: int, detail: str) -> None:
    serial = await env.issue("svc1")
    await env.revoke(serial)
    resp = await env.client.get(path.format(serial=serial), headers=env.auth("auditor"))
    assert_problem(resp, status, detail)


async def test_propagation_without_a_tracker_is_a_503(env: Env) -> None:
    serial = await env.issue("svc1")
    await env.revoke(serial)
    resp = await env.bare.get(f"/v1/certificates/{serial}/propagation", headers=env.auth("auditor"))
    assert_problem(resp, 503, "not configured")


async def test_propagation_needs_a_token(env: Env) -> None:
    resp = await env.client.get("/v1/certificates/abcdef/propagation")
    assert_problem(resp, 401, "missing bearer token")


# --- GET /v1/issuers ----------------------------------------------------------------------------


async def test_issuers_lists_the_hierarchy_with_certificates(env: Env) -> None:
    cfg = env.rt.config
    resp = await env.client.get("/v1/issuers", headers=env.auth("prober"))

    assert resp.status_code == 200, resp.text
    issuers = {i["issuer_id"]: i for i in resp.json()["issuers"]}
    assert set(issuers) == {"root-ca", "issuing-ca"}
    root, issuing = issuers["root-ca"], issuers["issuing-ca"]
    assert (root["kind"], root["parent_id"]) == ("root", None)
    assert (issuing["kind"], issuing["parent_id"]) == ("intermediate", "root-ca")
    for issuer_id, rec in issuers.items():
        on_disk = x509.load_pem_x509_certificate((cfg.data_dir / f"{issuer_id}.pem").read_bytes())
        assert x509.load_pem_x509_certificate(rec["certificate_pem"].encode()) == on_disk
        assert rec["crl_url"] == cfg.crl_url(issuer_id)
    # Both have an OCSP signer (the root's answers for the issuing CA's certificate).
    assert issuing["ocsp_url"] == cfg.ocsp_url
    assert root["ocsp_url"] == cfg.ocsp_url


async def test_issuers_needs_the_read_permission(env: Env) -> None:
    assert_problem(await env.client.get("/v1/issuers"), 401, "missing bearer token")
    assert_problem(await env.client.post("/v1/issuers", headers=env.auth("admin")), 405, "POST")


# --- POST /v1/propagation/probes --------------------------------------------------------------


async def _probe_body(env: Env) -> dict[str, Any]:
    serial = await env.issue("probed")
    event = await env.revoke(serial)
    return {
        "issuer_id": "issuing-ca",
        "serial": serial,
        "seq": event["seq"],
        "responder_url": "http://127.0.0.1:9/ocsp",
        "seen_at": "2026-03-04T05:06:07.250000Z",
    }


@pytest.mark.parametrize("role", ["prober", "admin"])
async def test_a_probe_is_stored(env: Env, role: str) -> None:
    body = await _probe_body(env)
    head = await env.rt.log.head()

    resp = await env.client.post("/v1/propagation/probes", json=body, headers=env.auth(role))

    assert resp.status_code == 201, resp.text
    assert resp.json() == body
    seen = datetime.datetime(2026, 3, 4, 5, 6, 7, 250000, tzinfo=datetime.UTC).timestamp()
    assert env.coordination.probes == [
        ProbeResult("issuing-ca", int(body["serial"], 16), body["seq"], body["responder_url"], seen)
    ]
    assert await env.rt.log.head() == head  # an observation, not an event


@pytest.mark.parametrize("role", ["revoker", "auditor"])
async def test_only_probers_and_admins_may_report_probes(env: Env, role: str) -> None:
    body = await _probe_body(env)
    resp = await env.client.post("/v1/propagation/probes", json=body, headers=env.auth(role))
    assert_problem(resp, 403, f"{role!r} may not probe")
    assert env.coordination.probes == []


async def test_a_prober_may_read_but_not_change_anything(env: Env) -> None:
    serial = await env.issue("svc1")
    assert (await env.client.get("/v1/revocations?after=0", headers=env.auth("prober"))).status_code == 200
    # The log itself names actors, request ids and key references: admin and auditor only.
    assert_problem(await env.client.get("/v1/events", headers=env.auth("prober")), 403, "may not read the event log")
    assert (await env.client.get(f"/v1/certificates/{serial}", headers=env.auth("prober"))).status_code == 200
    revoke = await env.client.post(
        f"/v1/certificates/{serial}/revoke", json={"reason": "keyCompromise"}, headers=env.auth("prober")
    )
    assert_problem(revoke, 403, "'prober' may not revoke")
    issue = await env.client.post(
        "/v1/certificates", json={"subject": "CN=x", "dns": ["x.example"]}, headers=env.auth("prober")
    )
    assert_problem(issue, 403, "'prober' may not issue")


async def test_probes_without_a_coordination_store_are_a_503(env: Env) -> None:
    body = await _probe_body(env)
    resp = await env.bare.post("/v1/propagation/probes", json=body, headers=env.auth("prober"))
    assert_problem(resp, 503, "no coordination store")


BAD_PROBES: dict[str, tuple[dict[str, Any], str]] = {
    "issuer-missing": ({"issuer_id": None}, "issuer_id"),
    "issuer-empty": ({"issuer_id": ""}, "issuer_id"),
    "issuer-not-string": ({"issuer_id": 5}, "issuer_id"),
    "issuer-other": ({"issuer_id": "root-ca"}, "issuer_id 'root-ca'"),
    "serial-missing": ({"serial": None}, "serial must be"),
    "serial-int": ({"serial": 12345}, "serial must be"),
    "serial-not-hex": ({"serial": "xyz"}, "serial 'xyz'"),
    "serial-zero": ({"serial": "0"}, "serial 0"),
    "serial-other": ({"serial": "abcdef"}, "not serial abcdef"),
    "seq-missing": ({"seq": None}, "seq must be"),
    "seq-string": ({"seq": "7"}, "seq must be"),
    "seq-bool": ({"seq": True}, "seq must be"),
    "seq-zero": ({"seq": 0}, "seq must be"),
    "seq-negative": ({"seq": -3}, "seq must be"),
    "seq-huge": ({"seq": 2**80}, "seq must be"),
    "seq-float": ({"seq": 3.5}, "seq must be"),
    "seq-beyond-head": ({"seq": 10**9}, "seq 1000000000 is not in the event log"),
    "seq-not-a-revocation": ({"seq": 1}, "not a CertificateRevoked"),
    "url-missing": ({"responder_url": None}, "responder_url"),
    "url-not-http": ({"responder_url": "ftp://host/ocsp"}, "responder_url"),
    "url-no-host": ({"responder_url": "http:///ocsp"}, "responder_url"),
    "url-garbage": ({"responder_url": "not a url"}, "responder_url"),
    "url-bad-ipv6": ({"responder_url": "http://[::1/ocsp"}, "responder_url"),
    "url-too-long": ({"responder_url": "http://h/" + "a" * 3000}, "responder_url"),
    "seen-missing": ({"seen_at": None}, "seen_at"),
    "seen-number": ({"seen_at": 1700000000}, "seen_at"),
    "seen-not-iso": ({"seen_at": "yesterday"}, "seen_at 'yesterday'"),
    "seen-no-zone": ({"seen_at": "2026-01-01T00:00:00"}, "no timezone"),
    "seen-out-of-range": ({"seen_at": "0001-01-01T00:00:00+01:00"}, "seen_at"),
}


@pytest.mark.parametrize(("change", "detail"), BAD_PROBES.values(), ids=BAD_PROBES.keys())
async def test_a_bad_probe_is_a_400_naming_the_field(env: Env, change: dict[str, Any], detail: str) -> None:
    body = {**(await _probe_body(env)), **change}
    body = {k: v for k, v in body.items() if v is not None}

    resp = await env.client.post("/v1/propagation/probes", json=body, headers=env.auth("prober"))

    assert_problem(resp, 400, detail)
    assert env.coordination.probes == []


@pytest.mark.parametrize(
    ("content", "detail"),
    [(b"", "JSON object"), (b"[1, 2]", "JSON object"), (b"{nope", "not valid JSON")],
    ids=["empty", "array", "not-json"],
)
async def test_a_probe_body_that_is_no_json_object_is_a_400(env: Env, content: bytes, detail: str) -> None:
    resp = await env.client.post("/v1/propagation/probes", content=content, headers=env.auth("prober"))
    assert_problem(resp, 400, detail)


# --- the prober role -------------------------------------------------------------------------------


def test_token_create_accepts_the_prober_role(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = env.rt.config
    pca_main(["token", "create", "--config", str(cfg.path), "--name", "probe-2", "--role", "prober"])
    token = capsys.readouterr().out.strip()
    assert TokenStore.load(cfg.tokens_db).authenticate(token) == Principal("probe-2", "prober")


# --- with the real tracker and coordination store ---------------------------------------------------


async def test_a_reported_probe_shows_in_the_real_trackers_timeline(runtime: Runtime) -> None:
    """The two endpoints against the real PropagationTracker and SQLiteCoordination: what a prober
    reports comes back in the certificate's timeline."""
    from revocation.propagation.tracker import PropagationTracker
    from revocation.storage.sqlite.coordination import SQLiteCoordination

    assert runtime.db is not None
    cfg = runtime.config
    prober = add_token(cfg.tokens_db, "blackbox", "prober")
    admin = {"authorization": f"Bearer {cfg.token_file.read_text().strip()}"}
    coordination = SQLiteCoordination(runtime.db)
    tracker = PropagationTracker(runtime.log, runtime.view, coordination, CollectorRegistry())
    app = AdminAPI(
        build_authority(runtime),
        runtime.log,
        lambda: TokenStore.load(cfg.tokens_db),
        CollectorRegistry(),
        tracker=tracker,
        coordination=coordination,
    ).app()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://admin") as client:
        issued = await client.post("/v1/certificates", json={"subject": "CN=t", "dns": ["t.example"]}, headers=admin)
        serial = issued.json()["serial"]
        never = await client.get(f"/v1/certificates/{serial}/propagation", headers=admin)
        assert_problem(never, 404, "never revoked")
        event = (
            await client.post(f"/v1/certificates/{serial}/revoke", json={"reason": "keyCompromise"}, headers=admin)
        ).json()["event"]
        committed = datetime.datetime.fromisoformat(event["recorded_at"])
        seen = committed + datetime.timedelta(seconds=0.25)
        body = {
            "issuer_id": "issuing-ca",
            "serial": serial,
            "seq": event["seq"],
            "responder_url": "http://r1.example/ocsp",
            "seen_at": seen.isoformat(),
        }
        posted = await client.post("/v1/propagation/probes", json=body, headers={"authorization": f"Bearer {prober}"})
        assert posted.status_code == 201, posted.text

        resp = await client.get(f"/v1/certificates/{serial}/propagation", headers=admin)

    assert resp.status_code == 200, resp.text
    timeline = resp.json()
    assert (timeline["issuer_id"], timeline["serial"], timeline["seq"]) == ("issuing-ca", serial, event["seq"])
    [probe] = timeline["probes"]
    assert probe["responder_url"] == "http://r1.example/ocsp"
    assert probe["seconds"] == pytest.approx(0.25, abs=1e-3)
