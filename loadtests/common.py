"""Shared pieces of the scenarios: a throwaway CA with many certificates, clones of it,
processes that are always stopped, medians, and the command-line conventions.

Every scenario module exposes ``run(args) -> dict`` and a ``main()`` that prints the
result as JSON (and writes it to ``--json-out``); ``loadtests.run_all`` runs them in
subprocesses and writes ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime
import io
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization

from pca.config import Config, load_config
from pca.runtime import Runtime, open_runtime
from revocation.clock import SystemClock
from revocation.eventlog import NewEvent
from revocation.events import CertificateIssued, CertificateRevoked
from revocation.projection import IssuerRecord

ISSUER = "issuing-ca"
BASE_SERIAL = 1 << 120
SCRATCH = Path(os.environ.get("PCA_BENCH_TMP", tempfile.gettempdir()))


# --- command line -----------------------------------------------------------------------


def parser(doc: str | None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny sizes, a second or two per run: proves the harness")
    p.add_argument("--runs", type=int, default=None, help="runs per figure (the median is reported); default 3")
    p.add_argument("--json-out", type=Path, help="also write the result here")
    return p


def runs_of(args: argparse.Namespace) -> int:
    if args.runs is not None:
        return max(1, int(args.runs))
    return 1 if args.smoke else 3


def emit(result: dict[str, Any], json_out: Path | None) -> None:
    text = json.dumps(result, indent=2, sort_keys=False, default=str)
    if json_out is not None:
        json_out.write_text(text + "\n")
    print(text)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- numbers ----------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    clean = [v for v in values if v == v]  # drop NaN
    return float(statistics.median(clean)) if clean else float("nan")


def median_record(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Field-wise median of numeric fields over runs (other fields from the first run)."""
    if not records:
        return {}
    out: dict[str, Any] = {}
    for key, first in records[0].items():
        values = [r.get(key) for r in records]
        if isinstance(first, bool) or not isinstance(first, (int, float)):
            out[key] = first
        else:
            nums = [float(v) for v in values if isinstance(v, (int, float))]
            m = median(nums)
            out[key] = round(m, 3) if isinstance(first, float) else round(m)
    return out


def percentile(sorted_values: Sequence[float], pct: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(pct / 100 * len(sorted_values) + 0.5) - 1))
    return float(sorted_values[index])


# --- ports, waiting, processes ----------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(check: Callable[[], bool], timeout: float, what: str, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception:
            pass
        time.sleep(interval)
    raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")


class Service:
    """A process we started, in its own session so that it and its children stop together.

    Stopping sends ``stop_signal`` to the process, waits, then SIGKILLs its process group
    (by the group id we created, never by name). A program that makes its own process
    group (``openssl ocsp -multi`` calls setpgid, which fails in a new session) is started
    with ``new_session=False``; its group id is its pid all the same.
    """

    def __init__(
        self,
        name: str,
        cmd: Sequence[str],
        log_path: Path,
        *,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        stop_signal: int = signal.SIGTERM,
        grace: float = 10.0,
        new_session: bool = True,
    ) -> None:
        self.name = name
        self.cmd = list(cmd)
        self.log_path = log_path
        self._env = env
        self._cwd = cwd
        self._stop_signal = stop_signal
        self._grace = grace
        self._new_session = new_session
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Service:
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(
                self.cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self._env,
                cwd=self._cwd,
                start_new_session=self._new_session,
            )
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self) -> None:
        proc = self.proc
        if proc is None:
            return
        self.proc = None
        leads_group = self._new_session
        with contextlib.suppress(ProcessLookupError, PermissionError):
            leads_group = leads_group or os.getpgid(proc.pid) == proc.pid
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(self._stop_signal)
            try:
                proc.wait(timeout=self._grace)
            except subprocess.TimeoutExpired:
                pass
        # The group whose leader we started (its id is the leader's pid): children left behind.
        if leads_group:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)

    def __enter__(self) -> Service:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def workdir(prefix: str) -> Path:
    SCRATCH.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"pca-bench-{prefix}-", dir=SCRATCH))


# --- the CA -------------------------------------------------------------------------------


def make_ca(base: Path) -> Config:
    """``pca init`` into ``base/ca`` on free loopback ports (its chatter suppressed)."""
    from pca.cli import main as pca_main

    directory = base / "ca"
    with contextlib.redirect_stdout(io.StringIO()):
        pca_main(
            [
                "init",
                "--dir",
                str(directory),
                "--public-url",
                f"http://127.0.0.1:{free_port()}",
                "--admin-listen",
                f"127.0.0.1:{free_port()}",
                "--no-admin-tls",  # plain HTTP on loopback: wrk and the clients measure the API, not TLS
            ]
        )
    return load_config(directory / "pca.toml")


def open_bench_runtime(cfg: Config) -> Runtime:
    return open_runtime(cfg, SystemClock())


def issuer_record(cfg: Config, issuer_id: str = ISSUER) -> IssuerRecord:
    rt = open_bench_runtime(cfg)
    try:
        return next(i for i in asyncio.run(rt.view.issuers()) if i.issuer_id == issuer_id)
    finally:
        rt.close()


@dataclasses.dataclass(frozen=True)
class Population:
    """The certificates recorded by ``populate``: serials in order, and which are revoked."""

    serials: list[int]
    revoked: frozenset[int]

    def good(self) -> list[int]:
        return [s for s in self.serials if s not in self.revoked]

    def sample(self, n: int, seed: int = 5019) -> list[int]:
        """``n`` serials drawn over the whole population, revoked ones in the population's proportion."""
        if n >= len(self.serials):
            return list(self.serials)
        rng = random.Random(seed)
        revoked = sorted(self.revoked)
        k = min(len(revoked), max(1 if revoked else 0, round(n * len(revoked) / len(self.serials))))
        return sorted(rng.sample(revoked, k) + rng.sample(self.good(), n - k))

    def to_json(self) -> dict[str, Any]:
        return {"count": len(self.serials), "revoked": sorted(self.revoked)}


async def populate(
    rt: Runtime, count: int, revoked_every: int = 100, batch: int = 5000, *, good_every: int = 0
) -> Population:
    """Record ``count`` certificates as events, reusing one real certificate's DER.

    Signing and serving never read a certificate's DER, so one issued certificate
    stands in for all. Every ``revoked_every``-th one is revoked (keyCompromise); with
    ``good_every``, every ``good_every``-th one stays good and all the others are revoked.
    """
    from pca.serve import build_authority
    from revocation.authority import Actor, IssueRequest

    authority = build_authority(rt)
    sample = await authority.issue(IssueRequest(subject="CN=bench", dns=["bench.test"]), Actor("bench", "populate"))
    der_hex = sample.certificate.public_bytes(serialization.Encoding.DER).hex()
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    not_after = now + datetime.timedelta(days=90)
    serials = [sample.certificate.serial_number]
    revoked: set[int] = set()
    for start in range(1, count, batch):
        events = []
        for i in range(start, min(start + batch, count)):
            serial = BASE_SERIAL + i
            serials.append(serial)
            issued = CertificateIssued(ISSUER, f"{serial:x}", f"CN=bench-{i}", now, not_after, der_hex, "server")
            events.append(NewEvent(issued, 0, "bench", "populate"))
            if (i % good_every != 0) if good_every else (revoked_every and i % revoked_every == 0):
                revoked.add(serial)
                revocation = CertificateRevoked(ISSUER, f"{serial:x}", "keyCompromise", now)
                events.append(NewEvent(revocation, 1, "bench", "populate"))
        await rt.log.append(events)
    return Population(serials, frozenset(revoked))


async def presign_all(rt: Runtime, workers: int) -> float:
    """Run the pre-signer over the whole log with ``workers`` signing processes; returns seconds.

    The pool is started (processes forked, modules imported) before the clock starts.
    """
    from loadtests.bench_roles import bench_presigner, warm_signing_pool

    async with warm_signing_pool(workers, warm_tasks=workers * 2) as (pool, _):
        presigner = bench_presigner(rt, pool, workers)
        started = time.perf_counter()
        await presigner.catch_up()
        return time.perf_counter() - started


@dataclasses.dataclass(frozen=True)
class Template:
    """A populated CA directory to clone from (never served or changed itself)."""

    cfg: Config
    population: Population
    presigned: bool


def build_template(
    base: Path, count: int, *, revoked_every: int = 100, presign_workers: int = 0, good_every: int = 0
) -> Template:
    """A CA with ``count`` certificates; pre-signed with that many workers if ``presign_workers``."""
    cfg = make_ca(base)
    rt = open_bench_runtime(cfg)
    try:
        population = asyncio.run(populate(rt, count, revoked_every, good_every=good_every))
        if presign_workers:
            asyncio.run(presign_all(rt, presign_workers))
    finally:
        rt.close()
    return Template(cfg, population, bool(presign_workers))


def clone_ca(template: Config, base: Path) -> Config:
    """Copy a CA directory (database included) and give the copy fresh loopback ports.

    Key references in the database are absolute paths into the template's directory,
    so the template must outlive its clones.
    """
    target = base / "ca"
    shutil.copytree(template.data_dir, target, ignore=shutil.ignore_patterns("*.log", "crl"))
    text = (target / "pca.toml").read_text()
    _, public_port = template.public_listen
    _, admin_port = template.admin_listen
    text = text.replace(f':{public_port}"', f':{free_port()}"').replace(f':{admin_port}"', f':{free_port()}"')
    (target / "pca.toml").write_text(text)
    return load_config(target / "pca.toml")


def set_option(cfg: Config, section: str, key: str, value: str) -> Config:
    """Rewrite one ``key = value`` line of a section of the CA's pca.toml."""
    lines = cfg.path.read_text().splitlines()
    current = ""
    for n, line in enumerate(lines):
        stripped = line.strip()
        if stripped.startswith("[") and stripped.endswith("]"):
            current = stripped[1:-1]
        elif current == section and stripped.split("=", 1)[0].strip() == key:
            lines[n] = f"{key} = {value}"
            break
    else:
        raise KeyError(f"{section}.{key} not in {cfg.path}")
    cfg.path.write_text("\n".join(lines) + "\n")
    return load_config(cfg.path)


@contextlib.contextmanager
def scratch(prefix: str, keep: bool = False) -> Iterator[Path]:
    path = workdir(prefix)
    try:
        yield path
    finally:
        if not keep and not os.environ.get("PCA_BENCH_KEEP"):
            shutil.rmtree(path, ignore_errors=True)
