"""``POST /v1/certificates/import``: an external CA's issuing core records what it issued, with a recorder token."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from pca.runtime import Runtime
from pca.serve import build_authority
from revocation.admin.api import AdminAPI
from revocation.admin.http import Problem
from revocation.admin.recording import MAX_BATCH, CertificateRecorder
from revocation.admin.tokens import TokenStore, add_token
from revocation.authority import Actor
from revocation.clock import FakeClock
from revocation.importing.openssl_index import newcerts_filename
from tests.support.admin import assert_problem
from tests.support.external import EXTERNAL, add_external_issuer
from tests.support.openssl_index_ca import issue, make_ca

ROUTE = "/v1/certificates/import"


@pytest.fixture(scope="module")
def legacy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An openssl ca that issued three certificates (0xFF, 0x100, 0x101), and a twin CA of the same name."""
    d = tmp_path_factory.mktemp("legacy") / "ca"
    make_ca(d, "Legacy CA")
    for cn in ("a", "b", "c"):
        issue(d, cn)
    twin = d.parent / "twin"
    make_ca(twin, "Legacy CA")  # same subject, another key
    issue(twin, "forged")
    return d


def pem(d: Path, serial: int) -> str:
    return (d / "newcerts" / newcerts_filename(serial)).read_text()


@dataclasses.dataclass
class Recording:
    client: httpx.AsyncClient
    rt: Runtime
    tokens: dict[str, str]

    async def post(self, body: dict[str, Any], role: str = "recorder") -> httpx.Response:
        return await self.client.post(ROUTE, json=body, headers={"authorization": f"Bearer {self.tokens[role]}"})

    async def status(self, serial: int) -> dict[str, Any]:
        headers = {"authorization": f"Bearer {self.tokens['admin']}"}
        resp = await self.client.get(f"/v1/certificates/{serial:x}?issuer={EXTERNAL}", headers=headers)
        assert resp.status_code == 200, resp.text
        return dict(resp.json())


@pytest.fixture
async def api(runtime: Runtime, legacy: Path) -> AsyncIterator[Recording]:
    cfg = runtime.config
    tokens = {
        "admin": cfg.token_file.read_text().strip(),
        "recorder": add_token(cfg.tokens_db, "issuing-core", "recorder"),
        "revoker": add_token(cfg.tokens_db, "ops-revoker", "revoker"),
    }
    await add_external_issuer(runtime.log, legacy / "ca.pem")
    api = AdminAPI(
        build_authority(runtime),
        runtime.log,
        lambda: TokenStore.load(cfg.tokens_db),
        CollectorRegistry(),
        max_body_bytes=1024 * 1024,
        recorder=CertificateRecorder(runtime.log, runtime.view),
    )
    transport = httpx.ASGITransport(app=api.app())
    async with httpx.AsyncClient(transport=transport, base_url="http://admin") as client:
        yield Recording(client, runtime, tokens)


async def test_one_certificate_recorded_then_again_already_present(api: Recording, legacy: Path) -> None:
    resp = await api.post({"issuer": EXTERNAL, "certificate": pem(legacy, 0xFF)})
    assert resp.status_code == 201, resp.text
    body = resp.json()
    assert (body["serial"], body["result"], body["recorded"]) == ("ff", "imported", 1)
    status = await api.status(0xFF)
    assert (status["status"], status["profile"], status["subject"]) == ("good", "imported", "CN=a")
    head = await api.rt.log.head()
    [event] = await api.rt.log.read(head - 1, 1)
    assert event.actor == "issuing-core" and event.request_id == resp.headers["x-request-id"]

    again = await api.post({"certificate": pem(legacy, 0xFF)})  # the issuer found by its subject
    assert again.status_code == 200, again.text
    assert (again.json()["result"], again.json()["already_present"]) == ("already present", 1)
    assert await api.rt.log.head() == head

    # The CA's own (self-signed) certificate: nothing recorded, and the answer says why.
    itself = await api.post({"issuer": EXTERNAL, "certificate": (legacy / "ca.pem").read_text()})
    assert itself.status_code == 200, itself.text
    body = itself.json()
    assert (body["result"], body["recorded"], body["issuer_itself"]) == ("the issuer's own certificate", 0, 1)
    assert await api.rt.log.head() == head


async def test_a_batch_with_a_revocation_is_durable_once_acknowledged(api: Recording, legacy: Path) -> None:
    revoked = {"revoked_at": "2026-01-02T03:04:05Z", "reason": "keyCompromise"}
    revoked["invalidity_date"] = "2026-01-01T00:00:00Z"
    body = {
        "issuer": EXTERNAL,
        "certificates": [pem(legacy, 0xFF), {"certificate": pem(legacy, 0x100), "revoked": revoked}],
    }
    resp = await api.post(body)
    assert resp.status_code == 201, resp.text
    assert [(r["serial"], r["result"], r["revoked"]) for r in resp.json()["results"]] == [
        ("ff", "imported", False),
        ("100", "imported", True),
    ]
    status = await api.status(0x100)
    assert (status["status"], status["reason"]) == ("revoked", "keyCompromise")
    assert (status["revoked_at"], status["invalidity_date"]) == ("2026-01-02T03:04:05Z", "2026-01-01T00:00:00Z")
    # acknowledged means in the log on disk: another connection reads it
    with contextlib.closing(sqlite3.connect(api.rt.config.database)) as conn:
        rows = conn.execute("SELECT type, payload FROM events WHERE seq <= ?", (resp.json()["seq"],)).fetchall()
    recorded = [(t, json.loads(p).get("serial")) for t, p in rows if json.loads(p).get("issuer_id") == EXTERNAL]
    assert recorded[-3:] == [("CertificateIssued", "ff"), ("CertificateIssued", "100"), ("CertificateRevoked", "100")]


async def test_a_recorder_records_and_nothing_else(api: Recording, legacy: Path) -> None:
    recorder = {"authorization": f"Bearer {api.tokens['recorder']}"}
    assert_problem(await api.client.post("/v1/certificates", json={"subject": "CN=x"}, headers=recorder), 403, "issue")
    revoke = await api.client.post("/v1/certificates/ff/revoke", json={"reason": "superseded"}, headers=recorder)
    assert_problem(revoke, 403, "may not revoke")
    assert_problem(await api.client.get("/v1/events", headers=recorder), 403, "may not read")
    assert_problem(await api.post({"certificate": pem(legacy, 0xFF)}, role="revoker"), 403, "may not record")


async def test_bad_input_is_refused_and_nothing_recorded(api: Recording, legacy: Path) -> None:
    head = await api.rt.log.head()
    assert_problem(await api.post({"issuer": EXTERNAL, "certificate": "hello"}), 400, "not a PEM certificate")
    broken = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    body = assert_problem(await api.post({"issuer": EXTERNAL, "certificate": broken}), 400, "does not parse")
    assert "http" not in body["detail"] and "ParseError" not in body["detail"]  # not the library's wording
    forged = (legacy.parent / "twin" / "newcerts" / "FF.pem").read_text()
    batch = {"issuer": EXTERNAL, "certificates": [pem(legacy, 0x101), forged]}
    assert_problem(await api.post(batch), 422, "certificates[1]: certificate serial ff (subject 'CN=forged') is not")
    assert_problem(await api.post({"issuer": "nope", "certificate": pem(legacy, 0xFF)}), 404, "unknown issuer 'nope'")
    many = {"issuer": EXTERNAL, "certificates": ["x"] * (MAX_BATCH + 1)}
    assert_problem(await api.post(many), 413, f"at most {MAX_BATCH} certificates per request")
    bad_reason = {"certificate": pem(legacy, 0xFF), "revoked": {"revoked_at": "2026-01-01T00:00:00Z", "reason": "x"}}
    assert_problem(await api.post(bad_reason), 422, "revocation reason x cannot be recorded")
    assert await api.rt.log.head() == head  # the valid certificate of the refused batch was not recorded either


async def test_a_serial_known_with_other_contents_is_a_conflict(api: Recording, legacy: Path) -> None:
    assert (await api.post({"certificate": pem(legacy, 0xFF)})).status_code == 201
    # the same serial from the same CA key with other contents: openssl ca run twice on one serial file
    twin = legacy.parent / "reissue"
    make_ca(twin, "unused")
    for name in ("ca.pem", "ca.key"):
        (twin / name).write_bytes((legacy / name).read_bytes())
    await asyncio.to_thread(issue, twin, "other")
    resp = await api.post({"certificate": (twin / "newcerts" / "FF.pem").read_text()})
    assert_problem(resp, 409, "serial ff is already recorded for legacy-ca with different contents")
    assert (await api.status(0xFF))["subject"] == "CN=a"


async def test_nothing_is_recorded_under_a_ca_expired_by_the_recorders_clock(
    rt: Runtime, fake_clock: FakeClock, legacy: Path
) -> None:
    """The external CA's certificate is valid for 30 days: on the 31st, by the clock the recorder is given,
    what it issued is refused, though the system's clock has not moved."""
    await add_external_issuer(rt.log, legacy / "ca.pem")
    recorder = CertificateRecorder(rt.log, rt.view, fake_clock)
    head = await rt.log.head()
    fake_clock.advance(31 * 86400)
    with pytest.raises(Problem) as refused:
        await recorder.record({"issuer": EXTERNAL, "certificate": pem(legacy, 0xFF)}, Actor("core", "r-1"))
    assert refused.value.status == 422 and "nothing recorded" in refused.value.detail
    assert await rt.log.head() == head
