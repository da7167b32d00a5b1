"""What a running process shares between its roles, and the small pieces that wire them.

The roles that fill a runtime are in ``pca.roles``, which imports this module; this
module imports none of them.

Two backends: SQLite (embedded: one file, in-process notifications, polling across
processes) and PostgreSQL (scaled: roles in separate processes or hosts against
one URL, notified through LISTEN/NOTIFY, polling as the fallback).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry
from starlette.types import ASGIApp, Receive, Scope, Send

from pca.config import Config
from pca.schemas import PG_SCHEMAS, SQLITE_SCHEMAS
from revocation.ca_status import ca_standing
from revocation.clock import Clock
from revocation.coordination import Coordination
from revocation.eventlog import RecordedEvent, StoredEventLog
from revocation.projection import StatusView
from revocation.storage.postgres.db import EVENTS_CHANNEL, RESPONSES_CHANNEL
from revocation.storage.sqlite.coordination import SQLiteCoordination
from revocation.storage.sqlite.db import SQLiteDatabase
from revocation.storage.sqlite.log import SQLiteEventLog
from revocation.storage.sqlite.projection import SQLiteStatusView, apply_sqlite, clear_sqlite

if TYPE_CHECKING:  # the PostgreSQL driver is loaded only when a database URL is configured
    import asyncpg

    from responders.store import ResponseStore
    from revocation.storage.postgres.notify import PostgresListener

log = logging.getLogger("pca.runtime")

HealthReport = Callable[[], Awaitable[dict[str, Any]]]


@dataclasses.dataclass
class Runtime:
    config: Config
    clock: Clock
    registry: CollectorRegistry
    log: StoredEventLog
    view: StatusView
    coord: Coordination
    db: SQLiteDatabase | None = None  # the SQLite backend
    pool: asyncpg.Pool | None = None  # the PostgreSQL backend
    listener: PostgresListener | None = None  # the PostgreSQL backend's LISTEN/NOTIFY connection, when asked for
    tasks: list[Coroutine[Any, Any, None]] = dataclasses.field(default_factory=list)
    public_apps: list[tuple[str, ASGIApp]] = dataclasses.field(default_factory=list)
    health: dict[str, HealthReport] = dataclasses.field(default_factory=dict)
    closers: list[Callable[[], None]] = dataclasses.field(default_factory=list)
    async_closers: list[Callable[[], Awaitable[None]]] = dataclasses.field(default_factory=list)
    # What the roles of one process share:
    responder_id: str | None = None  # `pca serve --responder-id`; else PCA_RESPONDER_ID, else host:pid
    responder_url: str | None = None  # `pca serve --responder-url`; else PCA_RESPONDER_URL, else ocsp_url
    # Set once the public listener accepts connections: a responder counts in propagation only from then.
    serving: asyncio.Event | None = None
    # One response store per process, so the pre-signer's writes reach this process's responder at once.
    response_store: ResponseStore | None = None

    @property
    def backend(self) -> str:
        return "sqlite" if self.db is not None else "postgres"

    def on_commit(self, callback: Callable[[list[RecordedEvent]], None]) -> None:
        """Called after each append made by this process (not by others: see ``on_log_change``)."""
        self.log.listeners.append(callback)

    def on_log_change(self, callback: Callable[[], None]) -> None:
        """Called soon after any process appends to the log: in-process at once, from other
        processes through NOTIFY on PostgreSQL. On SQLite other processes' appends are only
        found by polling, so every follower also polls."""
        self.log.listeners.append(lambda _events: callback())
        self.subscribe(EVENTS_CHANNEL, callback)

    def subscribe(self, channel: str, callback: Callable[[], None]) -> None:
        """Call ``callback`` on each NOTIFY on ``channel`` (PostgreSQL); nothing on SQLite."""
        if self.listener is not None:
            self.listener.subscribe(channel, callback)

    def close(self) -> None:
        for closer in reversed(self.closers):
            try:
                closer()
            except Exception:
                log.exception("error while shutting down")
        if self.db is not None:
            self.db.close()

    async def aclose(self) -> None:
        for aclose in reversed(self.async_closers):
            try:
                await aclose()
            except Exception:
                log.exception("error while shutting down")
        self.close()


def open_runtime(
    config: Config, clock: Clock, registry: CollectorRegistry | None = None, *, migrate: bool = True
) -> Runtime:
    """The embedded runtime on SQLite (synchronous: tests and local commands use it directly)."""
    if config.database_url:
        raise ValueError("open_runtime is for SQLite; use connect_runtime for PostgreSQL")
    db = SQLiteDatabase(config.database)
    if migrate:
        db.migrate_sync(SQLITE_SCHEMAS)
    return Runtime(
        config=config,
        clock=clock,
        registry=registry or CollectorRegistry(),
        log=SQLiteEventLog(db, clock, project=apply_sqlite, clear=clear_sqlite),
        view=SQLiteStatusView(db),
        coord=SQLiteCoordination(db),
        db=db,
    )


async def connect_runtime(
    config: Config,
    clock: Clock,
    registry: CollectorRegistry | None = None,
    *,
    migrate: bool = True,
    listen: bool = False,
) -> Runtime:
    """The runtime on the configured backend. ``listen`` opens the LISTEN connection (PostgreSQL)
    that roles in separate processes use to hear of new events and responses at once."""
    if not config.database_url:
        return open_runtime(config, clock, registry, migrate=migrate)
    from revocation.storage.postgres.coordination import PostgresCoordination
    from revocation.storage.postgres.db import open_pg_pool, reap_stalled_sessions_forever
    from revocation.storage.postgres.log import PostgresEventLog
    from revocation.storage.postgres.notify import PostgresListener
    from revocation.storage.postgres.projection import PostgresStatusView, apply_pg, clear_pg

    pool = await open_pg_pool(config.database_url, schemas=PG_SCHEMAS, migrate=migrate)
    rt = Runtime(
        config=config,
        clock=clock,
        registry=registry or CollectorRegistry(),
        log=PostgresEventLog(pool, clock, project=apply_pg, clear=clear_pg),
        view=PostgresStatusView(pool),
        coord=PostgresCoordination(pool),
        pool=pool,
    )
    rt.async_closers.append(pool.close)
    if listen:
        # A serving process: it also ends the sessions of processes frozen with locks held (see there).
        rt.tasks.append(reap_stalled_sessions_forever(pool))
        listener = rt.listener = PostgresListener(config.database_url, [EVENTS_CHANNEL, RESPONSES_CHANNEL])
        rt.tasks.append(listener.run())
        rt.async_closers.append(listener.close)
    return rt


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


def ca_certificates_health(rt: Runtime) -> HealthReport:
    """``/healthz`` entry naming every issuer whose own CA certificate expired or was revoked (a problem: 503),
    but for a revoked CA replaced by another from the same parent (named under ``replaced``, 200): the
    responders of a CA hierarchy recovered from a key compromise must not be taken out of a load balancer."""

    async def report() -> dict[str, Any]:
        problems, replaced = await ca_standing(rt.view, rt.clock.now())
        if not problems:
            return {}
        out: dict[str, Any] = {"issuers": sorted(problems)}
        open_ = [i for i in sorted(problems) if i not in replaced]
        if open_:
            out["problem"] = "; ".join(problems[i] for i in open_)
        if replaced:
            out["replaced"] = {i: f"{problems[i]}; replaced by issuer {replaced[i]}" for i in sorted(replaced)}
        return out

    return report


class HealthApp:
    """``GET /healthz`` on the public listener: each role's report; 503 when one names a problem.

    A responder running alone has no admin API, so its lag and store reachability are here.
    """

    def __init__(
        self, health: dict[str, HealthReport], others: Callable[[], Awaitable[dict[str, Any]]] | None = None
    ) -> None:
        self._health = health
        self._others = others  # parts reported by another process (a granian worker's: pca serve's roles)

    async def report(self) -> dict[str, Any]:
        out: dict[str, Any] = {"status": "ok"}
        for name, check in self._health.items():
            try:
                part = await check()
            except Exception as exc:  # noqa: BLE001 - a health check must answer, not fail
                part = {"problem": f"{type(exc).__name__}: {exc}"}
            out[name] = part
        if self._others is not None:
            for name, part in (await self._others()).items():
                out.setdefault(name, part)
        if any(isinstance(part, dict) and "problem" in part for part in out.values()):
            out["status"] = "degraded"
        return out

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        report = await self.report()
        body = json.dumps(report).encode()
        status = 200 if report["status"] == "ok" else 503
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": status, "headers": headers})
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
