"""Record-to-servable latency: from the 2xx of ``POST /v1/certificates/import`` to OCSP serving ``good``.

    python -m loadtests.record_latency [--smoke] [--runs 2] [--count 200] [--poll-ms 10]

``pca serve`` in its default shape (uvicorn, every role in one process, SQLite) with an external
RSA-2048 CA recorded as an issuer and given an OCSP signer. Its issuing core's part is played by
a client with a ``recorder`` token: it records ``--count`` certificates the CA signed beforehand,
one request each, one after another; from each 2xx it asks the public listener for that serial's
OCSP GET every ``--poll-ms`` ms (before the recording the answer is ``unauthorized``) until the
answer is ``good``. Reported: p50, p99 and max of (good served - 2xx received), and the API round
trip of the recording itself.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
from cryptography import x509
from cryptography.x509 import ocsp

from loadtests.answers import IssuerHashes
from loadtests.common import emit, log, make_ca, median, parser, percentile, runs_of, scratch
from loadtests.external_ca import (
    EXTERNAL,
    FIRST_SERIAL,
    make_external_ca,
    record_external_issuer,
    write_openssl_ca,
)
from loadtests.pcaserver import PcaServer
from revocation.admin.tokens import add_token

TIMEOUT_S = 30.0


def is_good(body: bytes, serial: int) -> bool:
    try:
        resp = ocsp.load_der_ocsp_response(body)
    except ValueError:
        return False
    if resp.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
        return False
    return all(s.serial_number == serial and s.certificate_status == ocsp.OCSPCertStatus.GOOD for s in resp.responses)


def record_and_watch(
    server: PcaServer, token: str, hashes: IssuerHashes, source: Path, serials: list[int], poll: float
) -> dict[str, Any]:
    servable: list[float] = []
    api: list[float] = []
    problems: list[str] = []
    headers = {"authorization": f"Bearer {token}"}
    with (
        httpx.Client(base_url=server.admin_url, headers=headers, timeout=30) as admin,
        httpx.Client(base_url=server.public_url, timeout=10) as public,
    ):
        for serial in serials:
            digits = f"{serial:X}"
            pem = (source / "newcerts" / (("0" if len(digits) % 2 else "") + digits + ".pem")).read_text()
            path = hashes.probe(serial, False).get_path("/ocsp")
            sent = time.perf_counter()
            r = admin.post("/v1/certificates/import", json={"issuer": EXTERNAL, "certificate": pem})
            acked = time.perf_counter()
            api.append(acked - sent)
            if r.status_code != 201:
                problems.append(f"{serial:x}: HTTP {r.status_code} {r.text[:200]}")
                continue
            while time.perf_counter() - acked < TIMEOUT_S:
                asked = time.perf_counter()
                resp = public.get(path)
                if resp.status_code == 200 and is_good(resp.content, serial):
                    servable.append(time.perf_counter() - acked)
                    break
                time.sleep(max(0.0, poll - (time.perf_counter() - asked)))
            else:
                problems.append(f"{serial:x} not served good after {TIMEOUT_S:.0f} s")
    servable.sort()
    api.sort()
    return {
        "recorded": len(serials),
        "servable": len(servable),
        "p50_ms": round(percentile(servable, 50) * 1000, 1),
        "p99_ms": round(percentile(servable, 99) * 1000, 1),
        "max_ms": round(servable[-1] * 1000, 1) if servable else float("nan"),
        "record_api_p50_ms": round(percentile(api, 50) * 1000, 1),
        "record_api_p99_ms": round(percentile(api, 99) * 1000, 1),
        "problems": problems[:5],
    }


def run(*, smoke: bool, runs: int, count: int, poll_ms: float) -> dict[str, Any]:
    if smoke:
        count = min(count, 10)
    results = []
    with scratch("record") as work:
        source = work / "openssl"
        make_external_ca(source)
        write_openssl_ca(source, count * runs)
        issuer = x509.load_pem_x509_certificate((source / "ca.pem").read_bytes())
        cfg = make_ca(work)
        record_external_issuer(cfg, source, signer=True)
        token = add_token(cfg.tokens_db, "issuing-core", "recorder")
        hashes = IssuerHashes(issuer)
        with PcaServer(cfg, "uvicorn") as server:
            for n in range(runs):
                serials = list(range(FIRST_SERIAL + n * count, FIRST_SERIAL + (n + 1) * count))
                r = record_and_watch(server, token, hashes, source, serials, poll_ms / 1000)
                server.check_alive()
                log(f"  run {n + 1}: p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms ({r['servable']}/{r['recorded']})")
                results.append(r)
    return {
        "scenario": "record_latency",
        "params": {"certificates_per_run": count, "runs": runs, "poll_ms": poll_ms, "server": "pca serve (uvicorn)"},
        "p50_ms": median([r["p50_ms"] for r in results]),
        "p99_ms": median([r["p99_ms"] for r in results]),
        "max_ms": max(r["max_ms"] for r in results),
        "all_servable": all(r["servable"] == r["recorded"] for r in results),
        "runs": results,
    }


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--count", type=int, default=200)
    p.add_argument("--poll-ms", type=float, default=10.0)
    args = p.parse_args()
    emit(run(smoke=args.smoke, runs=runs_of(args), count=args.count, poll_ms=args.poll_ms), args.json_out)


if __name__ == "__main__":
    main()
