"""OCSP serving: requests/s and latency of our responder and its peers, with wrk.

    python -m loadtests.ocsp_serve [--smoke] [--runs 2] [--count 100000] [--distinct 1000] [--duration 10]

100,000 certificates (1% revoked) are recorded in the log and pre-signed before any
server starts (hot cache: each responder process loads the whole change feed, and a
warm-up run precedes the measurement). wrk (64 connections, 2 threads) rotates GET
paths and POST bodies over ``--distinct`` certificates with SHA-1 CertIDs and no
nonce. Targets, interleaved in each round (the order reversed every other round):

- ``pca serve`` as it starts by default (granian, one worker per core less one beside the signing
  roles), ``pca serve --server granian --workers 2`` and ``pca serve --server uvicorn``;
- ``openssl ocsp -index ... -multi 2`` over the same certificates, signing live, restarted
  before every run (it spins after wrk's closing connections), in a loopback-only network
  namespace (OpenSSL 3.0 cannot bind one address);
- nginx (2 workers) serving the same pre-signed responses as static files, GET only.

Before every measurement a sample of answers is fetched by GET and POST and checked:
successful, the asked SHA-1 CertID and serial, the expected status.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from loadtests import peers
from loadtests.answers import CheckSpec, IssuerHashes, Probe, probes
from loadtests.common import (
    ISSUER,
    Service,
    Template,
    build_template,
    emit,
    issuer_record,
    log,
    median_record,
    open_bench_runtime,
    parser,
    runs_of,
    scratch,
)
from loadtests.pcaserver import PcaServer
from loadtests.wrkrun import run_wrk, write_script
from pca.config import Config
from responders.store.sqlite import SQLiteResponseStore

PCA_GET_PREFIX = "/ocsp"
PCA_POST_PATH = "/ocsp"


@dataclasses.dataclass
class Target:
    name: str
    kind: str  # "pca", "openssl", "nginx"
    modes: tuple[str, ...]
    get_prefix: str
    post_path: str
    # Starts the target; yields its base URL. Entered once per round, or once per mode.
    start: Callable[[], contextlib.AbstractContextManager[str]]
    restart_per_mode: bool = False
    prefix: Sequence[str] = ()  # command prefix to reach it (a network namespace)
    runs: dict[str, list[dict[str, Any]]] = dataclasses.field(default_factory=dict)
    checked: int = 0
    wrong: int = 0
    problems: list[str] = dataclasses.field(default_factory=list)


def check_answers(target: Target, base_url: str, sample: list[Probe], hashes_: IssuerHashes, work: Path) -> None:
    spec = CheckSpec(
        base_url,
        target.get_prefix if "GET" in target.modes else None,
        target.post_path if "POST" in target.modes else None,
        hashes_.name_hash,
        hashes_.key_hash,
        sample,
    )
    path = work / f"check-{target.kind}.json"
    path.write_text(json.dumps(spec.to_json()))
    cmd = [*target.prefix, sys.executable, "-m", "loadtests.answers", str(path), "60"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"checking {target.name} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout)
    target.checked += result["checked"]
    target.wrong += result["wrong"]
    target.problems.extend(result["problems"][: 5 - len(target.problems)])
    if result["wrong"]:
        log(f"  {target.name}: {result['wrong']} of {result['checked']} answers wrong: {result['problems'][:2]}")


def measure(
    target: Target,
    scripts: dict[tuple[str, str], Path],
    sample: list[Probe],
    hashes_: IssuerHashes,
    work: Path,
    duration: float,
    warmup: float,
) -> None:
    def one(url: str, mode: str) -> None:
        result = run_wrk(url, scripts[(target.kind, mode)], duration=duration, prefix=target.prefix)
        target.runs.setdefault(mode, []).append(result)
        errors = f", {result['errors']} errors {result['error_kinds']}" if result["errors"] else ""
        log(f"  {target.name} {mode}: {result['requests_per_s']:.0f} req/s, p99 {result['p99_ms']:.2f} ms{errors}")

    if target.restart_per_mode:
        for mode in target.modes:
            with target.start() as url:
                check_answers(target, url, sample, hashes_, work)
                one(url, mode)
        return
    with target.start() as url:
        check_answers(target, url, sample, hashes_, work)
        if warmup > 0:
            run_wrk(url, scripts[(target.kind, "GET")], duration=warmup, prefix=target.prefix)
        for mode in target.modes:
            one(url, mode)
        check_answers(target, url, sample, hashes_, work)


@contextlib.contextmanager
def pca_target(cfg: Config, server: str, workers: int) -> Iterator[str]:
    with PcaServer(cfg, server, workers) as srv:
        yield srv.public_url
        srv.check_alive()


@contextlib.contextmanager
def service_target(make: Callable[[], tuple[Service, int]]) -> Iterator[str]:
    service, port = make()
    with service:
        yield f"http://127.0.0.1:{port}"
        service.check_alive()


def stored_responses(cfg: Config, chosen: list[Probe]) -> list[tuple[Probe, bytes]]:
    rt = open_bench_runtime(cfg)
    try:
        store = SQLiteResponseStore(rt.db)

        async def fetch() -> list[tuple[Probe, bytes]]:
            out = []
            for p in chosen:
                stored = await store.get(ISSUER, p.serial)
                if stored is None:
                    raise RuntimeError(f"no stored response for {p.serial:x}")
                out.append((p, stored.der))
            return out

        return asyncio.run(fetch())
    finally:
        rt.close()


def index_rows(cfg: Config) -> list[tuple[Any, ...]]:
    rt = open_bench_runtime(cfg)
    try:
        records = asyncio.run(rt.view.issuer_certificates(ISSUER))
    finally:
        rt.close()
    return [(r.serial, r.not_after, r.revoked_at if r.status == "revoked" else None, r.reason) for r in records]


def targets_for(
    template: Template,
    chosen: list[Probe],
    work: Path,
    netns: peers.NetNS | None,
    openssl_multi: int,
    openssl_single: bool,
) -> list[Target]:
    cfg = template.cfg
    issuer = issuer_record(cfg)
    if issuer.signer_cert is None or issuer.signer_key_ref is None:
        raise RuntimeError("the issuing CA has no delegated OCSP signer")
    ossl = work / "openssl"
    ossl.mkdir()
    index = ossl / "index.txt"
    peers.write_index(index, index_rows(cfg))
    signer = peers.pem(ossl / "signer.pem", issuer.signer_cert)
    ca_pem = peers.pem(ossl / "issuing-ca.pem", issuer.cert)
    signer_key = Path(issuer.signer_key_ref.path)
    ns_prefix = netns.prefix if netns is not None else []
    ngx = work / "nginx"
    ngx.mkdir()
    responses = stored_responses(cfg, chosen)

    def openssl_service() -> tuple[Service, int]:
        return peers.openssl_ocsp(ossl, index, signer, signer_key, ca_pem, multi=openssl_multi, prefix=ns_prefix)

    def nginx_service() -> tuple[Service, int]:
        return peers.nginx(ngx, responses, PCA_GET_PREFIX)

    def openssl_single_service() -> tuple[Service, int]:
        return peers.openssl_ocsp(ossl, index, signer, signer_key, ca_pem, multi=1, prefix=ns_prefix)

    both = ("GET", "POST")
    targets = [
        Target("pca serve", "pca", both, PCA_GET_PREFIX, PCA_POST_PATH, lambda: pca_target(cfg, "", 0)),
        Target(
            # the default gives one granian worker per core less one beside the signers (1 here): two, for comparison
            "pca serve --server granian --workers 2",
            "pca",
            both,
            PCA_GET_PREFIX,
            PCA_POST_PATH,
            lambda: pca_target(cfg, "granian", 2),
        ),
        Target(
            "pca serve --server uvicorn",
            "pca",
            both,
            PCA_GET_PREFIX,
            PCA_POST_PATH,
            lambda: pca_target(cfg, "uvicorn", 1),
        ),
        Target(
            f"openssl ocsp -multi {openssl_multi}" if openssl_multi > 1 else "openssl ocsp",
            "openssl",
            both,
            "/",
            "/",
            lambda: service_target(openssl_service),
            restart_per_mode=True,
            prefix=ns_prefix,
        ),
        Target(
            "nginx static (2 workers)", "nginx", ("GET",), PCA_GET_PREFIX, "/", lambda: service_target(nginx_service)
        ),
    ]
    if openssl_single and openssl_multi > 1:
        # For reference: one openssl process, as without -multi (GET only, to save time).
        targets.append(
            Target(
                "openssl ocsp (1 process)",
                "openssl-1",
                ("GET",),
                "/",
                "/",
                lambda: service_target(openssl_single_service),
                restart_per_mode=True,
                prefix=ns_prefix,
            )
        )
    return targets


def summarize(targets: list[Target]) -> list[dict[str, Any]]:
    rows = []
    by_mode: dict[tuple[str, str], float] = {}
    for t in targets:
        for mode, runs in t.runs.items():
            by_mode[(t.kind, mode)] = median_record(runs)["requests_per_s"]
    for t in targets:
        for mode, runs in t.runs.items():
            med = median_record(runs)
            row: dict[str, Any] = {"target": t.name, "kind": t.kind, "mode": mode, **med}
            row["runs"] = [r["requests_per_s"] for r in runs]
            for peer in ("openssl", "nginx"):
                base = by_mode.get((peer, mode))
                row[f"x_{peer}"] = round(med["requests_per_s"] / base, 2) if base else None
            row["answers_checked"] = t.checked
            row["answers_wrong"] = t.wrong
            row["problems"] = t.problems
            rows.append(row)
    return rows


def run(
    *, smoke: bool, runs: int, count: int, distinct: int, duration: float, openssl_multi: int, openssl_single: bool
) -> dict[str, Any]:
    if smoke:
        count, distinct, duration = min(count, 2000), min(distinct, 100), 1
    warmup = 1.0 if smoke else 2.0
    with scratch("ocsp") as work:
        log(f"ocsp_serve: recording and pre-signing {count} certificates")
        template = build_template(work / "template", count, presign_workers=2)
        issuer = issuer_record(template.cfg)
        chosen_serials = template.population.sample(distinct)
        chosen = probes(issuer.cert, chosen_serials, template.population.revoked)
        # 50 answers checked per target and check: spread over the rotation, revoked ones included.
        revoked_probes = [p for p in chosen if p.revoked][:5]
        sample = [p for p in chosen[:: max(1, len(chosen) // 45)] if not p.revoked][:45] + revoked_probes
        hashes_ = IssuerHashes(issuer.cert)
        netns = peers.try_netns(work)
        try:
            targets = targets_for(template, chosen, work, netns, openssl_multi, openssl_single)
            scripts = {}
            kinds = (("pca", "/ocsp", "/ocsp"), ("openssl", "/", "/"), ("openssl-1", "/", "/"), ("nginx", "/ocsp", "/"))
            for kind, get_prefix, post_path in kinds:
                for mode in ("GET", "POST"):
                    scripts[(kind, mode)] = write_script(work, kind, mode, chosen, get_prefix, post_path)
            for n in range(runs):
                log(f"ocsp_serve: round {n + 1} of {runs}")
                for target in targets if n % 2 == 0 else list(reversed(targets)):
                    measure(target, scripts, sample, hashes_, work, duration, warmup)
        finally:
            if netns is not None:
                netns.stop()
        return {
            "scenario": "ocsp_serve",
            "params": {
                "certificates": count,
                "revoked": len(template.population.revoked),
                "distinct_requests": len(chosen),
                "revoked_in_rotation": sum(p.revoked for p in chosen),
                "connections": 64,
                "wrk_threads": 2,
                "duration_s": duration,
                "warmup_s": warmup,
                "runs": runs,
                "openssl_multi": openssl_multi,
                "openssl_single_reference": openssl_single and openssl_multi > 1,
                "load_generator": "wrk with a Lua script (GET paths / POST bodies rotated per request)",
            },
            "openssl_network": (
                "private network namespace with only a loopback interface (unshare/nsenter)"
                if netns is not None
                else "host network namespace: openssl ocsp bound to every interface"
            ),
            "results": summarize(targets),
        }


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--count", type=int, default=100_000, help="certificates recorded (1%% revoked)")
    p.add_argument("--distinct", type=int, default=1000, help="different certificates the requests rotate over")
    p.add_argument("--duration", type=float, default=10, help="seconds per wrk run")
    p.add_argument("--openssl-multi", type=int, default=2, help="openssl ocsp -multi N (1: single process)")
    p.add_argument(
        "--no-openssl-single", action="store_true", help="skip the reference run of a single openssl ocsp process"
    )
    args = p.parse_args()
    result = run(
        smoke=args.smoke,
        runs=runs_of(args),
        count=args.count,
        distinct=args.distinct,
        duration=args.duration,
        openssl_multi=args.openssl_multi,
        openssl_single=not args.no_openssl_single and not args.smoke,
    )
    emit(result, args.json_out)


if __name__ == "__main__":
    main()
