"""The ``scale`` scenario's section (issue 15, item 3): a table and a log-log plot per measure.

    python -m loadtests.report_scale [--json docs/benchmarks-scale.json ...] [--out-dir docs] [--write-json F]

renders ``benchmarks-scale.md`` and its PNGs from saved results (the scenario's own JSON, or a
``benchmarks.json`` holding it) without running anything; several are merged by size (the
small sizes with 3 runs, 10,000,000 with 1, say). ``loadtests.run_all`` puts the same
section into ``benchmarks.md`` and draws the plots next to it. Without matplotlib the plots are
left out and the section says so.
"""

from __future__ import annotations

import argparse
import itertools
import json
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

Result = dict[str, Any]
PLOTS = {
    "ocsp": "benchmarks-scale-ocsp.png",
    "presign": "benchmarks-scale-presign.png",
    "crl": "benchmarks-scale-crl.png",
    "startup": "benchmarks-scale-startup.png",
}


# One plot per measure: its title, its y axis, and each line's value in a result row.
FIGURES: dict[str, tuple[str, str, dict[str, Callable[[Result], float | None]]]] = {
    "ocsp": (
        "OCSP GET throughput (wrk -t2 -c64)",
        "requests/s",
        {"requests/s": lambda x: x["serve"]["requests_per_s"]},
    ),
    "presign": (
        "Pre-signing from an empty store (2 workers)",
        "seconds",
        {
            "PreSigner.catch_up": lambda x: x["presign"]["seconds"],
            "signing CPU (both workers)": lambda x: x["presign"]["phases"]["signing_cpu_s"],
        },
    ),
    "crl": (
        "Full CRL",
        "seconds",
        {
            "Publisher.publish (1% revoked)": lambda x: x["crl"]["publish_s"],
            "build_crl alone (1% revoked)": lambda x: x["crl"]["build_crl_s"],
            "build_crl alone, all revoked": lambda x: x["crl"].get("all_revoked_build_crl_s"),
        },
    ),
    "startup": (
        "Responder start-up (pca serve --roles api,responder)",
        "seconds / MB",
        {
            "answers OCSP after (s)": lambda x: x["serve"]["serving_s"],
            "cache loaded after (s)": lambda x: x["serve"]["cache_loaded_s"],
            "RSS then (MB)": lambda x: x["serve"]["rss_mb"],
        },
    ),
}


def _n(value: float | int | None, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, int) or (float(value).is_integer() and abs(value) >= 100):
        return f"{value:,.0f}"
    return f"{value:,.{digits}f}"


def scale_headline(r: Result) -> str:
    parts = [
        f"{x['certificates']:,}: pre-sign {x['presign']['seconds']:.1f} s, publish {x['crl']['publish_s']:.2f} s, "
        f"start-up {x['serve']['cache_loaded_s']:.1f} s, {x['serve']['requests_per_s']:,.0f} req/s"
        for x in r["results"]
    ]
    parts += [f"{s['certificates']:,}: skipped" for s in r.get("skipped", [])]
    return "; ".join(parts)


def write_scale_plots(r: Result | None, out_dir: Path) -> list[Path]:
    """One log-log PNG per measure in ``out_dir``; none (and no error) without matplotlib or results."""
    if not r or not r.get("results"):
        return []
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    rows = r["results"]
    x = [row["certificates"] for row in rows]

    def figure(name: str, title: str, ylabel: str, series: dict[str, list[float | None]]) -> Path:
        fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=100)
        for label, ys in series.items():
            points = [(a, b) for a, b in zip(x, ys, strict=True) if b is not None and b > 0]
            if points:
                ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("certificates (1% revoked)")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = out_dir / PLOTS[name]
        fig.savefig(path)
        plt.close(fig)
        return path

    out_dir.mkdir(parents=True, exist_ok=True)
    return [
        figure(name, title, ylabel, {label: [get(row) for row in rows] for label, get in series.items()})
        for name, (title, ylabel, series) in FIGURES.items()
    ]


def _share(part: float, whole: float) -> str:
    return f"{100 * part / whole:.0f}%" if whole else "–"


def growth(r: Result) -> str:
    """How each measure grows from one size to the next (times per step, e.g. per 10x certificates)."""
    rows = r["results"]
    if len(rows) < 2:
        return ""
    measures = {
        "pre-sign time": lambda x: x["presign"]["seconds"],
        "`Publisher.publish` time": lambda x: x["crl"]["publish_s"],
        "time until the cache is loaded": lambda x: x["serve"]["cache_loaded_s"],
        "responder RSS": lambda x: x["serve"]["rss_mb"],
        "OCSP req/s": lambda x: x["serve"]["requests_per_s"],
    }
    steps = " → ".join(f"{x['certificates']:,}" for x in rows)
    parts = []
    for name, get in measures.items():
        ratios = []
        for a, b in itertools.pairwise(rows):
            va, vb = get(a), get(b)
            ratios.append(f"×{vb / va:.2g}" if va else "–")
        parts.append(f"{name} {', '.join(ratios)}")
    return f"From one size to the next ({steps}): " + "; ".join(parts) + "."


def dominates(r: Result) -> str:
    """What the top size's time goes to, from its measured phases."""
    top = r["results"][-1]
    n, p, c, s, load = top["certificates"], top["presign"], top["crl"], top["serve"], top["cache_load"]
    ph = p["phases"]
    reads = ph.get("log_read_wall_s", 0.0) + ph.get("projection_read_wall_s", 0.0)
    sign_per_cpu = n / ph["signing_cpu_s"] if ph.get("signing_cpu_s") else None
    return (
        f"At the top size measured ({n:,} certificates): **pre-signing** took {p['seconds']:,.0f} s of wall time "
        f"on 2 workers; the signing processes used {ph['signing_cpu_s']:,.0f} CPU seconds "
        f"({_n(sign_per_cpu, 0)} responses per CPU second, i.e. the ECDSA signatures and DER assembly "
        f"in `sign_batch`), the coordinator {ph['coordinator_cpu_s']:,.0f} CPU seconds; awaiting the log and "
        f"projection reads took {reads:,.0f} s and the store writes {ph.get('store_write_wall_s', 0.0):,.0f} s of "
        f"wall time (reads overlap with signing). **The CRL**: `Publisher.publish` took {c['publish_s']:.2f} s for "
        f"{c['entries']:,} entries, of which `build_crl` alone (DER assembly and one signature) is "
        f"{c['build_crl_s']:.2f} s ({_share(c['build_crl_s'], c['publish_s'])}){_crl_phases(c)}. "
        f"**Responder start-up**: {s['cache_loaded_s']:.1f} s until its cache applied the whole change feed "
        f"({load['changes']:,} changes, {load['cached']:,} kept); profiled alone, filling the cache took "
        f"{load['seconds']:.1f} s, of which reading the change feed from SQLite {load['store_read_s']:.1f} s "
        f"({_share(load['store_read_s'], load['seconds'])}) and building entries and inserting them into the LRU "
        f"{load['cache_insert_s']:.1f} s. **OCSP throughput**: cache hit ratio {s['cache_hit_ratio']:.2f} "
        f"under wrk at this size."
    )


def _crl_phases(c: Result) -> str:
    if "publish_projection_read_s" not in c:
        return "; the rest is reading the revoked certificates, parsing the CRL back, checking it, storing it"
    read, store = c["publish_projection_read_s"], c["publish_store_s"]
    return (
        f"; one read of the revoked certificates from the projection takes {read:.2f} s "
        f"({_share(read, c['publish_s'])}; the publisher reads them to build the CRL, and the storer again to check "
        f"it), the storer (that read, parsing the CRL back, checking it against the log, writing it) {store:.2f} s "
        f"({_share(store, c['publish_s'])})"
    )


def _table(
    title: str, intro: str, columns: Sequence[str], rows: Iterable[Sequence[str]], plot: tuple[str, str] | None
) -> list[str]:
    """A subsection: its heading, its introduction (if any), a table of one row per size, and below that the
    plot ``plot`` (alt text, file) if one was drawn."""
    lines = [f"### {title}", ""] + ([intro, ""] if intro else [])
    lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines + (["", f"![{plot[0]}]({plot[1]})", ""] if plot else [""])


def _runs(values: Sequence[float], spec: str) -> str:
    return ", ".join(f"{v:{spec}}" for v in values)


def _ocsp_row(x: Result) -> list[str]:
    s = x["serve"]
    return [
        f"{x['certificates']:,}", f"{s['requests_per_s']:,.0f}", f"{s['p50_ms']:.2f}", f"{s['p99_ms']:.2f}",
        f"{s['cache_hit_ratio']:.3f}", f"{s['cached_responses']:,}", f"{s['errors']} / {s['wrong_answers']}",
        _runs(s["requests_per_s_runs"], ",.0f"), f"{x['load_before'][0]}",
    ]  # fmt: skip


def _presign_row(x: Result) -> list[str]:
    pr, ph = x["presign"], x["presign"]["phases"]
    reads = ph.get("log_read_wall_s", 0.0) + ph.get("projection_read_wall_s", 0.0)
    return [
        f"{x['certificates']:,}", f"{pr['seconds']:,.2f}", f"{pr['responses_per_s']:,}", _runs(pr["runs"], ",.2f"),
        f"{ph['signing_cpu_s']:,.1f}", f"{ph['coordinator_cpu_s']:,.1f}", f"{reads:,.1f}",
        f"{ph.get('store_write_wall_s', 0.0):,.1f}",
    ]  # fmt: skip


def _crl_row(x: Result) -> list[str]:
    c = x["crl"]
    return [
        f"{x['certificates']:,}", f"{c['entries']:,}", f"{c['publish_s']:.3f}", f"{c['build_crl_s']:.3f}",
        f"{c['crl_bytes']:,}", _runs(c["publish_runs"], ".3f"), _n(c.get("all_revoked_build_crl_s"), 3),
        _n(c.get("all_revoked_bytes")),
    ]  # fmt: skip


def _startup_row(x: Result) -> list[str]:
    s, load = x["serve"], x["cache_load"]
    return [
        f"{x['certificates']:,}", f"{s['serving_s']:.2f}", f"{s['cache_loaded_s']:.2f}",
        _runs(s["cache_loaded_s_runs"], ".2f"), f"{s['cached_responses']:,}", f"{s['rss_mb']:,.0f}",
        f"{load['seconds']:.2f}", f"{load['store_read_s']:.2f}",
    ]  # fmt: skip


def scale_section(r: Result | None) -> list[str]:
    if not r or not r.get("results"):
        return []
    p, rows = r["params"], r["results"]
    plots = r.get("plots", True)

    def plot(alt: str, name: str) -> tuple[str, str] | None:
        return (alt, PLOTS[name]) if plots else None

    lines = [
        "## Cost as the work grows: 10,000 to 10,000,000 certificates (issue 15)",
        "",
        f"Sets of certificates on SQLite, {p['revoked_fraction']:.0%} revoked, recorded through the event log and "
        f"pre-signed by the pre-signer, cached between runs (`python -m loadtests.scale`). Median of {p['runs']} "
        "run(s) per figure (a size whose row shows one run had one); the load average before each size is shown, "
        "the machine was shared. Responder and OCSP figures: `pca serve --server uvicorn --roles api,responder` "
        f"on the set, `ocsp.cache_size` {p['cache_size']:,} (the default), wrk -t2 -c64 GET rotating over "
        f"{p['distinct_requests']:,} certificates drawn over the whole set, {p['duration_s']:g} s after a 2 s warm-up.",
        "",
    ]
    lines += _table(
        "OCSP GET throughput",
        "",
        ["certificates", "req/s", "p50 ms", "p99 ms", "cache hit ratio", "cached responses", "errors / wrong",
         "runs (req/s)", "load before"],
        map(_ocsp_row, rows),
        plot("OCSP throughput", "ocsp"),
    )  # fmt: skip
    lines += _table(
        "Pre-signing from an empty response store",
        "`PreSigner.catch_up` with 2 signing processes. Phases of the median run (of the set's own build in results "
        "that predate that choice): CPU seconds of the signing processes and of the coordinator (from /proc, "
        "approximate on a shared VM); wall seconds awaiting the log and projection reads (overlapping the signing) "
        "and the store writes.",
        ["certificates", "seconds", "responses/s", "runs (s)", "signing CPU s", "coordinator CPU s",
         "log + projection reads s", "store writes s"],
        map(_presign_row, rows),
        plot("Pre-signing", "presign"),
    )  # fmt: skip
    lines += _table(
        "Full CRL",
        "`Publisher.publish` (read the revoked certificates, build, sign, parse back and verify against the log, "
        "store in the directory) with 1% revoked, `build_crl` alone over as many entries, and `build_crl` alone over "
        f"every certificate (all revoked, the worst case; sizes up to {p['all_revoked_max']:,}).",
        ["certificates", "entries", "publish s", "build_crl s", "CRL bytes", "runs publish (s)",
         "all revoked: build_crl s", "all revoked: bytes"],
        map(_crl_row, rows),
        plot("CRL", "crl"),
    )  # fmt: skip
    lines += _table(
        "Responder start-up",
        "From starting the process: seconds until it answers an OCSP GET correctly, and until its cache applied the "
        "whole change feed (`/healthz` lag 0); its VmRSS then. Cache load profiled alone in a fresh process: reading "
        "the change feed (SQLite) against building entries and inserting them into the LRU.",
        ["certificates", "answers after s", "cache loaded after s", "runs (s)", "cached", "RSS MB",
         "cache load alone s", "of which SQLite read s"],
        map(_startup_row, rows),
        plot("Responder start-up", "startup"),
    )  # fmt: skip
    if not plots:
        lines += ["(Plots left out: matplotlib is not installed.)", ""]
    for s in r.get("skipped", []):
        lines += [f"- {s['certificates']:,} certificates: skipped, {s['reason']}", ""]
    lines += ["### What dominates at the top end", "", growth(r), "", dominates(r), ""]
    return lines


def load_result(path: Path) -> Result:
    """The scale result in a file: the scenario's own JSON, or a ``benchmarks.json`` holding it."""
    data: Result = json.loads(path.read_text())
    if data.get("scenario") == "scale":
        return data
    result: Result = data["results"]["scale"]
    return result


def merge(results: list[Result]) -> Result:
    """One result from several runs of the scenario (say the small sizes with 3 runs, 10,000,000 with 1):
    rows by size, a later file's row replacing an earlier one's; each row keeps its own number of runs."""
    merged: Result = dict(results[0], results=[], skipped=[])
    rows: dict[int, Result] = {}
    skipped: dict[int, Result] = {}
    for r in results:
        for row in r["results"]:
            rows[row["certificates"]] = dict(row, runs=row.get("runs", r["params"]["runs"]))
            skipped.pop(row["certificates"], None)
        for s in r.get("skipped", []):
            if s["certificates"] not in rows:
                skipped[s["certificates"]] = s
    merged["results"] = [rows[n] for n in sorted(rows)]
    merged["skipped"] = [skipped[n] for n in sorted(skipped)]
    merged["params"] = dict(
        merged["params"], sizes=sorted({*rows, *skipped}), runs=max(r["params"]["runs"] for r in results)
    )
    return merged


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    root = Path(__file__).resolve().parent.parent
    p.add_argument("--json", type=Path, nargs="+", default=[root / "docs" / "benchmarks-scale.json"])
    p.add_argument("--out-dir", type=Path, default=root / "docs")
    p.add_argument("--write-json", type=Path, help="also write the (merged) result here")
    args = p.parse_args()
    result = merge([load_result(path) for path in args.json])
    if args.write_json is not None:
        args.write_json.write_text(json.dumps(result, indent=2) + "\n")
    drawn = write_scale_plots(result, args.out_dir)
    result["plots"] = bool(drawn)
    md = args.out_dir / "benchmarks-scale.md"
    md.write_text("# Benchmarks: cost as the work grows\n\n" + "\n".join(scale_section(result)))
    print(f"wrote {md}" + "".join(f" and {d}" for d in drawn))


if __name__ == "__main__":
    main()
