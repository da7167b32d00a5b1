"""Entry points that start the pre-signer and the responder roles in a runtime."""

from __future__ import annotations

import os
import time
from typing import Any

from cryptography import x509
from prometheus_client import Gauge

from responders.app import OCSPApp
from responders.presigner import CONSUMER, PreSigner, signing_pool
from responders.source import CachingSource, IssuerIndex, StoreSource
from responders.store import SQLiteResponseStore
from revocation.eventlog import RecordedEvent
from revocation.runtime import Runtime


async def start_presigner(rt: Runtime) -> None:
    cfg = rt.config.ocsp
    workers = cfg.workers or os.cpu_count() or 1
    pool = signing_pool(workers)
    rt.closers.append(lambda: pool.shutdown(wait=False, cancel_futures=True))
    store = SQLiteResponseStore(rt.db)
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
    )
    rt.on_commit(lambda _events: presigner.wake())
    rt.tasks.append(presigner.run())

    async def health() -> dict[str, Any]:
        head = await rt.log.head()
        applied = await store.position(CONSUMER)
        return {"log_head": head, "applied": applied, "lag_events": head - applied}

    rt.health["presigner"] = health


async def start_responder(rt: Runtime) -> None:
    cfg = rt.config.ocsp
    store = SQLiteResponseStore(rt.db)
    cache = CachingSource(StoreSource(store), store, cfg.cache_size, poll_interval=cfg.poll_interval)
    store.listeners.append(cache.notify)  # in-process writes reach the cache at once
    index = IssuerIndex()
    for issuer in await rt.view.issuers():
        index.add(issuer.issuer_id, issuer.cert)

    def refresh_issuers(events: list[RecordedEvent]) -> None:
        for rec in events:
            if rec.type == "IssuerAdded":
                cert = x509.load_der_x509_certificate(bytes.fromhex(rec.payload["cert_der_hex"]))
                index.add(rec.payload["issuer_id"], cert)

    rt.on_commit(refresh_issuers)
    app = OCSPApp(cache, index, rt.registry, prefix="/ocsp")
    rt.public_apps.append(("/ocsp", app))
    rt.tasks.append(cache.follow())
    Gauge("ocsp_cache_hits", "Responder cache hits since start", registry=rt.registry).set_function(lambda: cache.hits)
    Gauge("ocsp_cache_misses", "Responder cache misses since start", registry=rt.registry).set_function(
        lambda: cache.misses
    )
    Gauge("ocsp_cache_entries", "Responses held in the responder cache", registry=rt.registry).set_function(
        lambda: len(cache)
    )

    async def health() -> dict[str, Any]:
        last_change = await store.last_change()
        age = time.monotonic() - cache.last_sync if cache.last_sync else None
        return {
            "cached_responses": len(cache),
            "applied_change": cache.position,
            "lag_changes": last_change - cache.position,
            "seconds_since_sync": None if age is None else round(age, 3),
            "cache_hits": cache.hits,
            "cache_misses": cache.misses,
        }

    rt.health["responder"] = health
