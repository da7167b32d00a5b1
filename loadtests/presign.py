"""Pre-signing: time to pre-sign responses for 100,000 certificates from an empty store.

    python -m loadtests.presign [--smoke] [--runs 2] [--count 100000]

Each run copies a CA whose log holds the certificates (1% revoked) and whose response
store is empty, starts the pre-signer's process pool (1 or 2 workers, started before the
clock), and times ``PreSigner.catch_up`` until every certificate has a stored response.
Interleaved with the runs, on the same machine: ``openssl speed -seconds 3 ecdsap256``
(sign/s, one core) and cryptography's ``private_key.sign()`` alone in a loop (one core,
ECDSA P-256 with SHA-256 over 250 bytes, about a tbsResponseData).
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from loadtests import peers
from loadtests.common import (
    build_template,
    clone_ca,
    emit,
    issuer_record,
    log,
    median,
    open_bench_runtime,
    parser,
    presign_all,
    runs_of,
    scratch,
)
from pca.config import Config
from responders.store.sqlite import SQLiteResponseStore


def presign_run(template: Config, base: Path, count: int, workers: int) -> dict[str, Any]:
    cfg = clone_ca(template, base)
    rt = open_bench_runtime(cfg)
    try:
        seconds = asyncio.run(presign_all(rt, workers))
        stored = asyncio.run(SQLiteResponseStore(rt.db).last_change())
    finally:
        rt.close()
    if stored < count:
        raise RuntimeError(f"{workers} worker(s): {stored} responses stored for {count} certificates")
    return {"workers": workers, "seconds": round(seconds, 3), "responses_per_s": round(count / seconds)}


def python_sign_rate(key_path: Path, seconds: float) -> float:
    """``private_key.sign()`` alone, in this process (one core)."""
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise RuntimeError(f"{key_path} is not an EC key")
    data = os.urandom(250)
    algorithm = ec.ECDSA(hashes.SHA256())
    n = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        for _ in range(500):
            key.sign(data, algorithm)
        n += 500
    return n / (time.perf_counter() - started)


def run(*, smoke: bool, runs: int, count: int) -> dict[str, Any]:
    if smoke:
        count = min(count, 2000)
    speed_seconds = 1 if smoke else 3
    with scratch("presign") as work:
        log(f"presign: recording {count} certificates")
        template = build_template(work / "template", count)
        signer_ref = issuer_record(template.cfg).signer_key_ref
        if signer_ref is None:
            raise RuntimeError("the issuing CA has no delegated OCSP signer")
        by_workers: dict[int, list[dict[str, Any]]] = {1: [], 2: []}
        openssl_speed: list[float] = []
        python_sign: list[float] = []
        for n in range(runs):
            for workers in (1, 2):
                r = presign_run(template.cfg, work / f"run-{n}-{workers}", count, workers)
                by_workers[workers].append(r)
                log(f"  presign {workers} worker(s): {r['responses_per_s']} responses/s ({r['seconds']} s)")
            openssl_speed.append(peers.openssl_speed_ecdsap256(speed_seconds))
            python_sign.append(python_sign_rate(Path(signer_ref.path), speed_seconds))
            log(f"  openssl speed: {openssl_speed[-1]:.0f} sign/s; private_key.sign(): {python_sign[-1]:.0f}/s")
    sign_alone = median(python_sign)
    rows = []
    for workers, results in by_workers.items():
        rate = median([r["responses_per_s"] for r in results])
        per_core = rate / workers
        rows.append(
            {
                "workers": workers,
                "seconds": median([r["seconds"] for r in results]),
                "responses_per_s": round(rate),
                "per_core": round(per_core),
                "x_private_key_sign": round(per_core / sign_alone, 2),
                "x_openssl_speed": round(per_core / median(openssl_speed), 2),
                "runs": [r["responses_per_s"] for r in results],
            }
        )
    return {
        "scenario": "presign",
        "params": {"certificates": count, "runs": runs, "speed_seconds": speed_seconds},
        "results": rows,
        "openssl_speed_sign_per_s": round(median(openssl_speed)),
        "private_key_sign_per_s": round(sign_alone),
        "openssl_speed_runs": [round(v) for v in openssl_speed],
        "private_key_sign_runs": [round(v) for v in python_sign],
    }


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--count", type=int, default=100_000)
    args = p.parse_args()
    emit(run(smoke=args.smoke, runs=runs_of(args), count=args.count), args.json_out)


if __name__ == "__main__":
    main()
