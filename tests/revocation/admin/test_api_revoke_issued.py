"""``POST /v1/issuers/{id}/revoke-issued``: admin only; bad input is a 400 naming what is wrong, and changes nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from pca.runtime import Runtime
from revocation.authority import Authority
from tests.support.admin import admin_client, assert_problem, bearer
from tests.support.ca import ISSUING, issue

Client = tuple[httpx.AsyncClient, dict[str, str]]
ROUTE = f"/v1/issuers/{ISSUING}/revoke-issued"


@pytest.fixture
async def api(rt: Runtime) -> AsyncIterator[Client]:
    async with admin_client(rt) as pair:
        yield pair


async def test_an_admin_revokes_what_the_issuer_issued_a_call_at_a_time(
    api: Client, rt: Runtime, authority: Authority
) -> None:
    client, tokens = api
    serials = [f"{(await issue(authority, f'leaf-{n}')).serial_number:x}" for n in range(3)]
    admin = {**bearer(tokens, "admin"), "x-request-id": "incident-42"}

    first = await client.post(ROUTE, json={"limit": 1}, headers=admin)
    rest = await client.post(ROUTE, json={"reason": "cACompromise"}, headers=admin)

    assert first.status_code == 200, first.text
    assert first.json()["revoked"] == 1 and first.json()["remaining"] >= 2
    body = rest.json()
    assert (body["revoked"], body["already_revoked"], body["remaining"]) == (first.json()["remaining"], 1, 0)
    assert (body["issuer_id"], body["reason"], body["skipped_expired"], body["skipped_ca"]) == (
        ISSUING,
        "cACompromise",
        0,
        0,
    )
    for serial in serials:
        status = (await client.get(f"/v1/certificates/{serial}", headers=bearer(tokens, "auditor"))).json()
        assert (status["status"], status["reason"]) == ("revoked", "cACompromise")
    events = (await client.get(f"/v1/events?after={body['first_seq'] - 1}", headers=admin)).json()["events"]
    assert {(e["type"], e["actor"], e["request_id"]) for e in events} == {
        ("CertificateRevoked", "admin", "incident-42")
    }


async def test_revokers_and_auditors_are_refused(api: Client, rt: Runtime, authority: Authority) -> None:
    client, tokens = api
    await issue(authority, "kept")
    head = await rt.log.head()

    for role in ("revoker", "auditor", "recorder"):
        resp = await client.post(ROUTE, json={"reason": "cACompromise"}, headers=bearer(tokens, role))
        assert_problem(resp, 403, f"role {role!r} may not revoke what a CA issued")
    assert_problem(await client.post(ROUTE, json={}), 401, "missing bearer token")

    assert await rt.log.head() == head


@pytest.mark.parametrize(
    ("body", "status", "detail"),
    [
        ({"reason": "certificateHold"}, 400, "certificateHold is temporary"),
        ({"reason": "removeFromCRL"}, 400, "reason 'removeFromCRL' cannot revoke"),
        ({"reason": "nope"}, 400, "reason 'nope' cannot revoke"),
        ({"reason": 2}, 400, "reason must be a string"),
        ({"reason": None}, 400, "reason must be a string"),
        ({"include_expired": "yes"}, 400, "include_expired must be true or false"),
        ({"limit": 0}, 400, "limit must be an integer from 1 to 100000"),
        ({"limit": True}, 400, "limit must be an integer"),
        ({"limit": None}, 400, "limit must be an integer"),
        ({"limit": "10"}, 400, "limit must be an integer"),
        ({"invalidity_date": "yesterday"}, 400, "invalidity_date 'yesterday' is not an ISO 8601 time"),
        ({"invalidity_date": "2999-01-01T00:00:00Z"}, 400, "is in the future"),
        ({"confirm": True}, 400, "unknown field(s) 'confirm'"),
        ([], 400, "body must be a JSON object"),
    ],
)
async def test_bad_input_is_a_clear_400_and_changes_nothing(
    api: Client, rt: Runtime, authority: Authority, body: object, status: int, detail: str
) -> None:
    client, tokens = api
    await issue(authority, "kept")
    head = await rt.log.head()

    resp = await client.post(ROUTE, json=body, headers=bearer(tokens, "admin"))

    assert_problem(resp, status, detail)
    assert await rt.log.head() == head


async def test_an_unknown_issuer_is_a_404_and_bad_json_a_400(api: Client, rt: Runtime) -> None:
    client, tokens = api
    head = await rt.log.head()
    unknown = await client.post("/v1/issuers/nope/revoke-issued", json={}, headers=bearer(tokens, "admin"))
    garbled = await client.post(
        ROUTE, content=b"{reason", headers={**bearer(tokens, "admin"), "content-type": "application/json"}
    )

    assert_problem(unknown, 404, "unknown issuer 'nope'")
    assert_problem(garbled, 400, "body is not valid JSON")
    assert await rt.log.head() == head
