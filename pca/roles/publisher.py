"""Entry point of the publisher role, the CRL object store it writes to, and the HTTP app serving CRLs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.types import Receive, Scope, Send

from pca.config import Config
from pca.runtime import Runtime
from publishers.objectstore import DirectoryStore, ObjectStore
from publishers.publisher import Published, Publisher
from publishers.s3store import S3Store
from revocation.coordination import CRLPublication
from revocation.coordination.leases import LeaseKeeper
from revocation.errors import PCAError, StorageError

log = logging.getLogger("pca.crl")


def open_store(config: Config) -> ObjectStore:
    """The object store ``[crl.store]`` names: the directory ``paths.crl_dir`` (default) or an S3 bucket."""
    cfg = config.crl.store
    if cfg.type == "directory":
        return DirectoryStore(config.crl_dir)
    return S3Store(
        cfg.bucket,
        prefix=cfg.prefix,
        endpoint_url=cfg.endpoint_url or None,
        region=cfg.region or None,
        addressing_style=cfg.addressing_style,
        profile=cfg.profile or None,
    )


class CRLApp:
    """``GET /crl/{key}``: every CRL object (``{issuer}.crl``, shards, deltas, numbered) from the store.

    With S3, CRL URLs in certificates normally point at a CDN in front of the
    bucket (``crl.base_url``); this app still answers from the bucket.
    """

    def __init__(self, store: ObjectStore, prefix: str = "/crl") -> None:
        self._store = store
        self._prefix = prefix.rstrip("/") + "/"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] not in ("GET", "HEAD"):
            return await _plain(send, 405, b"method not allowed\n", [(b"allow", b"GET, HEAD")])
        key = scope["path"][len(self._prefix) :]
        try:
            obj = await self._store.get(key) if key.endswith(".crl") else None
        except ValueError:  # a key with "..", an absolute path, an empty or overlong segment
            obj = None
        except StorageError as exc:
            log.error("cannot read CRL %r: %s", key[:100], exc)
            return await _plain(send, 503, b"CRL store unavailable\n")
        if obj is None:
            return await _plain(send, 404, b"no such CRL\n")
        headers = [
            (b"content-type", obj.content_type.encode()),
            (b"etag", obj.etag.encode()),
            (b"last-modified", obj.last_modified.encode()),
        ]
        if obj.cache_control:
            headers.append((b"cache-control", obj.cache_control.encode()))
        if obj.expires:
            headers.append((b"expires", obj.expires.encode()))
        for name, value in scope["headers"]:
            if name == b"if-none-match" and value == obj.etag.encode():
                # A 304 repeats the validators and caching headers only, not the CRL's type or length.
                validators = [h for h in headers if h[0] != b"content-type"]
                await send({"type": "http.response.start", "status": 304, "headers": validators})
                await send({"type": "http.response.body", "body": b""})
                return
        body = b"" if scope["method"] == "HEAD" else obj.data
        headers.append((b"content-length", b"%d" % len(obj.data)))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})


async def _plain(send: Send, status: int, body: bytes, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    headers = [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(body)), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def build_publisher(
    rt: Runtime,
    store: ObjectStore,
    *,
    guard: Callable[[], None] | None = None,
    on_published: Callable[[list[Published]], Awaitable[None]] | None = None,
) -> Publisher:
    cfg = rt.config.crl
    return Publisher(
        rt.view,
        store,
        rt.clock,
        rt.registry,
        validity_seconds=cfg.validity_seconds,
        interval_seconds=cfg.interval_seconds,
        after_revocation_seconds=cfg.after_revocation_seconds,
        delta_interval_seconds=cfg.delta_interval_seconds,
        layout=rt.config.crl_layout,
        expired_grace_seconds=cfg.expired_grace_seconds,
        guard=guard,
        on_published=on_published,
    )


_CHANGES = ("CertificateRevoked", "CertificateHoldReleased")
FOLLOW_SECONDS = 0.5  # how often the publisher looks for revocations committed by other processes


async def start_publisher(rt: Runtime) -> None:
    store = open_store(rt.config)
    lease = LeaseKeeper(
        rt.coord,
        "publisher",
        ttl=rt.config.scale.lease_seconds,
        registry=rt.registry,
        wall=rt.clock.time,
        monotonic=rt.clock.monotonic,
    )

    async def record(done: list[Published]) -> None:
        for p in done:
            publication = CRLPublication(p.issuer_id, p.shard, p.kind, p.number, p.log_position, p.published_at)
            try:
                await rt.coord.record_crl_publication(publication)
            except PCAError as exc:  # the tracker's figure is late or missing; the CRL is out
                log.warning("cannot record the publication of %s CRL %d: %s", p.label, p.number, exc)

    publisher = build_publisher(rt, store, guard=lease.check, on_published=record)
    wake = asyncio.Event()
    rt.on_log_change(wake.set)

    async def follow_log() -> None:
        """Revocations committed anywhere (this process, another, another host) trigger a delta."""
        position = await rt.log.head()
        while True:
            try:
                while batch := await rt.log.read_index(position, 10_000):
                    position = batch[-1][0]
                    if any(type_ in _CHANGES for _, _, type_ in batch):
                        publisher.revocation_happened()
            except PCAError as exc:
                log.warning("cannot follow the event log: %s", exc)
            wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), FOLLOW_SECONDS)

    async def work() -> None:
        # Revocations committed while this publisher was not the active one (before a takeover, or
        # while its lease had lapsed) are not in the log it follows from here: publish once anyway.
        publisher.revocation_happened()
        follower = asyncio.create_task(follow_log())
        try:
            await publisher.run()
        finally:
            follower.cancel()
            await asyncio.gather(follower, return_exceptions=True)

    async def run() -> None:
        try:
            await lease.run(work)
        finally:
            if isinstance(store, S3Store):
                await store.close()

    rt.tasks.append(run())

    async def health() -> dict[str, Any]:
        head = await rt.log.head()
        report: dict[str, Any] = {
            "lease": "active" if lease.active else "standby",
            "holder": lease.holder,
            "published_position": publisher.published_position,
            "log_head": head,
        }
        if publisher.last_error:
            report["problem"] = publisher.last_error
        return report

    rt.health["publisher"] = health


async def start_crl_server(rt: Runtime) -> None:
    """Serve the CRL store's objects on the public listener."""
    rt.public_apps.append(("/crl", CRLApp(open_store(rt.config))))
