"""What a running process shares between its roles, and the small pieces that wire them.

Roles live in other packages (``responders``, ``publishers``) and are loaded by
name (``ROLE_ENTRY_POINTS``), so this package never imports them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from prometheus_client import CollectorRegistry
from starlette.types import ASGIApp, Receive, Scope, Send

from revocation.clock import Clock
from revocation.config import Config
from revocation.eventlog import RecordedEvent
from revocation.projection import SQLiteStatusView
from revocation.sqlite_db import SQLiteDatabase
from revocation.sqlite_log import SQLiteEventLog

log = logging.getLogger("pca.runtime")

HealthReport = Callable[[], Awaitable[dict[str, Any]]]

# role name -> "module:function"; the function takes a Runtime and registers tasks and apps.
ROLE_ENTRY_POINTS = {
    "presigner": "responders.role:start_presigner",
    "responder": "responders.role:start_responder",
    "publisher": "publishers.role:start_publisher",
    "crlserver": "publishers.role:start_crl_server",
}


@dataclasses.dataclass
class Runtime:
    config: Config
    clock: Clock
    registry: CollectorRegistry
    db: SQLiteDatabase
    log: SQLiteEventLog
    view: SQLiteStatusView
    tasks: list[Coroutine[Any, Any, None]] = dataclasses.field(default_factory=list)
    public_apps: list[tuple[str, ASGIApp]] = dataclasses.field(default_factory=list)
    health: dict[str, HealthReport] = dataclasses.field(default_factory=dict)
    closers: list[Callable[[], None]] = dataclasses.field(default_factory=list)

    def on_commit(self, callback: Callable[[list[RecordedEvent]], None]) -> None:
        self.log.listeners.append(callback)

    def close(self) -> None:
        for closer in reversed(self.closers):
            try:
                closer()
            except Exception:
                log.exception("error while shutting down")
        self.db.close()


def open_runtime(
    config: Config, clock: Clock, registry: CollectorRegistry | None = None, *, migrate: bool = True
) -> Runtime:
    db = SQLiteDatabase(config.database)
    if migrate:
        db.migrate_sync()
    return Runtime(
        config=config,
        clock=clock,
        registry=registry or CollectorRegistry(),
        db=db,
        log=SQLiteEventLog(db, clock),
        view=SQLiteStatusView(db),
    )


async def start_role(name: str, runtime: Runtime) -> None:
    target = ROLE_ENTRY_POINTS.get(name)
    if target is None:
        raise ValueError(f"unknown role {name!r}; roles are {', '.join(ROLE_ENTRY_POINTS)}")
    module_name, _, func = target.partition(":")
    start: Callable[[Runtime], Awaitable[None]] = getattr(importlib.import_module(module_name), func)
    await start(runtime)


class PrefixDispatcher:
    """Routes public requests by path prefix (``/ocsp``, ``/crl``) to the roles' apps."""

    def __init__(self, apps: list[tuple[str, ASGIApp]]) -> None:
        self._apps = sorted(apps, key=lambda item: -len(item[0]))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        for prefix, app in self._apps:
            if path == prefix or path.startswith(prefix + "/"):
                await app(scope, receive, send)
                return
        body = b"not found\n"
        await send(
            {
                "type": "http.response.start",
                "status": 404,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(body))],
            }
        )
        await send({"type": "http.response.body", "body": body})


async def run_forever(coros: list[Coroutine[Any, Any, None]]) -> None:
    """Run the coroutines until the first one ends (by stopping or failing), then stop the rest."""
    tasks = [asyncio.create_task(c) for c in coros]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            task.result()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
