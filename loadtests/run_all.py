"""Run every scenario and write ``docs/benchmarks.md`` and ``docs/benchmarks.json``.

    python -m loadtests.run_all [--smoke] [--runs 2] [--only SCENARIO ...] [--out-dir DIR]

Each scenario runs in a subprocess of its own (``python -m loadtests.<scenario>``) and
hands back JSON; a failed scenario is reported and the others still run (exit status 1).
``--smoke`` runs every scenario at tiny sizes for a second or two per measurement and
writes its report to a temporary directory (never to docs/). ``--only`` reruns some
scenarios and keeps the others' results from the existing benchmarks.json.
``docs/benchmarks-notes.md``, if present, is appended to the report as its analysis
(hand-written; it survives regeneration).
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, Any

from loadtests.enforcement_report import enforcement_headline
from loadtests.facts import load_average, machine, product_digest
from loadtests.report import goals, render
from loadtests.report_crash import crash_headline
from loadtests.report_fuzz import fuzz_headline
from loadtests.report_scale import scale_headline, write_scale_plots

SCENARIOS = (
    "ocsp_serve",
    "presign",
    "crl_build",
    "revocations",
    "propagation",
    "scaled_propagation",
    "memory",
    "import_rate",
    "record_latency",
    "crl_follow",
    "enforcement",
    "ocsp_fuzz",
    "crash",
    "scale",
)
ROOT = Path(__file__).resolve().parent.parent
PY = ".venv/bin/python"

COMMANDS = {
    "run_all": f"{PY} -m loadtests.run_all            # all scenarios, 3 runs each; --smoke for a quick check",
    "ocsp_serve": f"{PY} -m loadtests.ocsp_serve         # --count 100000 --distinct 1000 --duration 10",
    "presign": f"{PY} -m loadtests.presign            # --count 100000",
    "crl_build": f"{PY} -m loadtests.crl_build          # --sizes 100000 1000000 --publish-count 100000",
    "revocations": f"{PY} -m loadtests.revocations        # --count 100000 --clients 16 --duration 10",
    "propagation": f"{PY} -m loadtests.propagation        # --count 100000 --revocations 500 --rate 50 --poll-ms 20",
    "scaled_propagation": f"{PY} -m loadtests.scaled_propagation # --certs 2000 --revocations 500 --responders 3",
    "memory": f"{PY} -m loadtests.memory             # --sizes 100000 1000000",
    "import_rate": f"{PY} -m loadtests.import_rate        # --sizes 10000 100000",
    "record_latency": f"{PY} -m loadtests.record_latency     # --count 200 --poll-ms 10",
    "crl_follow": f"{PY} -m loadtests.crl_follow         # --revoked 1000000 --burst 6000 --rate 100",
    "enforcement": f"{PY} -m loadtests.enforcement        # --revocations 30 --spacing 3 --timeout 60 --poll-ms 100",
    "ocsp_fuzz": f"{PY} -m loadtests.ocsp_fuzz          # --inputs 1000000 --http-inputs 20000 --seed 5019",
    "crash": f"{PY} -m loadtests.crash              # --revocations 1200 --kills 6 --rate 50 --shapes embedded scaled",
    "scale": f"{PY} -m loadtests.scale              # --sizes 10000 100000 1000000 10000000 (sets cached in $TMPDIR)",
}
TIMEOUT = {"smoke": 300, "full": 3600}


def headline(name: str, r: dict[str, Any]) -> str:
    """The one-line figure printed for a scenario."""
    if name == "ocsp_serve":
        parts = []
        for row in r["results"]:
            if row["kind"] == "pca" or row["mode"] == "GET":
                parts.append(
                    f"{row['target']} {row['mode']} {row['requests_per_s']:,.0f} req/s p99 {row['p99_ms']:.2f} ms"
                )
        return "; ".join(parts)
    if name == "presign":
        rows = ", ".join(f"{x['workers']} worker(s) {x['responses_per_s']:,}/s" for x in r["results"])
        sign, speed = r["private_key_sign_per_s"], r["openssl_speed_sign_per_s"]
        return f"{rows}; private_key.sign() {sign:,}/s; openssl speed {speed:,}/s"
    if name == "crl_build":
        rows = "; ".join(
            f"{x['entries']:,} entries build_crl {x['build_crl_s']:.3f} s vs openssl {x['openssl_gencrl_s']:.3f} s"
            for x in r["results"]
        )
        return f"{rows}; publish {r['publish']['entries']:,}: {r['publish']['seconds']:.3f} s"
    if name == "revocations":
        return f"{r['revocations_per_s']:,.1f} revocations/s, all read back revoked: {r['all_verified']}"
    if name == "propagation":
        return (
            f"p50 {r['p50_ms']:.0f} ms, p99 {r['p99_ms']:.0f} ms, max {r['max_ms']:.0f} ms, all: {r['all_propagated']}"
        )
    if name == "scaled_propagation":
        t, b, c = r["tracker_ocsp_all"], r["blackbox_all"], r["tracker_crl"]
        return (
            f"tracker ocsp_all_responders p50 {t['p50']:.0f} ms, p99 {t['p99']:.0f} ms, max {t['max']:.0f} ms; "
            f"black-box all responders p50 {b['p50']:.0f} ms, p99 {b['p99']:.0f} ms; crl p50 {c['p50']:.0f} ms; "
            f"SLO breaches {r['slo_breaches']}; all seen: {r['all_seen']}"
        )
    if name == "memory":
        return "; ".join(
            f"{x['responses']:,} cached: {x['bytes_per_response']:,} bytes per response" for x in r["results"]
        )
    if name == "import_rate":
        return "; ".join(
            f"{x['certificates']:,} certificates: {x['certs_per_s']:,}/s, peak RSS {x['peak_rss_mb']} MB"
            for x in r["results"]
        )
    if name == "record_latency":
        return f"p50 {r['p50_ms']:.0f} ms, p99 {r['p99_ms']:.0f} ms, max {r['max_ms']:.0f} ms, all: {r['all_servable']}"
    if name == "crl_follow":
        parts = []
        for mode, s in sorted(r["summary"].items(), reverse=True):
            parts.append(
                f"{mode}: API p99 {s['api_ms']['p99']:.0f} ms, presigned p99 {s['presigned_ms']['p99']:.0f} ms, "
                f"full CRL p99 {s['full_crl_ms']['p99']:.0f} ms"
            )
        return "; ".join(parts)
    if name == "enforcement":
        return enforcement_headline(r)
    if name == "ocsp_fuzz":
        return fuzz_headline(r)
    if name == "crash":
        return crash_headline(r)
    if name == "scale":
        return scale_headline(r)
    return json.dumps(r)[:200]


def _pump(stream: IO[str], tail: collections.deque[str]) -> None:
    for line in stream:
        sys.stderr.write(line)
        sys.stderr.flush()
        tail.append(line)


def run_scenario(name: str, smoke: bool, runs: int | None, scratch: Path) -> dict[str, Any]:
    out = scratch / f"{name}.json"
    cmd = [sys.executable, "-m", f"loadtests.{name}", "--json-out", str(out)]
    if smoke:
        cmd.append("--smoke")
    if runs is not None:
        cmd += ["--runs", str(runs)]
    tail: collections.deque[str] = collections.deque(maxlen=15)
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    pump = threading.Thread(target=_pump, args=(proc.stderr, tail), daemon=True)
    pump.start()
    try:
        code = proc.wait(timeout=TIMEOUT["smoke" if smoke else "full"])
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise RuntimeError(f"timed out; last output:\n{''.join(tail)}") from None
    finally:
        pump.join(timeout=5)
    if code != 0:
        raise RuntimeError(f"exit status {code}; last output:\n{''.join(tail)}")
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny sizes; report to a temporary directory")
    p.add_argument("--runs", type=int, help="runs per figure (default 3; 1 with --smoke)")
    p.add_argument("--only", nargs="+", choices=SCENARIOS, help="run these; keep the others from benchmarks.json")
    p.add_argument("--out-dir", type=Path, help="where benchmarks.md and benchmarks.json go (default docs/)")
    args = p.parse_args()
    if args.out_dir is not None:
        out_dir = args.out_dir
    elif args.smoke:
        out_dir = Path(tempfile.mkdtemp(prefix="pca-bench-smoke-report-"))
    else:
        out_dir = ROOT / "docs"
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / "benchmarks.json", out_dir / "benchmarks.md"
    results: dict[str, Any] = {}
    if args.only and json_path.exists():
        results = json.loads(json_path.read_text()).get("results", {})
    started = time.monotonic()
    failed: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="pca-bench-results-") as tmp:
        for name in args.only or SCENARIOS:
            began = time.monotonic()
            stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
            load = load_average()
            digest = product_digest(ROOT)
            print(f"== {name} (load average {load})", file=sys.stderr, flush=True)
            try:
                result = run_scenario(name, args.smoke, args.runs, Path(tmp))
            except Exception as exc:
                failed[name] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                print(f"FAILED {name}: {exc}", flush=True)
                results.pop(name, None)
                continue
            minutes = round((time.monotonic() - began) / 60, 2)
            result.update(started_at=stamp, minutes=minutes, load_before=load, product_source_sha256=digest)
            results[name] = result
            print(f"RESULT {name}: {headline(name, result)}", flush=True)
    ordered = {name: results[name] for name in SCENARIOS if name in results}
    data: dict[str, Any] = {
        "smoke": args.smoke,
        "finished_at": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "minutes": (time.monotonic() - started) / 60,
        "machine": machine(ROOT),
        "results": ordered,
        "failed": failed,
    }
    data["goals"] = goals(ordered)
    notes_path = ROOT / "docs" / "benchmarks-notes.md"
    notes = notes_path.read_text() if notes_path.exists() and not args.smoke else None
    json_path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    if "scale" in ordered:
        ordered["scale"]["plots"] = bool(write_scale_plots(ordered["scale"], out_dir))  # PNGs next to the report
    md_path.write_text(render(data, COMMANDS, notes))
    print(f"\nGoals ({'smoke sizes: not meaningful' if args.smoke else 'the latest of each issue'}):")
    for g in data["goals"]:
        print(f"  {g['met'].strip('*'):>12}  {g['measure']}: {g['measured']} (goal {g['goal']})")
    print(f"\nwrote {md_path} and {json_path}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
