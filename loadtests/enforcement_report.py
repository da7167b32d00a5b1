"""The enforcement scenario in ``docs/benchmarks.md``: its goals and its section."""

from __future__ import annotations

from typing import Any

GOAL_NGINX_CRL_P99_MS = 10_000
GOAL_OCSP_P99_MS = 1_000

Result = dict[str, Any]


def _ms(value: Any) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "–"
    return f"{value:,.0f}"


def _channel(res: Result, name: str) -> Result | None:
    return next((c for c in res.get("channels", []) if c["channel"] == name), None)


def _complete(row: Result) -> str:
    parts = []
    if row["not_refused"]:
        parts.append(f"{row['not_refused']} NOT REFUSED within {row['timeout_s']:.0f} s")
    if row["control_false_refusals"]:
        parts.append(f"{row['control_false_refusals']} FALSE REFUSALS of the control")
    return f" ({'; '.join(parts)})" if parts else ""


def _met(row: Result, goal_ms: float) -> bool:
    return (
        row["refused"] > 0
        and row["not_refused"] == 0
        and row["control_false_refusals"] == 0
        and row["p99_ms"] == row["p99_ms"]
        and row["p99_ms"] < goal_ms
    )


def enforcement_goals(all_results: dict[str, Result]) -> list[tuple[str, str, str, bool | None]]:
    """(measure, goal, measured, met) rows."""
    res = all_results.get("enforcement", {})
    rows: list[tuple[str, str, str, bool | None]] = []
    crl = _channel(res, "nginx_crl")
    measure = "revocation to nginx `ssl_crl` refusing (fed by crl-sync), default settings"
    goal = f"p99 < {GOAL_NGINX_CRL_P99_MS / 1000:.0f} s"
    if crl:
        changed = res["params"]["settings"].get("changed_from_pca_init") or {}
        label = f"{crl['label']}: " + (f"changed: {changed}; " if changed else "")
        rows.append(
            (
                measure,
                goal,
                f"{label}{crl['refused']}/{crl['revocations']} refused, p99 {_ms(crl['p99_ms'])} ms{_complete(crl)}",
                _met(crl, GOAL_NGINX_CRL_P99_MS) and not changed,
            )
        )
    else:
        rows.append((measure, goal, f"– ({res.get('skipped', {}).get('nginx_crl', 'not run')})", None))
    ocsp = _channel(res, "nginx_ocsp")
    measure = "revocation to nginx `ssl_ocsp` refusing, `ssl_ocsp_cache` off"
    goal = f"p99 < {GOAL_OCSP_P99_MS / 1000:.0f} s (+ nginx's OCSP cache time: none with the cache off)"
    if ocsp:
        rows.append(
            (
                measure,
                goal,
                f"{ocsp['refused']}/{ocsp['revocations']} refused, p50 {_ms(ocsp['p50_ms'])} ms, "
                f"p99 {_ms(ocsp['p99_ms'])} ms{_complete(ocsp)}",
                _met(ocsp, GOAL_OCSP_P99_MS),
            )
        )
    else:
        rows.append((measure, goal, f"– ({res.get('skipped', {}).get('nginx_ocsp', 'not run')})", None))
    return rows


def enforcement_headline(r: Result) -> str:
    parts = [
        f"{c['channel']} {c['refused']}/{c['revocations']} refused p99 {_ms(c['p99_ms'])} ms"
        + (f" ({c['not_refused']} not within {c['timeout_s']:.0f} s)" if c["not_refused"] else "")
        for c in r["channels"]
    ]
    parts += [f"{name} skipped" for name in r.get("skipped", {})]
    false = sum(c["control_false_refusals"] for c in r["channels"])
    return "; ".join(parts) + f"; control false refusals {false}"


def enforcement_section(res: Result | None) -> list[str]:
    if not res:
        return []
    p = res["params"]
    s = p["settings"]
    rows = [
        "| "
        + " | ".join(
            [
                c["label"],
                str(c["revocations"]),
                f"{c['refused']}"
                + (f" ({c['not_refused']} not within {c['timeout_s']:.0f} s)" if c["not_refused"] else ""),
                _ms(c["p50_ms"]),
                _ms(c["p90_ms"]),
                _ms(c["p99_ms"]),
                _ms(c["max_ms"]),
                f"{c['control_checks']} / {c['control_false_refusals']} / {c['control_errors']}",
                "; ".join(
                    [*c["notes"], *([f"refused with: {c['refusal_example']}"] if c["refusal_example"] else [])]
                    + (
                        [f"each refusal timed to within {_ms(c['bracket_max_ms'])} ms"]
                        if c.get("bracket_max_ms")
                        else []
                    )
                    + [f"problem: {x}" for x in c["problems"]]
                ).replace("|", "/"),
            ]
        )
        + " |"
        for c in res["channels"]
    ]
    cache = p.get("jdk_crl_cache", {})
    changed = s.get("changed_from_pca_init") or {}
    lines = [
        "## Revocation to enforcement",
        "",
        f"`{p['server']}` with the settings `pca init` writes"
        + (f", except {', '.join(f'`{k} = {v}`' for k, v in changed.items())}" if changed else "")
        + f" (crl.interval_seconds {s['crl.interval_seconds']}, crl.after_revocation_seconds "
        f"{s['crl.after_revocation_seconds']:g}, crl.delta_interval_seconds {s['crl.delta_interval_seconds']}, "
        f"ocsp.validity_seconds {s['ocsp.validity_seconds']}). {p['revocations']} client certificates revoked one "
        f"every {p['spacing_s']:g} s through the admin API; before each revocation every relying party must accept "
        f"the certificate, and from the revocation's 2xx each retries it every {p['poll_ms']} ms, or every 2% of the "
        "time since the 2xx once that is longer (nginx: a fresh TLS handshake and `GET /`; the JVM: a PKIX "
        f"validation) until it refuses it, for at most {p['timeout_s']:.0f} s. "
        "A never-revoked control certificate is checked on every relying party once a second meanwhile; its "
        "checks / false refusals / errors are listed. Times in ms from the 2xx to the refusing check's answer. "
        f"nginx {p.get('nginx', '–')}; {p.get('java', 'no JVM')}; CRL feed: {p.get('crl_sync', '–')}. "
        "The two reference rows are no relying party: they say when the full (and the delta) CRL served at the "
        "certificate's CRL DP (FreshestCRL) first listed it. "
        + (
            f"The checking client (nice -20) used {c['cpu_fraction']:.2f} of a core over {c['seconds']:.0f} s; its "
            f"event loop woke late by {c['loop_lag_p99_ms']:.1f} ms at p99 ({c['loop_lag_max_ms']:.1f} ms at most)."
            if (c := p.get("client"))
            else ""
        ),
        "",
        "| relying party | revocations | refused | p50 | p90 | p99 | max | control checks / false refusals / errors "
        "| notes |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
    ]
    if cache.get("inspected"):
        lines += [
            f"The JDK's CRL cache, read from the installed JDK's `{cache['class']}`: a CRL fetched from a "
            f"distribution point is reused for `CHECK_INTERVAL` = {cache['check_interval_ms']:,} ms after each fetch, "
            "then fetched again with If-Modified-Since (a 304 keeps the old one). The interval is a constant; the "
            f"system properties that class reads are {', '.join(f'`{x}`' for x in cache['system_properties_read'])} "
            "(connect and read timeouts), so no JVM setting lowers it and there is no lowered-property run. The JDK "
            "does not use delta CRLs, and neither does nginx (OpenSSL without X509_V_FLAG_USE_DELTAS): both wait for "
            "a full CRL.",
            "",
        ]
    for name, why in res.get("skipped", {}).items():
        lines += [f"- `{name}` skipped: {why}"]
    if res.get("skipped"):
        lines += [""]
    return lines
