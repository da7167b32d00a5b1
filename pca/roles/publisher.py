"""Entry points of the publisher and CRL-serving roles, and the CRL object store they share."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

from pca.metrics import export_log_position
from pca.roles.crl_store import open_store
from pca.roles.crl_worker import CRLWorker
from pca.roles.standby import report_standby
from pca.runtime import Runtime
from publishers.checkpointer import Checkpointer
from publishers.crl_writer import Offload
from publishers.http import CRLApp
from publishers.objectstore import ObjectStore
from publishers.publisher import Published, Publisher
from publishers.s3store import S3Store
from publishers.storer import Storer
from revocation import crl_layout
from revocation.coordination import CRLPublication
from revocation.coordination.leases import LeaseKeeper
from revocation.errors import PCAError
from revocation.issuer_summary import PcaURLs
from revocation.waiting import wait_event

log = logging.getLogger("pca.crl")


def build_publisher(
    rt: Runtime,
    store: ObjectStore,
    *,
    guard: Callable[[], None] | None = None,
    on_published: Callable[[list[Published]], Awaitable[None]] | None = None,
    offload: Offload | None = None,
    restore_also: Callable[[], Awaitable[object]] | None = None,
) -> Publisher:
    cfg = rt.config.crl
    storer = Storer(
        store,
        rt.view,
        layout=rt.config.crl_layout,
        expired_grace_seconds=cfg.expired_grace_seconds,
        log_check=rt.log.projection_drops,
    )
    return Publisher(
        rt.view,
        storer,
        rt.clock,
        rt.registry,
        validity_seconds=cfg.validity_seconds,
        interval_seconds=cfg.interval_seconds,
        after_revocation_seconds=cfg.after_revocation_seconds,
        delta_interval_seconds=cfg.delta_interval_seconds,
        full_after_revocation=cfg.full_after_revocation,
        guard=guard,
        on_published=on_published,
        offload=offload,
        restore_also=restore_also,
    )


_CHANGES = ("CertificateRevoked", "CertificateHoldReleased")
FOLLOW_SECONDS = 0.5  # how often the publisher looks for revocations committed by other processes
CHECKPOINT_POLL_SECONDS = 1.0  # how often the publisher looks whether an audit checkpoint is due


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

    # Full CRLs are made in a child process: a large shard's would otherwise slow every request this
    # process serves (pca.roles.crl_worker).
    worker = CRLWorker(rt.config)
    rt.closers.append(worker.close)
    checkpointer = Checkpointer(
        rt.log,
        rt.view,
        store,
        rt.clock,
        rt.registry,
        key_dir=rt.config.data_dir / "keys",
        key_algorithm=rt.config.key_algorithm,
        every_events=rt.config.audit.checkpoint_every_events,
        interval_seconds=rt.config.audit.checkpoint_interval_seconds,
        guard=lease.check,
    )

    publisher = build_publisher(
        rt, store, guard=lease.check, on_published=record, offload=worker, restore_also=checkpointer.restore_missing
    )
    wake = asyncio.Event()
    rt.on_log_change(wake.set)

    async def checkpoints() -> None:
        """Signed checkpoints of the log's head beside the CRLs (publishers.checkpointer)."""
        problem = ""
        while True:
            try:
                await checkpointer.tick()
                problem = ""
            except PCAError as exc:
                if str(exc) != problem:  # once per new problem, not every second
                    log.warning("cannot write an audit checkpoint: %s", exc)
                problem = str(exc)
            await asyncio.sleep(CHECKPOINT_POLL_SECONDS)

    async def follow_log() -> None:
        """Revocations committed anywhere (this process, another, another host) trigger a delta."""
        position = await rt.log.head()
        while True:
            try:
                while batch := await rt.log.read_index(position, 10_000):
                    position = batch[-1][0]
                    if any(type_ in _CHANGES for _, _, type_ in batch):
                        publisher.revocation_happened()
                    if any(type_ == "IssuerAdded" for _, _, type_ in batch):
                        publisher.issuers_changed()  # a new issuer (pca issuer add): its CRLs now
            except PCAError as exc:
                log.warning("cannot follow the event log: %s", exc)
            wake.clear()
            await wait_event(wake, FOLLOW_SECONDS)

    async def work() -> None:
        # Revocations committed while this publisher was not the active one (before a takeover, or
        # while its lease had lapsed) are not in the log it follows from here: publish once anyway.
        publisher.revocation_happened()
        follower = asyncio.create_task(follow_log())
        checkpointing = asyncio.create_task(checkpoints())
        try:
            await publisher.run()
        finally:
            follower.cancel()
            checkpointing.cancel()
            await asyncio.gather(follower, checkpointing, return_exceptions=True)

    async def run() -> None:
        try:
            await lease.run(work)
        finally:
            if isinstance(store, S3Store):
                await store.close()

    rt.tasks.append(run())
    rt.tasks.append(report_standby(rt, lease, "publisher"))

    async def health() -> dict[str, Any]:
        head = await rt.log.head()
        report: dict[str, Any] = {
            **await lease.health("publishes CRLs"),
            "published_position": publisher.published_position,
            "log_head": head,
        }
        if publisher.last_error:
            report["problem"] = publisher.last_error
        if checkpointer.last_error:
            report["audit_checkpoints"] = checkpointer.last_error
        return report

    rt.health["publisher"] = health

    async def position() -> int:
        return publisher.published_position

    export_log_position(rt, "publisher", position)


ALIAS_REFRESH_SECONDS = 10.0  # a listener in its own process learns of new external issuers this often


async def start_crl_server(rt: Runtime) -> None:
    """Serve the CRL store's objects on the public listener, and each external issuer's CRL at the
    path of its certificates' CRL DP when that URL is on this listener (``pca issuer add --crl-url``)."""
    store = open_store(rt.config)
    rt.public_apps.append(("/crl", CRLApp(store)))
    urls = PcaURLs(rt.config.ocsp_url, rt.config.crl_layout, rt.config.public_url)
    aliases: dict[str, str] = {}

    async def load_aliases() -> None:
        found = {}
        for issuer in await rt.view.issuers():
            if issuer.kind == "external" and issuer.key_ref is not None and urls.serves_path(issuer.crl_url):
                path = urlsplit(issuer.crl_url).path
                if not path.startswith("/crl/"):  # those the store serves under their own key
                    found[path] = crl_layout.full_key(issuer.issuer_id)
        aliases.clear()
        aliases.update(found)

    await load_aliases()
    wake = asyncio.Event()
    rt.on_log_change(wake.set)

    async def refresh() -> None:
        while True:
            wake.clear()
            await wait_event(wake, ALIAS_REFRESH_SECONDS)
            try:
                await load_aliases()
            except PCAError as exc:
                log.warning("cannot refresh the external issuers' CRL paths: %s", exc)
            await asyncio.sleep(1.0)  # a burst of events costs one read a second at most

    rt.tasks.append(refresh())
    # The shortest prefix: every path no other app of the listener claims comes here.
    rt.public_apps.append(("", CRLApp(store, aliases=lambda: aliases)))
