"""Memory: responder RSS with 100,000 and 1,000,000 cached responses; bytes per response.

    python -m loadtests.memory [--smoke] [--runs 2] [--sizes 100000 1000000]

The response store is filled with real signed responses (the pre-signer's worker
function ``sign_batch`` in 2 processes; 1% revoked), written with
``SQLiteResponseStore.put``; no log is needed, since a responder reads only the store.
Then, for each size and run, a fresh subprocess builds what a responder process
builds, a ``CachingSource`` over ``StoreSource(SQLiteResponseStore)``, reads its RSS
(/proc/self/status VmRSS) once the store is open, fills the cache through the change
feed (``sync_once`` in a loop) up to the size, collects garbage and reads RSS again.
Bytes per cached response = (after - before) / responses cached.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization

from loadtests.common import BASE_SERIAL, ISSUER, emit, issuer_record, log, make_ca, median, parser, runs_of, scratch
from pca.config import Config, OCSPConfig
from responders.presigner import sign_batch, signing_pool
from responders.store import StoredResponse
from responders.store.sqlite import SQLiteResponseStore
from revocation.projection import IssuerRecord
from revocation.storage.sqlite.db import SQLiteDatabase

BATCH = 1000


def vm_rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


async def fill_store(cfg: Config, issuer: IssuerRecord, count: int, pool: ProcessPoolExecutor) -> dict[str, Any]:
    """Sign ``count`` responses (every 100th revoked) and store them; returns size facts."""
    if issuer.signer_cert is None or issuer.signer_key_ref is None:
        raise RuntimeError("the issuing CA has no delegated OCSP signer")
    issuer_der = issuer.cert.public_bytes(serialization.Encoding.DER)
    signer_der = issuer.signer_cert.public_bytes(serialization.Encoding.DER)
    key_ref = issuer.signer_key_ref.to_dict()
    this_update = int(time.time())
    next_update = this_update + 86400
    db = SQLiteDatabase(cfg.database)
    store = SQLiteResponseStore(db)
    loop = asyncio.get_running_loop()
    total_der = 0
    started = time.perf_counter()
    try:
        for start in range(0, count, BATCH * 10):
            chunks = []
            for first in range(start, min(start + BATCH * 10, count), BATCH):
                items = [
                    (BASE_SERIAL + i, this_update - 60, 1, None)
                    if i % 100 == 0
                    else (BASE_SERIAL + i, None, None, None)
                    for i in range(first, min(first + BATCH, count))
                ]
                chunks.append(
                    (
                        items,
                        loop.run_in_executor(
                            pool, sign_batch, issuer_der, signer_der, key_ref, items, this_update, next_update
                        ),
                    )
                )
            responses = []
            for items, future in chunks:
                for (serial, revoked_at, _, _), der in zip(items, await future, strict=True):
                    status = "good" if revoked_at is None else "revoked"
                    responses.append(
                        StoredResponse(ISSUER, serial, der, status, this_update, next_update, next_update - 3600, 0)
                    )
                    total_der += len(der)
            await store.put(responses, "bench-memory", 0, "1970-01-01T00:00:00Z")
    finally:
        db.close()
    return {
        "responses": count,
        "mean_der_bytes": round(total_der / count, 1),
        "fill_seconds": time.perf_counter() - started,
    }


async def child(database: Path, count: int) -> dict[str, Any]:
    """What a responder process holds: a CachingSource over the store, filled by the change feed."""
    from responders.source import CachingSource, StoreSource

    db = SQLiteDatabase(database)
    store = SQLiteResponseStore(db)
    cache = CachingSource(StoreSource(store), store, max(count, OCSPConfig().cache_size))
    await store.last_change()  # the reader thread and its connection exist before the baseline
    gc.collect()
    before = vm_rss_kb()
    while len(cache) < count and await cache.sync_once() > 0:
        pass
    gc.collect()
    after = vm_rss_kb()
    db.close()
    return {"cached": len(cache), "rss_before_kb": before, "rss_after_kb": after}


def measure(database: Path, count: int) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "loadtests.memory", "--child", str(database), str(count)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"memory child failed:\n{proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(proc.stdout)
    result["bytes_per_response"] = round((result["rss_after_kb"] - result["rss_before_kb"]) * 1024 / result["cached"])
    return result


def run(*, smoke: bool, runs: int, sizes: list[int]) -> dict[str, Any]:
    if smoke:
        sizes = [2000, 10_000]
    with scratch("memory") as work:
        cfg = make_ca(work)
        log(f"memory: signing and storing {max(sizes)} responses")
        pool = signing_pool(2)
        try:
            facts = asyncio.run(fill_store(cfg, issuer_record(cfg), max(sizes), pool))
        finally:
            pool.shutdown()
        log(f"  stored in {facts['fill_seconds']:.0f} s, mean response {facts['mean_der_bytes']} bytes")
        measured: dict[int, list[dict[str, Any]]] = {n: [] for n in sizes}
        for _ in range(runs):
            for n in sizes:
                r = measure(cfg.database, n)
                measured[n].append(r)
                log(f"  {n} cached: {r['bytes_per_response']} bytes per response (RSS {r['rss_after_kb']} kB)")
    rows = [
        {
            "responses": n,
            "rss_before_mb": round(median([r["rss_before_kb"] for r in rs]) / 1024, 1),
            "rss_after_mb": round(median([r["rss_after_kb"] for r in rs]) / 1024, 1),
            "bytes_per_response": round(median([r["bytes_per_response"] for r in rs])),
            "runs": [r["bytes_per_response"] for r in rs],
        }
        for n, rs in measured.items()
    ]
    return {
        "scenario": "memory",
        "params": {"sizes": sizes, "runs": runs, "mean_der_bytes": facts["mean_der_bytes"]},
        "results": rows,
    }


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        print(json.dumps(asyncio.run(child(Path(sys.argv[2]), int(sys.argv[3])))))
        return
    p: argparse.ArgumentParser = parser(__doc__)
    p.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    args = p.parse_args()
    emit(run(smoke=args.smoke, runs=runs_of(args), sizes=args.sizes), args.json_out)


if __name__ == "__main__":
    main()
