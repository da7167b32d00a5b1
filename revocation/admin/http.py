"""HTTP plumbing of the admin API: problem+json errors, bounded JSON bodies, parameter checks.

Kept apart from the routes so that what each endpoint means reads on its own.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from revocation.clock import parse_iso
from revocation.digits import ascii_digits
from revocation.errors import ValidationError

MAX_URL_LENGTH = 2048
MAX_STRING = 1024  # any other string field of a request


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


def check_fields(body: dict[str, Any], allowed: Iterable[str], where: str = "the body") -> None:
    """Refuse a field the endpoint does not know, naming it (a typo must not pass silently)."""
    known = set(allowed)
    unknown = sorted(k for k in body if k not in known)
    if unknown:
        shown = ", ".join(repr(k[:64]) for k in unknown[:5])
        raise ValidationError(f"{where} has unknown field(s) {shown}; allowed: {', '.join(sorted(known))}")


def check_query(request: Request, allowed: Iterable[str]) -> None:
    """Refuse an unknown or repeated query parameter, naming it."""
    known = set(allowed)
    seen: set[str] = set()
    for key, _ in request.query_params.multi_items():
        if key not in known:
            listed = ", ".join(sorted(known)) or "none"
            raise ValidationError(f"unknown query parameter {key[:64]!r}; allowed: {listed}")
        if key in seen:
            raise ValidationError(f"query parameter {key[:64]!r} is given more than once")
        seen.add(key)


def opt_str(body: dict[str, Any], key: str, max_length: int = MAX_STRING) -> str | None:
    value = body.get(key)
    if value is not None and not isinstance(value, str):
        raise ValidationError(f"{key} must be a string, got {_short(value)}")
    if value is not None and len(value) > max_length:
        raise ValidationError(f"{key} is longer than {max_length} characters")
    return value


def str_list(body: dict[str, Any], key: str, max_items: int = 100, max_length: int = MAX_STRING) -> list[str]:
    value = body.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValidationError(f"{key} must be a list of strings")
    if len(value) > max_items:
        raise ValidationError(f"{key} has {len(value)} items; at most {max_items}")
    for item in value:
        if len(item) > max_length:
            raise ValidationError(f"{key} has an item longer than {max_length} characters")
    return value


def opt_int(body: dict[str, Any], key: str, low: int, high: int) -> int | None:
    """An optional integer (a JSON number, not a boolean) within ``low``..``high``."""
    value = body.get(key)
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high):
        raise ValidationError(f"{key} must be an integer from {low} to {high}, got {_short(value)}")
    return value


def opt_time(body: dict[str, Any], key: str) -> datetime.datetime | None:
    """An optional ISO 8601 time with a zone."""
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > 64:
        raise ValidationError(f"{key} must be an ISO 8601 string, got {_short(value)}")
    try:
        return parse_iso(value)
    except (ValueError, OverflowError) as exc:  # parse_iso's own words (a missing zone, say)
        raise ValidationError(f"{key} {value!r} is not an ISO 8601 time: {exc}") from None


def _short(value: object) -> str:
    shown = repr(value)
    return shown if len(shown) <= 80 else shown[:70] + "... (" + type(value).__name__ + ")"


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
    # ASCII digits only (str.isdigit accepts '²' and other Unicode digits, which int() refuses), and
    # no more of them than the bound has (int() refuses over 4,300 digits).
    if not ascii_digits(raw) or len(raw) > len(str(high)) or not low <= int(raw) <= high:
        shown = raw if len(raw) <= 40 else raw[:40] + f"... ({len(raw)} characters)"
        raise ValidationError(f"query parameter {name}={shown!r} must be an integer from {low} to {high}")
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
