"""The import scenarios in ``docs/benchmarks.md``: their goals (issue 11) and sections."""

from __future__ import annotations

from typing import Any

GOAL_IMPORT_PER_S = 20_000
GOAL_RECORD_P99_MS = 1000

Result = dict[str, Any]


def import_goals(all_results: dict[str, Result]) -> list[tuple[str, str, str, bool | None]]:
    """(measure, goal, measured, met) rows."""
    rows: list[tuple[str, str, str, bool | None]] = []
    rate = all_results.get("import_rate", {})
    big = max(rate.get("results", []), key=lambda r: r["certificates"], default=None)
    if big:
        rows.append(
            (
                f"`pca import` of {big['certificates']:,} openssl ca certificates into SQLite",
                f">= {GOAL_IMPORT_PER_S:,} certificates/s, each signature checked",
                f"{big['certs_per_s']:,}/s, peak RSS {big['peak_rss_mb']:.0f} MB",
                big["certs_per_s"] >= GOAL_IMPORT_PER_S,
            )
        )
    else:
        rows.append(("`pca import` rate", f">= {GOAL_IMPORT_PER_S:,}/s", "–", None))
    rec = all_results.get("record_latency", {})
    if "p99_ms" in rec:
        complete = "" if rec.get("all_servable") else " (SOME NEVER SERVED)"
        rows.append(
            (
                "recorded certificate to OCSP good",
                "p99 <= 1 s",
                f"p50 {rec['p50_ms']:.0f} ms, p99 {rec['p99_ms']:.0f} ms{complete}",
                rec["p99_ms"] <= GOAL_RECORD_P99_MS and bool(rec.get("all_servable")),
            )
        )
    else:
        rows.append(("recorded certificate to OCSP good", "p99 <= 1 s", "–", None))
    return rows


def import_sections(results: dict[str, Result]) -> list[str]:
    lines: list[str] = []
    rate = results.get("import_rate")
    if rate:
        lines += [
            "## Importing an openssl ca database",
            "",
            f"`{rate['params']['command']}` as a process into a fresh SQLite CA: an {rate['params']['ca_key']} CA's "
            "leaves written as `openssl ca` writes them (1% revoked), every signature checked, in one worker process "
            "per core; certificates/s over the whole command, peak RSS of its largest process.",
            "",
            "| certificates | certificates/s | seconds | peak RSS MB | runs (certificates/s) |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['certificates']:,} | {r['certs_per_s']:,} | {r['seconds']:.1f} | {r['peak_rss_mb']:.1f} | "
            + ", ".join(f"{v:,}" for v in r["runs"])
            + " |"
            for r in rate["results"]
        ]
        lines.append("")
    rec = results.get("record_latency")
    if rec:
        p = rec["params"]
        lines += [
            "## Recording an issued certificate",
            "",
            f"`{p['server']}` with an external CA and its OCSP signer; a `recorder` client posts "
            f"{p['certificates_per_run']} certificates one at a time to `POST /v1/certificates/import`, and from each "
            f"2xx polls the certificate's OCSP GET every {p['poll_ms']:.0f} ms until it is served `good`. Times in ms.",
            "",
            "| run | served / recorded | p50 | p99 | max | record API p50 / p99 |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {n + 1} | {r['servable']} / {r['recorded']} | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} | "
            f"{r['max_ms']:.0f} | {r['record_api_p50_ms']:.1f} / {r['record_api_p99_ms']:.1f} |"
            for n, r in enumerate(rec["runs"])
        ]
        lines.append("")
    return lines
