"""``POST /v1/propagation/crl-installations``: what a relying party's CRL sync agent reports, in-process over ASGI.

Everything is real: the AdminAPI on a CA initialised by ``pca init`` (SQLite, and PostgreSQL where the
storage matters), the coordination store, the propagation tracker, and the CRL publisher
(``build_publisher``, recording each publication as the publisher role does). The reports are made
from the CRLs the publisher stored, as the agent makes them from the CRLs it downloads.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from prometheus_client import CollectorRegistry

from pca.cli import main as pca_main
from pca.config import load_config
from pca.roles.publisher import build_publisher
from pca.runtime import Runtime, connect_runtime
from pca.serve import build_authority
from publishers.objectstore import DirectoryStore
from publishers.publisher import Published, Publisher
from revocation import crl_layout
from revocation.admin.api import AdminAPI
from revocation.admin.installations import InstallationRecorder
from revocation.admin.tokens import Principal, TokenStore, add_token
from revocation.clock import SystemClock, iso
from revocation.coordination import CRLPublication
from revocation.propagation.tracker import PropagationTracker
from tests.support.admin import assert_problem
from tests.support.postgres import create_database, drop_database
from tests.support.processes import init_ca

PATH = "/v1/propagation/crl-installations"
ISSUER = "issuing-ca"


@dataclasses.dataclass
class Env:
    rt: Runtime
    tokens: dict[str, str]
    client: httpx.AsyncClient
    bare: httpx.AsyncClient  # an API without the installations endpoint's store
    store: DirectoryStore
    publisher: Publisher | None = None

    def auth(self, role: str) -> dict[str, str]:
        return {"authorization": f"Bearer {self.tokens[role]}"}

    async def issue(self, name: str) -> str:
        body = {"subject": f"CN={name}", "dns": [f"{name}.example"]}
        resp = await self.client.post("/v1/certificates", json=body, headers=self.auth("admin"))
        assert resp.status_code == 201, resp.text
        return str(resp.json()["serial"])

    async def revoke(self, serial: str) -> dict[str, Any]:
        resp = await self.client.post(
            f"/v1/certificates/{serial}/revoke", json={"reason": "keyCompromise"}, headers=self.auth("admin")
        )
        assert resp.status_code == 201, resp.text
        return dict(resp.json()["event"])

    async def publish(self) -> Published:
        """Full CRLs of every issuer by the real publisher, each publication recorded as the publisher
        role records them; returns the issuing CA's (shard 0)."""
        if self.publisher is None:
            self.publisher = build_publisher(self.rt, self.store)
        done = await self.publisher.publish_all()
        for p in done:
            publication = CRLPublication(p.issuer_id, p.shard, p.kind, p.number, p.log_position, p.published_at)
            await self.rt.coord.record_crl_publication(publication)
        return next(p for p in done if p.issuer_id == ISSUER and p.kind == "full")

    async def report(self, published: Published, agent: str = "nginx-1", **change: Any) -> dict[str, Any]:
        """The body the agent sends after installing the CRL the publisher stored."""
        stored = await self.store.get(crl_layout.numbered_key(ISSUER, published.shard, published.number))
        assert stored is not None
        crl = x509.load_der_x509_crl(stored.data)
        aki = crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
        assert aki is not None
        try:
            [idp] = crl.extensions.get_extension_for_class(x509.IssuingDistributionPoint).value.full_name or []
            idp_url: str | None = str(idp.value)
        except x509.ExtensionNotFound:
            idp_url = None
        number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
        assert number == published.number
        body = {
            "agent": agent,
            "crl_url": self.rt.config.crl_url(ISSUER),
            "issuer_key_id": aki.hex(),
            "crl_number": number,
            "delta": False,
            "idp_url": idp_url,
            "this_update": iso(crl.last_update_utc),
            "installed_at": iso(datetime.datetime.now(datetime.UTC)),
        }
        return {**body, **change}

    async def post(self, body: dict[str, Any], role: str = "agent") -> httpx.Response:
        return await self.client.post(PATH, json=body, headers=self.auth(role))


@contextlib.asynccontextmanager
async def make_env(rt: Runtime, tmp_path: Path) -> AsyncIterator[Env]:
    cfg = rt.config
    tokens = {"admin": cfg.token_file.read_text().strip()}
    for role in ("agent", "revoker", "auditor", "prober", "recorder"):
        tokens[role] = add_token(cfg.tokens_db, f"the-{role}", role)
    tracker = PropagationTracker(rt.log, rt.view, rt.coord, CollectorRegistry())

    def api(**wiring: Any) -> httpx.AsyncClient:
        app = AdminAPI(
            build_authority(rt), rt.log, lambda: TokenStore.load(cfg.tokens_db), CollectorRegistry(), **wiring
        ).app()
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://admin")

    wired = {"tracker": tracker, "coordination": rt.coord, "installations": InstallationRecorder(rt.view, rt.coord)}
    async with api(**wired) as client, api() as bare:
        yield Env(rt, tokens, client, bare, DirectoryStore(tmp_path / "crls"))


@pytest.fixture
async def env(runtime: Runtime, tmp_path: Path) -> AsyncIterator[Env]:
    async with make_env(runtime, tmp_path) as made:
        yield made


@pytest.fixture(params=["sqlite", "postgres"])
async def any_env(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Env]:
    """The same, on each backend."""
    server_dsn: str | None = None if request.param == "sqlite" else request.getfixturevalue("postgres_dsn")
    dsn = None if server_dsn is None else await create_database(server_dsn)
    database = [] if dsn is None else ["--database-url", dsn]
    try:
        config_path = await asyncio.to_thread(init_ca, tmp_path / "ca", *database)
        rt = await connect_runtime(load_config(config_path), SystemClock())
        try:
            async with make_env(rt, tmp_path) as made:
                yield made
        finally:
            await rt.aclose()
            rt.close()
    finally:
        if server_dsn is not None and dsn is not None:
            await drop_database(server_dsn, dsn)


# --- the end-to-end flow --------------------------------------------------------------------------------


async def test_an_installed_crl_shows_in_the_revocations_timeline(any_env: Env) -> None:
    env = any_env
    serial = await env.issue("svc1")
    before = await env.publish()  # a CRL from before the revocation: it does not list it
    event = await env.revoke(serial)
    after = await env.publish()
    assert before.log_position < event["seq"] <= after.log_position
    head = await env.rt.log.head()

    early = await env.post(await env.report(before, "haproxy-2"))
    assert early.status_code == 201, early.text
    body = await env.report(after, "nginx-1")
    resp = await env.post(body)

    assert resp.status_code == 201, resp.text
    stored = datetime.datetime.fromisoformat(body["installed_at"]).timestamp()
    assert resp.json() == {
        "agent": "nginx-1",
        "issuer_id": ISSUER,
        "shard": 0,
        "kind": "full",
        "number": after.number,
        "position": after.log_position,
        "installed_at": iso(datetime.datetime.fromtimestamp(stored, datetime.UTC)),
    }
    assert await env.rt.log.head() == head  # an observation, not an event

    timeline = await env.client.get(f"/v1/certificates/{serial}/propagation", headers=env.auth("auditor"))
    assert timeline.status_code == 200, timeline.text
    [party] = timeline.json()["relying_parties"]  # haproxy-2's CRL was published before the revocation
    assert (party["agent"], party["kind"], party["number"]) == ("nginx-1", "full", after.number)
    assert party["seconds"] >= 0
    assert party["at"] == resp.json()["installed_at"]


async def test_the_same_installation_reported_again_keeps_the_earliest_time(any_env: Env) -> None:
    env = any_env
    published = await env.publish()
    body = await env.report(published)
    first = await env.post(body)
    assert first.status_code == 201, first.text

    later = (datetime.datetime.fromisoformat(body["installed_at"]) + datetime.timedelta(seconds=30)).isoformat()
    again = await env.post({**body, "installed_at": later})
    assert again.status_code == 200, again.text
    assert again.json() == first.json()

    # Another agent's report of the same CRL is its own.
    other = await env.post({**body, "agent": "nginx-2"})
    assert (other.status_code, other.json()["agent"]) == (201, "nginx-2")


# --- who may report ------------------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["agent", "admin"])
async def test_agents_and_admins_may_report(env: Env, role: str) -> None:
    resp = await env.post(await env.report(await env.publish()), role)
    assert resp.status_code == 201, resp.text


@pytest.mark.parametrize("role", ["revoker", "auditor", "prober", "recorder"])
async def test_other_roles_may_not_report(env: Env, role: str) -> None:
    resp = await env.post(await env.report(await env.publish()), role)
    assert_problem(resp, 403, f"role {role!r} may not report installations")


async def test_an_agent_may_do_nothing_else(env: Env) -> None:
    serial = await env.issue("svc1")
    for method, path in (
        ("GET", "/v1/events"),
        ("GET", f"/v1/certificates/{serial}"),
        ("GET", f"/v1/certificates/{serial}/propagation"),
        ("GET", "/v1/issuers"),
        ("POST", f"/v1/certificates/{serial}/revoke"),
        ("POST", "/v1/propagation/probes"),
    ):
        resp = await env.client.request(method, path, json={}, headers=env.auth("agent"))
        assert_problem(resp, 403, "role 'agent' may not")


async def test_reports_need_a_token(env: Env) -> None:
    assert_problem(await env.client.post(PATH, json={}), 401, "missing bearer token")


async def test_without_a_store_reports_are_a_503(env: Env) -> None:
    resp = await env.bare.post(PATH, json=await env.report(await env.publish()), headers=env.auth("agent"))
    assert_problem(resp, 503, "no coordination store")


def test_token_create_accepts_the_agent_role(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = env.rt.config
    pca_main(["token", "create", "--config", str(cfg.path), "--name", "crl-sync-nginx-1", "--role", "agent"])
    token = capsys.readouterr().out.strip()
    assert TokenStore.load(cfg.tokens_db).authenticate(token) == Principal("crl-sync-nginx-1", "agent")


# --- what is refused -----------------------------------------------------------------------------------

BAD: dict[str, tuple[dict[str, Any], str]] = {
    "agent-space": ({"agent": "nginx 1"}, "agent must be"),
    "agent-empty": ({"agent": ""}, "agent must be"),
    "agent-too-long": ({"agent": "a" * 65}, "agent must be"),
    "agent-slash": ({"agent": "../x"}, "agent must be"),
    "agent-number": ({"agent": 7}, "agent must be"),
    "url-ftp": ({"crl_url": "ftp://crl.example/ca.crl"}, "crl_url must be"),
    "url-garbage": ({"crl_url": "not a url"}, "crl_url must be"),
    "url-null": ({"crl_url": None}, "crl_url must be"),
    "url-too-long": ({"crl_url": "http://h/" + "a" * 3000}, "crl_url must be"),
    "key-id-upper": ({"issuer_key_id": "ABCD"}, "issuer_key_id must be lowercase"),
    "key-id-odd": ({"issuer_key_id": "abc"}, "issuer_key_id must be"),
    "key-id-colons": ({"issuer_key_id": "ab:cd"}, "issuer_key_id must be"),
    "key-id-number": ({"issuer_key_id": 12}, "issuer_key_id must be"),
    "number-negative": ({"crl_number": -1}, "crl_number must be"),
    "number-huge": ({"crl_number": 2**159}, "crl_number must be"),
    "number-bool": ({"crl_number": True}, "crl_number must be"),
    "number-string": ({"crl_number": "5"}, "crl_number must be"),
    "number-float": ({"crl_number": 5.0}, "crl_number must be"),
    "delta-string": ({"delta": "false"}, "delta must be"),
    "delta-null": ({"delta": None}, "delta must be"),
    "idp-garbage": ({"idp_url": "no scheme"}, "idp_url must be"),
    "idp-number": ({"idp_url": 3}, "idp_url must be"),
    "this-update-garbage": ({"this_update": "yesterday"}, "this_update 'yesterday'"),
    "this-update-no-zone": ({"this_update": "2026-01-01T00:00:00"}, "no timezone"),
    "installed-no-zone": ({"installed_at": "2026-01-01T00:00:00"}, "no timezone"),
    "installed-not-utc": ({"installed_at": "2026-01-01T02:00:00+02:00"}, "not in UTC"),
    "installed-number": ({"installed_at": 1767225600}, "installed_at must be"),
    "unknown-field": ({"extra": 1}, "unknown fields extra"),
}


@pytest.mark.parametrize(("change", "detail"), BAD.values(), ids=BAD.keys())
async def test_a_bad_report_is_a_400_naming_the_field(env: Env, change: dict[str, Any], detail: str) -> None:
    body = await env.report(await env.publish(), **change)
    assert_problem(await env.post(body), 400, detail)


async def test_a_report_missing_a_field_is_a_400(env: Env) -> None:
    body = await env.report(await env.publish())
    del body["idp_url"]
    assert_problem(await env.post(body), 400, "missing fields idp_url")


@pytest.mark.parametrize(
    ("content", "detail"),
    [(b"", "JSON object"), (b"[1]", "JSON object"), (b"{nope", "not valid JSON")],
    ids=["empty", "array", "not-json"],
)
async def test_a_body_that_is_no_json_object_is_a_400(env: Env, content: bytes, detail: str) -> None:
    assert_problem(await env.client.post(PATH, content=content, headers=env.auth("agent")), 400, detail)


async def test_a_crl_pca_did_not_publish_is_a_404_saying_why(env: Env) -> None:
    published = await env.publish()
    body = await env.report(published)

    unknown_key = await env.post({**body, "issuer_key_id": "00" * 20})
    assert_problem(unknown_key, 404, f"no issuer pca knows has the key identifier {'00' * 20}")
    no_key = await env.post({**body, "issuer_key_id": None})
    assert_problem(no_key, 404, "no AuthorityKeyIdentifier")
    never = await env.post({**body, "crl_number": published.number + 100})
    assert_problem(never, 404, f"pca never published full CRL number {published.number + 100} of {ISSUER} shard 0")
    as_delta = await env.post({**body, "delta": True})
    assert_problem(as_delta, 404, f"pca never published delta CRL number {published.number} of {ISSUER}")
    huge = await env.post({**body, "crl_number": 2**159 - 1})
    assert_problem(huge, 404, "pca never published full CRL number")
    other_shard = await env.post({**body, "idp_url": "http://crl.example/issuing-ca-3.crl"})
    assert_problem(other_shard, 404, f"of {ISSUER} shard 3")


async def test_an_installation_time_the_clocks_cannot_explain_is_a_422(env: Env) -> None:
    published = await env.publish()
    ahead = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)
    resp = await env.post(await env.report(published, installed_at=iso(ahead)))
    body = assert_problem(resp, 422, "ahead of this server's clock")
    assert "clock skew" in body["detail"]

    before = datetime.datetime.fromtimestamp(published.published_at - 60, datetime.UTC)
    resp = await env.post(await env.report(published, installed_at=iso(before)))
    body = assert_problem(resp, 422, f"before full CRL {published.number} of {ISSUER} was published")
    assert "clock skew" in body["detail"]
