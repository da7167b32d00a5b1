"""Full CRLs made in a child process, so that a large shard never slows the process that serves.

A 1,000,000-entry shard's full CRL is ~13 s of Python work (reading the rows, building the
entries, building and signing, parsing the CRL back and checking it against the log). In threads
of the serving process it competes for the interpreter lock with the event loop: measured during a
revocation burst on a 1M-entry CA, the admin API's p99 went from 25-50 ms to 2.5-3 s. In a child
process of its own it costs the server nothing but a core.

The child (one, started on first use with ``forkserver``, so it inherits no socket, thread or event
loop) opens its own runtime, object store and ``CRLWriter`` from the same configuration and runs the
very same path (``CRLWriter.publish``), storer checks included. It is told the last CRL number the
parent used, and returns the ``Published`` record; the parent adopts it (numbering, the base of its
deltas, metrics). Deltas stay in the parent: they read only what changed.

If the child dies (killed, out of memory), the attempt fails with a ``StorageError`` like a store
outage, is retried by the publisher, and a new child is started.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from prometheus_client import CollectorRegistry

from pca.config import Config
from pca.roles.crl_store import open_store
from publishers.crl_writer import CRLWriter, Published
from publishers.storer import Storer
from responders.presigner import stop_pool
from revocation.errors import StorageError
from revocation.lifetime import exit_with

# --- in the child -------------------------------------------------------------------------------


class _Child:
    """The child's runtime, store and writer, opened on its first job and kept for the next ones."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.loop = asyncio.new_event_loop()
        self.writer: CRLWriter | None = None

    async def _writer(self) -> CRLWriter:
        if self.writer is None:
            from pca.runtime import connect_runtime
            from revocation.clock import SystemClock

            cfg = self.config
            rt = await connect_runtime(cfg, SystemClock(), migrate=False)
            storer = Storer(
                open_store(cfg),
                rt.view,
                layout=cfg.crl_layout,
                expired_grace_seconds=cfg.crl.expired_grace_seconds,
                log_check=rt.log.projection_drops,  # a full CRL answers to the log, not only the projection
            )
            registry = CollectorRegistry()  # the parent counts what the child publishes
            self.writer = CRLWriter(rt.view, storer, rt.clock, registry, validity_seconds=cfg.crl.validity_seconds)
            self.view = rt.view
        return self.writer

    async def publish(self, issuer_id: str, shard: int, last_number: int) -> Published:
        writer = await self._writer()
        issuer = next((i for i in await self.view.issuers() if i.issuer_id == issuer_id), None)
        if issuer is None:
            raise StorageError(f"the CRL worker does not find issuer {issuer_id}")
        state = writer.state(issuer_id, shard)
        state.last_number = max(state.last_number, last_number)
        return await writer.publish(issuer, shard)


_child: _Child | None = None


def _init_child(config: Config, environment: dict[str, str], server: int) -> None:
    global _child
    exit_with(server)  # a killed server leaves no CRL writer behind (its parent is the forkserver)
    # The forkserver was started with the environment of its first use (perhaps before a PIN or an
    # HSM configuration was set); take the pool creator's, as the pre-signer's workers do.
    os.environ.clear()
    os.environ.update(environment)
    _child = _Child(config)


def _publish_in_child(issuer_id: str, shard: int, last_number: int) -> Published:
    assert _child is not None, "the CRL worker was not initialised"
    return _child.loop.run_until_complete(_child.publish(issuer_id, shard, last_number))


# --- in the parent ------------------------------------------------------------------------------


class CRLWorker:
    """The parent's handle: ``await worker(issuer_id, shard, last_number)`` publishes a full CRL."""

    def __init__(self, config: Config) -> None:
        self._config = config
        self._pool: ProcessPoolExecutor | None = None

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                max_workers=1,
                mp_context=multiprocessing.get_context("forkserver"),
                initializer=_init_child,
                initargs=(self._config, dict(os.environ), os.getpid()),
            )
        return self._pool

    async def __call__(self, issuer_id: str, shard: int, last_number: int) -> Published:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor(), _publish_in_child, issuer_id, shard, last_number)
        except BrokenProcessPool as exc:
            self.close()  # the next attempt starts a new child
            raise StorageError(f"the CRL worker process died while publishing {issuer_id} shard {shard}") from exc

    def close(self) -> None:
        if self._pool is not None:
            stop_pool(self._pool)
            self._pool = None
