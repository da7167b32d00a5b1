"""Revoking an issuing CA: admin only, by its own route; issuance under a revoked or expired CA stops."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from cryptography import x509

from pca.runtime import HealthApp, Runtime, ca_certificates_health
from pca.serve import pca_urls
from revocation.clock import FakeClock
from tests.support.admin import admin_client, assert_problem, bearer
from tests.support.ca import ISSUING, ROOT, issuer

ISSUE = {"subject": "CN=after", "dns": ["after.example"]}
Client = tuple[httpx.AsyncClient, dict[str, str]]


@pytest.fixture
async def api(rt: Runtime) -> AsyncIterator[Client]:
    """The admin API on the fake-clock runtime, with its health report and issuer summaries."""
    health = HealthApp({"ca_certificates": ca_certificates_health(rt)})
    async with admin_client(rt, health=health.report, issuer_stats=(rt.view, pca_urls(rt.config))) as pair:
        yield pair


async def ca_serial(rt: Runtime) -> str:
    return f"{(await issuer(rt, ISSUING)).cert.serial_number:x}"


async def test_the_route_for_leaves_refuses_a_ca_certificate_to_every_role(api: Client, rt: Runtime) -> None:
    client, tokens = api
    serial = await ca_serial(rt)
    head = await rt.log.head()

    for role in ("revoker", "admin"):
        resp = await client.post(
            f"/v1/certificates/{serial}/revoke", json={"reason": "cACompromise"}, headers=bearer(tokens, role)
        )
        assert_problem(resp, 403, f"POST /v1/issuers/{ISSUING}/revoke")
    resp = await client.post(
        f"/v1/issuers/{ISSUING}/revoke", json={"reason": "cACompromise"}, headers=bearer(tokens, "revoker")
    )
    assert_problem(resp, 403, "role 'revoker' may not revoke a CA")

    assert await rt.log.head() == head
    ok = await client.post("/v1/certificates", json=ISSUE, headers=bearer(tokens, "admin"))
    assert ok.status_code == 201, ok.text


async def test_an_admin_revokes_the_ca_then_issuance_stops_and_health_names_it(api: Client, rt: Runtime) -> None:
    client, tokens = api
    serial = await ca_serial(rt)
    assert (await client.get("/healthz")).status_code == 200

    resp = await client.post(
        f"/v1/issuers/{ISSUING}/revoke", json={"reason": "cACompromise"}, headers=bearer(tokens, "admin")
    )

    assert resp.status_code == 201, resp.text
    body = resp.json()
    assert (body["issuer_id"], body["serial"], body["issuer"], body["reason"]) == (
        ISSUING,
        serial,
        ROOT,
        "cACompromise",
    )
    assert body["event"]["actor"] == "admin"
    status = await client.get(f"/v1/certificates/{serial}?issuer={ROOT}", headers=bearer(tokens, "auditor"))
    assert status.json()["status"] == "revoked"
    again = await client.post(
        f"/v1/issuers/{ISSUING}/revoke", json={"reason": "cACompromise"}, headers=bearer(tokens, "admin")
    )
    assert again.status_code == 200 and again.json()["event"]["seq"] == body["event"]["seq"]

    refused = await client.post("/v1/certificates", json=ISSUE, headers=bearer(tokens, "admin"))
    assert_problem(refused, 409, f"the CA certificate of issuer {ISSUING} (serial {serial}) was revoked by {ROOT}")
    health = await client.get("/healthz")
    assert health.status_code == 503
    assert health.json()["ca_certificates"]["issuers"] == [ISSUING]
    assert "cACompromise" in health.json()["ca_certificates"]["problem"]
    issuers = {
        i["issuer_id"]: i
        for i in (await client.get("/v1/issuers", headers=bearer(tokens, "auditor"))).json()["issuers"]
    }
    assert issuers[ISSUING]["ca_certificate"]["status"] == "revoked"
    assert issuers[ISSUING]["ca_certificate"]["reason"] == "cACompromise"
    assert issuers[ROOT]["ca_certificate"]["status"] == "self-signed root"


async def test_a_root_and_an_unknown_issuer_cannot_be_revoked(api: Client, rt: Runtime) -> None:
    client, tokens = api
    head = await rt.log.head()

    root = await client.post(
        f"/v1/issuers/{ROOT}/revoke", json={"reason": "cACompromise"}, headers=bearer(tokens, "admin")
    )
    unknown = await client.post(
        "/v1/issuers/nope/revoke", json={"reason": "cACompromise"}, headers=bearer(tokens, "admin")
    )
    bad_reason = await client.post(
        f"/v1/issuers/{ISSUING}/revoke", json={"reason": "x"}, headers=bearer(tokens, "admin")
    )
    extra = await client.post(
        f"/v1/issuers/{ISSUING}/revoke", json={"reason": "cACompromise", "confirm": 1}, headers=bearer(tokens, "admin")
    )

    assert_problem(root, 400, "self-signed root")
    assert_problem(unknown, 404, "unknown issuer 'nope'")
    assert_problem(bad_reason, 400, "unknown revocation reason 'x'")
    assert_problem(extra, 400, "unknown field(s) 'confirm'")
    assert await rt.log.head() == head


async def test_issuance_under_an_expired_ca_stops_and_health_names_it(
    api: Client, rt: Runtime, fake_clock: FakeClock
) -> None:
    client, tokens = api
    ca_cert: x509.Certificate = (await issuer(rt, ISSUING)).cert
    fake_clock.advance((ca_cert.not_valid_after_utc - fake_clock.now()).total_seconds() + 1)

    refused = await client.post("/v1/certificates", json=ISSUE, headers=bearer(tokens, "admin"))

    assert_problem(refused, 409, f"the CA certificate of issuer {ISSUING} expired at")
    health = await client.get("/healthz")
    assert health.status_code == 503
    assert ISSUING in health.json()["ca_certificates"]["issuers"]
    listed = await client.get("/v1/issuers", headers=bearer(tokens, "auditor"))
    [summary] = [i for i in listed.json()["issuers"] if i["issuer_id"] == ISSUING]
    assert summary["ca_certificate"]["status"] == "expired"  # by the API's clock, as issuance and health


async def test_a_ca_on_hold_is_released_only_by_an_admin_by_its_own_route(api: Client, rt: Runtime) -> None:
    client, tokens = api
    serial = await ca_serial(rt)
    held = await client.post(
        f"/v1/issuers/{ISSUING}/revoke", json={"reason": "certificateHold"}, headers=bearer(tokens, "admin")
    )
    assert held.status_code == 201, held.text
    assert (await client.post("/v1/certificates", json=ISSUE, headers=bearer(tokens, "admin"))).status_code == 409

    for role in ("revoker", "admin"):
        by_leaf_route = await client.post(f"/v1/certificates/{serial}/release-hold", headers=bearer(tokens, role))
        assert_problem(by_leaf_route, 403, f"POST /v1/issuers/{ISSUING}/release-hold")
    by_revoker = await client.post(f"/v1/issuers/{ISSUING}/release-hold", headers=bearer(tokens, "revoker"))
    assert_problem(by_revoker, 403, "may not release a CA from hold")
    unknown = await client.post(f"/v1/issuers/{ISSUING}/unrevoke", headers=bearer(tokens, "admin"))
    assert_problem(unknown, 404, f"no such endpoint: POST /v1/issuers/{ISSUING}/unrevoke")

    released = await client.post(f"/v1/issuers/{ISSUING}/release-hold", headers=bearer(tokens, "admin"))

    assert released.status_code == 200, released.text
    assert (released.json()["serial"], released.json()["status"]) == (serial, "good")
    assert (await client.post("/v1/certificates", json=ISSUE, headers=bearer(tokens, "admin"))).status_code == 201
    assert (await client.get("/healthz")).status_code == 200
