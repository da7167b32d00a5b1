"""Prometheus ``/metrics`` of a process that is not ``pca serve`` (``pca crl-sync``), on a bounded listener.

The same uvicorn protocol as every other listener (``pca.listener_protocol``): heads over
8 KB a line or 32 KB in all get 431, heads and bodies that do not arrive in time get 408,
idle connections are closed, connections over the cap get 503, and refusals are logged once
and then summarised. It runs in the caller's event loop, on a registry of the caller's own.

Its limits are a ``[limits]`` table with the keys of pca.toml's (``listener_limits``), but one
connection cap, ``connections``: by default the admin listener's share of the open-files limit
(``pca.listener_limits.connection_budget``), which leaves the rest to the process's own work.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import resource
import socket
from collections.abc import Generator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, make_asgi_app
from starlette.types import ASGIApp, Receive, Scope, Send

from pca.listener_limits import LimitsConfig, connection_budget, parse_limits
from pca.listener_protocol import ListenerServer, listener_config
from pca.listeners import MALFORMED, ListenerGuard, quiet_resource_errors
from revocation.errors import ConfigError

log = logging.getLogger("pca.listeners")

STOP_SECONDS = 5.0  # how long requests in flight get when the listener stops


@dataclasses.dataclass(frozen=True)
class MetricsLimits:
    """What one client may cost the metrics listener; ``connections`` 0: from the open-files limit."""

    limits: LimitsConfig = dataclasses.field(default_factory=LimitsConfig)
    connections: int = 0


def listener_limits(table: Mapping[str, Any]) -> MetricsLimits:
    """A ``[limits]`` table: pca.toml's keys, with ``connections`` for the one cap; ConfigError names a bad one."""
    section = dict(table)
    for key in ("public_connections", "admin_connections"):
        if key in section:
            raise ConfigError(f"limits.{key} is pca serve's; the metrics listener's cap is limits.connections")
    connections = section.pop("connections", 0)
    if type(connections) is not int or connections < 0:
        raise ConfigError(f"limits.connections must be 0 (from the open-files limit) or more, got {connections!r}")
    return MetricsLimits(parse_limits(section), connections)


def cap_and_backlog(limits: MetricsLimits) -> tuple[int, int]:
    """The listener's connection cap and accept burst, from the soft open-files limit."""
    descriptors = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if descriptors == resource.RLIM_INFINITY:
        descriptors = 1 << 20
    budget = connection_budget(limits.limits, descriptors, admin=True)
    return limits.connections or budget.admin_connections, budget.admin_backlog


class _Server(ListenerServer):
    """Signals are the caller's: uvicorn's own handlers would replace the caller's loop handlers."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class MetricsApp:
    """``make_asgi_app``, answering 400 (not 500) to a query string that is not UTF-8."""

    def __init__(self, registry: CollectorRegistry, guard: ListenerGuard) -> None:
        self.app: ASGIApp = make_asgi_app(registry)
        self.guard = guard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            scope["query_string"].decode()
        except UnicodeDecodeError:
            self.guard.refusals.refused(MALFORMED)
            body = b"the query string is not UTF-8\n"
            headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", b"%d" % len(body))]
            await send({"type": "http.response.start", "status": 400, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)


def bind(host: str, port: int) -> list[socket.socket]:
    """Listening sockets for every address of ``host`` (as asyncio would); OSError when one cannot be had."""
    socks: list[socket.socket] = []
    try:
        seen = set()
        for family, kind, proto, _, address in socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        ):
            if address in seen:
                continue
            seen.add(address)
            sock = socket.socket(family, kind, proto)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.setblocking(False)
    except OSError:
        for sock in socks:
            sock.close()
        raise
    return socks


class MetricsListener:
    """``/metrics`` of ``registry`` on ``host:port``, bounded by ``limits``, in the running event loop."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int, limits: MetricsLimits) -> None:
        cap, backlog = cap_and_backlog(limits)
        self.guard = ListenerGuard("metrics", limits.limits, cap)
        app = MetricsApp(registry, self.guard)
        self.server = _Server(listener_config(app, host, port, self.guard, backlog=backlog))
        self.host, self.port = host, port
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Listen; OSError when the address cannot be bound (nothing is left open then)."""
        sockets = bind(self.host, self.port)
        quiet_resource_errors(asyncio.get_running_loop())
        self._task = asyncio.create_task(self.server.serve(sockets=sockets))
        while not self.server.started and not self._task.done():  # noqa: ASYNC110 - uvicorn sets a flag
            await asyncio.sleep(0.01)
        if self._task.done():
            for sock in sockets:
                sock.close()
            self._task.result()  # its error, if it failed
            raise OSError(f"the metrics listener on {self.host}:{self.port} stopped at once")
        where = f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
        log.info("serving /metrics on %s (at most %d connections)", where, self.guard.max_connections)

    async def stop(self) -> None:
        """Stop accepting, let requests in flight finish (a few seconds at most), close every connection."""
        if self._task is None:
            return
        self.server.should_exit = True
        try:
            async with asyncio.timeout(STOP_SECONDS):
                await self._task
        except TimeoutError:
            self.server.force_exit = True
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._task = None
