"""Delta CRL cost: a delta with N changes over a large base, against the full CRL.

    python -m loadtests.crl_delta [--smoke] [--runs 3] [--base 1000000] [--changes 1000]

Records ``base`` revoked certificates in the log and publishes the full CRL (the
base), then revokes ``changes`` more and times, each ``runs`` times:

- delta: ``Publisher.publish_delta``, the whole path of a delta CRL (read the
  changes since the base from the projection, build, sign, parse back and check
  against the log, number read back from the store, conditional writes to the
  directory object store);
- full: ``Publisher.publish``, the same path for the full CRL of ``base +
  changes`` entries.

Also the projection reads alone: ``StatusView.crl_changes`` (what a delta reads)
and ``StatusView.crl_revoked`` (what a full CRL reads).
"""

from __future__ import annotations

import asyncio
import datetime
import time
from typing import Any

from prometheus_client import CollectorRegistry

from loadtests.common import BASE_SERIAL, ISSUER, emit, log, make_ca, median, open_bench_runtime, parser, scratch
from loadtests.common import populate as record_certificates
from pca.config import Config
from pca.runtime import Runtime
from publishers.objectstore import DirectoryStore
from publishers.publisher import Published, Publisher
from publishers.storer import Storer
from revocation.eventlog import NewEvent
from revocation.events import CertificateRevoked
from revocation.projection import IssuerRecord

BATCH = 5000


async def revoke(rt: Runtime, serials: list[int]) -> None:
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    for first in range(0, len(serials), BATCH):
        events = [
            NewEvent(CertificateRevoked(ISSUER, f"{serial:x}", "keyCompromise", now), 1, "bench", "crl_delta")
            for serial in serials[first : first + BATCH]
        ]
        await rt.log.append(events)


async def timed(label: str, runs: int, publish: Any) -> list[Published]:
    out = []
    for _ in range(runs):
        published = await publish()
        out.append(published)
        log(f"  {label}: {published.seconds:.3f} s, {published.entries} entries, {published.size} bytes")
    return out


async def read_seconds(what: Any, runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        await what()
        times.append(time.perf_counter() - started)
    return median(times)


async def measure(cfg: Config, base: int, changes: int, runs: int) -> dict[str, Any]:
    rt = open_bench_runtime(cfg)
    try:
        log(f"crl_delta: recording {base + changes} certificates, revoking {base}")
        started = time.perf_counter()
        # populate() records certificate i at BASE_SERIAL + i, none revoked; the sample it issues first is extra.
        await record_certificates(rt, base + changes + 1, revoked_every=0)
        await revoke(rt, [BASE_SERIAL + i for i in range(1, base + 1)])
        log(f"  recorded in {time.perf_counter() - started:.0f} s")
        publisher = Publisher(
            rt.view,
            Storer(DirectoryStore(cfg.crl_dir), rt.view, deltas=True),
            rt.clock,
            CollectorRegistry(),
            validity_seconds=86400,
            interval_seconds=21600,
            after_revocation_seconds=2,
            delta_interval_seconds=300,
        )
        issuer: IssuerRecord = next(i for i in await rt.view.issuers() if i.issuer_id == ISSUER)
        base_crl = await publisher.publish(issuer)
        log(f"  base: {base_crl.entries} entries, {base_crl.size} bytes, {base_crl.seconds:.3f} s")
        await revoke(rt, [BASE_SERIAL + i for i in range(base + 1, base + changes + 1)])

        async def delta() -> Published:
            published = await publisher.publish_delta(issuer)
            assert published is not None and published.entries == changes, published
            return published

        deltas = await timed("delta", runs, delta)
        changes_read = await read_seconds(lambda: rt.view.crl_changes(ISSUER, 0, base_crl.log_position), runs)
        revoked_read = await read_seconds(lambda: rt.view.crl_revoked(ISSUER, 0), runs)
        # Full CRLs last: each becomes the new base, after which a delta would be empty.
        fulls = await timed("full", runs, lambda: publisher.publish(issuer))
    finally:
        rt.close()
    delta_s = median([p.seconds for p in deltas])
    full_s = median([p.seconds for p in fulls])
    return {
        "delta": {
            "entries": deltas[0].entries,
            "bytes": deltas[0].size,
            "seconds": round(delta_s, 4),
            "runs": [round(p.seconds, 4) for p in deltas],
        },
        "full": {
            "entries": fulls[0].entries,
            "bytes": fulls[0].size,
            "seconds": round(full_s, 3),
            "runs": [round(p.seconds, 3) for p in fulls],
        },
        "delta_x_full_time": round(delta_s / full_s, 5),
        "projection_read_seconds": {"crl_changes": round(changes_read, 4), "crl_revoked": round(revoked_read, 3)},
    }


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--base", type=int, default=1_000_000, help="revoked certificates in the base CRL")
    p.add_argument("--changes", type=int, default=1000, help="revocations after the base")
    args = p.parse_args()
    base, changes = (5000, 100) if args.smoke else (args.base, args.changes)
    runs = args.runs or (1 if args.smoke else 3)
    with scratch("crl-delta") as work:
        cfg = make_ca(work)
        result = asyncio.run(measure(cfg, base, changes, runs))
    emit({"scenario": "crl_delta", "params": {"base": base, "changes": changes, "runs": runs}, **result}, args.json_out)


if __name__ == "__main__":
    main()
