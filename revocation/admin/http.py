"""HTTP plumbing of the admin API: problem+json errors, bounded JSON bodies, parameter checks.

Kept apart from the routes so that what each endpoint means reads on its own.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from revocation.errors import ValidationError

MAX_URL_LENGTH = 2048


class Problem(Exception):
    """An error a handler chooses to answer with: sent as problem+json with this status and text."""

    def __init__(self, status: int, title: str, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.title = title
        self.detail = detail
        self.headers = headers or {}


def problem_response(status: int, title: str, detail: str, headers: dict[str, str] | None = None) -> Response:
    body = json.dumps({"type": "about:blank", "title": title, "status": status, "detail": detail})
    return Response(body, status_code=status, media_type="application/problem+json", headers=headers)


class TooLarge(Exception):
    """A body that outgrew the limit while it was read (chunked, or with a lying Content-Length)."""


async def json_body(request: Request, allow_empty: bool = False) -> dict[str, Any]:
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > request.scope.get("pca.max_body", 64 * 1024):
            raise TooLarge()
    if not raw.strip():
        if allow_empty:
            return {}
        raise ValidationError("a JSON object body is required")
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise ValidationError(f"body is not valid JSON: {exc}") from exc
    except RecursionError as exc:
        raise ValidationError("body is not valid JSON: nested too deeply") from exc
    if not isinstance(data, dict):
        raise ValidationError("body must be a JSON object")
    return data


def opt_str(body: dict[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is not None and not isinstance(value, str):
        raise ValidationError(f"{key} must be a string, got {value!r}")
    return value


def str_list(body: dict[str, Any], key: str) -> list[str]:
    value = body.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValidationError(f"{key} must be a list of strings")
    return value


def is_url(text: str, *, any_scheme: bool = False) -> bool:
    """An http(s) URL with a host; with ``any_scheme``, any absolute URL (``ldap:``, ``urn:``, ...)."""
    if len(text) > MAX_URL_LENGTH:
        return False
    try:
        parts = urlsplit(text)
    except ValueError:
        return False
    if any_scheme:
        return bool(parts.scheme) and bool(parts.netloc or parts.path)
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise ValidationError(f"query parameter {name}={raw!r} must be an integer from {low} to {high}")
    return int(raw)


async def not_found(request: Request, exc: Exception) -> Response:
    return problem_response(404, "Not Found", f"no such endpoint: {request.method} {request.url.path}")


async def not_allowed(request: Request, exc: Exception) -> Response:
    headers = getattr(exc, "headers", None)
    detail = f"{request.method} is not allowed on {request.url.path}"
    return problem_response(405, "Method Not Allowed", detail, dict(headers) if headers else None)


class BodyLimit:
    """Refuse bodies over the limit early, when Content-Length announces them."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope["pca.max_body"] = self.limit
            for key, value in scope["headers"]:
                if key != b"content-length":
                    continue
                if not value.isdigit():
                    detail = f"Content-Length {value.decode('latin-1')!r} is not a number"
                    await problem_response(400, "Bad Request", detail)(scope, receive, send)
                    return
                if int(value) > self.limit:
                    detail = f"request bodies are limited to {self.limit} bytes"
                    await problem_response(413, "Payload Too Large", detail)(scope, receive, send)
                    return
        await self.app(scope, receive, send)
