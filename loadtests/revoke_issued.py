"""Revoking everything an issuer issued: ``pca issuer revoke-issued`` on N certificates.

    python -m loadtests.revoke_issued [--smoke] [--runs 3] [--count 20000] [--profile server|imported] [--postgres]

Each run makes a fresh ``pca init`` and records N good certificates of the issuing CA as events (one real
certificate's DER stands in for all; with ``--profile imported`` they are recorded as an import records them,
so the operation reads and parses each one's DER to leave CA certificates alone); on SQLite, or with
``--postgres`` on a throwaway PostgreSQL cluster (one per CA). Two figures, each on its own fresh
CA, interleaved run by run:

- ``operation``: ``IssuedRevocation.revoke_issued`` in this process, called (10,000 a call) until
  nothing remains: the reads, the batched appends and the projection's updates, nothing else;
- ``command``: the real command as a process against a running ``pca serve`` (all roles, so the pre-signer
  re-signs the revoked responses at the same time): ``pca issuer revoke-issued issuing-ca --reason
  cACompromise --yes``, start-up included; then how long the pre-signer took to catch up after it ended
  (every OCSP response then says revoked).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import io
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives import serialization

from loadtests.common import (
    BASE_SERIAL,
    ISSUER,
    emit,
    free_port,
    log,
    make_ca,
    median,
    parser,
    runs_of,
    scratch,
    wait_until,
)
from loadtests.pcaserver import PcaServer
from loadtests.pgcluster import PostgresCluster, postgres_cluster
from pca.cli import main as pca_main
from pca.config import Config, load_config
from pca.runtime import connect_runtime
from pca.serve import build_authority
from revocation.authority import Actor, IssueRequest
from revocation.clock import SystemClock
from revocation.eventlog import NewEvent
from revocation.events import CertificateIssued
from revocation.issued_revocation import IssuedRevocation, RevokeIssuedOptions

BATCH = 5000


def new_ca(work: Path, pg: PostgresCluster | None) -> Config:
    """``pca init`` into ``work/ca``: on SQLite, or on the database of ``pg``."""
    if pg is None:
        return make_ca(work)
    with contextlib.redirect_stdout(io.StringIO()):
        listen = ["--public-url", f"http://127.0.0.1:{free_port()}", "--admin-listen", f"127.0.0.1:{free_port()}"]
        pca_main(["init", "--dir", str(work / "ca"), *listen, "--no-admin-tls", "--database-url", pg.dsn])
    return load_config(work / "ca" / "pca.toml")


async def record(cfg: Config, count: int, profile: str) -> None:
    """``count`` good certificates of the issuing CA, as events, a batch at a time."""
    rt = await connect_runtime(cfg, SystemClock())
    try:
        sample = await build_authority(rt).issue(IssueRequest(subject="CN=bench", dns=["bench.test"]), Actor("b", "b"))
        der_hex = sample.certificate.public_bytes(serialization.Encoding.DER).hex()
        now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
        not_after = now + datetime.timedelta(days=90)
        for first in range(1, count, BATCH):
            events = [
                NewEvent(
                    CertificateIssued(ISSUER, f"{BASE_SERIAL + i:x}", f"CN=b-{i}", now, not_after, der_hex, profile),
                    0,
                    "bench",
                    "record",
                )
                for i in range(first, min(first + BATCH, count))
            ]
            await rt.log.append(events)
    finally:
        await rt.aclose()


async def operation(cfg: Config) -> dict[str, Any]:
    rt = await connect_runtime(cfg, SystemClock())
    try:
        revoker = IssuedRevocation(rt.log, rt.view, rt.clock)
        started, calls, revoked = time.perf_counter(), 0, 0
        while True:
            summary = await revoker.revoke_issued(ISSUER, RevokeIssuedOptions(), Actor("bench", "revoke-issued"))
            calls, revoked = calls + 1, revoked + summary.revoked
            if not summary.remaining:
                break
        seconds = time.perf_counter() - started
    finally:
        await rt.aclose()
    return {"revoked": revoked, "calls": calls, "seconds": round(seconds, 2), "per_s": round(revoked / seconds)}


def command(cfg: Config) -> dict[str, Any]:
    server = PcaServer(cfg, server="").start()
    try:
        cmd = [sys.executable, "-m", "pca.cli", "issuer", "revoke-issued", "--config", str(cfg.path), ISSUER,
               "--reason", "cACompromise", "--yes"]  # fmt: skip
        started = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
        seconds = time.perf_counter() - started
        if done.returncode != 0:
            raise RuntimeError(f"revoke-issued failed ({done.returncode}):\n{done.stdout}\n{done.stderr[-3000:]}")
        revoked = int(done.stdout.split()[1].replace(",", ""))

        def caught_up() -> bool:
            presigner = httpx.get(server.admin_url + "/healthz", timeout=5).json().get("presigner") or {}
            return presigner.get("lag_events") == 0

        wait_until(caught_up, 600, "the pre-signer to catch up", interval=0.2)
        presigned = time.perf_counter() - started - seconds
    finally:
        server.stop()
    return {"revoked": revoked, "seconds": round(seconds, 2), "per_s": round(revoked / seconds),
            "presigner_caught_up_after_s": round(presigned, 1), "output": done.stdout.splitlines()[0]}  # fmt: skip


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--count", type=int, default=20_000, help="certificates of the issuing CA (default 20,000)")
    p.add_argument("--profile", choices=["server", "imported"], default="server")
    p.add_argument("--postgres", action="store_true", help="on a throwaway PostgreSQL cluster instead of SQLite")
    args = p.parse_args()
    run_all(args)


def run_all(args: argparse.Namespace) -> None:
    count = 300 if args.smoke else args.count
    results: dict[str, list[dict[str, Any]]] = {"operation": [], "command": []}
    for run in range(runs_of(args)):
        for kind in ("operation", "command"):
            with (
                scratch(f"revoke-issued-{kind}") as work,
                postgres_cluster() if args.postgres else contextlib.nullcontext() as pg,
            ):
                cfg = new_ca(work, pg)
                asyncio.run(record(cfg, count, args.profile))
                out = asyncio.run(operation(cfg)) if kind == "operation" else command(cfg)
                log(f"run {run + 1} {kind}: {out}")
                results[kind].append(out)
    emit(
        {
            "count": count,
            "profile": args.profile,
            "backend": "postgresql" if args.postgres else "sqlite",
            "operation_seconds_median": median([r["seconds"] for r in results["operation"]]),
            "command_seconds_median": median([r["seconds"] for r in results["command"]]),
            "runs": results,
        },
        args.json_out,
    )


if __name__ == "__main__":
    main()
