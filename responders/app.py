"""The OCSP HTTP responder: a bare ASGI app, because this is the hot path.

``GET {prefix}/{base64 request}`` and ``POST {prefix}`` with
``application/ocsp-request``. The app decodes the request, resolves the issuer
and awaits ``source.response``; it knows nothing of where responses live.
Whatever a client sends, the answer is an OCSP response or a 4xx, never a 500.
"""

from __future__ import annotations

import base64
import binascii
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import unquote

from prometheus_client import CollectorRegistry, Counter, Histogram

from responders.ocsp_request import MalformedRequest, parse_request
from responders.ocsp_response import INTERNAL_ERROR, MALFORMED_REQUEST, TRY_LATER, UNAUTHORIZED
from responders.source import Entry, IssuerIndex, NotFound, Source, Unavailable

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

log = logging.getLogger("pca.responder")

MAX_REQUEST_BYTES = 10 * 1024
MEMO_SIZE = 50_000  # remembered requests; cleared when full (a path costs ~250 bytes)
MEMO_MAX_KEY = 512  # longer requests (a large nonce, padding) are not worth remembering
_OCSP_TYPE = (b"content-type", b"application/ocsp-response")
_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class OCSPApp:
    def __init__(
        self,
        source: Source,
        issuers: IssuerIndex,
        registry: CollectorRegistry,
        *,
        prefix: str = "/ocsp",
        max_age_cap: int = 3600,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_age_cap < 0:
            raise ValueError(f"max_age_cap must not be negative, got {max_age_cap}")
        self._source = source
        self._issuers = issuers
        self._prefix = prefix.rstrip("/")
        self._max_age_cap = max_age_cap
        self._clock = clock
        results = Counter("ocsp_requests_total", "OCSP requests by result", ["result"], registry=registry)
        # Children resolved once: labels() per request costs more than the increment.
        self._count = {
            name: results.labels(name)
            for name in ("good", "revoked", "unauthorized", "malformed", "try_later", "not_modified", "http_error")
        }
        # Request (GET path or POST body) -> (issuer_id, serial): RFC 5019 clients ask the same
        # questions again and again, and decoding plus parsing is most of a request's cost.
        self._requests: dict[str | bytes, tuple[str, int]] = {}
        methods = Counter("ocsp_http_requests_total", "OCSP HTTP requests by method", ["method"], registry=registry)
        self._methods = {name: methods.labels(name) for name in ("GET", "POST", "HEAD", "other")}
        self._latency = Histogram(
            "ocsp_request_seconds", "OCSP request handling time", registry=registry, buckets=_LATENCY_BUCKETS
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        self._methods.get(scope.get("method", ""), self._methods["other"]).inc()
        try:
            await self._handle(scope, receive, send)
        except Exception:  # nothing a client sends may produce a traceback page
            log.exception("OCSP request failed")
            await _send(send, 200, INTERNAL_ERROR, [_OCSP_TYPE])
        self._latency.observe(time.perf_counter() - started)

    async def _handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        method = scope["method"]
        if method == "POST":
            if scope["path"].rstrip("/") != self._prefix:
                return await self._http_error(send, 404, b"not found")
            ctype = _header(scope, b"content-type")
            if ctype is None or ctype.split(b";")[0].strip().lower() != b"application/ocsp-request":
                return await self._http_error(send, 415, b"Content-Type must be application/ocsp-request")
            body = await _read_body(receive, scope)
            if body is None:
                return await self._http_error(send, 413, b"OCSP requests are limited to 10 KB")
            known = self._requests.get(body)
            if known is not None:
                return await self._lookup(known[0], known[1], scope, send, cacheable=False)
            return await self._answer(body, scope, send, cacheable=False, memo=body)
        if method == "HEAD":
            send = _without_body(send)
        if method in ("GET", "HEAD"):
            raw = scope["path"][len(self._prefix) + 1 :] if scope["path"].startswith(self._prefix + "/") else None
            if raw is None:
                return await self._http_error(send, 404, b"not found")
            known = self._requests.get(raw)
            if known is not None:  # the same GET as before: skip decoding and parsing
                return await self._lookup(known[0], known[1], scope, send, cacheable=True)
            if len(raw) > MAX_REQUEST_BYTES * 2:
                return await self._http_error(send, 414, b"request too long")
            try:
                der = _decode_path(raw)
            except ValueError:
                self._count["malformed"].inc()
                return await _send(send, 200, MALFORMED_REQUEST, [_OCSP_TYPE])
            return await self._answer(der, scope, send, cacheable=True, memo=raw)
        await self._http_error(send, 405, b"method not allowed", [(b"allow", b"GET, HEAD, POST")])

    async def _answer(
        self, der: bytes, scope: Scope, send: Send, cacheable: bool, memo: str | bytes | None = None
    ) -> None:
        try:
            req = parse_request(der)
        except MalformedRequest:
            self._count["malformed"].inc()
            return await _send(send, 200, MALFORMED_REQUEST, [_OCSP_TYPE])
        try:
            issuer_id = self._issuers.resolve(req)
        except NotFound:
            self._count["unauthorized"].inc()
            return await _send(send, 200, UNAUTHORIZED, [_OCSP_TYPE])
        if memo is not None and len(memo) <= MEMO_MAX_KEY:
            # A request's bytes always name the same (issuer, serial); remember it for the next asker.
            if len(self._requests) >= MEMO_SIZE:
                self._requests.clear()
            self._requests[memo] = (issuer_id, req.serial)
        await self._lookup(issuer_id, req.serial, scope, send, cacheable)

    async def _lookup(self, issuer_id: str, serial: int, scope: Scope, send: Send, cacheable: bool) -> None:
        try:
            entry = await self._source.response(issuer_id, serial)
        except NotFound:
            self._count["unauthorized"].inc()
            return await _send(send, 200, UNAUTHORIZED, [_OCSP_TYPE])
        except Unavailable:
            self._count["try_later"].inc()
            return await _send(send, 200, TRY_LATER, [_OCSP_TYPE])
        headers = self._headers(entry, cacheable)
        if cacheable and _header(scope, b"if-none-match") == entry.etag:
            self._count["not_modified"].inc()
            await send({"type": "http.response.start", "status": 304, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
            return
        self._count[entry.status].inc()
        await _send(send, 200, entry.der, headers)

    def _headers(self, entry: Entry, cacheable: bool) -> list[tuple[bytes, bytes]]:
        headers = [_OCSP_TYPE, (b"etag", entry.etag), (b"last-modified", entry.last_modified)]
        if cacheable:
            max_age = max(0, min(entry.next_update - int(self._clock()), self._max_age_cap))
            headers.append((b"cache-control", b"max-age=%d, public, no-transform, must-revalidate" % max_age))
            headers.append((b"expires", entry.expires))
        else:
            headers.append((b"cache-control", b"no-cache"))
        return headers

    async def _http_error(
        self, send: Send, status: int, text: bytes, extra: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        self._count["http_error"].inc()
        await _send(send, status, text + b"\n", [(b"content-type", b"text/plain; charset=utf-8"), *(extra or [])])


def _decode_path(raw: str) -> bytes:
    """Base64 from a GET path: percent-decoding, URL-safe alphabet and lost padding all tolerated."""
    text = unquote(raw).replace("-", "+").replace("_", "/").replace(" ", "+")
    text += "=" * (-len(text) % 4)
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error as exc:
        raise ValueError("bad base64") from exc


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


async def _read_body(receive: Receive, scope: Scope) -> bytes | None:
    """The request body, or None when it exceeds the limit (announced or actual)."""
    declared = _header(scope, b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_REQUEST_BYTES:
        return None
    chunks = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b""
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_REQUEST_BYTES:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _send(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    headers = [*headers, (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _without_body(send: Send) -> Send:
    """For HEAD: the same headers (Content-Length included), no body."""

    async def send_head(message: Message) -> None:
        if message["type"] == "http.response.body":
            message = {**message, "body": b""}
        await send(message)

    return send_head
