"""Who may call what: every route of the admin API, called by every kind of caller, against one table.

The table is ``revocation.admin.access.ACCESS``; the README's endpoint table must say the same.
The test walks the routes of the app itself, so a route added without a rule fails here.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.routing import Route

from pca.runtime import Runtime
from pca.serve import build_authority, status_page
from revocation.admin import access
from revocation.admin.api import AdminAPI
from revocation.admin.http import BodyLimit
from revocation.admin.installations import InstallationRecorder
from revocation.admin.recording import CertificateRecorder
from revocation.admin.tokens import ROLES, TokenFile, add_token, revoke_token
from revocation.issued_revocation import IssuedRevocation
from revocation.propagation.tracker import PropagationTracker

README = Path(__file__).resolve().parents[3] / "README.md"
HOUR = datetime.timedelta(hours=1)
# Callers that are no role: what each must hear (a 401, and the detail's gist).
NOT_ROLES = {
    "none": "missing bearer token",
    "wrong token": "the bearer token is not valid",
    "revoked token": "has been revoked",
    "expired token": "has expired",
}


@dataclasses.dataclass
class Api:
    app: Starlette  # the app inside the body limit
    client: httpx.AsyncClient
    headers: dict[str, dict[str, str]]  # caller -> headers
    serial: str


@pytest.fixture
async def api(runtime: Runtime) -> AsyncIterator[Api]:
    cfg = runtime.config
    tokens = {"admin": cfg.token_file.read_text().strip()}
    for role in ROLES:
        if role != "admin":
            tokens[role] = add_token(cfg.tokens_db, f"the-{role}", role)
    tokens["wrong token"] = "pca_" + "x" * 43
    tokens["revoked token"] = add_token(cfg.tokens_db, "gone", "admin")
    revoke_token(cfg.tokens_db, "gone")
    past = datetime.datetime.now(datetime.UTC) - 2 * HOUR
    tokens["expired token"] = add_token(cfg.tokens_db, "old", "admin", now=past, expires=past + HOUR)
    headers = {caller: {"authorization": f"Bearer {token}"} for caller, token in tokens.items()}
    headers["none"] = {}
    tracker = PropagationTracker(runtime.log, runtime.view, runtime.coord, CollectorRegistry())
    built = AdminAPI(
        build_authority(runtime),
        runtime.log,
        TokenFile(cfg.tokens_db),
        CollectorRegistry(),
        tracker=tracker,
        coordination=runtime.coord,
        recorder=CertificateRecorder(runtime.log, runtime.view),
        installations=InstallationRecorder(runtime.view, runtime.coord),
        issued=IssuedRevocation(runtime.log, runtime.view, runtime.clock),
    ).app()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=built), base_url="http://admin") as client:
        body = {"subject": "CN=m", "dns": ["m.example"]}
        issued = await client.post("/v1/certificates", json=body, headers=headers["admin"])
        assert issued.status_code == 201, issued.text
        assert isinstance(built, BodyLimit) and isinstance(built.app, Starlette)
        yield Api(built.app, client, headers, issued.json()["serial"])


def _app_routes(app: Starlette) -> list[tuple[str, str]]:
    out = []
    for route in app.routes:
        assert isinstance(route, Route)
        out += [(method, route.path) for method in sorted(route.methods or ()) if method != "HEAD"]
    return out


async def test_every_route_answers_every_caller_as_the_table_says(api: Api) -> None:
    wrong: list[str] = []
    routes = _app_routes(api.app)
    assert len(routes) >= 14
    for method, path in routes:
        try:
            rule = access.rule(method, path)
        except KeyError as exc:
            wrong.append(str(exc))
            continue
        url = path.replace("{serial}", api.serial)
        for caller, headers in api.headers.items():
            body = {} if method == "POST" else None
            resp = await api.client.request(method, url, json=body, headers=headers)
            where = f"{caller} {method} {path}: {resp.status_code} {resp.text[:200]}"
            if resp.status_code >= 500:
                wrong.append(f"server error: {where}")
            elif rule.public:
                if resp.status_code != 200:
                    wrong.append(f"public route refused: {where}")
            elif caller in NOT_ROLES:
                problem = resp.json() if resp.headers.get("content-type") == "application/problem+json" else {}
                if resp.status_code != 401 or NOT_ROLES[caller] not in problem.get("detail", ""):
                    wrong.append(f"expected 401 ({NOT_ROLES[caller]}): {where}")
                elif "bearer" not in resp.headers.get("www-authenticate", "").lower():
                    wrong.append(f"401 without WWW-Authenticate: {where}")
            elif caller in rule.roles:
                if resp.status_code in (401, 403):
                    wrong.append(f"allowed role refused: {where}")
            else:
                detail = resp.json().get("detail", "") if resp.status_code == 403 else ""
                if resp.status_code != 403 or f"role {caller!r} may not {rule.action}" != detail:
                    wrong.append(f"expected 403: {where}")
                elif resp.headers["content-type"] != "application/problem+json":
                    wrong.append(f"403 is not problem+json: {where}")
    assert wrong == []


def test_the_table_has_one_rule_per_route_of_the_app_and_names_only_known_roles(api: Api, runtime: Runtime) -> None:
    table = [(r.method, r.path) for r in access.ACCESS]
    assert len(set(table)) == len(table)
    # The status page is served beside the API on the admin listener (its callers: tests/.../test_status_page.py).
    tracker = PropagationTracker(runtime.log, runtime.view, runtime.coord, CollectorRegistry())
    page = status_page(runtime.config, runtime, tracker, None)
    assert set(table) == set(_app_routes(api.app)) | set(_app_routes(page.app()))
    assert {role for r in access.ACCESS for role in r.roles} <= set(ROLES)


def test_least_privilege_where_the_readme_promises_it() -> None:
    """The log (actors, request ids, key references) and the audit walk: admin and auditor only; a recorder
    and an agent do their one thing and nothing else."""
    assert access.rule("GET", "/v1/events").roles == ("admin", "auditor")
    assert access.rule("GET", "/v1/audit/verify").roles == ("admin", "auditor")
    for role in ("recorder", "agent"):
        allowed = [f"{r.method} {r.path}" for r in access.ACCESS if role in r.roles]
        assert len(allowed) == 1, allowed


def _readme_table() -> set[tuple[str, str, tuple[str, ...]]]:
    text = README.read_text()
    section = text[text.index("## Admin API") :]
    section = section[: section.index("\n## ", 1)]
    rows: set[tuple[str, str, tuple[str, ...]]] = set()
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        roles = () if cells[1] == "none" else tuple(r.strip() for r in cells[1].split(","))
        for endpoint in re.findall(r"`([A-Z]+ [^`]+)`", cells[0]):
            method, _, path = endpoint.partition(" ")
            rows.add((method, path.split("?")[0], roles))
    return rows


def test_the_readme_table_says_what_the_code_does() -> None:
    code = {(r.method, r.path, r.roles) for r in access.ACCESS}
    readme = _readme_table()
    assert readme == code, f"only in README: {readme - code}; only in code: {code - readme}"


async def test_the_revocation_feed_lists_revocations_only_without_actors_or_request_ids(api: Api) -> None:
    """What a prober reads instead of the log: page by page, up to the head."""
    admin, prober = api.headers["admin"], api.headers["prober"]
    start = (await api.client.get("/v1/revocations?after=0&limit=1", headers=prober)).json()["head"]
    second = await api.client.post("/v1/certificates", json={"subject": "CN=n", "dns": ["n.example"]}, headers=admin)
    revoke = f"/v1/certificates/{second.json()['serial']}/revoke"
    revoked = await api.client.post(revoke, json={"reason": "keyCompromise"}, headers={**admin, "x-request-id": "r-77"})
    assert revoked.status_code == 201
    after, seen = start, []
    while True:
        page = (await api.client.get(f"/v1/revocations?after={after}&limit=1", headers=prober)).json()
        seen += page["revocations"]
        assert page["last_seq"] > after or page["last_seq"] == page["head"]
        if page["last_seq"] >= page["head"]:
            break
        after = page["last_seq"]
    [item] = seen
    event = revoked.json()["event"]
    assert item == {
        "seq": event["seq"],
        "issuer_id": "issuing-ca",
        "serial": second.json()["serial"],
        "reason": "keyCompromise",
        "revoked_at": event["payload"]["revoked_at"],
        "recorded_at": event["recorded_at"],
    }
    text = json.dumps(seen)
    assert "r-77" not in text and "the-" not in text and "actor" not in text
