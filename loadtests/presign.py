"""Pre-signing: time to sign responses for N certificates from an empty store.

    python -m loadtests.presign --count 10000 --workers 1 2

Prints JSON: responses/s with 1 and 2 worker processes, and the rate of the bare
``private_key.sign()`` on one core for comparison.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time

from prometheus_client import CollectorRegistry

from loadtests.common import make_ca, open_bench_runtime, populate
from responders.presigner import PreSigner, signing_pool
from responders.store import SQLiteResponseStore
from revocation.config import Config
from revocation.keys import open_key


async def presign_once(cfg: Config, count: int, workers: int) -> dict[str, float]:
    rt = open_bench_runtime(cfg)
    pool = signing_pool(workers)
    try:
        await populate(rt, count)
        store = SQLiteResponseStore(rt.db)
        presigner = PreSigner(
            rt.log,
            rt.view,
            store,
            rt.clock,
            pool,
            validity_seconds=86400,
            refresh_fraction=0.5,
            registry=CollectorRegistry(),
            parallelism=workers,
        )
        # Warm the workers (process start, key load) outside the timing.
        await asyncio.gather(*(asyncio.get_running_loop().run_in_executor(pool, os.getpid) for _ in range(workers)))
        started = time.perf_counter()
        await presigner.catch_up()
        seconds = time.perf_counter() - started
        stored = await store.last_change()
    finally:
        pool.shutdown()
        rt.close()
    return {
        "workers": workers,
        "certificates": count,
        "stored": stored,
        "seconds": round(seconds, 3),
        "responses_per_s": round(count / seconds),
    }


def raw_sign_rate(seconds: float = 2.0) -> float:
    """``private_key.sign()`` alone, one core, over the same size of input."""
    cfg = make_ca()
    rt = open_bench_runtime(cfg)
    try:
        issuers = asyncio.run(rt.view.issuers())
    finally:
        rt.close()
    ref = next(i.signer_key_ref for i in issuers if i.signer_key_ref is not None)
    assert ref is not None
    key = open_key(ref)
    data = os.urandom(300)
    n = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        for _ in range(200):
            key.sign(data)
        n += 200
    return n / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    results = [asyncio.run(presign_once(make_ca(), args.count, w)) for w in args.workers]
    print(json.dumps({"scenario": "presign", "runs": results, "raw_sign_per_s_one_core": round(raw_sign_rate())}))


if __name__ == "__main__":
    main()
