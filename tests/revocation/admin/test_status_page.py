"""The status page in-process over ASGI: who may see it, the sign-in cookie, and what it shows.

A real CA database, the real tracker, the real token file; the browser test
(``tests/pca/test_status_page_browser.py``) drives the same page in chromium against ``pca serve``.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from prometheus_client import CollectorRegistry

from pca.config import load_config
from pca.runtime import Runtime, connect_runtime
from pca.serve import build_authority, status_page
from revocation.admin.status_data import gather
from revocation.admin.status_page import SESSION_SECONDS
from revocation.admin.tokens import add_token, revoke_token
from revocation.authority import Actor, IssueRequest
from revocation.clock import FakeClock, SystemClock
from revocation.coordination import CRLPublication
from revocation.coordination.holders import lease_holder, this_machine
from revocation.eventlog import NewEvent
from revocation.events import OCSPSignerKeyPrepared
from revocation.keys import KeyRef
from revocation.propagation.tracker import PropagationTracker
from revocation.storage.postgres.coordination import PostgresCoordination
from revocation.storage.sqlite.coordination import SQLiteCoordination
from tests.support.admin import assert_problem
from tests.support.ca import issuer
from tests.support.processes import init_ca, other_process

HTML = {"accept": "text/html,application/xhtml+xml"}


@pytest.fixture
async def page(runtime: Runtime) -> AsyncIterator[tuple[httpx.AsyncClient, dict[str, str]]]:
    cfg = runtime.config
    tokens = {role: add_token(cfg.tokens_db, f"page-{role}", role) for role in ("auditor", "revoker")}
    tokens["admin"] = cfg.token_file.read_text().strip()
    authority = build_authority(runtime)
    actor = Actor("test", "r-1")
    serials = []
    for name in ("a", "b", "c"):
        issued = await authority.issue(IssueRequest(subject=f"CN={name}", dns=[f"{name}.example"]), actor)
        serials.append(issued.certificate.serial_number)
    await authority.revoke(serials[0], "keyCompromise", actor)
    tracker = PropagationTracker(runtime.log, runtime.view, runtime.coord, CollectorRegistry())
    app = status_page(cfg, runtime, tracker, None).app()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="https://admin") as client:
        yield client, tokens


def _headers_are_strict(resp: httpx.Response) -> None:
    assert resp.headers["cache-control"] == "no-store"
    csp = resp.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src" not in csp and "unsafe" not in csp


async def test_without_credentials_a_browser_gets_the_sign_in_form_and_a_client_a_problem(page: tuple) -> None:
    client, _ = page
    form = await client.get("/status", headers=HTML)
    assert form.status_code == 401
    assert 'action="/status/login"' in form.text and 'type="password"' in form.text
    assert "<table" not in form.text
    _headers_are_strict(form)
    problem = await client.get("/status")
    assert_problem(problem, 401, "missing bearer token")
    _headers_are_strict(problem)


async def test_auditor_and_admin_see_the_page_other_roles_are_refused(page: tuple) -> None:
    client, tokens = page
    for role in ("auditor", "admin"):
        resp = await client.get("/status", headers={"authorization": f"Bearer {tokens[role]}", **HTML})
        assert resp.status_code == 200, resp.text
        _headers_are_strict(resp)
        issuers = re.search(r'data-testid="issuers".*?</table>', resp.text, re.S)
        assert issuers is not None
        row = re.search(r"<td>issuing-ca</td>.*?</tr>", issuers.group(0), re.S)
        assert row is not None
        assert re.findall(r'class="num">(\d+)<', row.group(0)) == ["3", "1"]  # certificates, revoked
        assert "<svg" in resp.text and 'data-testid="propagation-chart"' in resp.text
    refused = await client.get("/status", headers={"authorization": f"Bearer {tokens['revoker']}"})
    assert_problem(refused, 403, "role 'revoker' may not read the status page")


async def test_the_page_reloads_itself_without_a_script_and_the_sign_in_form_does_not(page: tuple) -> None:
    client, tokens = page
    shown = await client.get("/status", headers={"authorization": f"Bearer {tokens['auditor']}", **HTML})
    assert re.search(r'<head>.*<meta http-equiv="refresh" content="30">.*</head>', shown.text, re.S)
    assert "<script" not in shown.text
    form = await client.get("/status", headers=HTML)
    assert form.status_code == 401 and 'http-equiv="refresh"' not in form.text


async def test_signing_in_exchanges_the_token_for_a_strict_cookie_that_dies_with_the_token(
    page: tuple, runtime: Runtime
) -> None:
    client, tokens = page
    resp = await client.post("/status/login", data={"token": tokens["auditor"]}, headers={"origin": "https://admin"})
    assert resp.status_code == 303 and resp.headers["location"] == "/status"
    cookie = resp.headers["set-cookie"]
    for attribute in ("HttpOnly", "Secure", "SameSite=strict", "Path=/status", "Max-Age=900"):
        assert attribute.lower() in cookie.lower(), cookie
    assert tokens["auditor"] not in cookie
    shown = await client.get("/status", headers=HTML)
    assert shown.status_code == 200 and "page-auditor (auditor)" in shown.text
    revoke_token(runtime.config.tokens_db, "page-auditor")
    gone = await client.get("/status", headers=HTML)
    assert gone.status_code == 401 and "has been revoked" in gone.text
    out = await client.post("/status/logout")
    assert out.status_code == 303
    assert (await client.get("/status", headers=HTML)).status_code == 401


async def test_a_session_ends_when_the_pages_clock_passes_its_lifetime(rt: Runtime, fake_clock: FakeClock) -> None:
    token = add_token(rt.config.tokens_db, "page-auditor", "auditor", now=fake_clock.now())
    tracker = PropagationTracker(rt.log, rt.view, rt.coord, CollectorRegistry(), now=rt.clock.time)
    app = status_page(rt.config, rt, tracker, None).app()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="https://admin") as client:
        resp = await client.post("/status/login", data={"token": token}, headers={"origin": "https://admin"})
        assert resp.status_code == 303
        fake_clock.advance(SESSION_SECONDS - 1)
        assert (await client.get("/status", headers=HTML)).status_code == 200
        fake_clock.advance(1)  # the browser still sends the cookie; the page no longer knows it
        assert (await client.get("/status", headers=HTML)).status_code == 401


async def test_bad_sign_ins_are_refused_with_a_reason(page: tuple) -> None:
    client, tokens = page
    wrong = await client.post("/status/login", data={"token": "pca_" + "x" * 43}, headers=HTML)
    assert wrong.status_code == 401 and "not valid" in wrong.text and "set-cookie" not in wrong.headers
    revoker = await client.post("/status/login", data={"token": tokens["revoker"]})
    assert_problem(revoker, 403, "may not read the status page")
    elsewhere = await client.post(
        "/status/login", data={"token": tokens["auditor"]}, headers={"origin": "https://evil.example"}
    )
    assert_problem(elsewhere, 403, "from this page only")
    assert_problem(await client.post("/status/login", data={"token": "a", "x": "b"}), 400, "one field, token")
    assert_problem(await client.post("/status/login", content=b"\xff\xfe"), 400, "one field, token")
    assert_problem(await client.post("/status/login", data={"token": "t" * 5000}), 413, "limited to 4096 bytes")
    # A token in the URL would be logged by every proxy on the way: refused, never read.
    query = await client.get(f"/status?token={tokens['auditor']}")
    assert_problem(query, 400, "unknown query parameters: token")
    assert tokens["auditor"] not in query.text


async def test_values_from_the_stores_are_escaped(page: tuple, runtime: Runtime) -> None:
    client, tokens = page
    assert isinstance(runtime.coord, SQLiteCoordination)
    now = time.time()
    await runtime.coord.heartbeat("<script>alert(1)</script>", "http://x/<b>", 0, now, now)
    resp = await client.get("/status", headers={"authorization": f"Bearer {tokens['auditor']}"})
    assert resp.status_code == 200
    assert "<script>" not in resp.text and "&lt;script&gt;alert(1)&lt;/script&gt;" in resp.text
    assert "<b>" not in resp.text


async def _page_data(runtime: Runtime) -> dict[str, Any]:
    tracker = PropagationTracker(runtime.log, runtime.view, runtime.coord, CollectorRegistry())
    return await gather(status_page(runtime.config, runtime, tracker, None)._sources)


async def _freshness_and_liveness(runtime: Runtime) -> None:
    """CRL shards fresh or late by their latest publications, responders up/down/gone by their heartbeats (or
    gone at once when their process on this machine has ended)."""
    coord = runtime.coord
    assert isinstance(coord, SQLiteCoordination | PostgresCoordination)
    now, head = time.time(), await runtime.log.head()
    day = 86400.0
    await coord.record_crl_publication(CRLPublication("issuing-ca", 0, "full", 7, head, now - 10))
    await coord.record_crl_publication(CRLPublication("issuing-ca", 0, "delta", 8, head, now - 5))
    await coord.record_crl_publication(CRLPublication("root-ca", 0, "full", 3, head, now - day))  # past 6 h
    await coord.record_crl_publication(CRLPublication("root-ca", 0, "delta", 4, head, now - 5))
    for name, silent in (("r-up", 0.0), ("r-down", 10.0), ("r-gone", 100.0)):
        await coord.heartbeat(name, f"http://{name}/ocsp", 0, now - 200, now - silent)
    with other_process() as proc:
        ended = lease_holder(proc.pid)  # a responder of this machine killed right after its heartbeat
    await coord.heartbeat(ended, "http://r-ended/ocsp", 0, now - 200, now)
    data = await _page_data(runtime)
    shards = {(s["issuer_id"], s["shard"]): s for s in data["crl_shards"]}
    assert shards[("issuing-ca", 0)]["fresh"] and shards[("issuing-ca", 0)]["full"]["number"] == 7
    assert not shards[("root-ca", 0)]["fresh"]
    states = {r["responder_id"]: r["state"] for r in data["responders"]}
    # Gone at once (on a system where /proc tells a process's start time; else waited out like any other).
    assert states == {"r-up": "up", "r-down": "down", "r-gone": "gone", ended: "gone" if this_machine() else "up"}
    [issuing] = [i for i in data["issuers"] if i["issuer_id"] == "issuing-ca"]
    assert issuing["certificates"]["revoked"] >= 1


async def test_crl_freshness_and_responder_liveness_on_sqlite(page: tuple, runtime: Runtime) -> None:
    await _freshness_and_liveness(runtime)


async def test_crl_freshness_and_responder_liveness_on_postgres(tmp_path: Path, postgres_database: str) -> None:
    config_path = await asyncio.to_thread(init_ca, tmp_path / "pca", "--database-url", postgres_database)
    rt = await connect_runtime(load_config(config_path), SystemClock())
    try:
        authority = build_authority(rt)
        issued = await authority.issue(IssueRequest(subject="CN=pg", dns=["pg.example"]), Actor("t", "r"))
        await authority.revoke(issued.certificate.serial_number, "superseded", Actor("t", "r"))
        await _freshness_and_liveness(rt)
        data = await _page_data(rt)
        assert [r["serial"] for r in data["recent"]] == [f"{issued.certificate.serial_number:x}"]
        assert data["window_revocations"] == 1
    finally:
        await rt.aclose()


async def test_an_unreadable_token_file_is_a_503_naming_no_file(page: tuple, runtime: Runtime) -> None:
    client, tokens = page
    runtime.config.tokens_db.write_text("{not json")
    resp = await client.get("/status", headers={"authorization": f"Bearer {tokens['auditor']}"})
    assert_problem(resp, 503, "the token store cannot be read")
    assert str(runtime.config.tokens_db) not in resp.text and "Traceback" not in resp.text


async def test_unknown_paths_and_methods_under_status_are_problems(page: tuple) -> None:
    client, _ = page
    assert_problem(await client.get("/status/nope"), 404, "")
    assert_problem(await client.get("/status/login"), 405, "")
    assert_problem(await client.delete("/status"), 405, "")


# A signer key waiting in an HSM for its certificate, recorded as `pca issuer renew-signer` records one (a unit
# test has no HSM: the key reference is all the page could leak, and the log holds it).
HSM_KEY = KeyRef(
    "pkcs11",
    module="/opt/hsm-q7/lib/libq7pkcs11.so",
    token_label="hsm-q7-online",
    label="ocsp-signer-q7-2027",
    object_id="c0ffee07",
    pin_file="/etc/pca/hsm-q7.pin",
)


async def _prepare_hsm_signer(runtime: Runtime, issuer_id: str) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{issuer_id} OCSP signer")])
    csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256())
    event = OCSPSignerKeyPrepared(issuer_id, HSM_KEY.to_dict(), csr.public_bytes(serialization.Encoding.DER).hex())
    record = await issuer(runtime, issuer_id)
    await runtime.log.append([NewEvent(event, record.version, "cli:ops-q7", "renew-q7-3b9d")])


async def test_the_page_shows_revocations_but_no_actor_request_id_or_key_reference(
    page: tuple, runtime: Runtime
) -> None:
    client, tokens = page
    actor = Actor("ops-mallory-q7", "req-q7-5f0d-e2a9")
    authority = build_authority(runtime)
    issued = await authority.issue(IssueRequest(subject="CN=q7", dns=["q7.example"]), actor)
    serial = f"{issued.certificate.serial_number:x}"
    await authority.revoke(issued.certificate.serial_number, "keyCompromise", actor)
    await _prepare_hsm_signer(runtime, "issuing-ca")
    # Every key reference the log holds: the CAs' and signers' key files, and the HSM key above.
    refs = [KeyRef.from_dict(e.payload["key_ref"]) for e in await runtime.log.read(0, 1000) if e.payload.get("key_ref")]
    assert {r.backend for r in refs} == {"file", "pkcs11"}
    hidden = {"ops-mallory-q7", "req-q7-5f0d-e2a9", "cli:ops-q7", "renew-q7-3b9d", tokens["auditor"]}
    for ref in refs:
        hidden |= {ref.describe(), *(value for field, value in ref.to_dict().items() if field != "backend")}

    resp = await client.get("/status", headers={"authorization": f"Bearer {tokens['auditor']}", **HTML})

    assert resp.status_code == 200, resp.text
    revocations = re.search(r'data-testid="revocations".*?</table>', resp.text, re.S)
    assert revocations is not None
    assert re.search(f"<td>{serial}</td><td>keyCompromise</td>", revocations.group(0)), revocations.group(0)
    shown = [s for s in sorted(hidden) if s in resp.text]
    assert shown == [], shown


async def test_an_unexpected_failure_is_a_500_that_names_nothing_and_is_logged(
    page: tuple, runtime: Runtime, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    client, tokens = page
    failure = RuntimeError("cannot read /etc/pca/private/db.pass for postgresql://pca:hunter2-s3cret@db/pca")

    async def responders() -> Any:
        raise failure

    monkeypatch.setattr(runtime.coord, "responders", responders)  # the coordination store the page reads
    with caplog.at_level(logging.ERROR, logger="pca.status"):
        resp = await client.get("/status", headers={"authorization": f"Bearer {tokens['auditor']}", **HTML})

    assert_problem(resp, 500, "the status page failed; see the server log")
    _headers_are_strict(resp)
    for leak in ("hunter2", "/etc/pca/private", "RuntimeError", "Traceback", 'File "', ".py"):
        assert leak not in resp.text, leak
    [record] = [r for r in caplog.records if r.name == "pca.status"]
    assert record.levelno == logging.ERROR and record.exc_info is not None and record.exc_info[1] is failure
