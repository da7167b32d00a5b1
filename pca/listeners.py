"""Bounded listeners: what ``[limits]`` means for uvicorn and for granian.

- uvicorn (the admin listener; the public listener of ``--server uvicorn``): a protocol of our
  own (``pca.listener_protocol``) refuses heads over the size limits with 431, heads or
  bodies that do not arrive in time with 408, closes idle connections, and answers 503 to a
  connection over the listener's cap. ``listener_config`` builds the ``uvicorn.Config``;
  extra keyword arguments (TLS settings, for one) pass through to it.
- granian (``--server granian``): ``granian_args`` maps the limits onto its options (read
  buffer, header read timeout, per-worker connection cap); ``RequestGuard`` adds the body
  timeout, which granian does not have, as ASGI middleware.

Refusals are logged once when they start and then summarised once a minute
(``RefusalLog``), never once per connection.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pca.listener_limits import Budget, LimitsConfig, connection_budget

log = logging.getLogger("pca.listeners")

OVER_CAP = "connections over the cap (503)"
HEAD_TOO_LARGE = "request heads over the size limit (431)"
SLOW_HEAD = "request heads not received in time (408)"
SLOW_BODY = "request bodies not received in time (408)"
MALFORMED = "malformed requests (400)"
SUMMARY_SECONDS = 60.0


class RefusalLog:
    """One listener's refusals: the first is logged at once, the rest summarised every minute."""

    def __init__(self, listener: str, interval: float = SUMMARY_SECONDS) -> None:
        self.listener = listener
        self.interval = interval
        self.counts: collections.Counter[str] = collections.Counter()
        self.totals: collections.Counter[str] = collections.Counter()
        self._window_end: float | None = None  # None: no refusal in the current window

    def refused(self, reason: str, detail: str = "") -> None:
        self.totals[reason] += 1
        if self._window_end is not None and time.monotonic() >= self._window_end:
            self._flush()  # its timer is late (or there is no loop to run it)
        if self._window_end is not None:  # a flood under way: counted, summarised at the window's end
            self.counts[reason] += 1
            return
        log.warning(
            "%s listener: refusing %s%s; further refusals are summarised every %g s",
            self.listener,
            reason,
            f" ({detail})" if detail else "",
            self.interval,
        )
        self._open_window()

    def _open_window(self) -> None:
        self._window_end = time.monotonic() + self.interval
        try:
            asyncio.get_running_loop().call_later(self.interval, self._flush)
        except RuntimeError:  # no loop (a test calling it directly): the next refusal flushes
            pass

    def _flush(self) -> None:
        """End the window: summarise its refusals and open another, or, if there were none, the flood is over."""
        if self._window_end is None:
            return
        if not self.counts:
            self._window_end = None
            return
        what = ", ".join(f"{n} {reason}" for reason, n in sorted(self.counts.items()))
        log.warning("%s listener: refused %s in the last %g s", self.listener, what, self.interval)
        self.counts.clear()
        self._open_window()


class ListenerGuard:
    """What one listener enforces, shared by all its connections."""

    def __init__(self, name: str, limits: LimitsConfig, max_connections: int) -> None:
        self.name = name
        self.limits = limits
        self.max_connections = max_connections
        self.refusals = RefusalLog(name)


def uvicorn_guards(limits: LimitsConfig, budget: Budget) -> tuple[ListenerGuard, ListenerGuard]:
    """The guards of this process's admin and public uvicorn listeners."""
    return (
        ListenerGuard("admin", limits, budget.admin_connections),
        ListenerGuard("public", limits, budget.public_connections),
    )


def granian_args(limits: LimitsConfig, descriptors: int) -> list[str]:
    """granian's options for ``[limits]``; each worker is a process with ``descriptors`` of its own.

    ``--http1-buffer-size`` bounds what it buffers of a request head (431 once that much has come
    without the head's end; one read may overshoot by as much again: half of ``header_bytes``), its header
    read timeout also closes connections that send nothing, ``--backpressure`` is the number of
    connections a worker holds open (more wait in the listen backlog), and HTTP/1 only: its
    HTTP/2 has neither an idle timeout nor our header limits. The body timeout is ``RequestGuard``'s.
    """
    head_timeout = min(limits.header_timeout_seconds, limits.idle_timeout_seconds)
    budget = connection_budget(limits, descriptors, admin=False)
    return [
        "--http", "1",
        "--http1-buffer-size", str(max(8192, limits.header_bytes // 2)),
        "--http1-header-read-timeout", str(max(1, round(head_timeout * 1000))),
        "--backpressure", str(budget.public_connections),
    ]  # fmt: skip


class RequestGuard:
    """ASGI middleware for granian: a deadline on the request body, and quiet ends for clients that left.

    The body must arrive within ``body_timeout`` of the head; past it the application is told
    the client disconnected and the client gets 408. An application that fails only because
    its client disconnected is not logged as a server error: a flood of such clients would
    otherwise fill the log with tracebacks. (Our uvicorn protocol enforces the deadline itself.)
    """

    def __init__(self, app: ASGIApp, guard: ListenerGuard, body_timeout: float) -> None:
        self.app = app
        self.guard = guard
        self.body_timeout = body_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.body_timeout
        state = {"body_done": False, "gone": False, "late": False, "started": False}

        async def guarded_receive() -> Message:
            if state["gone"]:
                return {"type": "http.disconnect"}
            if state["body_done"]:
                message = await receive()
            else:
                try:
                    async with asyncio.timeout_at(deadline):
                        message = await receive()
                except TimeoutError:
                    state["gone"] = state["late"] = True
                    self.guard.refusals.refused(SLOW_BODY)
                    return {"type": "http.disconnect"}
            if message["type"] == "http.disconnect":
                state["gone"] = True
            elif not message.get("more_body", False):
                state["body_done"] = True
            return message

        async def guarded_send(message: Message) -> None:
            if state["late"]:
                return  # the 408 is ours to send
            if message["type"] == "http.response.start":
                state["started"] = True
            await send(message)

        try:
            await self.app(scope, guarded_receive, guarded_send)
        except Exception:
            if not state["gone"]:
                raise
            log.debug("request ended by its client's disconnection", exc_info=True)
        if state["late"] and not state["started"]:
            body = b"request body not received in time\n"
            headers = [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(body))]
            headers.append((b"connection", b"close"))
            await send({"type": "http.response.start", "status": 408, "headers": headers})
            await send({"type": "http.response.body", "body": body})


def quiet_resource_errors(loop: asyncio.AbstractEventLoop, interval: float = SUMMARY_SECONDS) -> None:
    """Log asyncio's "out of system resource" accept errors once a minute instead of every second."""
    previous = loop.get_exception_handler()
    last: dict[str, float] = {}

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        message = str(context.get("message", ""))
        if "out of system resource" in message:
            now = time.monotonic()
            if now - last.get(message, -interval) < interval:
                return
            last[message] = now
            exc = context.get("exception")
            log.error("%s: %s (logged once a minute while it lasts)", message, exc)
            return
        if previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handler)
