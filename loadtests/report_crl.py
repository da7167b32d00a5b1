"""The ``crl_follow`` scenario in ``docs/benchmarks.md``: its goals (issue 12) and its section."""

from __future__ import annotations

import math
from typing import Any

Result = dict[str, Any]
ON = "full_after_revocation = true"
OFF = "full_after_revocation = false"
SLO_MS = 5000  # the OCSP propagation SLO (scale.slo_seconds)
STARVED_FACTOR = 2.0  # the API or pre-signing this much slower with full CRLs than without counts as starved


def _ms(value: float) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:,.0f}"


def crl_follow_goals(all_results: dict[str, Result]) -> list[tuple[str, str, str, bool | None]]:
    """(measure, goal, measured, met) rows."""
    r = all_results.get("crl_follow", {})
    summary = r.get("summary", {})
    on, off = summary.get(ON), summary.get(OFF)
    if not on or not off:
        return [
            (
                "full CRLs following revocations on a 1,000,000-entry shard",
                "not starving API and pre-signing",
                "–",
                None,
            )
        ]
    entries = r["params"]["revoked_in_shard"]
    api_on, api_off = on["api_ms"]["p99"], off["api_ms"]["p99"]
    pre_on, pre_off = on["presigned_ms"]["p99"], off["presigned_ms"]["p99"]
    starved = api_on > max(STARVED_FACTOR * api_off, 100) or pre_on > max(STARVED_FACTOR * pre_off, 500)
    return [
        (
            f"revocation burst while {entries:,}-entry full CRLs are rebuilt: API and pre-signing",
            f"p99 within {STARVED_FACTOR:g}x of the deltas-only run (or under 100 ms / 500 ms), pre-signing inside "
            f"the {SLO_MS // 1000} s SLO",
            f"API p99 {_ms(api_on)} ms (deltas only {_ms(api_off)}); presigned p99 {_ms(pre_on)} ms "
            f"(deltas only {_ms(pre_off)})",
            not starved and pre_on <= SLO_MS,
        ),
    ]


def crl_follow_section(r: Result | None) -> list[str]:
    if not r:
        return []
    p = r["params"]
    lines = [
        "## Full CRLs following revocations (issue 12)",
        "",
        f"`{p['server']}` on a CA whose issuing CA's one CRL shard lists {p['revoked_in_shard']:,} revoked "
        f"certificates ({p['certificates']:,} certificates, all pre-signed). A burst of {p['burst']:,} revocations "
        f"through the admin API at {p['rate_per_s']:g}/s, on two clones of the same CA, interleaved: with "
        "`crl.full_after_revocation = true` (the default: the changed shard's full CRL is rebuilt after the "
        "2 s debounce, spaced by its own build time) and `false` (deltas only). API: each revocation's round "
        "trip. presigned / OCSP all responders: the tracker's timeline (from the commit). Full CRL / any CRL: "
        "from the commit to the first publication at or past the revocation's log position, as the publisher "
        "recorded it. Times in ms; medians over runs.",
        "",
        "| mode | API p50 / p99 / max | presigned p50 / p99 / max | OCSP all responders p50 / p99 | "
        "full CRL p50 / p99 / max | any CRL p50 / p99 | full CRLs built |",
        "|---|---|---|---|---|---|---|",
    ]
    for mode, s in sorted(r["summary"].items(), reverse=True):
        a, pre, o, f, c = s["api_ms"], s["presigned_ms"], s["ocsp_all_responders_ms"], s["full_crl_ms"], s["any_crl_ms"]
        lines.append(
            f"| `{mode}` | {_ms(a['p50'])} / {_ms(a['p99'])} / {_ms(a['max'])} | {_ms(pre['p50'])} / "
            f"{_ms(pre['p99'])} / {_ms(pre['max'])} | {_ms(o['p50'])} / {_ms(o['p99'])} | {_ms(f['p50'])} / "
            f"{_ms(f['p99'])} / {_ms(f['max'])} | {_ms(c['p50'])} / {_ms(c['p99'])} | "
            f"{s['full_crls_during_burst']:g} |"
        )
    lines += ["", f"Runs: {len(r['runs'])} ({p['runs']} per mode).", ""]
    return lines
