"""Helpers of the admin API tests."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
from prometheus_client import CollectorRegistry

from pca.runtime import Runtime
from pca.serve import build_authority
from revocation.admin.api import AdminAPI
from revocation.admin.tokens import TokenStore, add_token
from revocation.issued_revocation import IssuedRevocation


def assert_problem(resp: httpx.Response, status: int, detail: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == "application/problem+json"
    body = dict(resp.json())
    assert body["status"] == status
    assert body["title"]
    assert detail in body["detail"]
    return body


@contextlib.asynccontextmanager
async def admin_client(
    runtime: Runtime, roles: tuple[str, ...] = ("revoker", "auditor", "recorder"), **api_options: Any
) -> AsyncIterator[tuple[httpx.AsyncClient, dict[str, str]]]:
    """The admin API of ``runtime`` in-process over ASGI, and a token per role (the init's admin token and one
    new token for each of ``roles``); ``api_options`` go to ``AdminAPI`` (``recorder=``, ``health=``...)."""
    cfg = runtime.config
    tokens = {"admin": cfg.token_file.read_text().strip()}
    tokens.update({role: add_token(cfg.tokens_db, f"test-{role}", role) for role in roles})
    api = AdminAPI(
        build_authority(runtime),
        runtime.log,
        lambda: TokenStore.load(cfg.tokens_db),
        CollectorRegistry(),
        **{"issued": IssuedRevocation(runtime.log, runtime.view, runtime.clock), "clock": runtime.clock, **api_options},
    )
    transport = httpx.ASGITransport(app=api.app())
    async with httpx.AsyncClient(transport=transport, base_url="http://admin") as client:
        yield client, tokens


def bearer(tokens: dict[str, str], role: str) -> dict[str, str]:
    return {"authorization": f"Bearer {tokens[role]}"}
