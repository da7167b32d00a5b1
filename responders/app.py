"""The OCSP HTTP responder: a bare app, because this is the hot path.

``GET {prefix}/{base64 request}`` and ``POST {prefix}`` with
``application/ocsp-request``. ``OCSPApp.reply`` decodes the request, resolves the issuer
and awaits ``source.response``; it knows nothing of where responses live, nor of the
server: the ASGI entry (``__call__``) and granian's RSGI entry (``pca.public_rsgi``) both
send what it decides. Whatever a client sends, the answer is an OCSP response or a 4xx,
never a 500.
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
Header = Callable[[str], "str | None"]  # a request header by lower-case name
ReadBody = Callable[[], Awaitable["bytes | None"]]  # the request body; None when over MAX_REQUEST_BYTES
Reply = tuple[int, list[tuple[str, str]], bytes]  # status, headers, body
# etag, and the ETag, Last-Modified, Expires and Content-Length headers of one response
_Rendered = tuple[str, tuple[str, str], tuple[str, str], tuple[str, str], tuple[str, str]]

log = logging.getLogger("pca.responder")

MAX_REQUEST_BYTES = 10 * 1024
MEMO_SIZE = 50_000  # remembered requests; cleared when full (a path costs ~250 bytes)
MEMO_MAX_KEY = 512  # longer requests (a large nonce, padding) are not worth remembering
RENDERED_SIZE = 4096  # responses whose header values are kept formatted (the hot ones; ~400 bytes each)
_NO_CACHE = ("cache-control", "no-cache")
_OCSP_TYPE = ("content-type", "application/ocsp-response")
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
        # (change id, thisUpdate) -> the response's fixed header values, formatted once while it is asked for.
        self._rendered: dict[tuple[int, int], _Rendered] = {}
        self._cache_control: dict[int, tuple[str, str]] = {}  # max-age -> its Cache-Control header
        methods = Counter("ocsp_http_requests_total", "OCSP HTTP requests by method", ["method"], registry=registry)
        self._methods = {name: methods.labels(name) for name in ("GET", "POST", "HEAD", "other")}
        self._latency = Histogram(
            "ocsp_request_seconds", "OCSP request handling time", registry=registry, buckets=_LATENCY_BUCKETS
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The ASGI entry (uvicorn, tests): the same answers as ``reply`` gives any other server."""
        headers: list[tuple[bytes, bytes]] = scope["headers"]

        def header(name: str) -> str | None:
            wanted = name.encode()
            for key, value in headers:
                if key == wanted:
                    return bytes(value).decode("latin-1")
            return None

        method = scope["method"]
        status, out, body = await self.reply(method, scope["path"], header, lambda: _read_body(receive, scope))
        raw = [(k.encode(), v.encode("latin-1")) for k, v in out]
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": b"" if method == "HEAD" else body})

    async def reply(self, method: str, path: str, header: Header, read_body: ReadBody) -> Reply:
        """The whole answer to one request: status, headers (Content-Length included) and body.

        ``header(name)`` gives a request header (lower-case name) or None; ``read_body()`` the POST
        body, or None when it is over the limit. The caller sends it as its server wants (ASGI
        messages, granian's RSGI ``response_bytes``); for HEAD it leaves the body out.
        """
        started = time.perf_counter()
        self._methods.get(method, self._methods["other"]).inc()
        try:
            answer = await self._decide(method, path, header, read_body)
        except Exception:  # nothing a client sends may produce a traceback page
            log.exception("OCSP request failed")
            answer = _reply(200, INTERNAL_ERROR, [_OCSP_TYPE])
        self._latency.observe(time.perf_counter() - started)
        return answer

    async def _decide(self, method: str, path: str, header: Header, read_body: ReadBody) -> Reply:
        if method == "POST":
            if path.rstrip("/") != self._prefix:
                return self._http_error(404, b"not found")
            ctype = header("content-type")
            if ctype is None or ctype.split(";")[0].strip().lower() != "application/ocsp-request":
                return self._http_error(415, b"Content-Type must be application/ocsp-request")
            body = await read_body()
            if body is None:
                return self._http_error(413, b"OCSP requests are limited to 10 KB")
            known = self._requests.get(body)
            if known is not None:
                return await self._lookup(known[0], known[1], header, cacheable=False)
            return await self._answer(body, header, cacheable=False, memo=body)
        if method in ("GET", "HEAD"):
            raw = path[len(self._prefix) + 1 :] if path.startswith(self._prefix + "/") else None
            if raw is None:
                return self._http_error(404, b"not found")
            known = self._requests.get(raw)
            if known is not None:  # the same GET as before: skip decoding and parsing
                return await self._lookup(known[0], known[1], header, cacheable=True)
            if len(raw) > MAX_REQUEST_BYTES * 2:
                return self._http_error(414, b"request too long")
            try:
                der = _decode_path(raw)
            except ValueError:
                self._count["malformed"].inc()
                return _reply(200, MALFORMED_REQUEST, [_OCSP_TYPE])
            return await self._answer(der, header, cacheable=True, memo=raw)
        return self._http_error(405, b"method not allowed", [("allow", "GET, HEAD, POST")])

    async def _answer(self, der: bytes, header: Header, cacheable: bool, memo: str | bytes) -> Reply:
        try:
            req = parse_request(der)
        except MalformedRequest:
            self._count["malformed"].inc()
            return _reply(200, MALFORMED_REQUEST, [_OCSP_TYPE])
        try:
            issuer_id = self._issuers.resolve(req)
        except NotFound:
            self._count["unauthorized"].inc()
            return _reply(200, UNAUTHORIZED, [_OCSP_TYPE])
        if len(memo) <= MEMO_MAX_KEY:
            # A request's bytes always name the same (issuer, serial); remember it for the next asker.
            if len(self._requests) >= MEMO_SIZE:
                self._requests.clear()
            self._requests[memo] = (issuer_id, req.serial)
        return await self._lookup(issuer_id, req.serial, header, cacheable)

    async def _lookup(self, issuer_id: str, serial: int, header: Header, cacheable: bool) -> Reply:
        try:
            entry = await self._source.response(issuer_id, serial)
        except NotFound:
            self._count["unauthorized"].inc()
            return _reply(200, UNAUTHORIZED, [_OCSP_TYPE])
        except Unavailable:
            self._count["try_later"].inc()
            return _reply(200, TRY_LATER, [_OCSP_TYPE])
        etag, etag_h, modified_h, expires_h, length_h = self._render(entry)
        if cacheable:
            max_age = max(0, min(entry.next_update - int(self._clock()), self._max_age_cap))
            headers = [_OCSP_TYPE, etag_h, modified_h, self._max_age(max_age), expires_h]
        else:
            headers = [_OCSP_TYPE, etag_h, modified_h, _NO_CACHE]
        if cacheable and header("if-none-match") == etag:
            self._count["not_modified"].inc()
            return 304, headers, b""
        self._count[entry.status].inc()
        headers.append(length_h)
        return 200, headers, entry.der

    def _render(self, entry: Entry) -> _Rendered:
        key = (entry.change_id, entry.this_update)
        rendered = self._rendered.get(key)
        if rendered is None:
            if len(self._rendered) >= RENDERED_SIZE:
                self._rendered.clear()
            etag = entry.etag.decode()
            rendered = self._rendered[key] = (
                etag,
                ("etag", etag),
                ("last-modified", entry.last_modified.decode()),
                ("expires", entry.expires.decode()),
                ("content-length", str(len(entry.der))),
            )
        return rendered

    def _max_age(self, max_age: int) -> tuple[str, str]:
        value = self._cache_control.get(max_age)
        if value is None:
            if len(self._cache_control) >= RENDERED_SIZE:
                self._cache_control.clear()
            value = ("cache-control", f"max-age={max_age}, public, no-transform, must-revalidate")
            self._cache_control[max_age] = value
        return value

    def _http_error(self, status: int, text: bytes, extra: list[tuple[str, str]] | None = None) -> Reply:
        self._count["http_error"].inc()
        return _reply(status, text + b"\n", [("content-type", "text/plain; charset=utf-8"), *(extra or [])])


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


def _reply(status: int, body: bytes, headers: list[tuple[str, str]]) -> Reply:
    return status, [*headers, ("content-length", str(len(body)))], body
