"""Revocation to the point of enforcement: from each revocation's 2xx on the admin API, how long
until a relying party that enforces revocation refuses the certificate.

    python -m loadtests.enforcement [--smoke] [--revocations 30] [--spacing 3] [--timeout 60] [--poll-ms 100]
        [--after-revocation-seconds S]

``pca init`` and ``pca serve`` (the embedded default, uvicorn) with the settings ``pca init``
writes; ``--revocations`` client certificates (profile client) plus one never revoked (the
control) and a server certificate for nginx, all issued through the admin API. The relying
parties, each a channel:

- ``nginx_crl``: nginx ``ssl_crl`` fed by ``pca crl-sync`` (``--interval 1``, nginx reloaded on
  change) with the issuing CA's and the root's full CRLs (the URLs of the certificates' CRL DPs);
- ``nginx_ocsp``: nginx ``ssl_ocsp leaf`` against our responder (the AIA URL), ``ssl_ocsp_cache``
  off (nginx's default); ``nginx_ocsp_cached``: the same with ``ssl_ocsp_cache shared:ocsp:1m``;
- ``java_crl`` / ``java_ocsp``: a long-running JVM validating with PKIX and a
  ``PKIXRevocationChecker`` (see ``loadtests/java/RevocationCheck.java``), default JVM settings.

The client certificates are revoked one by one (keyCompromise), one every ``--spacing`` seconds.
Before each revocation every channel must accept the certificate (a control); from the
revocation's 2xx every channel retries it every ``--poll-ms`` ms, or every 2% of the time since
the 2xx once that is longer (beyond 5 s at 100 ms: fewer checks of certificates still accepted),
with a fresh TLS handshake and ``GET /`` each time for nginx, until refused or ``--timeout``
seconds have passed ("not refused"); ``bracket_max_ms`` is the longest gap between a refusal and
the answer before it. The time is taken when the refusing check returns; the checking client runs at nice -20 where
allowed, and reports its CPU and event-loop lag. Two reference channels, no relying party, say
when the full CRL and the delta CRL served at the certificates' CRL DP / FreshestCRL first list
the certificate (one poller, every 100 ms). Meanwhile the control certificate is checked
on every channel once a second: any refusal of it is a false refusal. A channel whose tools are
missing (``java``/``javac``; nginx; nginx without ``ssl_ocsp``) is skipped with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from pathlib import Path
from typing import Any

import httpx
from cryptography import x509

from loadtests.common import emit, log, make_ca, parser, percentile, scratch, set_option, wait_until
from loadtests.enforcement_nginx import client_context
from loadtests.enforcement_rig import Channel, Client, Rig
from loadtests.pcaserver import PcaServer
from loadtests.propagation import loop_lag, raised_priority

RESOLUTION = 0.02  # a late refusal is timed to within 2%: fewer checks of certificates still accepted


@dataclasses.dataclass
class Watch:
    channel: str
    serial: str
    refused_s: float | None = None
    bracket_s: float = 0.0  # from the last answer before the refusal to the refusal
    checks: int = 0
    errors: int = 0
    problem: str | None = None
    refusal: str = ""


@dataclasses.dataclass
class Control:
    checks: int = 0
    false_refusals: int = 0
    errors: int = 0
    details: list[str] = dataclasses.field(default_factory=list)


# --- issuing ----------------------------------------------------------------------------------------


def issue(admin: httpx.Client, work: Path, name: str, body: dict[str, Any]) -> tuple[str, Path, Path]:
    r = admin.post("/v1/certificates", json=body)
    r.raise_for_status()
    data = r.json()
    cert, key = work / f"{name}.pem", work / f"{name}.key"
    cert.write_text(data["certificate"])
    key.write_text(data["private_key"])
    key.chmod(0o600)
    return data["serial"], cert, key


def crl_dp(cert: x509.Certificate) -> str:
    points = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    return str(points[0].full_name[0].value) if points[0].full_name else ""


# --- measuring --------------------------------------------------------------------------------------


async def watch(channel: Channel, client: Client, acked: float, limit_s: float, poll: float) -> Watch:
    """Check every ``poll`` s, or every ``RESOLUTION`` of the time since the 2xx once that is longer."""
    w = Watch(channel.name, client.serial)
    answered = acked
    while (elapsed := time.perf_counter() - acked) < limit_s:
        asked = time.perf_counter()
        verdict, detail = await channel.check(client)
        w.checks += 1
        if verdict == "refused":
            now = time.perf_counter()
            w.refused_s, w.bracket_s = now - acked, now - answered
            w.refusal = detail[:160]
            return w
        answered = time.perf_counter()
        if verdict == "error":
            w.errors += 1
            w.problem = w.problem or detail[:200]
        await asyncio.sleep(max(0.0, max(poll, elapsed * RESOLUTION) - (answered - asked)))
    return w


async def revoke_and_watch(
    admin: httpx.AsyncClient, channels: list[Channel], client: Client, limit_s: float, poll: float
) -> list[Watch]:
    before = await asyncio.gather(*(ch.check(client) for ch in channels))
    measured = [ch for ch, (verdict, _) in zip(channels, before, strict=True) if verdict == "ok"]
    skipped = [
        Watch(ch.name, client.serial, problem=f"not accepted before its revocation: {verdict} {detail}"[:200])
        for ch, (verdict, detail) in zip(channels, before, strict=True)
        if verdict != "ok"
    ]
    r = await admin.post(f"/v1/certificates/{client.serial}/revoke", json={"reason": "keyCompromise"})
    acked = time.perf_counter()
    if not 200 <= r.status_code < 300:
        return [Watch(ch.name, client.serial, problem=f"revoke: HTTP {r.status_code}") for ch in channels]
    watches = await asyncio.gather(*(watch(ch, client, acked, limit_s, poll) for ch in measured))
    return [*watches, *skipped]


async def control_loop(channels: list[Channel], control: Client, stop: asyncio.Event) -> dict[str, Control]:
    seen = {ch.name: Control() for ch in channels}
    while not stop.is_set():
        verdicts = await asyncio.gather(*(ch.check(control) for ch in channels))
        for ch, (verdict, detail) in zip(channels, verdicts, strict=True):
            c = seen[ch.name]
            c.checks += 1
            if verdict != "ok":
                c.false_refusals += verdict == "refused"
                c.errors += verdict == "error"
                if len(c.details) < 3:
                    c.details.append(f"{verdict}: {detail}"[:200])
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):
                await stop.wait()
    return seen


async def measure(
    server: PcaServer, channels: list[Channel], clients: list[Client], control: Client, args: Any
) -> tuple[list[Watch], dict[str, Control], dict[str, float]]:
    """Revoke and watch; also the client's own CPU and event-loop lag (a starved client would inflate the times)."""
    stop = asyncio.Event()
    control_task = asyncio.create_task(control_loop(channels, control, stop))
    lag: list[float] = []
    lag_task = asyncio.create_task(loop_lag(lag, stop))
    headers = {"authorization": f"Bearer {server.token}"}
    async with (
        httpx.AsyncClient(base_url=server.admin_url, headers=headers, timeout=30) as admin,
        raised_priority(),
    ):
        started, cpu = time.perf_counter(), time.process_time()
        tasks = []
        for i, client in enumerate(clients):
            await asyncio.sleep(max(0.0, started + i * args.spacing - time.perf_counter()))
            tasks.append(asyncio.create_task(revoke_and_watch(admin, channels, client, args.timeout, args.poll)))
            if (i + 1) % 10 == 0:
                log(f"  {i + 1} of {len(clients)} revoked")
        results = await asyncio.gather(*tasks)
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    stop.set()
    controls = await control_task
    await lag_task
    lag.sort()
    client = {
        "seconds": round(seconds, 1),
        "cpu_fraction": round(cpu / seconds, 2),
        "loop_lag_p99_ms": round(percentile(lag, 99) * 1000, 1),
        "loop_lag_max_ms": round(lag[-1] * 1000, 1) if lag else float("nan"),
    }
    return [w for ws in results for w in ws], controls, client


def summarize(channel: Channel, watches: list[Watch], control: Control, timeout: float) -> dict[str, Any]:
    mine = [w for w in watches if w.channel == channel.name]
    measured = [w for w in mine if w.problem is None or w.checks]
    times = sorted(w.refused_s for w in measured if w.refused_s is not None)

    def ms(pct: float) -> float:
        return round(percentile(times, pct) * 1000, 1) if times else float("nan")

    return {
        "channel": channel.name,
        "label": channel.label,
        "revocations": len(measured),
        "refused": len(times),
        "not_refused": len(measured) - len(times),
        "timeout_s": timeout,
        "p50_ms": ms(50),
        "p90_ms": ms(90),
        "p99_ms": ms(99),
        "max_ms": round(times[-1] * 1000, 1) if times else float("nan"),
        "checks": sum(w.checks for w in measured),
        "bracket_max_ms": round(max((w.bracket_s for w in measured if w.refused_s is not None), default=0) * 1000, 1),
        "check_errors": sum(w.errors for w in measured),
        "not_measured": len(mine) - len(measured),
        "control_checks": control.checks,
        "control_false_refusals": control.false_refusals,
        "control_errors": control.errors,
        "refusal_example": next((w.refusal for w in measured if w.refusal), ""),
        "problems": sorted({w.problem for w in mine if w.problem})[:3] + control.details[:2],
        "notes": channel.notes,
    }


# --- the run ----------------------------------------------------------------------------------------------


def prepare(server: PcaServer, work: Path, count: int) -> tuple[dict[str, Path], list[str], list[Client], Client]:
    certs = work / "certs"
    certs.mkdir()
    headers = {"authorization": f"Bearer {server.token}"}
    with httpx.Client(base_url=server.admin_url, headers=headers, timeout=30) as admin:
        server_body = {"subject": "CN=127.0.0.1", "profile": "server", "ips": ["127.0.0.1"], "dns": ["localhost"]}
        _, server_cert, server_key = issue(admin, certs, "server", server_body)
        made = [
            issue(admin, certs, f"client-{i}", {"subject": f"CN=enforcement-client-{i}", "profile": "client"})
            for i in range(count + 1)
        ]
    cfg = server.cfg
    root, issuing = Path(cfg.data_dir) / "root-ca.pem", Path(cfg.data_dir) / "issuing-ca.pem"
    chain = certs / "chain.pem"
    chain.write_bytes(root.read_bytes() + issuing.read_bytes())
    server_chain = certs / "server-chain.pem"
    server_chain.write_bytes(server_cert.read_bytes() + issuing.read_bytes())
    leaf = x509.load_pem_x509_certificate(made[0][1].read_bytes())
    urls = [crl_dp(leaf), crl_dp(x509.load_pem_x509_certificate(issuing.read_bytes()))]
    with contextlib.suppress(x509.ExtensionNotFound):
        freshest = leaf.extensions.get_extension_for_class(x509.FreshestCRL).value
        urls.append(str(freshest[0].full_name[0].value) if freshest[0].full_name else "")
    clients = [Client(serial, cert, key, client_context(chain, cert, key)) for serial, cert, key in made]
    files = {"root": root, "issuing": issuing, "chain": chain, "server_chain": server_chain, "server_key": server_key}
    return files, urls, clients[1:], clients[0]


Measured = tuple[list[Channel], list[Watch], dict[str, Control], dict[str, float]]


async def run_channels(
    server: PcaServer, rig: Rig, files: dict[str, Path], urls: list[str], clients: list[Client], control: Client
) -> Measured:
    try:
        channels = rig.start_nginx(files, urls[:2])
        channels += await rig.start_java(files)
        references = await rig.start_references(urls[0], urls[2] if len(urls) > 2 else None)
        if channels:
            channels += references
        if not channels:
            return [], [], {}, {}
        # Every channel accepts the control before the clock starts (nginx up, the first CRLs loaded).
        deadline = time.monotonic() + 30
        pending = list(channels)
        while pending and time.monotonic() < deadline:
            verdicts = await asyncio.gather(*(ch.check(control) for ch in pending))
            pending = [ch for ch, (verdict, _) in zip(pending, verdicts, strict=True) if verdict != "ok"]
            if pending:
                await asyncio.sleep(0.5)
        if pending:
            details = await asyncio.gather(*(ch.check(control) for ch in pending))
            raise RuntimeError(f"the control certificate is not accepted by {[ch.name for ch in pending]}: {details}")
        log(f"enforcement: {len(clients)} revocations, channels {', '.join(ch.name for ch in channels)}")
        watches, controls, client = await measure(server, channels, clients, control, rig.args)
        for nginx in rig.nginxes:
            nginx.check_alive()
        for service in rig.services:
            service.check_alive()
        return channels, watches, controls, client
    finally:
        await rig.stop()


def run(args: Any) -> dict[str, Any]:
    if args.smoke:
        args.revocations, args.spacing, args.timeout = min(args.revocations, 3), min(args.spacing, 1.0), 10.0
    with scratch("enforcement") as work:
        cfg = make_ca(work)
        changed = dict(item.split("=", 1) for item in args.set)
        if args.after_revocation_seconds is not None:
            changed["crl.after_revocation_seconds"] = f"{args.after_revocation_seconds:g}"
        for key, value in changed.items():
            section, _, option = key.rpartition(".")
            cfg = set_option(cfg, section, option, value)
        settings = {
            "crl.interval_seconds": cfg.crl.interval_seconds,
            "crl.after_revocation_seconds": cfg.crl.after_revocation_seconds,
            "crl.delta_interval_seconds": cfg.crl.delta_interval_seconds,
            "ocsp.validity_seconds": cfg.ocsp.validity_seconds,
            "changed_from_pca_init": changed,
        }
        rig = Rig(work, args)
        with PcaServer(cfg, "uvicorn") as server:
            files, urls, clients, control = prepare(server, work, args.revocations)
            wait_until(lambda: all(httpx.get(u, timeout=2).status_code == 200 for u in urls), 30, "the CRLs")
            channels, watches, controls, client = asyncio.run(run_channels(server, rig, files, urls, clients, control))
            server.check_alive()
    rows = [summarize(ch, watches, controls[ch.name], args.timeout) for ch in channels]
    for row in rows:
        log(
            f"  {row['channel']}: {row['refused']}/{row['revocations']} refused, p50 {row['p50_ms']} ms, "
            f"p99 {row['p99_ms']} ms, max {row['max_ms']} ms; control false refusals {row['control_false_refusals']}"
        )
    for name, why in rig.skipped.items():
        log(f"  {name}: skipped: {why}")
    return {
        "scenario": "enforcement",
        "params": {
            "revocations": args.revocations,
            "spacing_s": args.spacing,
            "timeout_s": args.timeout,
            "poll_ms": round(args.poll * 1000),
            "server": "pca serve (uvicorn, every role)",
            "settings": settings,
            "client": client,
            **rig.info,
        },
        "channels": rows,
        "skipped": rig.skipped,
    }


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--revocations", type=int, default=30)
    p.add_argument("--spacing", type=float, default=3.0, help="seconds between revocations")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for each refusal")
    p.add_argument("--poll-ms", type=float, default=100.0)
    p.add_argument("--after-revocation-seconds", type=float, help="set crl.after_revocation_seconds (reported)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="change a pca.toml setting (reported as changed; not for the benchmark: it measures the defaults)",
    )
    args = p.parse_args()
    args.poll = args.poll_ms / 1000
    emit(run(args), args.json_out)


if __name__ == "__main__":
    main()
