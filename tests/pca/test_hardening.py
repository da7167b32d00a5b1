"""Failure paths found in review: listeners, the public listener's environment, token-store errors."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from prometheus_client import CollectorRegistry

from pca.config import Config
from pca.runtime import Runtime
from pca.serve import build_authority, public_listener_env
from revocation.admin.api import AdminAPI
from revocation.admin.tokens import TokenFile
from revocation.authority import Actor, IssueRequest


async def test_a_failing_listener_neither_stops_the_others_nor_later_appends(runtime: Runtime) -> None:
    seen: list[int] = []

    def broken(_events: object) -> None:
        raise RuntimeError("listener bug")

    runtime.log.listeners[:0] = [broken]  # first, so it runs before the in-process consumers
    runtime.log.listeners.append(lambda events: seen.extend(e.seq for e in events))
    authority = build_authority(runtime)
    first = await authority.issue(IssueRequest(subject="CN=a", dns=["a.test"]), Actor("t", "1"))
    second = await asyncio.wait_for(
        authority.issue(IssueRequest(subject="CN=b", dns=["b.test"]), Actor("t", "2")), timeout=30
    )
    assert second.event.seq == first.event.seq + 1
    assert seen == [first.event.seq, second.event.seq]


def test_the_public_listener_gets_no_pins_passphrases_or_cloud_credentials(
    ca_config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PCA_HSM_PIN", "1234")
    monkeypatch.setenv("PCA_KEY_PASSPHRASE", "secret")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-secret")
    env = public_listener_env(ca_config)
    assert env["PCA_CONFIG"] == str(ca_config.path)
    assert "PATH" in env
    for name in ("PCA_HSM_PIN", "PCA_KEY_PASSPHRASE", "AWS_SECRET_ACCESS_KEY"):
        assert name not in env


async def test_an_unreadable_token_store_does_not_reveal_its_path(runtime: Runtime) -> None:
    cfg = runtime.config
    cfg.tokens_db.write_text("{not json")  # behind the server's back
    api = AdminAPI(build_authority(runtime), runtime.log, TokenFile(cfg.tokens_db), CollectorRegistry())
    transport = httpx.ASGITransport(app=api.app())
    async with httpx.AsyncClient(transport=transport, base_url="http://admin") as client:
        resp = await client.get("/v1/events", headers={"authorization": "Bearer whatever"})
    assert resp.status_code == 503
    assert resp.headers["content-type"] == "application/problem+json"
    assert str(cfg.tokens_db) not in resp.text
    assert resp.json()["detail"] == "the token store cannot be read; see the server log"
