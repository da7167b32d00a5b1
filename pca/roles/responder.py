"""Entry points that start the pre-signer and the responder roles in a runtime."""

from __future__ import annotations

import asyncio
import collections
import logging
import os
from typing import Any

from cryptography import x509
from prometheus_client import Gauge

from pca.metrics import export_log_position, export_response_freshness
from pca.roles.signer_expiry import start_signer_expiry
from pca.roles.standby import report_standby
from pca.runtime import Runtime
from responders.app import OCSPApp
from responders.cache_metrics import CacheCounters
from responders.presigner import CONSUMER, PreSigner, signing_pool, start_workers, stop_pool
from responders.source import CachingSource, IssuerIndex, StoreSource
from responders.store import ResponseStore
from responders.store.sqlite import SQLiteResponseStore
from revocation.coordination.holders import lease_holder
from revocation.coordination.leases import LeaseKeeper
from revocation.errors import PCAError
from revocation.eventlog import RecordedEvent
from revocation.storage.postgres.db import RESPONSES_CHANNEL
from revocation.waiting import wait_event

log = logging.getLogger("pca.responder")

ISSUER_REFRESH_SECONDS = 10.0  # a responder in its own process learns of new issuers this often
PROGRESS_BACKLOG = 10_000  # progress reports kept while the store is unreachable
REPORT_GATHER_SECONDS = 0.05


def response_store(rt: Runtime) -> ResponseStore:
    """The runtime's one response store (roles in a process share it, so in-process writes notify at once)."""
    store = rt.response_store
    if store is None:
        if rt.db is not None:
            store = SQLiteResponseStore(rt.db, wall=rt.clock.time)
        else:
            from responders.store.postgres import PostgresResponseStore

            store = PostgresResponseStore(rt.pool, wall=rt.clock.time)
        rt.response_store = store
    return store


async def start_presigner(rt: Runtime) -> None:
    cfg = rt.config.ocsp
    workers = cfg.workers or os.cpu_count() or 1
    pool = signing_pool(workers)
    rt.closers.append(lambda: stop_pool(pool))
    await start_workers(pool, workers)  # before the listeners: no revocation acknowledged waits for them
    store = response_store(rt)
    lease = LeaseKeeper(
        rt.coord,
        "presigner",
        ttl=rt.config.scale.lease_seconds,
        registry=rt.registry,
        wall=rt.clock.time,
        monotonic=rt.clock.monotonic,
    )
    presigner = PreSigner(
        rt.log,
        rt.view,
        store,
        rt.clock,
        pool,
        validity_seconds=cfg.validity_seconds,
        refresh_fraction=cfg.refresh_fraction,
        registry=rt.registry,
        parallelism=workers,
        guard=lease.check,
    )
    rt.on_log_change(presigner.wake)
    rt.tasks.append(lease.run(presigner.run))
    rt.tasks.append(report_standby(rt, lease, "pre-signer"))

    async def health() -> dict[str, Any]:
        head = await rt.log.head()
        applied = await store.position(CONSUMER)
        # A problem (503) while no process pre-signs: revocations would be answered "good".
        return {**await lease.health("pre-signs"), "log_head": head, "applied": applied, "lag_events": head - applied}

    rt.health["presigner"] = health
    export_log_position(rt, "presigner", lambda: store.position(CONSUMER))
    export_response_freshness(rt, store.earliest)
    await start_signer_expiry(rt)


def responder_id(rt: Runtime) -> str:
    """This responder's name in heartbeats: ``PCA_RESPONDER_ID`` (made unique per worker process), else
    ``host:pid:start@machine`` as a lease holder is named, so that a process of the same machine can tell
    at once that this one has ended (``holders.holder_is_dead``)."""
    given = rt.responder_id or os.environ.get("PCA_RESPONDER_ID")
    if not given:
        return lease_holder()
    if os.environ.get("PCA_RESPONDER_WORKERS", "1") != "1":
        return f"{given}/{os.getpid()}"  # granian workers: each has its own cache, so each reports
    return given


async def start_responder(rt: Runtime) -> None:
    cfg = rt.config.ocsp
    store = response_store(rt)
    cache = CachingSource(
        StoreSource(store),
        store,
        cfg.cache_size,
        poll_interval=cfg.poll_interval,
        clock=rt.clock.time,
        monotonic=rt.clock.monotonic,
    )
    if isinstance(store, SQLiteResponseStore):
        store.listeners.append(cache.notify)  # in-process writes reach the cache at once
    rt.subscribe(RESPONSES_CHANNEL, cache.notify)  # other processes' writes, through NOTIFY (PostgreSQL)
    index = IssuerIndex()
    known: set[str] = set()

    async def load_issuers() -> None:
        for issuer in await rt.view.issuers():
            if issuer.issuer_id not in known:
                index.add(issuer.issuer_id, issuer.cert)
                known.add(issuer.issuer_id)

    await load_issuers()

    def added_here(events: list[RecordedEvent]) -> None:
        for rec in events:
            if rec.type == "IssuerAdded":
                cert = x509.load_der_x509_certificate(bytes.fromhex(rec.payload["cert_der_hex"]))
                index.add(rec.payload["issuer_id"], cert)
                known.add(rec.payload["issuer_id"])

    rt.on_commit(added_here)

    async def refresh_issuers() -> None:
        while True:
            await asyncio.sleep(ISSUER_REFRESH_SECONDS)
            try:
                await load_issuers()
            except PCAError as exc:
                log.warning("cannot refresh issuers: %s", exc)

    app = OCSPApp(cache, index, rt.registry, prefix="/ocsp", clock=rt.clock.time)
    rt.public_apps.append(("/ocsp", app))
    rt.tasks.append(cache.follow())
    rt.tasks.append(refresh_issuers())
    rt.tasks.append(_heartbeat(rt, cache, responder_id(rt)))
    rt.registry.register(CacheCounters(cache))
    Gauge("ocsp_cache_entries", "Responses held in the responder cache", registry=rt.registry).set_function(
        lambda: len(cache)
    )

    async def health() -> dict[str, Any]:
        age = rt.clock.monotonic() - cache.last_sync if cache.last_sync else None
        report: dict[str, Any] = {
            "responder_id": responder_id(rt),
            "cached_responses": len(cache),
            "applied_change": cache.position,
            "seconds_since_sync": None if age is None else round(age, 3),
            "cache_hits": cache.hits,
            "cache_misses": cache.misses,
        }
        try:
            last_change = await store.last_change()
        except PCAError as exc:
            report["problem"] = f"response store unreachable: {exc}; answering from the cache"
        else:
            report["last_change"] = last_change
            report["lag_changes"] = max(0, last_change - cache.position)
        return report

    rt.health["responder"] = health


async def _heartbeat(rt: Runtime, cache: CachingSource, rid: str) -> None:
    """Report progress (each poll that applied changes, with its time) and a heartbeat to the store.

    Progress is written as soon as it happens, so the tracker sees when each change reached
    this responder; reports made while the store is unreachable are kept (bounded) and sent later.
    """
    url = rt.responder_url or os.environ.get("PCA_RESPONDER_URL") or rt.config.ocsp_url
    started = rt.clock.time()
    backlog: collections.deque[tuple[int, float]] = collections.deque(maxlen=PROGRESS_BACKLOG)
    wake = asyncio.Event()

    def applied(position: int, at: float) -> None:
        backlog.append((position, at))
        wake.set()

    cache.on_applied = applied
    interval = rt.config.scale.heartbeat_seconds
    # A responder counts (heartbeats, and has applied a change) only once it answers requests: a
    # restarted one loads its cache before its listener is up, and a client cannot see that yet.
    if rt.serving is not None:
        await rt.serving.wait()
    since = rt.clock.time()
    backlog = collections.deque(((pos, max(at, since)) for pos, at in backlog), maxlen=PROGRESS_BACKLOG)
    while True:
        wake.clear()
        progress = list(backlog)
        try:
            # Every report keeps its own time, so batching them costs the tracker no precision.
            await rt.coord.report(rid, url, progress, cache.position, started, rt.clock.time())
        except PCAError as exc:
            log.warning("cannot report to the store (%s); retrying", exc)
        else:
            sent = progress[-1][0] if progress else -1
            while backlog and backlog[0][0] <= sent:  # positions only grow
                backlog.popleft()
        # A short pause gathers a burst of polls into one write (on SQLite, a turn of the writer
        # that revocations wait for).
        await asyncio.sleep(REPORT_GATHER_SECONDS)
        await wait_event(wake, interval)
