"""The roles a scenario drives in-process, built once over a CA's embedded runtime (``open_bench_runtime``).

- the CRL publisher: its storer writes into the CA's CRL directory, its settings are the CA's
  ``[crl]`` ones, its metrics go to a registry of its own;
- the OCSP pre-signer: it signs in a pool of signing processes, warmed (forked, modules imported)
  before any timing starts, and stores into the CA's SQLite response store.

A scenario that profiles a role wraps methods of the store or storer before handing it in.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator
from concurrent.futures import Executor

from prometheus_client import CollectorRegistry

from pca.runtime import Runtime
from publishers.crl_writer import Published
from publishers.objectstore import DirectoryStore
from publishers.publisher import Publisher
from publishers.storer import Storer
from responders.presigner import PreSigner, signing_pool
from responders.store.sqlite import SQLiteResponseStore
from revocation.projection import IssuerRecord

# CRL numbers come from the clock in milliseconds: publishing again sooner would reuse one.
CRL_NUMBER_TICK = 0.01


def bench_storer(rt: Runtime) -> Storer:
    """The storer into the CA's CRL directory (parse back, check against the log, write)."""
    return Storer(DirectoryStore(rt.config.crl_dir), rt.view)


def bench_publisher(rt: Runtime, storer: Storer | None = None) -> Publisher:
    """A full-CRL publisher with the CA's ``[crl]`` settings over ``storer`` (``bench_storer`` by default)."""
    crl = rt.config.crl
    return Publisher(
        rt.view,
        storer or bench_storer(rt),
        rt.clock,
        CollectorRegistry(),
        validity_seconds=crl.validity_seconds,
        interval_seconds=crl.interval_seconds,
        after_revocation_seconds=crl.after_revocation_seconds,
    )


async def publish_rounds(rt: Runtime, publisher: Publisher, runs: int, issuer_id: str) -> AsyncIterator[Published]:
    """``publisher.publish`` the issuer's full CRL ``runs`` times on the same log, each with a new CRL number."""
    issuer: IssuerRecord = next(i for i in await rt.view.issuers() if i.issuer_id == issuer_id)
    for _ in range(runs):
        yield await publisher.publish(issuer)
        await asyncio.sleep(CRL_NUMBER_TICK)


def bench_presigner(
    rt: Runtime, executor: Executor, workers: int, store: SQLiteResponseStore | None = None
) -> PreSigner:
    """A pre-signer over the log with the CA's ``[ocsp]`` settings, signing ``workers`` batches at a time in
    ``executor`` and storing into ``store`` (the CA's SQLite response store by default)."""
    if store is None:
        if rt.db is None:
            raise ValueError("the bench pre-signer needs the embedded runtime (SQLite), not PostgreSQL")
        store = SQLiteResponseStore(rt.db)
    return PreSigner(
        rt.log,
        rt.view,
        store,
        rt.clock,
        executor,
        validity_seconds=rt.config.ocsp.validity_seconds,
        refresh_fraction=rt.config.ocsp.refresh_fraction,
        registry=CollectorRegistry(),
        parallelism=workers,
    )


@contextlib.asynccontextmanager
async def warm_signing_pool(workers: int, warm_tasks: int) -> AsyncIterator[tuple[Executor, set[int]]]:
    """A pool of ``workers`` signing processes, each started and its signing modules imported by
    ``warm_tasks`` small tasks (at least one per worker), and the pids that ran them; shut down on exit."""
    pool = signing_pool(workers)
    try:
        loop = asyncio.get_running_loop()
        pids = set(await asyncio.gather(*(loop.run_in_executor(pool, _warm_worker) for _ in range(warm_tasks))))
        yield pool, pids
    finally:
        pool.shutdown()


def _warm_worker() -> int:
    import responders.presigner  # noqa: F401 - import what signing needs, outside the timing

    time.sleep(0.05)  # so that every worker gets one
    return os.getpid()
