"""Full CRLs that follow revocations, on a 1,000,000-entry CRL: what they cost the API and pre-signing.

    python -m loadtests.crl_follow [--smoke] [--runs 1] [--revoked 1000000] [--burst 6000] [--rate 100]

A CA whose issuing CA's one CRL shard lists ``--revoked`` certificates (all pre-signed), served by
the default ``pca serve`` (every role in one process: the publisher shares the host with the API and
the pre-signer, the worst case). A burst of ``--burst`` revocations through the admin API at
``--rate`` per second, twice on clones of the same CA, interleaved: with
``crl.full_after_revocation = true`` (the default: the shard's full CRL follows the revocations)
and ``false`` (deltas only, as before). For each mode:

- the API: each revocation's round trip (p50, p99, max);
- pre-signing: the tracker's ``presigned`` time of each revocation (commit -> the response store
  holds the revoked response) and ``ocsp_all_responders``;
- CRLs: from each revocation's commit, the first full CRL listing it and the first CRL of any kind
  (the publications the publisher recorded), and how many full CRLs were built during the burst and
  how long each took.

Timelines are read for a sample of the revocations (every revocation when they are few).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from pathlib import Path
from typing import Any

import httpx

from loadtests.common import (
    build_template,
    clone_ca,
    emit,
    log,
    median,
    open_bench_runtime,
    parser,
    percentile,
    runs_of,
    scratch,
    set_option,
    wait_until,
)
from loadtests.pcaserver import PcaServer
from pca.config import Config, load_config
from revocation.clock import parse_iso

ISSUER = "issuing-ca"
SAMPLE = 600  # timelines read per mode
TAIL_S = 120.0  # after the burst, wait this long at most for the last full CRL


def ms(values: list[float], pct: float) -> float:
    return round(percentile(sorted(values), pct) * 1000, 1) if values else float("nan")


def spread(values: list[float]) -> dict[str, float]:
    return {"p50": ms(values, 50), "p99": ms(values, 99), "max": ms(values, 100), "n": len(values)}


async def burst(server: PcaServer, serials: list[int], rate: float) -> tuple[list[float], float]:
    """Revoke ``serials`` at ``rate`` per second; the round trip of each, and the burst's seconds."""
    headers = {"authorization": f"Bearer {server.token}"}
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=server.admin_url, headers=headers, timeout=60, limits=limits) as admin:

        async def one(serial: int) -> float:
            sent = time.perf_counter()
            try:
                r = await admin.post(f"/v1/certificates/{serial:x}/revoke", json={"reason": "keyCompromise"})
            except (httpx.ReadError, httpx.RemoteProtocolError):
                # A kept-alive connection the server closed (idle timeout) as the request went out: the
                # revocation is idempotent, so send it again, and count the whole time.
                r = await admin.post(f"/v1/certificates/{serial:x}/revoke", json={"reason": "keyCompromise"})
            if not 200 <= r.status_code < 300:
                raise RuntimeError(f"revoke {serial:x}: HTTP {r.status_code} {r.text[:200]}")
            return time.perf_counter() - sent

        started = time.perf_counter()
        tasks = []
        for i, serial in enumerate(serials):
            await asyncio.sleep(max(0.0, started + i / rate - time.perf_counter()))
            tasks.append(asyncio.create_task(one(serial)))
        trips = await asyncio.gather(*tasks)
        return list(trips), time.perf_counter() - started


async def timelines(server: PcaServer, serials: list[int]) -> list[dict[str, Any]]:
    headers = {"authorization": f"Bearer {server.token}"}
    async with httpx.AsyncClient(base_url=server.admin_url, headers=headers, timeout=60) as admin:
        out = []
        for serial in serials:
            r = await admin.get(f"/v1/certificates/{serial:x}/propagation")
            r.raise_for_status()
            out.append(r.json())
        return out


def publications(cfg: Any) -> list[tuple[str, int, int, float]]:
    """(kind, number, log position, published_at) of the issuing CA's CRLs, as the publisher recorded them."""
    rt = open_bench_runtime(cfg)
    try:
        rows = asyncio.run(rt.coord.crl_publications(ISSUER, 0, 0))
        return [(p.kind, p.number, p.position, p.published_at) for p in rows]
    finally:
        rt.close()


def first_after(pubs: list[tuple[str, int, int, float]], seq: int, kinds: tuple[str, ...]) -> float | None:
    times = [at for kind, _, position, at in pubs if kind in kinds and position >= seq]
    return min(times) if times else None


def one_mode(template: Config, work: Path, label: str, follow: bool, serials: list[int], rate: float) -> dict[str, Any]:
    cfg = clone_ca(template, work / label)
    cfg = set_option(cfg, "crl", "full_after_revocation", "true" if follow else "false")
    with PcaServer(cfg, "uvicorn") as server:
        try:
            return _measure(server, cfg, label, follow, serials, rate)
        except BaseException:
            log(f"  {label} failed; the server's log ends with:\n{server.service.log_tail()}")
            raise


def _measure(server: PcaServer, cfg: Any, label: str, follow: bool, serials: list[int], rate: float) -> dict[str, Any]:
    def published() -> bool:
        report = server.health().get("publisher", {})
        return bool(report.get("published_position")) and report["published_position"] >= report["log_head"]

    wait_until(published, 300, "the first full CRLs")
    started_at = time.time()
    trips, seconds = asyncio.run(burst(server, serials, rate))
    ended_at = time.time()
    sample = serials[:: max(1, len(serials) // SAMPLE)]
    last = asyncio.run(timelines(server, [serials[-1]]))[0]

    def last_listed() -> bool:
        pubs = publications(cfg) if follow else []
        return not follow or first_after(pubs, last["seq"], ("full",)) is not None

    wait_until(last_listed, TAIL_S, "a full CRL listing the burst's last revocation", interval=1.0)
    lines = asyncio.run(timelines(server, sample))
    server.check_alive()
    pubs = publications(cfg)
    full_times, any_times, presigned, ocsp_all = [], [], [], []
    for t in lines:
        committed = parse_iso(t["committed_at"]).timestamp()
        if (p := t.get("presigned")) and p.get("seconds") is not None:
            presigned.append(p["seconds"])
        if (o := t.get("ocsp_all_responders")) and o.get("seconds") is not None:
            ocsp_all.append(o["seconds"])
        if (full := first_after(pubs, t["seq"], ("full",))) is not None:
            full_times.append(full - committed)
        if (crl := first_after(pubs, t["seq"], ("full", "delta"))) is not None:
            any_times.append(crl - committed)
    fulls = [at for kind, _, _, at in pubs if kind == "full" and started_at <= at <= ended_at + TAIL_S]
    return {
        "mode": "full_after_revocation = " + ("true" if follow else "false"),
        "revocations": len(serials),
        "rate_per_s": round(len(serials) / seconds, 1),
        "api_ms": spread(trips),
        "presigned_ms": spread(presigned),
        "ocsp_all_responders_ms": spread(ocsp_all),
        "full_crl_ms": spread(full_times),
        "any_crl_ms": spread(any_times),
        "full_crls_during_burst": len(fulls),
        "sampled": len(lines),
    }


GOOD_EVERY = 20


def template_in(directory: Path, count: int) -> tuple[Config, list[int]]:
    """The CA (recorded and pre-signed) and its good serials: made once in ``directory`` and reused."""
    done = directory / "template.json"
    if done.exists():
        saved = json.loads(done.read_text())
        if saved["count"] == count:
            log(f"crl_follow: reusing the template in {directory}")
            return load_config(Path(saved["config"])), saved["good"]
    shutil.rmtree(directory, ignore_errors=True)
    log(f"crl_follow: recording and pre-signing {count:,} certificates into {directory}")
    template = build_template(directory, count, presign_workers=2, good_every=GOOD_EVERY)
    good = template.population.good()
    done.write_text(json.dumps({"count": count, "config": str(template.cfg.path), "good": good}))
    return template.cfg, good


def run(
    *, smoke: bool, runs: int, revoked: int, burst_size: int, rate: float, template_dir: Path | None = None
) -> dict[str, Any]:
    if smoke:
        revoked, burst_size, rate = min(revoked, 5000), min(burst_size, 100), min(rate, 50)
    count = revoked + revoked // (GOOD_EVERY - 1) + 2
    with scratch("crl_follow") as work:
        template_cfg, good = template_in(template_dir or work / "template", count)
        if len(good) < burst_size * runs * 2:
            raise RuntimeError(f"{burst_size * runs * 2} revocations need more good certificates than {len(good)}")
        results = []
        batches = iter(good[i * burst_size : (i + 1) * burst_size] for i in range(runs * 2))
        for n in range(runs):
            for follow in (True, False):
                r = one_mode(template_cfg, work, f"run{n}-{follow}", follow, next(batches), rate)
                r["run"] = n + 1
                results.append(r)
                log(
                    f"  run {n + 1} {r['mode']}: API p99 {r['api_ms']['p99']} ms, presigned p99 "
                    f"{r['presigned_ms']['p99']} ms, full CRL p50 {r['full_crl_ms']['p50']} ms p99 "
                    f"{r['full_crl_ms']['p99']} ms ({r['full_crls_during_burst']} full CRLs)"
                )
    summary: dict[str, dict[str, Any]] = {}
    for mode in sorted({r["mode"] for r in results}):
        rows = [r for r in results if r["mode"] == mode]
        summary[mode] = {
            key: {stat: median([r[key][stat] for r in rows]) for stat in ("p50", "p99", "max")}
            for key in ("api_ms", "presigned_ms", "ocsp_all_responders_ms", "full_crl_ms", "any_crl_ms")
        }
        summary[mode]["full_crls_during_burst"] = median([r["full_crls_during_burst"] for r in rows])
    return {
        "scenario": "crl_follow",
        "params": {
            "revoked_in_shard": revoked,
            "certificates": count,
            "burst": burst_size,
            "rate_per_s": rate,
            "runs": runs,
            "server": "pca serve (default: uvicorn, every role in one process)",
        },
        "summary": summary,
        "runs": results,
    }


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--revoked", type=int, default=1_000_000)
    p.add_argument("--burst", type=int, default=6000)
    p.add_argument("--rate", type=float, default=100.0)
    p.add_argument("--template-dir", type=Path, help="keep the recorded, pre-signed CA here and reuse it next time")
    args = p.parse_args()
    runs = runs_of(args)
    result = run(
        smoke=args.smoke,
        runs=runs,
        revoked=args.revoked,
        burst_size=args.burst,
        rate=args.rate,
        template_dir=args.template_dir,
    )
    emit(result, args.json_out)


if __name__ == "__main__":
    main()
