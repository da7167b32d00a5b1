"""An exception the admin API does not expect: the caller gets a 500 naming a request id and nothing else,
the server log gets the exception under that request id."""

from __future__ import annotations

import logging
import re
from typing import Any

import pytest

from pca.runtime import Runtime
from revocation.admin import api
from tests.support.admin import admin_client, assert_problem, bearer

SECRET = "postgresql://pca:hunter2-s3cret@db.internal/pca"
SECRET_PATH = "/etc/pca/private/db-password.txt"
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


async def test_an_unexpected_storage_failure_is_a_500_with_a_request_id_and_no_details(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    failure = RuntimeError(f"cannot read {SECRET_PATH} for {SECRET}")

    async def read(*args: Any, **kwargs: Any) -> Any:
        raise failure

    monkeypatch.setattr(runtime.log, "read", read)  # the event log the API reads GET /v1/events from
    async with admin_client(runtime) as (client, tokens):
        with caplog.at_level(logging.ERROR, logger="pca.api"):
            resp = await client.get("/v1/events", headers=bearer(tokens, "auditor"))

    body = assert_problem(resp, 500, "unexpected error; request id ")
    assert body == {
        "type": "about:blank",
        "title": "Internal Server Error",
        "status": 500,
        "detail": body["detail"],
    }
    match = re.fullmatch(f"unexpected error; request id ({UUID})", body["detail"])
    assert match is not None, body["detail"]
    request_id = match.group(1)
    assert resp.headers["x-request-id"] == request_id
    for leak in (SECRET, "hunter2", SECRET_PATH, "RuntimeError", "Traceback", 'File "', ".py", api.__file__):
        assert leak not in resp.text, leak
    # The operator finds the whole story in the server log, under the request id the caller was given.
    [record] = [r for r in caplog.records if r.name == "pca.api" and request_id in r.getMessage()]
    assert record.levelno == logging.ERROR
    assert record.exc_info is not None and record.exc_info[1] is failure
    assert SECRET in caplog.text and "Traceback" in caplog.text


async def test_the_request_id_of_the_caller_names_the_failure(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def read(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(SECRET)

    monkeypatch.setattr(runtime.log, "read", read)
    async with admin_client(runtime) as (client, tokens):
        with caplog.at_level(logging.ERROR, logger="pca.api"):
            resp = await client.get("/v1/events", headers={**bearer(tokens, "admin"), "x-request-id": "ticket-4711"})

    assert_problem(resp, 500, "unexpected error; request id ticket-4711")
    assert resp.headers["x-request-id"] == "ticket-4711" and SECRET not in resp.text
    assert [r.exc_info is not None for r in caplog.records if "ticket-4711" in r.getMessage()] == [True]
