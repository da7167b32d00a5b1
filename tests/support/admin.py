"""Helpers of the admin API tests."""

from __future__ import annotations

from typing import Any

import httpx


def assert_problem(resp: httpx.Response, status: int, detail: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == "application/problem+json"
    body = dict(resp.json())
    assert body["status"] == status
    assert body["title"]
    assert detail in body["detail"]
    return body
