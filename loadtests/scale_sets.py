"""Built certificate sets for ``loadtests.scale``, cached on disk so a rerun does not rebuild them.

A set of N certificates is a CA directory (``pca init``) whose log holds N certificates, every
100th revoked (keyCompromise), recorded through the real event log (``EventLog.append`` in
transactions of 50,000 events, one real certificate's DER standing in for all: signing and
serving never read it), then pre-signed by the real ``PreSigner.catch_up`` from an empty
response store. That first pre-signing is timed and profiled (it is the pre-sign figure of a
run of 1). A further pre-sign run empties the set's response store (its rows and the
pre-signer's recorded position: the state before the first pre-signing) and pre-signs it again,
in place, so no copy of a large set is needed; a run cut short is redone on the next use.

Before building, the disk needed is estimated (``BYTES_PER_CERT``, measured on 100,000: the
log's event, the projection's row and the stored response) and the size is skipped, with the
reason recorded, if the scratch file system cannot hold it with a margin.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import shutil
import sqlite3
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from loadtests.bench_roles import bench_presigner, warm_signing_pool
from loadtests.common import BASE_SERIAL, SCRATCH, log, make_ca, open_bench_runtime, populate
from pca.config import Config, OCSPConfig, load_config
from pca.runtime import Runtime

REVOKED_EVERY = 100
APPEND_BATCH = 50_000
BYTES_PER_CERT = 4_400  # events 2.1 KB + certificates 0.9 KB + ocsp_responses 1.1 KB + indexes (100,000: 420 MB)
DISK_MARGIN = 8 << 30
# Memory: a responder holds about 1.4 KB per cached response (loadtests/memory.py) over a ~100 MB process;
# recording holds the serials (~100 B each). Estimated with a margin before a size starts.
BYTES_PER_CACHED = 1_700
PROCESS_BASE = 200 << 20
BYTES_PER_RECORDED = 150
MEMORY_MARGIN = 2 << 30
DEFAULT_SETS = SCRATCH / "pca-scale-sets"
T = TypeVar("T")


def revoked_count(count: int) -> int:
    """How many of ``count`` certificates ``populate`` revokes (serials BASE+i, i in 1..count-1, i % 100 == 0)."""
    return (count - 1) // REVOKED_EVERY


def serial_of(i: int) -> int:
    return BASE_SERIAL + i


class Timed:
    """Wall seconds spent awaiting some coroutine functions (wrapped on an instance, not changed)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}

    def wrap(self, name: str, fn: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
        async def timed(*args: Any, **kwargs: Any) -> T:
            started = time.perf_counter()
            try:
                return await fn(*args, **kwargs)
            finally:
                self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started
                self.calls[name] = self.calls.get(name, 0) + 1

        return timed


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def presign_profiled(rt: Runtime, workers: int) -> dict[str, Any]:
    """``PreSigner.catch_up`` from the store's position with ``workers`` signing processes, and where
    its time went: wall seconds awaiting the log and projection reads (SQLite, overlapped with
    signing), awaiting store writes, and CPU seconds of the signing processes and of this process."""
    from responders.store.sqlite import SQLiteResponseStore

    timed = Timed()
    store = SQLiteResponseStore(rt.db)
    store.put = timed.wrap("store_write", store.put)  # type: ignore[method-assign]
    rt.log.read_index = timed.wrap("log_read", rt.log.read_index)  # type: ignore[method-assign]
    rt.view.signing_states = timed.wrap("projection_read", rt.view.signing_states)  # type: ignore[method-assign]
    async with warm_signing_pool(workers, warm_tasks=workers * 4) as (pool, pids):
        presigner = bench_presigner(rt, pool, workers, store)
        worker_cpu = {pid: _cpu_seconds(pid) for pid in pids}
        own = resource.getrusage(resource.RUSAGE_SELF)
        started = time.perf_counter()
        await presigner.catch_up()
        seconds = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_SELF)
        signing_cpu = sum(_cpu_seconds(pid) - cpu for pid, cpu in worker_cpu.items())
        stored = await store.last_change()
    coordinator_cpu = (after.ru_utime - own.ru_utime) + (after.ru_stime - own.ru_stime)
    return {
        "workers": workers,
        "seconds": round(seconds, 3),
        "stored": stored,
        "phases": {
            "signing_cpu_s": round(signing_cpu, 2),
            "coordinator_cpu_s": round(coordinator_cpu, 2),
            **{f"{k}_wall_s": round(v, 2) for k, v in sorted(timed.seconds.items())},
        },
    }


def mem_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


class CertSet:
    """One cached set: ``root/<count>/ca`` and its facts in ``built.json``."""

    def __init__(self, root: Path, count: int) -> None:
        self.count = count
        self.dir = root / str(count)
        self.facts_path = self.dir / "built.json"

    @property
    def marker(self) -> Path:
        return self.dir / "presigning"

    @property
    def built(self) -> bool:
        return self.facts_path.exists() and not self.marker.exists()

    @property
    def cfg(self) -> Config:
        return load_config(self.dir / "ca" / "pca.toml")

    def facts(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.facts_path.read_text())
        return data

    def disk_needed(self) -> int:
        return self.count * BYTES_PER_CERT

    def memory_needed(self, cache_size: int) -> int:
        serve = PROCESS_BASE + min(self.count, cache_size) * BYTES_PER_CACHED
        return max(serve, PROCESS_BASE + self.count * BYTES_PER_RECORDED)

    def room(self, cache_size: int) -> str | None:
        """None if this machine can hold this set (disk, and memory to record and serve it), else why not."""
        available = mem_available()
        need_memory = self.memory_needed(cache_size)
        if available < need_memory + MEMORY_MARGIN:
            return (
                f"{self.count:,} certificates need about {need_memory / 2**30:.1f} GiB of memory (a responder caching "
                f"{min(self.count, cache_size):,} responses) plus a {MEMORY_MARGIN >> 30} GiB margin; "
                f"{available / 2**30:.1f} GiB available"
            )
        if self.built:
            return None
        self.dir.parent.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(self.dir.parent).free
        need = self.disk_needed()
        if free < need + DISK_MARGIN:
            return (
                f"{self.count:,} certificates need about {need / 2**30:.1f} GiB on disk "
                f"({BYTES_PER_CERT:,} B each) "
                f"plus a {DISK_MARGIN >> 30} GiB margin; {free / 2**30:.1f} GiB free in {self.dir.parent}"
            )
        return None

    def build(self, workers: int = 2) -> dict[str, Any]:
        """Record and pre-sign the set (or return its facts if it is built already)."""
        if self.built:
            return self.facts()
        if self.facts_path.exists():  # a further pre-sign run was cut short: redo it
            self.presign_again(workers)
            return self.facts()
        if self.dir.exists():
            shutil.rmtree(self.dir)  # an interrupted build
        self.dir.mkdir(parents=True)
        cfg = make_ca(self.dir)
        rt = open_bench_runtime(cfg)
        try:
            log(f"scale: recording {self.count:,} certificates into {self.dir}")
            started = time.perf_counter()
            population = asyncio.run(populate(rt, self.count, REVOKED_EVERY, batch=APPEND_BATCH))
            record_s = time.perf_counter() - started
            first_serial = population.serials[0]
            del population
        finally:
            rt.close()
        log(f"  recorded in {record_s:.0f} s")
        rt = open_bench_runtime(cfg)
        try:
            log(f"  pre-signing {self.count:,} responses (PreSigner.catch_up, {workers} workers)")
            presign = asyncio.run(presign_profiled(rt, workers))
        finally:
            rt.close()
        if presign["stored"] < self.count:
            raise RuntimeError(f"{presign['stored']} responses stored for {self.count} certificates")
        log(f"  pre-signed in {presign['seconds']:.0f} s: {presign['phases']}")
        facts = {
            "count": self.count,
            "revoked": revoked_count(self.count),
            "issued_serial": first_serial,
            "record_seconds": round(record_s, 1),
            "presign_build": presign,
            "database_bytes": os.path.getsize(cfg.database),
            "built_at": time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime()),
        }
        self.facts_path.write_text(json.dumps(facts, indent=2) + "\n")
        return facts

    def presign_again(self, workers: int = 2) -> dict[str, Any]:
        """Empty the response store (rows and the pre-signer's position) and pre-sign the set again."""
        from responders.presigner import CONSUMER

        self.marker.touch()
        cfg = self.cfg
        with contextlib.closing(sqlite3.connect(cfg.database)) as conn, conn:
            conn.execute("DELETE FROM ocsp_responses")
            conn.execute("DELETE FROM consumers WHERE name = ?", (CONSUMER,))
        rt = open_bench_runtime(cfg)
        try:
            result = asyncio.run(presign_profiled(rt, workers))
        finally:
            rt.close()
        if result["stored"] < self.count:
            raise RuntimeError(f"{result['stored']} responses stored for {self.count} certificates")
        self.marker.unlink()
        return result


def main() -> None:
    import argparse

    p = argparse.ArgumentParser(description="build (and cache) certificate sets for loadtests.scale")
    p.add_argument("--sets-dir", type=Path, default=DEFAULT_SETS)
    p.add_argument("sizes", type=int, nargs="+")
    args = p.parse_args()
    for n in args.sizes:
        s = CertSet(args.sets_dir, n)
        why = s.room(OCSPConfig().cache_size)
        if why:
            log(f"skipping {n:,}: {why}")
            continue
        print(json.dumps(s.build()), flush=True)


if __name__ == "__main__":
    main()
