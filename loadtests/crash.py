"""Crash consistency: kill -9 during a revocation burst, restart, and nothing acknowledged is lost.

    python -m loadtests.crash [--smoke] [--revocations 1200] [--kills 6] [--clients 8] [--rate 50]
                              [--shapes embedded scaled] [--server default|granian|uvicorn]

Two shapes: ``embedded`` (one ``pca serve`` with every role on SQLite; its public listener on
pca serve's default server, granian RSGI, unless ``--server`` names one) and ``scaled``
(PostgreSQL, a throwaway cluster, and ``pca serve --roles R`` once per role: api, tracker,
presigner, publisher, one responder). Certificates are issued through the admin API, then
``--clients`` connections revoke them, a new one every 1/``--rate`` s.
Meanwhile the harness kills a process ``--kills`` times with SIGKILL (its whole process
group, so nothing is released or flushed) at a bad moment: right after a revocation was
acknowledged (it is not pre-signed, let alone in a CRL, yet) while others are in flight;
and restarts it at once. The embedded shape loses everything each time; the scaled shape
loses the pre-signer, the API and the publisher in turn. A revocation cut off by a kill is
sent again until it is acknowledged (the API answers a repeated revocation with 200).

Measured per kill: from the restart, and from the acknowledgement of the first revocation
made after the restart, until the responder answers that certificate ``revoked`` (polled
every 20 ms over RFC 5019 GET). Checked at the end: every acknowledged revocation is revoked
in OCSP and listed in the full CRL (signature checked against the issuing CA), and the
event log's hash chain is intact (``GET /v1/audit/verify``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import os
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
from cryptography import x509

from loadtests.answers import IssuerHashes, is_revoked
from loadtests.common import Service, emit, log, make_ca, parser, scratch
from loadtests.pcaserver import PcaServer
from loadtests.pgcluster import postgres_cluster
from loadtests.report_crash import shape_line
from loadtests.scaled_propagation import deployment, issue
from pca.config import load_config

POLL_S = 0.02
WATCH_TIMEOUT_S = 30.0  # a revocation after a restart not revoked in OCSP by then is reported as missing
FINAL_TIMEOUT_S = 60.0  # every acknowledged revocation in OCSP and the full CRL by then
SCALED_TARGETS = ("presigner", "api", "publisher")  # killed in turn in the scaled shape
SHAPES = ("embedded", "scaled")
SERVERS = ("default", "granian", "uvicorn")  # the embedded shape's public server; default: what pca serve runs


@dataclasses.dataclass
class Target:
    """One shape while it runs: where to revoke and ask, and what to kill."""

    admin_url: str
    token: str
    ocsp_url: str  # base of GET requests (…/ocsp)
    crl_url: str  # the issuing CA's full CRL
    issuer: x509.Certificate
    victims: list[Service]  # killed in turn

    def admin(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.admin_url, headers={"authorization": f"Bearer {self.token}"}, timeout=30)


def crash(service: Service) -> float:
    """SIGKILL the service's process group, then start it again; returns the restart time (monotonic)."""
    proc = service.proc
    assert proc is not None
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # Service starts each in a session of its own: pgid == pid
    proc.wait()
    service.start()
    return time.monotonic()


@dataclasses.dataclass
class Burst:
    """The revocations sent so far: when each was acknowledged, and how many were cut off by a kill."""

    acked: dict[int, float] = dataclasses.field(default_factory=dict)  # serial -> monotonic acknowledgement
    sent: dict[int, float] = dataclasses.field(default_factory=dict)  # serial -> when the acknowledged request went
    cut_off: set[int] = dataclasses.field(default_factory=set)  # cut off by a kill (then sent again)
    acked_event: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    over: bool = False  # every revocation acknowledged (or the burst failed)

    async def next_ack(self, what: str) -> None:
        """Wait for the next acknowledgement; fail if the burst is over (``what`` would never happen)."""
        if self.over:
            raise RuntimeError(f"the burst ended before {what}: raise --revocations or lower --kills")
        self.acked_event.clear()
        try:
            async with asyncio.timeout(WATCH_TIMEOUT_S):
                await self.acked_event.wait()
        except TimeoutError:
            raise RuntimeError(f"nothing acknowledged for {WATCH_TIMEOUT_S:.0f} s, waiting for {what}") from None


async def revoke_all(target: Target, serials: Sequence[int], clients: int, rate: float, burst: Burst) -> None:
    """Revoke every serial, a new one every 1/``rate`` s over ``clients`` connections; one cut off is sent again."""
    queue = list(reversed(serials))
    next_at = time.monotonic()

    async def pace() -> None:
        nonlocal next_at
        now = time.monotonic()
        slot = max(next_at, now)
        next_at = slot + 1 / rate
        await asyncio.sleep(slot - now)

    async with target.admin() as admin:

        async def worker() -> None:
            while queue:
                serial = queue.pop()
                await pace()
                while True:
                    sent = time.monotonic()
                    try:
                        r = await admin.post(f"/v1/certificates/{serial:x}/revoke", json={"reason": "keyCompromise"})
                    except httpx.TransportError:
                        burst.cut_off.add(serial)
                        await asyncio.sleep(0.05)
                        continue
                    if r.status_code in (200, 201):
                        burst.sent[serial] = sent
                        burst.acked[serial] = time.monotonic()
                        burst.acked_event.set()
                        break
                    if r.status_code < 500:
                        raise RuntimeError(f"revoking {serial:x}: HTTP {r.status_code} {r.text[:200]}")
                    burst.cut_off.add(serial)  # a 5xx from a process going down: send it again
                    await asyncio.sleep(0.05)

        try:
            await asyncio.gather(*(worker() for _ in range(clients)))
        finally:
            burst.over = True
            burst.acked_event.set()  # wake the killer: it fails if it still waited for something


async def first_revoked(client: httpx.AsyncClient, hashes: IssuerHashes, serial: int) -> float:
    """Poll the responder until it says ``serial`` is revoked; the monotonic time it first did."""
    path = hashes.probe(serial, True).get_path("")
    while True:
        with contextlib.suppress(httpx.TransportError):
            r = await client.get(path)
            if r.status_code == 200 and is_revoked(r.content, serial):
                return time.monotonic()
        await asyncio.sleep(POLL_S)


async def wait_revoked(client: httpx.AsyncClient, hashes: IssuerHashes, serial: int, seconds: float) -> float | None:
    """``first_revoked``, or None if that takes more than ``seconds``."""
    try:
        async with asyncio.timeout(seconds):
            return await first_revoked(client, hashes, serial)
    except TimeoutError:
        return None


async def kill_during(target: Target, burst: Burst, kills: int, every: int, ocsp: httpx.AsyncClient) -> list[Any]:
    """Kill a victim after every ``every`` acknowledgements; measure how soon OCSP has the next revocation."""
    hashes = IssuerHashes(target.issuer)
    out: list[dict[str, Any]] = []
    for k in range(kills):
        victim = target.victims[k % len(target.victims)]
        goal = len(burst.acked) + every
        while len(burst.acked) < goal:
            await burst.next_ack(f"kill {k + 1}")  # right after an acknowledgement: a bad moment
        restarted = crash(victim)
        known = set(burst.acked)
        # The first revocation sent to the restarted process (an answer the killed one wrote before it died
        # may still be read after the restart).
        while not (after := [s for s in burst.acked if s not in known and burst.sent[s] > restarted]):
            await burst.next_ack(f"a revocation sent after restarting {victim.name}")
        first = min(after, key=lambda s: burst.acked[s])
        seen = await wait_revoked(ocsp, hashes, first, WATCH_TIMEOUT_S)
        acked = burst.acked[first]
        row = {
            "killed": victim.name,
            "acknowledged_before_kill": len(known),
            "restart_to_ack_s": round(acked - restarted, 3),
            "restart_to_revoked_s": None if seen is None else round(seen - restarted, 3),
            "ack_to_revoked_s": None if seen is None else round(seen - acked, 3),
        }
        log(f"  kill {k + 1} ({victim.name}): {row}")
        out.append(row)
    return out


async def final_check(target: Target, burst: Burst, ocsp: httpx.AsyncClient) -> dict[str, Any]:
    hashes = IssuerHashes(target.issuer)
    acked = sorted(burst.acked)
    began = time.monotonic()
    missing_ocsp: list[int] = []
    pending = list(acked)

    async def worker() -> None:
        while pending:
            serial = pending.pop()
            left = FINAL_TIMEOUT_S - (time.monotonic() - began)
            if await wait_revoked(ocsp, hashes, serial, max(left, 0.1)) is None:
                missing_ocsp.append(serial)

    await asyncio.gather(*(worker() for _ in range(8)))
    crl_missing, crl_seconds, crl_number = await _full_crl_lists(target, set(acked), began)
    async with target.admin() as admin:
        audit = (await admin.get("/v1/audit/verify")).json()
    return {
        "acknowledged": len(acked),
        "revoked_in_ocsp": len(acked) - len(missing_ocsp),
        "not_revoked_in_ocsp": [f"{s:x}" for s in missing_ocsp[:5]],
        "listed_in_full_crl": len(acked) - len(crl_missing),
        "not_in_full_crl": [f"{s:x}" for s in sorted(crl_missing)[:5]],
        "full_crl_number": crl_number,
        "full_crl_after_burst_s": crl_seconds,
        "audit_chain_intact": bool(audit.get("ok")),
        "events": audit.get("events"),
    }


async def _full_crl_lists(target: Target, serials: set[int], began: float) -> tuple[set[int], float | None, int | None]:
    """Poll the full CRL until it lists every serial (its signature checked); what it still lacks at the end."""
    missing, number = set(serials), None
    async with httpx.AsyncClient(timeout=30) as client:
        while True:
            with contextlib.suppress(httpx.TransportError, ValueError):
                r = await client.get(target.crl_url)
                crl = x509.load_der_x509_crl(r.content)
                if crl.is_signature_valid(target.issuer.public_key()):  # type: ignore[arg-type]
                    listed = {e.serial_number for e in crl}
                    missing, number = (
                        serials - listed,
                        crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number,
                    )
                    if not missing:
                        return missing, round(time.monotonic() - began, 3), number
            if time.monotonic() - began > FINAL_TIMEOUT_S:
                return missing, None, number
            await asyncio.sleep(0.2)


async def scenario(target: Target, serials: Sequence[int], kills: int, clients: int, rate: float) -> dict[str, Any]:
    burst = Burst()
    every = max(1, len(serials) // (3 * kills))  # acknowledgements between a restart's measure and the next kill
    async with httpx.AsyncClient(base_url=target.ocsp_url, timeout=5) as ocsp:
        revoking = asyncio.create_task(revoke_all(target, serials, clients, rate, burst))
        try:
            try:
                rows = await kill_during(target, burst, kills, every, ocsp)
            except RuntimeError:
                if revoking.done() and not revoking.cancelled() and revoking.exception() is not None:
                    await revoking  # the burst's own failure is the one to report
                raise
            await revoking
        finally:
            revoking.cancel()
            await asyncio.gather(revoking, return_exceptions=True)
        result = await final_check(target, burst, ocsp)
    return {"kills": rows, "cut_off_and_sent_again": len(burst.cut_off), **result}


@contextlib.contextmanager
def embedded(work: Path, server_name: str = "default") -> Iterator[Target]:
    cfg = make_ca(work)
    with PcaServer(cfg, "" if server_name == "default" else server_name) as server:
        yield Target(
            admin_url=server.admin_url,
            token=server.token,
            ocsp_url=server.public_url + "/ocsp",
            crl_url=server.public_url + "/crl/issuing-ca.crl",
            issuer=x509.load_pem_x509_certificate((cfg.data_dir / "issuing-ca.pem").read_bytes()),
            victims=[server.service],
        )


@contextlib.contextmanager
def scaled(work: Path) -> Iterator[Target]:
    with postgres_cluster() as pg, deployment(work, pg, responders=1) as shape:
        by_name = {s.name: s for s in shape.services}
        yield Target(
            admin_url=shape.admin_url,
            token=shape.token,
            ocsp_url=shape.responders["r1"] + "/ocsp",
            crl_url=load_config(shape.config).public_url.rstrip("/") + "/crl/issuing-ca.crl",
            issuer=shape.issuer,
            victims=[by_name[name] for name in SCALED_TARGETS],
        )


SHAPE_STARTERS: dict[str, Callable[[Path], contextlib.AbstractContextManager[Target]]] = {
    "embedded": embedded,
    "scaled": scaled,
}


def run(
    *,
    smoke: bool,
    shapes: Sequence[str],
    revocations: int,
    kills: int,
    clients: int,
    rate: float,
    server: str = "default",
) -> dict[str, Any]:
    if smoke:
        revocations, kills = min(revocations, 40), min(kills, 1)
    results: dict[str, Any] = {}
    starters = {**SHAPE_STARTERS, "embedded": functools.partial(embedded, server_name=server)}
    for name in shapes:
        with scratch(f"crash-{name}") as work, starters[name](work) as target:
            log(f"crash ({name}): issuing {revocations} certificates")
            serials = asyncio.run(issue(target, revocations))  # type: ignore[arg-type]  # it only calls admin()
            log(f"crash ({name}): revoking them with {clients} clients, {kills} kill -9")
            results[name] = asyncio.run(scenario(target, serials, kills, clients, rate))
            log(f"crash: {shape_line(name, results[name])}")
    return {
        "scenario": "crash",
        "params": {
            "revocations": revocations,
            "kills": kills,
            "clients": clients,
            "rate_per_s": rate,
            "shapes": list(shapes),
            "server": server,
        },
        "shapes": results,
    }


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--revocations", type=int, default=1200)
    p.add_argument("--kills", type=int, default=6)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--rate", type=float, default=50.0, help="revocations sent per second")
    p.add_argument("--shapes", nargs="+", choices=SHAPES, default=list(SHAPES))
    p.add_argument("--server", choices=SERVERS, default="default", help="the embedded shape's public server")
    args = p.parse_args()
    result = run(
        smoke=args.smoke,
        shapes=args.shapes,
        revocations=args.revocations,
        kills=args.kills,
        clients=args.clients,
        rate=args.rate,
        server=args.server,
    )
    emit(result, args.json_out)


if __name__ == "__main__":
    main()
