"""Pre-signing throughput per key backend: file, PKCS#11 (SoftHSM2) and KMS (moto in server mode).

    python -m loadtests.presign_backends [--smoke] [--runs 2] [--count 10000] [--kms-count 2000]
        [--workers 1 2] [--backends file pkcs11 kms]

For each backend and worker count, a fresh CA is created with ``pca init --key-backend
...`` (SoftHSM2 token in a scratch directory; moto started on a free port with dummy
credentials), its log is filled with certificates (1% revoked), the pre-signer's
process pool is started, and ``PreSigner.catch_up`` is timed until every certificate
has a stored response. Beside it, ``SigningKey.sign_many`` alone is timed in this
process (one process, 250-byte messages, about a tbsResponseData).

What bounds each: file keys by the CPU (ECDSA in OpenSSL); SoftHSM2 by the CPU too
(ECDSA inside the library, plus the PKCS#11 call per signature); moto by moto, a
single Python server process answering ``kms.sign`` on the same 2 cores, which says
little about real KMS (there a network round trip and the account's request quota
bound it, and the backend keeps up to 16 requests in flight per worker process).
Prints JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from loadtests.common import emit, free_port, log, median, parser, populate, presign_all, runs_of, scratch
from pca.config import Config, load_config
from pca.runtime import open_runtime
from responders.store.sqlite import SQLiteResponseStore
from revocation.clock import SystemClock
from revocation.keys import open_key

PIN_ENV = "PCA_BENCH_HSM_PIN"
SOFTHSM_PATHS = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
)
AWS_ENV = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}


@contextlib.contextmanager
def softhsm(base: Path) -> Iterator[list[str]]:
    """A SoftHSM2 token in ``base``; yields the ``pca init`` flags that use it."""
    module = next((p for p in (os.environ.get("SOFTHSM2_MODULE", ""), *SOFTHSM_PATHS) if p and Path(p).is_file()), None)
    if module is None or shutil.which("softhsm2-util") is None:
        raise RuntimeError("SoftHSM2 is not installed (Debian: apt-get install softhsm2)")
    (base / "tokens").mkdir(parents=True)
    conf = base / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {base / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n")
    os.environ["SOFTHSM2_CONF"] = str(conf)  # before this process first loads the library
    os.environ[PIN_ENV] = "bench-pin-1234"
    subprocess.run(
        ["softhsm2-util", "--init-token", "--free", "--label", "bench", "--pin", "bench-pin-1234", "--so-pin", "so-99"],
        check=True,
        capture_output=True,
    )
    yield ["--pkcs11-module", module, "--pkcs11-token-label", "bench", "--pkcs11-pin-env", PIN_ENV]


@contextlib.contextmanager
def moto_kms(base: Path) -> Iterator[list[str]]:
    """moto's server on a free port; yields the ``pca init`` flags that use it."""
    os.environ.update(AWS_ENV)
    port = free_port()
    with open(base / "moto.log", "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], stdout=out, stderr=out
        )
    try:
        import httpx

        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(httpx.HTTPError):
                httpx.get(f"http://127.0.0.1:{port}/moto-api/", timeout=1)
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"moto did not start: {(base / 'moto.log').read_text()[-2000:]}")
            time.sleep(0.1)
        yield ["--kms-region", "us-east-1", "--kms-endpoint-url", f"http://127.0.0.1:{port}"]
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def init(base: Path, backend: str, flags: list[str]) -> Config:
    from pca.cli import main as pca_main

    directory = base / "ca"
    with contextlib.redirect_stdout(io.StringIO()):
        pca_main(
            [
                "init", "--dir", str(directory), "--key-backend", backend, *flags,
                "--public-url", f"http://127.0.0.1:{free_port()}", "--admin-listen", f"127.0.0.1:{free_port()}",
                "--no-admin-tls",
            ]
        )  # fmt: skip
    return load_config(directory / "pca.toml")


def presign_run(base: Path, backend: str, flags: list[str], count: int, workers: int) -> dict[str, Any]:
    cfg = init(base, backend, flags)
    rt = open_runtime(cfg, SystemClock())
    try:
        asyncio.run(populate(rt, count))
        seconds = asyncio.run(presign_all(rt, workers))
        stored = asyncio.run(SQLiteResponseStore(rt.db).last_change())
    finally:
        rt.close()
    if stored < count:
        raise RuntimeError(f"{backend}, {workers} worker(s): {stored} responses stored for {count} certificates")
    return {"seconds": round(seconds, 3), "responses_per_s": round(count / seconds)}


def sign_many_rate(base: Path, backend: str, flags: list[str], count: int) -> float:
    """``SigningKey.sign_many`` of the OCSP signer alone, in this process."""
    cfg = init(base, backend, flags)
    rt = open_runtime(cfg, SystemClock())
    try:
        issuer = next(i for i in asyncio.run(rt.view.issuers()) if i.signer_key_ref is not None)
    finally:
        rt.close()
    assert issuer.signer_key_ref is not None
    key = open_key(issuer.signer_key_ref)
    try:
        data = [os.urandom(250) for _ in range(count)]
        key.sign_many(data[:10])  # connections, sessions
        started = time.perf_counter()
        key.sign_many(data)
        return count / (time.perf_counter() - started)
    finally:
        key.close()


def run(
    *, smoke: bool, runs: int, count: int, kms_count: int, workers: list[int], backends: list[str]
) -> dict[str, Any]:
    if smoke:
        count, kms_count = min(count, 500), min(kms_count, 200)
    results: list[dict[str, Any]] = []
    sign_many: dict[str, int] = {}
    with scratch("presign-backends") as work:
        for backend in backends:
            n = kms_count if backend == "kms" else count
            setup: contextlib.AbstractContextManager[list[str]]
            if backend == "pkcs11":
                setup = softhsm(work / "softhsm")
            elif backend == "kms":
                setup = moto_kms(work)
            else:
                setup = contextlib.nullcontext([])
            with setup as flags:
                rate = sign_many_rate(work / f"{backend}-sign-many", backend, flags, n)
                sign_many[backend] = round(rate)
                log(f"{backend}: sign_many alone {rate:.0f}/s")
                for w in workers:
                    runs_out = []
                    for r in range(runs):
                        out = presign_run(work / f"{backend}-{w}-{r}", backend, flags, n, w)
                        runs_out.append(out)
                        log(f"{backend}, {w} worker(s): {out['responses_per_s']} responses/s ({out['seconds']} s)")
                    results.append(
                        {
                            "backend": backend,
                            "workers": w,
                            "certificates": n,
                            "responses_per_s": round(median([o["responses_per_s"] for o in runs_out])),
                            "seconds": median([o["seconds"] for o in runs_out]),
                            "runs": [o["responses_per_s"] for o in runs_out],
                        }
                    )
    return {
        "scenario": "presign_backends",
        "params": {"certificates": count, "kms_certificates": kms_count, "runs": runs, "workers": workers},
        "results": results,
        "sign_many_one_process_per_s": sign_many,
    }


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--count", type=int, default=10_000, help="certificates for the file and PKCS#11 backends")
    p.add_argument("--kms-count", type=int, default=2_000, help="certificates for the KMS backend (moto is slow)")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--backends", nargs="+", default=["file", "pkcs11", "kms"], choices=["file", "pkcs11", "kms"])
    args = p.parse_args()
    result = run(
        smoke=args.smoke,
        runs=runs_of(args),
        count=args.count,
        kms_count=args.kms_count,
        workers=args.workers,
        backends=args.backends,
    )
    emit(result, args.json_out)


if __name__ == "__main__":
    main()
