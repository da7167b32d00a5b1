"""Import rate: ``pca import`` of an ``openssl ca`` database into SQLite, every signature checked.

    python -m loadtests.import_rate [--smoke] [--runs 2] [--sizes 10000 100000] [--workers N]

An RSA-2048 CA signs N leaf certificates (in worker processes, before any clock starts), written as
``openssl ca`` writes them: ``index.txt`` (1% revoked, keyCompromise) and ``newcerts/<SERIAL>.pem``.
For each run a fresh ``pca init`` records the CA as an external issuer, then the real command runs
as a process: ``pca import --openssl-index index.txt --certs-dir newcerts --json`` (signature checks
in one worker process per core by default, 1,000 certificates per append). Reported: certificates
per second over the command's whole run (start-up included) and the peak RSS of its largest
process (getrusage of a wrapper that only runs the command), per size: equal peaks at 10x the
size mean memory does not grow with the input.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from loadtests.common import emit, log, make_ca, median, parser, runs_of, scratch
from loadtests.external_ca import EXTERNAL, make_external_ca, record_external_issuer, write_openssl_ca

# Runs a command and reports the largest RSS (KiB) among the processes it waited for.
_WRAPPER = (
    "import resource, subprocess, sys\n"
    "r = subprocess.run(sys.argv[1:], stdout=subprocess.PIPE)\n"
    "sys.stdout.buffer.write(r.stdout)\n"
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)\n"
    "sys.exit(r.returncode)\n"
)


def one_run(source: Path, work: Path, workers: int | None) -> dict[str, Any]:
    cfg = make_ca(work)
    record_external_issuer(cfg, source)
    cmd = [sys.executable, "-m", "pca.cli", "import", "--config", str(cfg.path), "--issuer", EXTERNAL,
           "--openssl-index", str(source / "index.txt"), "--certs-dir", str(source / "newcerts"), "--json"]  # fmt: skip
    if workers is not None:
        cmd += ["--workers", str(workers)]
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _WRAPPER, *cmd], capture_output=True, text=True, timeout=3600)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"pca import failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    summary = json.loads(proc.stdout)
    peak_kib = int(proc.stderr.strip().splitlines()[-1])
    return {
        "certificates": summary["seen"],
        "imported": summary["imported"],
        "revocations": summary["revocations_recorded"],
        "refused": summary["refused"],
        "seconds": round(seconds, 2),
        "certs_per_s": round(summary["seen"] / seconds),
        "peak_rss_mb": round(peak_kib / 1024, 1),
    }


def run(*, smoke: bool, runs: int, sizes: list[int], workers: int | None) -> dict[str, Any]:
    if smoke:
        sizes = [min(s, 1000) for s in sizes[:1]]
    results = []
    with scratch("import") as work:
        for size in sizes:
            source = work / f"openssl-{size}"
            log(f"import_rate: signing {size:,} RSA-2048 leaves")
            make_external_ca(source)
            write_openssl_ca(source, size)
            rows = []
            for n in range(runs):
                row = one_run(source, work / f"pca-{size}-{n}", workers)
                if row["imported"] != size or row["refused"]:
                    raise RuntimeError(f"imported {row['imported']} of {size}, refused {row['refused']}")
                log(f"  {size:,}: {row['certs_per_s']:,}/s, {row['seconds']} s, peak RSS {row['peak_rss_mb']} MB")
                rows.append(row)
            results.append(
                {
                    "certificates": size,
                    "certs_per_s": round(median([r["certs_per_s"] for r in rows])),
                    "seconds": median([r["seconds"] for r in rows]),
                    "peak_rss_mb": max(r["peak_rss_mb"] for r in rows),
                    "runs": [r["certs_per_s"] for r in rows],
                }
            )
    return {
        "scenario": "import_rate",
        "params": {
            "sizes": sizes,
            "runs": runs,
            "ca_key": "RSA-2048",
            "revoked_fraction": 0.01,
            "workers": workers if workers is not None else "one per core",
            "command": "pca import --openssl-index index.txt --certs-dir newcerts --json",
        },
        "results": results,
    }


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    p.add_argument("--workers", type=int, help="pca import --workers (default: one per core)")
    args = p.parse_args()
    emit(run(smoke=args.smoke, runs=runs_of(args), sizes=args.sizes, workers=args.workers), args.json_out)


if __name__ == "__main__":
    main()
