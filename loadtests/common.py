"""Helpers shared by the scenarios: a throwaway CA with many certificates."""

from __future__ import annotations

import datetime
import socket
import tempfile
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from revocation.authority import Actor, IssueRequest
from revocation.cli import main as pca_main
from revocation.clock import SystemClock
from revocation.config import Config, load_config
from revocation.eventlog import NewEvent
from revocation.events import CertificateIssued, CertificateRevoked
from revocation.runtime import Runtime, open_runtime
from revocation.serve import build_authority


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_ca(base: Path | None = None) -> Config:
    directory = Path(base or tempfile.mkdtemp(prefix="pca-bench-")) / "ca"
    pca_main(
        [
            "init",
            "--dir",
            str(directory),
            "--public-url",
            f"http://127.0.0.1:{free_port()}",
            "--admin-listen",
            f"127.0.0.1:{free_port()}",
        ]
    )
    return load_config(directory / "pca.toml")


async def populate(rt: Runtime, count: int, revoked_every: int = 100, batch: int = 2000) -> list[int]:
    """Record ``count`` certificates (one real certificate's DER reused: signing does not read it).

    Every ``revoked_every``-th one is revoked. Returns the serials.
    """
    authority = build_authority(rt)
    actor = Actor("bench", "populate")
    sample = await authority.issue(IssueRequest(subject="CN=bench", dns=["bench.test"]), actor)
    der_hex = sample.certificate.public_bytes(serialization.Encoding.DER).hex()
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    not_after = now + datetime.timedelta(days=90)
    serials = [sample.certificate.serial_number]
    base = 1 << 120
    for start in range(1, count, batch):
        events = []
        for i in range(start, min(start + batch, count)):
            serial = base + i
            serials.append(serial)
            issued = CertificateIssued("issuing-ca", f"{serial:x}", "CN=bench", now, not_after, der_hex, "server")
            events.append(NewEvent(issued, 0, "bench", "populate"))
            if revoked_every and i % revoked_every == 0:
                revoked = CertificateRevoked("issuing-ca", f"{serial:x}", "keyCompromise", now)
                events.append(NewEvent(revoked, 1, "bench", "populate"))
        await rt.log.append(events)
    return serials


def open_bench_runtime(cfg: Config) -> Runtime:
    return open_runtime(cfg, SystemClock())
