"""The public listener through granian's RSGI interface: what ``pca serve`` runs by default.

``granian --interface rsgi --factory pca.public_rsgi:create_app`` with ``PCA_CONFIG`` naming
the configuration. OCSP, the hot path, is answered natively: ``OCSPApp.reply`` decides (the one
implementation the ASGI entry uses too) and ``protocol.response_bytes`` sends, with no ASGI
messages in between. Everything else on the listener (CRLs, checkpoints, ``/healthz``,
``/metrics``) goes through a small RSGI-to-ASGI bridge (``serve_asgi``) to the roles' ASGI apps,
behind ``RequestGuard``.

The body deadline of ``[limits]`` holds on both paths: a POST body not received in time gets
408. A client that leaves in the middle of a request ends it quietly (no traceback, no answer).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any
from urllib.parse import unquote

from granian._granian import RSGIHTTPProtocol as HTTPProtocol
from granian._granian import RSGIProtocolClosed as ProtocolClosed
from granian._granian import RSGIProtocolError as ProtocolError
from granian.rsgi import Scope
from starlette.types import ASGIApp, Message

from pca.granian_proc import die_with_granian
from pca.public_app import Started, config_path, start_public
from responders.app import MAX_REQUEST_BYTES, OCSPApp
from revocation.digits import ascii_digits, port_number

log = logging.getLogger("pca.public")

_LATE = (408, [("content-type", "text/plain"), ("connection", "close")], b"request body not received in time\n")
_GONE = (ProtocolClosed, ProtocolError, ConnectionError)


class RSGIListener:
    """Route by path: OCSP natively, the rest through the ASGI bridge to ``fallback``."""

    def __init__(self, ocsp: OCSPApp | None, fallback: ASGIApp, body_timeout: float, prefix: str = "/ocsp") -> None:
        self.ocsp = ocsp
        self.fallback = fallback
        self.body_timeout = body_timeout
        self._prefix = prefix.rstrip("/")
        self._under = self._prefix + "/"

    async def __rsgi__(self, scope: Scope, protocol: HTTPProtocol) -> None:
        if scope.proto != "http":
            return
        path = scope.path
        if self.ocsp is not None and (path.startswith(self._under) or path == self._prefix):
            await self._ocsp(self.ocsp, scope, protocol)
        else:
            await serve_asgi(self.fallback, scope, protocol)

    async def _ocsp(self, ocsp: OCSPApp, scope: Scope, protocol: HTTPProtocol) -> None:
        headers = scope.headers
        state: list[str] = []  # "late" or "gone", once the body could not be read

        async def read_body() -> bytes | None:
            declared = headers.get("content-length")
            if declared is not None and announces_too_much(declared):
                return None
            try:
                async with asyncio.timeout(self.body_timeout):
                    if declared is not None:
                        return await protocol()  # the server holds it to the announced length
                    return await _read_chunked(protocol)
            except TimeoutError:
                state.append("late")
            except _GONE:
                state.append("gone")
            return b""

        method = scope.method
        status, out, body = await ocsp.reply(method, scope.path, headers.get, read_body)
        if state == ["gone"]:
            log.debug("OCSP request ended by its client's disconnection")
            return
        if state == ["late"]:
            status, out, body = _LATE
            out = [*out, ("content-length", str(len(body)))]
        protocol.response_bytes(status, out, b"" if method == "HEAD" else body)


async def _read_chunked(protocol: HTTPProtocol) -> bytes | None:
    """A body of no announced length, read until it ends or passes the limit (then None)."""
    chunks = []
    size = 0
    async for chunk in protocol:
        size += len(chunk)
        if size > MAX_REQUEST_BYTES:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def announces_too_much(declared: str) -> bool:
    """Whether a Content-Length announces a body over the limit. ASCII digits only: ``str.isdigit``
    accepts '²' and other Unicode digits, which ``int`` refuses (a 500 instead of an answer); anything
    else is no announcement, and the body read decides."""
    if not ascii_digits(declared):
        return False
    return len(declared.lstrip("0")) > len(str(MAX_REQUEST_BYTES)) or int(declared) > MAX_REQUEST_BYTES


def _address(value: str) -> tuple[str, int] | None:
    host, _, port = value.rpartition(":")
    number = port_number(port)
    return None if number is None else (host.strip("[]"), number)


async def serve_asgi(app: ASGIApp, scope: Scope, protocol: HTTPProtocol) -> None:
    """Run an ASGI app for one RSGI request: the body as it arrives, the answer as it is sent.

    A response sent in one message goes out with ``response_bytes``; one sent in several
    (``more_body``) is streamed with ``response_stream``, chunk by chunk.
    """
    asgi_scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": scope.http_version,
        "method": scope.method,
        "scheme": scope.scheme,
        "path": unquote(scope.path),
        "raw_path": scope.path.encode(),
        "query_string": scope.query_string.encode(),
        "root_path": "",
        "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in scope.headers.items()],
        "client": _address(scope.client),
        "server": _address(scope.server),
    }
    chunks = protocol.__aiter__()
    body_done = False
    start: Message | None = None
    stream: Any = None
    done = False

    async def receive() -> Message:
        nonlocal body_done
        if not body_done:
            try:
                return {"type": "http.request", "body": await chunks.__anext__(), "more_body": True}
            except StopAsyncIteration:
                body_done = True
                return {"type": "http.request", "body": b"", "more_body": False}
            except _GONE:
                body_done = True
                return {"type": "http.disconnect"}
        await protocol.client_disconnect()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        nonlocal start, stream, done
        if message["type"] == "http.response.start":
            start = message
            return
        if message["type"] != "http.response.body" or start is None or done:
            return
        body = message.get("body", b"")
        more = message.get("more_body", False)
        if stream is None:
            status = start["status"]
            headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in start.get("headers", [])]
            if not more:
                protocol.response_bytes(status, headers, body)
                done = True
                return
            stream = protocol.response_stream(status, headers)
        if body:
            await stream.send_bytes(body)
        done = not more

    try:
        await app(asgi_scope, receive, send)
    except _GONE:
        log.debug("request ended by its client's disconnection", exc_info=True)
        return
    if start is None:  # the app answered nothing: never leave the client waiting
        protocol.response_empty(500, [])


class PublicRSGI:
    """A granian worker's public listener: started in ``__rsgi_init__``, stopped in ``__rsgi_del__``."""

    def __init__(self, config_path: str) -> None:
        self._config_path = config_path
        self._started: Started | None = None
        self._listener: RSGIListener | None = None

    def __rsgi_init__(self, loop: asyncio.AbstractEventLoop) -> None:
        die_with_granian()  # granian's main process killed outright takes its workers along
        try:
            started = loop.run_until_complete(start_public(self._config_path))
        except Exception:
            log.exception("public listener failed to start")
            raise
        ocsp = [(prefix, app) for prefix, app in started.apps if isinstance(app, OCSPApp)]
        prefix, app = ocsp[0] if ocsp else ("/ocsp", None)
        self._listener = RSGIListener(app, started.dispatch, started.body_timeout, prefix)
        self._started = started

    def __rsgi_del__(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._started is not None:
            loop.run_until_complete(self._started.aclose())

    async def __rsgi__(self, scope: Scope, protocol: HTTPProtocol) -> None:
        if self._listener is None:
            raise RuntimeError("the public listener did not start")
        await self._listener.__rsgi__(scope, protocol)


def create_app() -> PublicRSGI:
    return PublicRSGI(config_path())
