"""Installation reports of ``pca crl-sync`` to the admin API, against a real HTTP server that records them."""

from __future__ import annotations

import datetime
import logging
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from publishers.crlsync.agent import Agent
from publishers.crlsync.metrics import SyncMetrics
from publishers.crlsync.report import PATH, Reporter
from publishers.crlsync.settings import SyncSettings
from tests.support.crlsync import ControlledServer, Reply, SigningCA, controlled_server

FULL = "/crl/issuing-ca.crl"
DELTA = "/crl/issuing-ca-delta.crl"
TOKEN = "s3cret-token-value"
ISO_SECONDS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
ISO_MICROS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


@pytest.fixture
def crls() -> Iterator[ControlledServer]:
    with controlled_server() as srv:
        yield srv


@pytest.fixture
def admin() -> Iterator[ControlledServer]:
    with controlled_server() as srv:
        srv.routes[PATH] = Reply(b'{"ok": true}', status=201, content_type="application/json")
        yield srv


@pytest.fixture
async def agent(tmp_path: Path, crls: ControlledServer, admin: ControlledServer) -> AsyncIterator[Agent]:
    ca = SigningCA.make()
    full, delta = crls.url(FULL), crls.url(DELTA)
    crls.routes[FULL] = Reply(ca.crl(10, idp=full, freshest=delta))
    crls.routes[DELTA] = Reply(ca.crl(11, idp=full, delta_base=10))
    settings = SyncSettings(
        urls=(full, delta), ca_bundle=ca.bundle(tmp_path / "ca.pem"), out=tmp_path / "out.pem", agent_id="rp-7"
    )
    metrics = SyncMetrics(CollectorRegistry())
    agent = Agent(settings, metrics)
    agent.reporter = Reporter(admin.base, TOKEN, "rp-7", metrics, attempts=3, backoff=0.01, timeout=1.0)
    try:
        yield agent
    finally:
        await agent.reporter.aclose()
        await agent.aclose()


def reports(admin: ControlledServer) -> list[dict[str, object]]:
    return [s.json() for s in admin.requests(PATH) if s.method == "POST"]


def reported(agent: Agent, result: str) -> float | None:
    return agent.metrics.registry.get_sample_value("crl_sync_reports_total", {"result": result})


async def test_each_new_crl_is_reported_once_with_the_agreed_body(
    agent: Agent, admin: ControlledServer, crls: ControlledServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    before = datetime.datetime.now(datetime.UTC)
    await agent.run_pass()
    assert agent.reporter is not None and await agent.reporter.drain(10)

    bodies = sorted(reports(admin), key=lambda b: str(b["crl_url"]))
    full, delta = crls.url(FULL), crls.url(DELTA)
    key_id = agent.installed[full].issuer_key_id
    assert key_id is not None and re.fullmatch(r"[0-9a-f]{40}", key_id)
    for body in bodies:
        assert set(body) == {
            "agent",
            "crl_url",
            "issuer_key_id",
            "crl_number",
            "delta",
            "idp_url",
            "this_update",
            "installed_at",
        }
        assert ISO_SECONDS.match(str(body["this_update"])) and ISO_MICROS.match(str(body["installed_at"]))
        installed_at = datetime.datetime.strptime(str(body["installed_at"]), "%Y-%m-%dT%H:%M:%S.%fZ")
        assert installed_at.replace(tzinfo=datetime.UTC) >= before.replace(microsecond=0)
    assert [
        (b["agent"], b["crl_url"], b["crl_number"], b["delta"], b["idp_url"], b["issuer_key_id"]) for b in bodies
    ] == [
        ("rp-7", delta, 11, True, full, key_id),
        ("rp-7", full, 10, False, full, key_id),
    ]
    assert {s.headers["authorization"] for s in admin.requests(PATH)} == {f"Bearer {TOKEN}"}
    assert {s.headers["content-type"] for s in admin.requests(PATH)} == {"application/json"}
    assert reported(agent, "sent") == 2

    await agent.run_pass()  # nothing new: nothing reported
    assert await agent.reporter.drain(10)
    assert len(reports(admin)) == 2
    assert TOKEN not in caplog.text


async def test_a_crl_the_server_does_not_know_is_logged_once_and_not_retried(
    agent: Agent, admin: ControlledServer, caplog: pytest.LogCaptureFixture
) -> None:
    problem = b'{"type": "about:blank", "title": "Not Found", "detail": "no such CRL was published"}'
    admin.routes[PATH] = Reply(problem, status=404, content_type="application/problem+json")
    caplog.set_level(logging.INFO, "pca.crlsync")
    await agent.run_pass()
    assert agent.reporter is not None and await agent.reporter.drain(10)

    assert len(admin.requests(PATH)) == 2  # one attempt each
    assert reported(agent, "rejected") == 2
    lines = [r.getMessage() for r in caplog.records if "refused the installation report" in r.getMessage()]
    assert len(lines) == 2 and all("HTTP 404 (Not Found: no such CRL was published)" in line for line in lines)


async def test_a_failing_admin_api_is_retried_a_bounded_number_of_times(
    agent: Agent, admin: ControlledServer, caplog: pytest.LogCaptureFixture
) -> None:
    admin.routes[PATH] = Reply(b"down", status=503, content_type="text/plain")
    caplog.set_level(logging.INFO, "pca.crlsync")
    await agent.run_pass()
    assert agent.reporter is not None and await agent.reporter.drain(10)

    assert len(admin.requests(PATH)) == 2 * 3
    assert reported(agent, "failed") == 2
    lines = [r.getMessage() for r in caplog.records if "gave up reporting" in r.getMessage()]
    assert len(lines) == 2  # once per CRL, not per attempt


async def test_a_hanging_admin_api_does_not_hold_up_installs(agent: Agent, admin: ControlledServer) -> None:
    admin.routes[PATH] = Reply(hang=True)
    result = await agent.run_pass()
    assert result.changed and agent.settings.out.exists()
    assert agent.reporter is not None
    assert not await agent.reporter.drain(0.2)

    await agent.reporter.aclose()
    assert reported(agent, "dropped") == 2  # the one in flight and the one queued
