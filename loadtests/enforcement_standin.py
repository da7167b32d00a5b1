"""TEMPORARY stand-in for ``pca crl-sync`` (being written on branch ``crlsync``), used by the
enforcement scenario only with ``--crl-sync-stand-in`` (or ``PCA_BENCH_CRL_SYNC_STAND_IN=1``),
and then labelled as such in its results. Delete it once ``pca crl-sync`` is on main.

    python -m loadtests.enforcement_standin --url URL [--url URL ...] --ca-bundle PEM --out FILE
        [--format pem|der] [--interval SECONDS | --once] [--on-change CMD]

The agreed interface's subset the scenario uses: fetch every URL, check each CRL's signature
against a certificate of the bundle whose subject is the CRL's issuer, write them together
(atomically, only when the bytes change) and then run ``--on-change`` through the shell.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import serialization


def fetch_all(
    client: httpx.Client, urls: list[str], issuers: list[x509.Certificate]
) -> list[x509.CertificateRevocationList]:
    crls = []
    for url in urls:
        r = client.get(url)
        r.raise_for_status()
        crl = x509.load_der_x509_crl(r.content)
        issuer = next((c for c in issuers if c.subject == crl.issuer), None)
        if issuer is None or not crl.is_signature_valid(issuer.public_key()):  # type: ignore[arg-type]
            raise ValueError(f"{url}: no certificate in the bundle signed this CRL")
        crls.append(crl)
    return crls


def render(crls: list[x509.CertificateRevocationList], fmt: str) -> bytes:
    encoding = serialization.Encoding.PEM if fmt == "pem" else serialization.Encoding.DER
    return b"".join(crl.public_bytes(encoding) for crl in crls)


def write_if_changed(out: Path, data: bytes) -> bool:
    if out.exists() and out.read_bytes() == data:
        return False
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, out)
    return True


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", action="append", required=True)
    p.add_argument("--ca-bundle", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--format", choices=("pem", "der"), default="pem")
    p.add_argument("--interval", type=float, default=60.0)
    p.add_argument("--once", action="store_true")
    p.add_argument("--on-change")
    args = p.parse_args()
    issuers = x509.load_pem_x509_certificates(args.ca_bundle.read_bytes())
    with httpx.Client(timeout=10) as client:
        while True:
            started = time.monotonic()
            try:
                changed = write_if_changed(args.out, render(fetch_all(client, args.url, issuers), args.format))
            except (httpx.HTTPError, ValueError) as exc:
                print(f"crl-sync stand-in: {exc}", file=sys.stderr, flush=True)
                if args.once:
                    sys.exit(1)
                changed = False
            if changed and args.on_change:
                subprocess.run(args.on_change, shell=True, check=False, timeout=60)
            if args.once:
                return
            time.sleep(max(0.0, args.interval - (time.monotonic() - started)))


if __name__ == "__main__":
    main()
