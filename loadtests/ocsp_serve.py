"""OCSP serving: requests/s and latency of `pca serve` answering GETs, measured with wrk.

    python -m loadtests.ocsp_serve --count 10000 --duration 10 --connections 64

wrk (Debian package ``wrk``) drives the load with a Lua script that rotates over
``--distinct`` different GET requests (SHA-1 CertIDs, no nonce, as RFC 5019
clients send). A sample of answers is checked against the expected status.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

import httpx
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from loadtests.common import make_ca, open_bench_runtime, populate
from responders.ocsp_response import certid_hashes
from revocation.config import Config

LUA = """
local paths = {}
for line in io.lines("%s") do paths[#paths + 1] = line end
local i = 0
request = function()
  i = i + 1
  return wrk.format("GET", paths[(i %% #paths) + 1])
end
"""


def request_path(issuer_hashes: tuple[bytes, bytes], serial: int) -> str:
    name_hash, key_hash = issuer_hashes
    req = ocsp.OCSPRequestBuilder().add_certificate_by_hash(name_hash, key_hash, serial, hashes.SHA1()).build()
    b64 = base64.b64encode(req.public_bytes(serialization.Encoding.DER))
    return "/ocsp/" + quote(b64.decode(), safe="")


def start_server(cfg: Config, server: str = "uvicorn", workers: int = 1) -> subprocess.Popen[bytes]:
    log = open(cfg.data_dir / "serve.log", "ab")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "revocation.cli",
            "serve",
            "--config",
            str(cfg.path),
            "--log-level",
            "warning",
            "--server",
            server,
            "--workers",
            str(workers),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    return proc


def wait_presigned(cfg: Config, expected: int, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            health = httpx.get(cfg.admin_url + "/healthz", timeout=2).json()
            if health.get("presigner", {}).get("lag_events") == 0 and health["responder"]["lag_changes"] == 0:
                return
        except (httpx.HTTPError, KeyError, ValueError):
            pass
        time.sleep(0.5)
    raise RuntimeError("the server did not finish pre-signing in time")


def parse_wrk(output: str) -> dict[str, float]:
    def latency(label: str) -> float:
        m = re.search(rf"^\s*{label}%\s+([\d.]+)(us|ms|s)\s*$", output, re.M)
        if not m:
            return float("nan")
        value, unit = float(m.group(1)), m.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    return {
        "requests_per_s": float(rps.group(1)) if rps else float("nan"),
        "p50_ms": latency("50"),
        "p90_ms": latency("90"),
        "p99_ms": latency("99"),
        "non_2xx": int(errors.group(1)) if errors else 0,
        "socket_errors": sum(int(x) for x in socket_errors.groups()) if socket_errors else 0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=10_000, help="certificates issued (1%% revoked)")
    parser.add_argument("--distinct", type=int, default=1000, help="different requests rotated over")
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--server", default="uvicorn", choices=["uvicorn", "granian"])
    parser.add_argument("--workers", type=int, default=1, help="public listener processes (granian)")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is required (Debian: apt-get install -y wrk)")
    cfg = make_ca()
    rt = open_bench_runtime(cfg)
    try:
        serials = asyncio.run(populate(rt, args.count))
        issuer = next(i for i in asyncio.run(rt.view.issuers()) if i.issuer_id == "issuing-ca")
    finally:
        rt.close()
    hashes_ = certid_hashes(issuer.cert)["sha1"]
    chosen = serials[:: max(1, len(serials) // args.distinct)][: args.distinct]
    paths = [request_path(hashes_, s) for s in chosen]
    work = Path(tempfile.mkdtemp(prefix="pca-wrk-"))
    (work / "paths.txt").write_text("\n".join(paths) + "\n")
    (work / "rotate.lua").write_text(LUA % (work / "paths.txt"))
    proc = start_server(cfg, args.server, args.workers)
    try:
        wait_presigned(cfg, args.count)
        # Check a sample of answers before measuring: right CertID, right status.
        checked = 0
        for path, serial in list(zip(paths, chosen, strict=True))[:50]:
            resp = ocsp.load_der_ocsp_response(httpx.get(cfg.public_url + path, timeout=5).content)
            single = next(r for r in resp.responses if r.serial_number == serial)
            want = ocsp.OCSPCertStatus.REVOKED if (serial - (1 << 120)) % 100 == 0 else ocsp.OCSPCertStatus.GOOD
            if single.certificate_status != want:
                raise RuntimeError(f"serial {serial:x}: {single.certificate_status}, expected {want}")
            checked += 1
        out = subprocess.run(
            [
                "wrk",
                f"-t{args.threads}",
                f"-c{args.connections}",
                f"-d{args.duration}s",
                "--latency",
                "-s",
                str(work / "rotate.lua"),
                cfg.public_url,
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    finally:
        proc.terminate()
        proc.wait(timeout=15)
    result = {
        "scenario": "ocsp_serve",
        "server": f"pca serve ({args.server}, {args.workers} public process(es))",
        "certificates": args.count,
        "distinct_requests": len(paths),
        "checked_answers": checked,
        **parse_wrk(out),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
