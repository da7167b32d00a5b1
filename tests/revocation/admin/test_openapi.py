"""The OpenAPI document: built from the access table and the schemas, valid OpenAPI 3.1, checked in as
docs/openapi.json (regenerate with ``python -m revocation.admin.openapi --out docs/openapi.json``)."""

from __future__ import annotations

import json
from pathlib import Path

from openapi_spec_validator import validate

from pca.runtime import Runtime
from revocation.admin import access, openapi
from revocation.admin.api import ISSUE_FIELDS
from revocation.admin.schemas import COMPONENTS
from tests.support.admin import admin_client, assert_problem, bearer

CHECKED_IN = Path(__file__).resolve().parents[3] / "docs" / "openapi.json"
REGENERATE = "python -m revocation.admin.openapi --out docs/openapi.json"


def test_the_checked_in_document_is_the_generated_one() -> None:
    assert CHECKED_IN.read_text() == openapi.render(), f"docs/openapi.json is stale: run {REGENERATE}"


def test_the_document_is_valid_openapi_3_1() -> None:
    document = openapi.document()
    assert document["openapi"] == "3.1.0"
    validate(document)


def test_every_route_of_the_access_table_is_documented_with_its_roles_and_problems() -> None:
    paths = openapi.document()["paths"]
    for rule in access.API_RULES:  # the status page's routes are HTML for a browser, not the JSON API
        operation = paths[rule.path][rule.method.lower()]
        assert operation["x-roles"] == list(rule.roles)
        problems = {s for s, r in operation["responses"].items() if "application/problem+json" in r.get("content", {})}
        if rule.public:
            assert operation["security"] == []
        else:
            assert operation["security"] == [{"bearer": list(rule.roles)}, {"clientCertificate": list(rule.roles)}]
            assert {"400", "401", "403", "413"} <= problems, rule
    assert sum(len(methods) for methods in paths.values()) == len(access.API_RULES)
    assert {r.path for r in access.ACCESS if r.page} == {"/status", "/status/login", "/status/logout"}


def test_the_issue_body_documents_exactly_the_fields_the_handler_accepts() -> None:
    assert set(COMPONENTS["IssueRequest"]["properties"]) == set(ISSUE_FIELDS)


async def test_the_api_serves_the_document_without_a_token(runtime: Runtime) -> None:
    async with admin_client(runtime, roles=()) as (client, _):
        resp = await client.get("/v1/openapi.json")
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "application/json"
    assert resp.json() == json.loads(CHECKED_IN.read_text())


async def test_the_revocation_feed_refuses_unknown_and_repeated_query_parameters(runtime: Runtime) -> None:
    """As every other route does (it once ignored them: a typo such as ?lmit=5 went unnoticed)."""
    async with admin_client(runtime, roles=("prober",)) as (client, tokens):
        unknown = await client.get("/v1/revocations?lmit=5", headers=bearer(tokens, "prober"))
        assert_problem(unknown, 400, "unknown query parameter 'lmit'")
        repeated = await client.get("/v1/revocations?after=1&after=2", headers=bearer(tokens, "prober"))
        assert_problem(repeated, 400, "query parameter 'after' is given more than once")
        assert (
            await client.get("/v1/revocations?after=0&limit=5", headers=bearer(tokens, "prober"))
        ).status_code == 200
