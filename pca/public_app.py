"""The public listener as a stand-alone app, for servers that run it in their own processes.

``granian --interface rsgi --factory pca.public_rsgi:create_app`` (what ``pca serve`` runs;
``pca.public_rsgi``) or ``granian --interface asgi --factory pca.public_app:create_app``, with
``PCA_CONFIG`` naming the configuration. Each worker process opens the store, starts the
responder and CRL-serving roles at startup (``start_public``) and follows the response store's
change feed on its own; it holds no keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import make_asgi_app
from starlette.types import ASGIApp, Receive, Scope, Send

from pca.config import load_config
from pca.listeners import ListenerGuard, RequestGuard
from pca.main_health import main_health_reader
from pca.metrics import publish_worker_metrics, worker_metrics_dir, workers_registry
from pca.roles import start_role
from pca.runtime import HealthApp, PrefixDispatcher, Runtime, ca_certificates_health, connect_runtime
from revocation.clock import SystemClock

log = logging.getLogger("pca.public")

PUBLIC_ROLES = ("responder", "crlserver")
SETTLE_POLL_SECONDS = 0.5
SETTLE_LIMIT_SECONDS = 600.0


@dataclasses.dataclass
class Started:
    """One worker's public listener: its runtime, its apps by path prefix, its background tasks."""

    runtime: Runtime
    apps: list[tuple[str, ASGIApp]]
    dispatch: ASGIApp  # every app, behind the body deadline (RequestGuard)
    body_timeout: float
    tasks: list[asyncio.Task[None]]

    async def aclose(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.runtime.aclose()


async def start_public(config_path: str) -> Started:
    """Open the store, start the public roles and the worker's metrics; ready to serve on return."""
    cfg = load_config(config_path)
    rt = await connect_runtime(cfg, SystemClock(), migrate=False, listen=True)
    rt.serving = serving = asyncio.Event()
    for role in PUBLIC_ROLES:
        await start_role(role, rt)
    metrics_dir = worker_metrics_dir()
    # Started by pca serve: /healthz adds the reports of its own roles (pre-signer, publisher, CA checks).
    fresh = {"ca_certificates": ca_certificates_health(rt)}
    others = main_health_reader(metrics_dir, fresh, clock=rt.clock) if metrics_dir is not None else None
    apps: list[tuple[str, ASGIApp]] = [*rt.public_apps, ("/healthz", HealthApp(rt.health, others))]
    if metrics_dir is not None:
        publish_worker_metrics(rt, metrics_dir)
        if os.environ.get("PCA_WORKER_METRICS"):  # no admin listener covers the workers: each answers for all
            apps.append(("/metrics", make_asgi_app(workers_registry(metrics_dir))))
    tasks = [asyncio.create_task(c) for c in [*rt.tasks, settle_heap(rt.health.get("responder"))]]
    # granian bounds heads and connections (pca.listeners.granian_args); the body deadline is ours.
    guard = ListenerGuard("public", cfg.limits, 0)
    dispatch = RequestGuard(PrefixDispatcher(apps), guard, cfg.limits.body_timeout_seconds)
    serving.set()  # granian serves once startup completes, right after this
    return Started(rt, apps, dispatch, cfg.limits.body_timeout_seconds, tasks)


async def settle_heap(
    report: Callable[[], Awaitable[dict[str, Any]]] | None,
    poll: float = SETTLE_POLL_SECONDS,
    limit: float = SETTLE_LIMIT_SECONDS,
) -> None:
    """Once the responder's cache holds the whole change feed, move what is loaded out of the collector's way.

    The cache is most of a worker's heap (hundreds of thousands of objects), and every full collection
    of Python's cyclic garbage collector walks all of it: 35-330 ms during which the worker answers
    nothing. GET answers leave no garbage cycles, but each POST does (its body is awaited from granian),
    so under POST load full collections came every couple of seconds and were the whole p99 tail.
    ``gc.freeze()`` after one last collection takes the loaded cache out of later collections;
    responses that replace cached ones are freed by reference counting as before.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while report is not None and loop.time() < deadline:
        with contextlib.suppress(Exception):  # the store unreachable: wait, as the cache does
            state = await report()
            if state.get("lag_changes") == 0:
                break
        await asyncio.sleep(poll)
    gc.collect()
    gc.freeze()
    log.debug("heap settled: %d objects out of the garbage collector's way", gc.get_freeze_count())


def config_path() -> str:
    path = os.environ.get("PCA_CONFIG")
    if not path:
        raise RuntimeError("PCA_CONFIG must name the pca.toml of the public listener")
    return path


class PublicApp:
    """The public listener through ASGI (lifespan startup and shutdown)."""

    def __init__(self, config_path: str) -> None:
        self._config_path = config_path
        self._started: Started | None = None
        self._lock = asyncio.Lock()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if self._started is None:  # a server that skips lifespan: start on first use
            async with self._lock:
                if self._started is None:
                    self._started = await start_public(self._config_path)
        await self._started.dispatch(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message: Any = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    self._started = await start_public(self._config_path)
                except Exception as exc:
                    log.exception("public listener failed to start")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._started is not None:
                    await self._started.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return


def create_app() -> PublicApp:
    return PublicApp(config_path())
