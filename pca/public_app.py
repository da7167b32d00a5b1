"""The public listener as a stand-alone ASGI app, for servers that run it in their own processes.

``granian --interface asgi --factory pca.public_app:create_app`` with
``PCA_CONFIG`` naming the configuration. Each worker process opens the store,
starts the responder and CRL-serving roles at lifespan startup and follows the
response store's change feed on its own; it holds no keys.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

from prometheus_client import make_asgi_app
from starlette.types import ASGIApp, Receive, Scope, Send

from pca.config import load_config
from pca.listeners import ListenerGuard, RequestGuard
from pca.metrics import publish_worker_metrics, worker_metrics_dir, workers_registry
from pca.roles import start_role
from pca.runtime import HealthApp, PrefixDispatcher, Runtime, connect_runtime
from revocation.clock import SystemClock

log = logging.getLogger("pca.public")

PUBLIC_ROLES = ("responder", "crlserver")


class PublicApp:
    def __init__(self, config_path: str) -> None:
        self._config_path = config_path
        self._runtime: Runtime | None = None
        self._dispatch: ASGIApp | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._lock = asyncio.Lock()

    async def _startup(self) -> None:
        cfg = load_config(self._config_path)
        rt = await connect_runtime(cfg, SystemClock(), migrate=False, listen=True)
        rt.serving = serving = asyncio.Event()
        for role in PUBLIC_ROLES:
            await start_role(role, rt)
        apps: list[tuple[str, ASGIApp]] = [*rt.public_apps, ("/healthz", HealthApp(rt.health))]
        metrics_dir = worker_metrics_dir()
        if metrics_dir is not None:
            publish_worker_metrics(rt, metrics_dir)
            if os.environ.get("PCA_WORKER_METRICS"):  # no admin listener covers the workers: each answers for all
                apps.append(("/metrics", make_asgi_app(workers_registry(metrics_dir))))
        self._tasks = [asyncio.create_task(c) for c in rt.tasks]
        dispatch = PrefixDispatcher(apps)
        # granian bounds heads and connections (pca.listeners.granian_args); the body deadline is ours.
        guard = ListenerGuard("public", cfg.limits, 0)
        self._dispatch = RequestGuard(dispatch, guard, cfg.limits.body_timeout_seconds)
        serving.set()  # granian serves once the lifespan startup completes, right after this
        self._runtime = rt

    async def _shutdown(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._runtime is not None:
            await self._runtime.aclose()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        dispatch = self._dispatch
        if dispatch is None:  # a server that skips lifespan: start on first use
            async with self._lock:
                if self._dispatch is None:
                    await self._startup()
            dispatch = self._dispatch
            if dispatch is None:
                raise RuntimeError("the public listener did not start")
        await dispatch(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message: Any = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self._startup()
                except Exception as exc:
                    log.exception("public listener failed to start")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self._shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return


def create_app() -> PublicApp:
    path = os.environ.get("PCA_CONFIG")
    if not path:
        raise RuntimeError("PCA_CONFIG must name the pca.toml of the public listener")
    return PublicApp(path)
