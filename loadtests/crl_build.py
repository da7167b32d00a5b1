"""CRL building: build, check and store a full CRL of N revoked entries.

    python -m loadtests.crl_build --count 100000

Times both the bare DER assembly + signature (``build_crl``) and the publisher's
whole path (read the projection, build, parse back and verify, store).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import time

from prometheus_client import CollectorRegistry

from loadtests.common import make_ca, open_bench_runtime, populate
from publishers.crl_der import CRLEntry, build_crl
from publishers.objectstore import DirectoryStore
from publishers.publisher import Publisher
from revocation.config import Config
from revocation.keys import open_key


def bare_build(cfg: Config, count: int) -> dict[str, float]:
    rt = open_bench_runtime(cfg)
    try:
        issuer = next(i for i in asyncio.run(rt.view.issuers()) if i.issuer_id == "issuing-ca")
    finally:
        rt.close()
    assert issuer.key_ref is not None
    key = open_key(issuer.key_ref)
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    entries = [CRLEntry((1 << 120) + i, now - datetime.timedelta(seconds=i % 86400), 1) for i in range(count)]
    started = time.perf_counter()
    der = build_crl(issuer.cert, key, entries, number=1, this_update=now, next_update=now + datetime.timedelta(days=1))
    return {"entries": count, "seconds": round(time.perf_counter() - started, 3), "bytes": len(der)}


async def publish_path(cfg: Config, count: int) -> dict[str, float]:
    rt = open_bench_runtime(cfg)
    try:
        await populate(rt, count, revoked_every=1)
        publisher = Publisher(
            rt.view,
            DirectoryStore(cfg.crl_dir),
            rt.clock,
            CollectorRegistry(),
            validity_seconds=86400,
            interval_seconds=3600,
            after_revocation_seconds=1,
        )
        issuer = next(i for i in await rt.view.issuers() if i.issuer_id == "issuing-ca")
        started = time.perf_counter()
        published = await publisher.publish(issuer)
        seconds = time.perf_counter() - started
    finally:
        rt.close()
    return {"entries": published.entries, "seconds": round(seconds, 3), "bytes": published.size}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=100_000)
    args = parser.parse_args()
    cfg = make_ca()
    out = {
        "scenario": "crl_build",
        "build_and_sign": bare_build(cfg, args.count),
        "publish_path": asyncio.run(publish_path(cfg, args.count)),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
