"""Cost as the work grows: OCSP throughput, pre-sign time, CRL time and responder start-up
from 10,000 to 10,000,000 certificates on SQLite (issue 15).

    python -m loadtests.scale [--smoke] [--runs 3] [--sizes 10000 100000 1000000 10000000]
                              [--sets-dir DIR] [--duration 10] [--distinct 100000] [--all-revoked-max 1000000]

Each size is a set of certificates, 1% revoked, built once and cached under ``--sets-dir``
(see ``loadtests.scale_sets``: recorded through the real event log, pre-signed by the real
pre-signer). A size the disk cannot hold is skipped with the reason. Per size and run:

- pre-sign: ``PreSigner.catch_up`` with 2 signing processes from an empty response store
  (run 1 is the set's own build; further runs empty the set's response store and pre-sign it again);
  phases: wall time awaiting the log and projection reads and the store writes, CPU time of
  the signing processes and of the coordinator;
- CRL: the publisher's whole path, ``Publisher.publish`` (1% revoked: N/100 entries; phases: the
  projection's read of the revoked certificates, and the storer: parse back, check, write), and
  ``build_crl`` alone over as many entries; once per size up to ``--all-revoked-max``,
  ``build_crl`` over N entries (every certificate revoked, the worst case);
- responder start-up: ``pca serve --roles api,responder`` (uvicorn, one process) started on
  the set: seconds until it answers an OCSP GET correctly, until its cache has applied the
  whole change feed (``/healthz``: lag 0), and its RSS then (``ocsp.cache_size`` is the default
  1,000,000: above that the cache holds the newest million);
- OCSP throughput: on that server, wrk -t2 -c64 GET over ``--distinct`` certificates drawn
  over the whole set (so at 10,000,000 most are not in the cache), after a 2 s warm-up;
  20 answers checked; cache hits and misses from ``/healthz``;
- once per size, the cache load profiled in a process of its own: a ``CachingSource`` filled
  through the change feed, wall time in ``ResponseStore.changes`` (SQLite) against the rest.
"""

from __future__ import annotations

import asyncio
import datetime
import gc
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from loadtests.answers import IssuerHashes, Probe, verdict
from loadtests.bench_roles import bench_publisher, bench_storer, publish_rounds
from loadtests.common import (
    ISSUER,
    Service,
    emit,
    free_port,
    issuer_record,
    log,
    median,
    open_bench_runtime,
    parser,
    runs_of,
    scratch,
    wait_until,
)
from loadtests.crl_build import bare_build, entries_for
from loadtests.facts import load_average, machine
from loadtests.scale_sets import DEFAULT_SETS, MEMORY_MARGIN, CertSet, Timed, mem_available, serial_of
from loadtests.wrkrun import run_wrk, write_script
from pca.config import Config, OCSPConfig

DEFAULT_SIZES = [10_000, 100_000, 1_000_000, 10_000_000]
SMOKE_SIZES = [300, 1000]
START_TIMEOUT = 1800.0
ALL_REVOKED_BYTES = 1_000  # build_crl over N entries holds N CRLEntry objects and the DER (~0.5 KB each)


def tree_rss_kb(pid: int) -> tuple[int, int]:
    """VmRSS of ``pid`` and of it with all its descendants (kB)."""

    def rss(p: int) -> int:
        for line in Path(f"/proc/{p}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def children(p: int) -> list[int]:
        out: list[int] = []
        for task in Path(f"/proc/{p}/task").iterdir():
            text = (task / "children").read_text().split()
            out += [int(c) for c in text]
        return out

    own, total, todo = rss(pid), 0, [pid]
    while todo:
        p = todo.pop()
        try:
            total += rss(p)
            todo += children(p)
        except OSError:
            pass
    return own, total


def presign_runs(cset: CertSet, facts: dict[str, Any], runs: int) -> list[dict[str, Any]]:
    """The set's own pre-signing, then ``runs - 1`` more from an emptied response store."""
    results = [facts["presign_build"]]
    for _ in range(1, runs):
        r = cset.presign_again()
        results.append(r)
        log(f"  presign {cset.count:,}: {r['seconds']:.2f} s")
    return results


def publish_profiled(cfg: Config, runs: int) -> list[dict[str, Any]]:
    """``Publisher.publish`` ``runs`` times (as ``crl_build.publish_runs``), with the wall time awaiting the
    projection's read of the revoked certificates and the storer (parse back, check against the log, write)."""
    rt = open_bench_runtime(cfg)
    try:
        timed = Timed()
        rt.view.crl_revoked = timed.wrap("projection_read", rt.view.crl_revoked)  # type: ignore[method-assign]
        storer = bench_storer(rt)
        storer.store = timed.wrap("store", storer.store)  # type: ignore[method-assign]
        publisher = bench_publisher(rt, storer)

        async def go() -> list[dict[str, Any]]:
            out = []
            async for published in publish_rounds(rt, publisher, runs, ISSUER):
                # The storer reads the revoked list again to check the CRL: both reads are timed (calls 2).
                reads = timed.calls.get("projection_read", 0)
                read_s = timed.seconds.get("projection_read", 0.0)
                out.append(
                    {
                        "seconds": published.seconds,
                        "bytes": published.size,
                        "entries": published.entries,
                        "projection_read_s": read_s / reads if reads else 0.0,
                        "store_s": timed.seconds.get("store", 0.0),
                    }
                )
                timed.seconds.clear()  # so that the next round's figures are its own
                timed.calls.clear()
            return out

        return asyncio.run(go())
    finally:
        rt.close()


def crl_runs(cfg: Config, count: int, revoked: int, runs: int, all_revoked_max: int) -> dict[str, Any]:
    issuer = issuer_record(cfg)
    publish = publish_profiled(cfg, runs)
    if publish[0]["entries"] != revoked:
        raise RuntimeError(f"the CRL lists {publish[0]['entries']} entries, {revoked} are revoked")
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    entries = entries_for(revoked, now)
    bare = [bare_build(issuer, entries, now) for _ in range(runs)]
    del entries
    out: dict[str, Any] = {
        "publish_s": round(median([p["seconds"] for p in publish]), 3),
        "publish_runs": [round(p["seconds"], 3) for p in publish],
        "crl_bytes": publish[0]["bytes"],
        "publish_projection_read_s": round(median([p["projection_read_s"] for p in publish]), 3),
        "publish_store_s": round(median([p["store_s"] for p in publish]), 3),
        "entries": revoked,
        "build_crl_s": round(median([s for s, _ in bare]), 3),
        "build_crl_runs": [round(s, 3) for s, _ in bare],
    }
    if count <= all_revoked_max and mem_available() > count * ALL_REVOKED_BYTES + MEMORY_MARGIN:
        everything = entries_for(count, now)
        seconds, size = bare_build(issuer, everything, now)
        del everything
        gc.collect()
        out.update(all_revoked_build_crl_s=round(seconds, 3), all_revoked_bytes=size)
    log(
        f"  crl {count:,}: publish {out['publish_s']:.2f} s, build_crl {out['build_crl_s']:.2f} s ({revoked:,} entries)"
    )
    return out


def make_probes(cfg: Config, count: int, distinct: int) -> list[Probe]:
    hashes_ = IssuerHashes(issuer_record(cfg).cert)
    rng = random.Random(5019)
    picks = rng.sample(range(1, count), min(distinct, count - 1))
    return [hashes_.probe(serial_of(i), i % 100 == 0) for i in picks]


def serve_run(cfg: Config, probes: list[Probe], work: Path, duration: float) -> dict[str, Any]:
    """Start ``pca serve --roles api,responder`` on the set; start-up, RSS, then wrk GET."""
    hashes_ = IssuerHashes(issuer_record(cfg).cert)
    # Fresh loopback ports: a cached set's own may have been taken since it was built.
    public_port, admin_port = free_port(), free_port()
    public, admin = f"http://127.0.0.1:{public_port}", f"http://127.0.0.1:{admin_port}"
    cmd = [sys.executable, "-m", "pca.cli", "serve", "--config", str(cfg.path), "--log-level", "warning"]
    cmd += ["--server", "uvicorn", "--roles", "api,responder"]
    cmd += ["--public-listen", f"127.0.0.1:{public_port}", "--admin-listen", f"127.0.0.1:{admin_port}"]
    service = Service("pca serve", cmd, work / "serve.log", env={**os.environ, "PYTHONUNBUFFERED": "1"}, grace=15.0)
    first = probes[-1]
    with httpx.Client(timeout=5) as client:
        started = time.perf_counter()
        service.start()
        try:

            def answers() -> bool:
                service.check_alive()
                r = client.get(public + first.get_path("/ocsp"))
                return r.status_code == 200 and verdict(r.content, first, hashes_.name_hash, hashes_.key_hash) is None

            wait_until(answers, START_TIMEOUT, "the responder to answer", interval=0.05)
            serving_s = time.perf_counter() - started

            def caught_up() -> bool:
                service.check_alive()
                return client.get(admin + "/healthz").json()["responder"].get("lag_changes") == 0

            wait_until(caught_up, START_TIMEOUT, "the responder cache to apply the change feed", interval=0.1)
            loaded_s = time.perf_counter() - started
            assert service.proc is not None
            own_kb, tree_kb = tree_rss_kb(service.proc.pid)
            health = client.get(admin + "/healthz").json()["responder"]
            wrong = [v for p in probes[:: max(1, len(probes) // 20)] if (v := _check(client, public, p, hashes_))]
            script = write_script(work, "scale", "GET", probes, "/ocsp", "/ocsp")
            run_wrk(public, script, duration=2.0)  # warm-up
            before = client.get(admin + "/healthz").json()["responder"]
            result = run_wrk(public, script, duration=duration)
            after = client.get(admin + "/healthz").json()["responder"]
            service.check_alive()
        finally:
            service.stop()
    hits = after["cache_hits"] - before["cache_hits"]
    misses = after["cache_misses"] - before["cache_misses"]
    return {
        "serving_s": round(serving_s, 2),
        "cache_loaded_s": round(loaded_s, 2),
        "cached_responses": health["cached_responses"],
        "rss_mb": round(own_kb / 1024, 1),
        "rss_tree_mb": round(tree_kb / 1024, 1),
        "requests_per_s": result["requests_per_s"],
        "p50_ms": result["p50_ms"],
        "p99_ms": result["p99_ms"],
        "errors": result["errors"],
        "cache_hit_ratio": round(hits / (hits + misses), 3) if hits + misses else None,
        "wrong_answers": len(wrong),
        "problems": wrong[:3],
    }


def _check(client: httpx.Client, public: str, probe: Probe, hashes_: IssuerHashes) -> str | None:
    r = client.get(public + probe.get_path("/ocsp"))
    if r.status_code != 200:
        return f"HTTP {r.status_code} for {probe.serial:x}"
    return verdict(r.content, probe, hashes_.name_hash, hashes_.key_hash)


async def cache_load(database: Path, count: int) -> dict[str, Any]:
    """A responder's cache filled from the change feed, timed: SQLite reads against the rest."""
    from responders.source import CachingSource, StoreSource
    from responders.store.sqlite import SQLiteResponseStore
    from revocation.storage.sqlite.db import SQLiteDatabase

    db = SQLiteDatabase(database)
    try:
        store = SQLiteResponseStore(db)
        timed = Timed()
        store.changes = timed.wrap("changes", store.changes)  # type: ignore[method-assign]
        cache = CachingSource(StoreSource(store), store, OCSPConfig().cache_size)
        await store.last_change()
        started = time.perf_counter()
        applied = 0
        while (n := await cache.sync_once()) > 0:
            applied += n
        total = time.perf_counter() - started
    finally:
        db.close()
    read = timed.seconds.get("changes", 0.0)
    return {
        "changes": applied,
        "cached": len(cache),
        "seconds": round(total, 2),
        "store_read_s": round(read, 2),
        "cache_insert_s": round(total - read, 2),
    }


def profile_cache_load(cfg: Config, count: int) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "loadtests.scale", "--cache-load-child", str(cfg.database), str(count)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=START_TIMEOUT, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"cache load child failed:\n{proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def measure_size(cset: CertSet, args: Any, runs: int, work: Path) -> dict[str, Any]:
    load = load_average()
    facts = cset.build()
    count, revoked = facts["count"], facts["revoked"]
    log(f"scale: {count:,} certificates (load average {load})")
    presign = presign_runs(cset, facts, runs)
    crl = crl_runs(cset.cfg, count, revoked, runs, args.all_revoked_max)
    probes = make_probes(cset.cfg, count, args.distinct)
    serve = []
    for n in range(runs):
        r = serve_run(cset.cfg, probes, work, args.duration)
        serve.append(r)
        log(
            f"  serve {count:,} run {n + 1}: answers after {r['serving_s']} s, cache loaded after "
            f"{r['cache_loaded_s']} s, RSS {r['rss_mb']} MB; {r['requests_per_s']:.0f} req/s p99 {r['p99_ms']} ms, "
            f"hit ratio {r['cache_hit_ratio']}"
        )
    cache = profile_cache_load(cset.cfg, count)
    log(f"  cache load {count:,}: {cache}")
    by_time = sorted(presign, key=lambda r: r["seconds"])
    phases = by_time[(len(by_time) - 1) // 2]["phases"]  # those of the median run
    return {
        "certificates": count,
        "runs": runs,
        "revoked": revoked,
        "load_before": load,
        "record_seconds": facts["record_seconds"],
        "database_mb": round(facts["database_bytes"] / 2**20),
        "presign": {
            "seconds": median([r["seconds"] for r in presign]),
            "responses_per_s": round(count / median([r["seconds"] for r in presign])),
            "runs": [r["seconds"] for r in presign],
            "phases": phases,
        },
        "crl": crl,
        "serve": {
            key: median([r[key] for r in serve])
            for key in ("serving_s", "cache_loaded_s", "rss_mb", "rss_tree_mb", "requests_per_s", "p50_ms", "p99_ms")
        }
        | {
            "cached_responses": serve[0]["cached_responses"],
            "cache_hit_ratio": median([r["cache_hit_ratio"] or 0.0 for r in serve]),
            "errors": sum(r["errors"] for r in serve),
            "wrong_answers": sum(r["wrong_answers"] for r in serve),
            "problems": [p for r in serve for p in r["problems"]][:3],
            "requests_per_s_runs": [r["requests_per_s"] for r in serve],
            "cache_loaded_s_runs": [r["cache_loaded_s"] for r in serve],
        },
        "cache_load": cache,
    }


def run(args: Any, runs: int) -> dict[str, Any]:
    sizes = SMOKE_SIZES if args.smoke else args.sizes
    duration = 1.0 if args.smoke else args.duration
    args.duration = duration
    rows: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    with scratch("scale") as work:
        sets_dir = work / "sets" if args.smoke else args.sets_dir
        for count in sizes:
            cset = CertSet(sets_dir, count)
            why = cset.room(OCSPConfig().cache_size)
            if why:
                log(f"scale: skipping {count:,}: {why}")
                skipped.append({"certificates": count, "reason": why})
                continue
            size_work = work / str(count)
            size_work.mkdir()
            rows.append(measure_size(cset, args, runs, size_work))
    return {
        "scenario": "scale",
        "params": {
            "sizes": sizes,
            "runs": runs,
            "revoked_fraction": 0.01,
            "presign_workers": 2,
            "distinct_requests": args.distinct,
            "wrk": "wrk -t2 -c64, GET, 2 s warm-up",
            "duration_s": duration,
            "cache_size": OCSPConfig().cache_size,
            "all_revoked_max": args.all_revoked_max,
            "server": "pca serve --server uvicorn --roles api,responder",
            "sets_dir": str(args.sets_dir),
        },
        "results": rows,
        "skipped": skipped,
        "machine": machine(Path(__file__).resolve().parent.parent),
        "finished_at": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--cache-load-child":
        print(json.dumps(asyncio.run(cache_load(Path(sys.argv[2]), int(sys.argv[3])))))
        return
    p = parser(__doc__)
    p.add_argument("--sizes", type=int, nargs="+", default=DEFAULT_SIZES)
    p.add_argument("--sets-dir", type=Path, default=DEFAULT_SETS, help="where built sets are cached")
    p.add_argument("--duration", type=float, default=10.0, help="seconds of each wrk run")
    p.add_argument("--distinct", type=int, default=100_000, help="certificates the wrk GET rotation spreads over")
    p.add_argument("--all-revoked-max", type=int, default=1_000_000, help="largest size also built all revoked")
    args = p.parse_args()
    emit(run(args, runs_of(args)), args.json_out)


if __name__ == "__main__":
    main()
