"""CRL building: build and sign full CRLs of 100,000 and 1,000,000 revoked entries.

    python -m loadtests.crl_build [--smoke] [--runs 2] [--sizes 100000 1000000] [--publish-count 100000]

- bare: ``publishers.crl_der.build_crl`` over a prepared entry list (DER assembly and one
  signature; the list itself is not timed);
- publish: the publisher's whole path, ``Publisher.publish``, for 100,000 revoked
  certificates in the log: read the projection, build, sign, parse back and verify
  against the log, store in the directory object store;
- peer: ``openssl ca -gencrl`` (whole command: reads the index, signs, writes PEM) over
  an OpenSSL index file with the same serials, revocation times and reasons, signed
  with the same issuing CA key (ECDSA P-256, SHA-256), AKI and CRL number included.

Runs are interleaved: in each round every size is built by us and by openssl.
"""

from __future__ import annotations

import asyncio
import datetime
import time
from pathlib import Path
from typing import Any

from loadtests import peers
from loadtests.bench_roles import bench_publisher, publish_rounds
from loadtests.common import (
    BASE_SERIAL,
    ISSUER,
    build_template,
    emit,
    issuer_record,
    log,
    median,
    open_bench_runtime,
    parser,
    runs_of,
    scratch,
)
from pca.config import Config
from publishers.crl_der import CRLEntry, build_crl
from revocation.keys import open_key
from revocation.projection import IssuerRecord

KEY_COMPROMISE = 1


def entries_for(count: int, now: datetime.datetime) -> list[CRLEntry]:
    return [
        CRLEntry(BASE_SERIAL + i, now - datetime.timedelta(seconds=i % 86400), KEY_COMPROMISE) for i in range(count)
    ]


def bare_build(issuer: IssuerRecord, entries: list[CRLEntry], now: datetime.datetime) -> tuple[float, int]:
    assert issuer.key_ref is not None
    key = open_key(issuer.key_ref)
    started = time.perf_counter()
    der = build_crl(
        issuer.cert, key, entries, number=1000, this_update=now, next_update=now + datetime.timedelta(days=1)
    )
    return time.perf_counter() - started, len(der)


def write_peer_index(directory: Path, entries: list[CRLEntry], not_after: datetime.datetime) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    rows = ((e.serial, not_after, e.revoked_at, "keyCompromise") for e in entries)
    peers.write_index(directory / "index.txt", rows)


def publish_runs(cfg: Config, runs: int) -> list[dict[str, Any]]:
    """``Publisher.publish`` ``runs`` times on the same log (each a new CRL number)."""
    rt = open_bench_runtime(cfg)
    try:
        publisher = bench_publisher(rt)

        async def go() -> list[dict[str, Any]]:
            return [
                {"seconds": published.seconds, "bytes": published.size, "entries": published.entries}
                async for published in publish_rounds(rt, publisher, runs, ISSUER)
            ]

        return asyncio.run(go())
    finally:
        rt.close()


def run(*, smoke: bool, runs: int, sizes: list[int], publish_count: int) -> dict[str, Any]:
    if smoke:
        sizes, publish_count = [2000, 5000], 2000
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    with scratch("crl") as work:
        log(f"crl_build: recording {publish_count} revoked certificates for the publisher's path")
        # revoked_every=1 revokes all but the one really issued certificate: one more makes the count.
        template = build_template(work / "template", publish_count + 1, revoked_every=1)
        issuer = issuer_record(template.cfg)
        if issuer.key_ref is None:
            raise RuntimeError("no key for the issuing CA")
        ca_pem = peers.pem(work / "issuing-ca.pem", issuer.cert)
        lists = {n: entries_for(n, now) for n in sizes}
        for n, entries in lists.items():
            write_peer_index(work / f"openssl-{n}", entries, now + datetime.timedelta(days=90))
        ours: dict[int, list[tuple[float, int]]] = {n: [] for n in sizes}
        theirs: dict[int, list[tuple[float, int]]] = {n: [] for n in sizes}
        for _ in range(runs):
            for n in sizes:
                ours[n].append(bare_build(issuer, lists[n], now))
                theirs[n].append(peers.openssl_gencrl(work / f"openssl-{n}", ca_pem, Path(issuer.key_ref.path)))
                log(f"  crl {n}: build_crl {ours[n][-1][0]:.2f} s, openssl ca -gencrl {theirs[n][-1][0]:.2f} s")
        publish = publish_runs(template.cfg, max(2, runs))
        log(f"  publish {publish_count}: {[round(p['seconds'], 2) for p in publish]} s")
    rows: list[dict[str, Any]] = []
    for n in sizes:
        ours_s, theirs_s = median([s for s, _ in ours[n]]), median([s for s, _ in theirs[n]])
        rows.append(
            {
                "entries": n,
                "build_crl_s": round(ours_s, 3),
                "build_crl_bytes": ours[n][0][1],
                "openssl_gencrl_s": round(theirs_s, 3),
                "openssl_bytes": theirs[n][0][1],
                "x_openssl_time": round(ours_s / theirs_s, 3),
                "build_runs": [round(s, 3) for s, _ in ours[n]],
                "openssl_runs": [round(s, 3) for s, _ in theirs[n]],
            }
        )
    publish_s = median([p["seconds"] for p in publish])
    peer = next((r for r in rows if r["entries"] == publish_count), None)
    return {
        "scenario": "crl_build",
        "params": {"sizes": sizes, "publish_entries": publish_count, "runs": runs},
        "results": rows,
        "publish": {
            "entries": publish[0]["entries"],
            "seconds": round(publish_s, 3),
            "bytes": publish[0]["bytes"],
            "x_openssl_time": round(publish_s / peer["openssl_gencrl_s"], 3) if peer else None,
            "runs": [round(p["seconds"], 3) for p in publish],
        },
    }


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    p.add_argument("--publish-count", type=int, default=100_000)
    args = p.parse_args()
    emit(run(smoke=args.smoke, runs=runs_of(args), sizes=args.sizes, publish_count=args.publish_count), args.json_out)


if __name__ == "__main__":
    main()
