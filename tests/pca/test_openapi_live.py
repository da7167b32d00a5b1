"""Schemathesis against a live ``pca serve``: every operation of the served OpenAPI document, called with
every role's token (and none), answers no 5xx and only what the document says (status codes, content
types, headers, schemas); then stateful runs follow the document's links (issue -> revoke -> get).

Both runs apply every check of ``CHECKS``, response-schema conformance included: each step of a stateful
scenario answers only what the document says, like a single call.

Bounded for CI: 25 examples per operation of the document's 18 (with the coverage phase's own cases,
about 1,200 requests) and up to 30 stateful scenarios of up to 8 steps each: about 30 s on a 2-core
machine. The checks' settings are the repository's schemathesis.toml, which the README's
``schemathesis run`` command reads too.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.generation.case import Case
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from revocation.admin import openapi
from revocation.admin.tokens import ROLES, add_token
from revocation.events import REVOCATION_REASONS as REASONS
from tests.support.processes import ServerProcess, init_ca

pytestmark = pytest.mark.e2e
CONFIG = Path(__file__).resolve().parents[2] / "schemathesis.toml"  # what the README's command reads

CALLERS = (*ROLES, "none")
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]
EXAMPLES = 25  # per operation (18 operations); 100 also passes, in about 70 s
TURN: collections.defaultdict[str, Iterator[int]] = collections.defaultdict(itertools.count)


@dataclasses.dataclass
class Live:
    server: ServerProcess
    tokens: dict[str, str]
    ca_file: str

    def headers(self, caller: str) -> dict[str, str]:
        return {} if caller == "none" else {"authorization": f"Bearer {self.tokens[caller]}"}


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    directory: Path = tmp_path_factory.mktemp("openapi-live")
    server = ServerProcess(init_ca(directory, tls=True))  # the admin API over TLS, as pca init makes it
    tokens = {"admin": server.token}
    tokens.update({role: add_token(server.config.tokens_db, f"st-{role}", role) for role in ROLES if role != "admin"})
    server.start()
    ca_file = server.config.admin_tls.ca_file
    assert ca_file is not None
    try:
        yield Live(server, tokens, str(ca_file))
    finally:
        server.stop()


# Built from the code at collection time (schemathesis' lazy fixture loader fails under pytest 9);
# test_the_live_server_serves_this_document checks the server serves the very same document.
schema = schemathesis.openapi.from_dict(openapi.document(), config=SchemathesisConfig.from_path(CONFIG))


def test_the_live_server_serves_this_document(live: Live) -> None:
    resp = httpx.get(live.server.admin_url + "/v1/openapi.json", verify=live.server.verify, timeout=10)
    assert resp.status_code == 200 and resp.headers["content-type"] == "application/json"
    assert resp.json() == openapi.document()
    schema.config.update(base_url=live.server.admin_url, tls_verify=live.ca_file, request_timeout=30)


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,  # the same examples on every run: a CI failure is reproducible
)
def test_every_operation_answers_as_documented_for_every_role(case: Case, live: Live) -> None:
    roles = case.operation.definition.raw["x-roles"]
    # In turn: the roles the operation admits (so the handler runs), then every caller (the refusals).
    turns = [*roles, *roles, *CALLERS]
    caller = turns[next(TURN[case.operation.label]) % len(turns)]
    response = case.call_and_validate(
        base_url=live.server.admin_url, headers=live.headers(caller), checks=CHECKS, verify=live.ca_file
    )
    # Who may call what, as the document says (x-roles): 401 without a token, 403 for another role.
    if case.method.upper() != case.operation.method.upper():  # another method on a known path: refused
        assert 400 <= response.status_code < 500, response.text
        assert response.headers["content-type"] == ["application/problem+json"]
    elif response.status_code == 413 and "request bodies are limited" in response.text:
        pass  # an oversized body is refused before anything else, unauthenticated callers included
    elif roles and caller == "none":
        assert response.status_code == 401, response.text
    elif roles and caller not in roles:
        assert response.status_code == 403, response.text
        assert response.json()["detail"].startswith(f"role {caller!r} may not"), response.text
    else:
        assert response.status_code not in (401, 403), response.text


def test_stateful_issue_revoke_get_follow_the_links(live: Live) -> None:
    """Issue, then revoke, release and read what was issued, as the document's links say, as admin."""
    machine = schema.as_state_machine()
    headers = live.headers("admin")
    steps: list[tuple[str, int]] = []  # (operation, status) of every step

    class AsAdmin(machine):  # type: ignore[misc,valid-type]
        def before_call(self, case: Case) -> None:
            # Random subjects and dates are the stateless test's; here the chain needs what pca accepts.
            if case.operation.label == "POST /v1/certificates":
                case.body = {"subject": f"CN=st-{len(steps)}", "dns": [f"st-{len(steps)}.example"]}
            elif case.operation.label.startswith("POST /v1/issuers/{id}/"):
                # The chain is about leaf certificates: a revoked issuing CA would stop every later issue, and
                # revoke-issued would revoke the certificates the chain goes on to revoke and read.
                case.path_parameters = {"id": "no-such-issuer"}
            elif case.operation.label == "POST /v1/certificates/{serial}/revoke" and isinstance(case.body, dict):
                case.body = {"reason": case.body.get("reason") if case.body.get("reason") in REASONS else "superseded"}

        def get_call_kwargs(self, case: Case) -> dict[str, Any]:
            return {"headers": headers, "base_url": live.server.admin_url, "verify": live.ca_file}

        def validate_response(self, response: Any, case: Case, *args: Any, **kwargs: Any) -> None:
            steps.append((f"{case.method} {case.operation.path}", response.status_code))
            case.validate_response(response, checks=CHECKS, headers=headers)

    AsAdmin.run(
        settings=settings(
            max_examples=30,
            stateful_step_count=8,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
        )
    )
    # The links were followed: a certificate issued, then revoked and read through its serial.
    assert ("POST /v1/certificates", 201) in steps, steps
    assert ("POST /v1/certificates/{serial}/revoke", 201) in steps, steps
    assert ("GET /v1/certificates/{serial}", 200) in steps, steps


def test_unknown_routes_and_methods_are_problem_json(live: Live) -> None:
    with live.server.admin() as client:
        for method, path, status in (
            ("GET", "/v2/anything", 404),
            ("GET", "/v1/openapi.yaml", 404),
            ("POST", "/nope", 404),
            ("DELETE", "/v1/issuers", 405),
            ("PUT", "/v1/openapi.json", 405),
        ):
            resp = client.request(method, path)
            assert resp.status_code == status, (method, path, resp.text)
            assert resp.headers["content-type"] == "application/problem+json"
            assert resp.json()["status"] == status and path in resp.json()["detail"]
