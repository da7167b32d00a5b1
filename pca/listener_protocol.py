"""uvicorn's httptools protocol with the limits of ``[limits]``.

uvicorn bounds neither the size of a request head (httptools buffers a header line of any
length) nor the time a head or a body may take, and closes idle connections only after a
first response. This protocol, per connection:

- refuses the connection with 503 when its listener already holds its cap of connections;
- closes a connection that sends nothing for ``idle_timeout_seconds`` (before its first
  request and between requests);
- counts a request head's bytes before the parser sees them: a line over
  ``header_line_bytes`` or a head over ``header_bytes`` gets 431 and the connection closes, so
  memory never grows with what a client sends;
- gives a head ``header_timeout_seconds`` from its first byte, and the body
  ``body_timeout_seconds`` from the end of the head: late, the client gets 408 (or, when a
  response is already under way, the connection closes).

Refusals go to the listener's ``RefusalLog`` (once, then a summary a minute), not to a log
line per connection.
"""

from __future__ import annotations

import asyncio
import http
import socket
from asyncio import TimerHandle
from collections.abc import Callable
from typing import Any, cast

import httptools
import uvicorn
from starlette.types import ASGIApp
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from pca.listeners import HEAD_TOO_LARGE, MALFORMED, OVER_CAP, SLOW_BODY, SLOW_HEAD, ListenerGuard

LISTEN_BACKLOG = 2048  # connections the kernel queues for a listener (they hold no descriptor of ours)
LINGER_SECONDS = 1.0  # after a 431, how long input is still read (and dropped) before the connection closes


def plain_response(status: int, text: str) -> bytes:
    body = text.encode() + b"\n"
    phrase = http.HTTPStatus(status).phrase.encode()
    head = b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\n" % (status, phrase)
    return head + b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body) + body


class ListenerConfig(uvicorn.Config):
    """A ``uvicorn.Config`` that carries its listener's guard to the protocol."""

    guard: ListenerGuard


def listener_config(
    app: ASGIApp, host: str, port: int, guard: ListenerGuard, *, backlog: int = 128, **extra: Any
) -> ListenerConfig:
    """The ``uvicorn.Config`` of a bounded listener; ``extra`` goes to ``uvicorn.Config`` (e.g. ``ssl_*``)."""
    options: dict[str, Any] = {
        "log_level": "warning",
        "access_log": False,
        "lifespan": "off",
        "server_header": False,
        "ws": "none",
        "backlog": backlog,
        **extra,
    }
    # A mixin (the admin listener's client certificates, pca.admin_tls) goes in front of the bounded protocol.
    mixin = options.pop("protocol_mixin", None)
    http = (
        BoundedHttpToolsProtocol if mixin is None else type("BoundedWithMixin", (mixin, BoundedHttpToolsProtocol), {})
    )
    config = ListenerConfig(app, host=host, port=port, http=http, **options)
    config.guard = guard
    return config


class ListenerServer(uvicorn.Server):
    """A uvicorn server with a deep kernel queue and small accept bursts.

    asyncio accepts up to ``backlog`` connections at a time, each a descriptor until it is
    refused, and the budget charges that burst; the kernel's queue of connections not yet
    accepted costs no descriptor, so it is deepened again once the server listens.
    """

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        for server in getattr(self, "servers", []):
            for sock in server.sockets:
                with socket.fromfd(sock.fileno(), sock.family, sock.type) as same:
                    same.listen(LISTEN_BACKLOG)


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.guard: ListenerGuard = cast(ListenerConfig, config).guard
        limits = self.guard.limits
        self.timeout_keep_alive = limits.idle_timeout_seconds  # type: ignore[assignment]  # uvicorn's idle timer
        self._refused = False
        self._head = True  # the bytes arriving belong to a request head (or precede one)
        self._head_bytes = 0
        self._line_bytes = 0
        self._cr = False  # the last byte counted was a CR
        self._deadline: TimerHandle | None = None

    # --- connections --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self.guard.max_connections:
            self.transport = transport
            self._refused = True
            transport.write(plain_response(503, "too many connections; try again later"))
            transport.close()
            self.guard.refusals.refused(OVER_CAP, f"{self.guard.max_connections} open")
            return
        super().connection_made(transport)
        # uvicorn arms its keep-alive timer only after a response: an idle new connection waits too.
        self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive, self.timeout_keep_alive_handler)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_deadline()
        super().connection_lost(exc)

    # --- reading ------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._refused or self.parser is None:
            return
        self._unset_keepalive_if_required()
        while data:
            if not self._head:
                if not self._feed(data):
                    return
                break
            end = self._count_head(data)
            if end < 0:
                self._too_large()
                return
            if not self._feed(data if end == len(data) else data[:end]):
                return
            data = data[end:]
        if self._deadline is None and (self._head_bytes or not self._head):
            self._watch()

    def _watch(self) -> None:
        """Set the deadline of a head or body left incomplete by this read (none when complete:
        a request that arrives whole, as nearly all do, costs no timer)."""
        if self._deadline is not None or self.transport.is_closing():
            return
        # Armed once, at the end of the read that brought the head's first bytes (or the head's end).
        if self._head and self._head_bytes:
            self._deadline = self.loop.call_later(self.guard.limits.header_timeout_seconds, self._head_late)
        elif not self._head:
            self._deadline = self.loop.call_later(self.guard.limits.body_timeout_seconds, self._body_late)

    def _count_head(self, data: bytes) -> int:
        """Count ``data`` as head bytes up to the blank line ending the head: the index after it,
        ``len(data)`` when the head goes on, or -1 when a limit is exceeded."""
        limits = self.guard.limits
        size = len(data)
        if not self._head_bytes and size <= limits.header_line_bytes:
            # Fast path, a fresh head in one small read: no line nor the whole can be over a limit.
            end = data.find(b"\r\n\r\n")
            if end >= 0:
                self._head_bytes = end + 4
                return end + 4
            self._head_bytes = size
            self._line_bytes = size - data.rfind(b"\n") - 1
            self._cr = data[size - 1] == 0x0D
            return size
        pos = 0
        while pos < size:
            newline = data.find(b"\n", pos)
            if newline < 0:
                self._line_bytes += size - pos
                self._head_bytes += size - pos
                self._cr = data[size - 1] == 0x0D
                break
            length = self._line_bytes + newline - pos
            cr = data[newline - 1] == 0x0D if newline > pos else self._cr
            self._head_bytes += newline - pos + 1
            self._line_bytes, self._cr = 0, False
            pos = newline + 1
            if length > limits.header_line_bytes or self._head_bytes > limits.header_bytes:
                return -1
            if length == 0 or (length == 1 and cr):
                return pos  # a blank line: the head ends here (or it preceded the request line)
        if self._line_bytes > limits.header_line_bytes or self._head_bytes > limits.header_bytes:
            return -1
        return size

    def _feed(self, data: bytes) -> bool:
        """Parse ``data``; False when the connection is done with (an error, or an upgrade)."""
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.guard.refusals.refused(MALFORMED)
            self.send_400_response("Invalid HTTP request received.")
            return False
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            return False
        return not self.transport.is_closing()

    # --- parser callbacks ---------------------------------------------------------------

    def on_headers_complete(self) -> None:
        self._head = False
        if self._deadline is not None:
            self._cancel_deadline()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        if self._deadline is not None:
            self._cancel_deadline()
        self._head, self._head_bytes, self._line_bytes, self._cr = True, 0, 0, False
        super().on_message_complete()

    # --- refusals -----------------------------------------------------------------------

    def _no_request_under_way(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def _too_large(self) -> None:
        self.guard.refusals.refused(HEAD_TOO_LARGE)
        limits = self.guard.limits
        text = f"request head too large (at most {limits.header_line_bytes} bytes a line, {limits.header_bytes} in all)"
        if not self._no_request_under_way() or not self.transport.can_write_eof():
            self._close(431, text, answer=self._no_request_under_way())
            return
        # The client is likely still sending: closing now would reset the connection and could
        # lose the answer. Half-close, drop what still comes, and close after a moment.
        self._refused = True
        self.transport.write(plain_response(431, text))
        self.transport.write_eof()
        self._arm(LINGER_SECONDS, self.transport.close)

    def _head_late(self) -> None:
        self._deadline = None
        self.guard.refusals.refused(SLOW_HEAD)
        text = f"request head not received within {self.guard.limits.header_timeout_seconds:g} s"
        self._close(408, text, answer=self._no_request_under_way())

    def _body_late(self) -> None:
        self._deadline = None
        self.guard.refusals.refused(SLOW_BODY)
        cycle = self.cycle
        answer = cycle is not None and not cycle.response_started
        if answer:
            cycle.disconnected = True  # the application sees the client go; its answer is dropped
            cycle.message_event.set()
        text = f"request body not received within {self.guard.limits.body_timeout_seconds:g} s"
        self._close(408, text, answer=answer)

    def _close(self, status: int, text: str, *, answer: bool) -> None:
        if self.transport.is_closing():
            return
        if answer:
            self.transport.write(plain_response(status, text))
        self.transport.close()

    # --- timers -------------------------------------------------------------------------

    def _arm(self, seconds: float, callback: Callable[[], None]) -> None:
        self._cancel_deadline()
        self._deadline = self.loop.call_later(seconds, callback)

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
