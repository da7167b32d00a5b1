"""The status page's HTML: every value escaped, the chart drawn here as inline SVG, no script at all.

The page loads nothing: no script, no stylesheet, no font, no image from anywhere (the one
``<style>`` carries the response's CSP nonce). Every value from the stores goes through
``html.escape`` (``_e``) before it is placed in the markup.
"""

from __future__ import annotations

import datetime
import html
from typing import Any

from revocation.admin.status_data import BUCKETS
from revocation.clock import iso

STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left;white-space:nowrap}
th{background:#f3f3f3}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.bad{color:#b00020;font-weight:600}.ok{color:#176b2c}
form.inline{display:inline}
"""
CHART_W, CHART_H, PAD = 640, 220, 40
REFRESH_SECONDS = 30  # the page reloads itself (no script): a meta refresh, until the session ends
COLOURS = {"ocsp": "#2f6fb0", "crl": "#d08a1e"}
LABELS = {"ocsp": "every live OCSP responder", "crl": "first CRL"}


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _secs(value: object) -> str:
    if isinstance(value, int | float):
        return f"+{value:.3f} s"
    return "not published" if value == "none" else "pending"


def _table(headers: list[str], rows: list[list[str]], test_id: str) -> str:
    """``rows`` are cells already escaped (numbers get class num by the caller)."""
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(row) + "</tr>" for row in rows)
    if not rows:
        body = f'<tr><td colspan="{len(headers)}">none</td></tr>'
    return f'<table data-testid="{_e(test_id)}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _td(value: object, *, num: bool = False, css: str = "") -> str:
    classes = " ".join(c for c in ("num" if num else "", css) if c)
    return f'<td class="{classes}">{_e(value)}</td>' if classes else f"<td>{_e(value)}</td>"


def _signer_days(issuer: dict[str, Any], now: datetime.datetime) -> tuple[str, str]:
    signer = issuer.get("ocsp_signer") or {}
    not_after = signer.get("not_after")
    if not not_after:
        return str(signer.get("status", "none")), "bad"
    days = (datetime.datetime.fromisoformat(not_after.replace("Z", "+00:00")) - now).total_seconds() / 86400
    return f"{not_after} ({days:.1f} days)", "bad" if days < 7 else ""


def issuers_table(data: dict[str, Any]) -> str:
    rows = []
    for i in data["issuers"]:
        signer, css = _signer_days(i, data["generated_at"])
        counts = i["certificates"]
        ca = i["ca_certificate"]["status"]
        rows.append(
            [
                _td(i["issuer_id"]),
                _td(i["origin"]),
                _td(ca, css="" if ca in ("good", "self-signed root") else "bad"),
                _td(signer, css=css),
                _td(counts["total"], num=True),
                _td(counts["revoked"], num=True),
            ]
        )
    headers = ["issuer", "origin", "CA certificate", "OCSP signer valid until", "certificates", "revoked"]
    return _table(headers, rows, "issuers")


def crl_table(data: dict[str, Any]) -> str:
    rows = []
    for s in data["crl_shards"]:
        full, delta = s["full"], s["delta"]
        rows.append(
            [
                _td(s["issuer_id"]),
                _td(s["shard"], num=True),
                _td("–" if full is None else full["number"], num=True),
                _td(_age(None if full is None else full["age"]), num=True),
                _td("–" if delta is None else delta["number"], num=True),
                _td(_age(None if delta is None else delta["age"]), num=True),
                _td("fresh" if s["fresh"] else "late", css="ok" if s["fresh"] else "bad"),
            ]
        )
    headers = ["issuer", "shard", "full CRL number", "full age", "delta CRL number", "delta age", "state"]
    return _table(headers, rows, "crls")


def responders_table(data: dict[str, Any]) -> str:
    rows = [
        [
            _td(r["responder_id"]),
            _td(r["url"] or "–"),
            _td(r["lag_changes"], num=True),
            _td(_age(r["silent_seconds"]), num=True),
            _td(r["state"], css="ok" if r["state"] == "up" else "bad"),
        ]
        for r in data["responders"]
    ]
    return _table(["responder", "URL", "lag (changes)", "last heartbeat", "state"], rows, "responders")


def recent_table(data: dict[str, Any]) -> str:
    rows = [
        [
            _td(r["seq"], num=True),
            _td(r["issuer_id"]),
            _td(r["serial"]),
            _td(r["reason"]),
            _td(iso(r["committed_at"])),
            _td(_secs(r["presigned"]), num=True),
            _td(_secs(r["ocsp"]), num=True),
            _td(_secs(r["crl"]), num=True),
            _td(r["slo"], css="bad" if r["slo"] == "missed" else ""),
        ]
        for r in data["recent"]
    ]
    headers = ["seq", "issuer", "serial", "reason", "committed", "pre-signed", "all responders", "CRL", "SLO"]
    return _table(headers, rows, "revocations")


def chart(hist: dict[str, list[int]]) -> str:
    """Grouped bars: one group per bucket, one bar per channel; counts above the bars."""
    n = len(BUCKETS) + 1
    top = max([1, *hist["ocsp"], *hist["crl"]])
    inner_w, inner_h = CHART_W - 2 * PAD, CHART_H - 2 * PAD
    group = inner_w / n
    bar = group / 3
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{CHART_W}" height="{CHART_H}" role="img" '
        f'viewBox="0 0 {CHART_W} {CHART_H}" data-testid="propagation-chart">',
        "<title>Seconds from the commit to every live responder and to the first CRL, last hour</title>",
        f'<line x1="{PAD}" y1="{PAD + inner_h}" x2="{PAD + inner_w}" y2="{PAD + inner_h}" stroke="#555"/>',
    ]
    labels = [f"≤{b:g}s" for b in BUCKETS] + [f">{BUCKETS[-1]:g}s"]
    for i in range(n):
        x0 = PAD + i * group
        for j, channel in enumerate(("ocsp", "crl")):
            count = hist[channel][i]
            height = inner_h * count / top
            x, y = x0 + bar * (j + 0.5), PAD + inner_h - height
            parts.append(
                f'<rect class="bar" data-channel="{channel}" data-bucket="{_e(labels[i])}" data-count="{count}" '
                f'x="{x:.1f}" y="{y:.1f}" width="{bar:.1f}" height="{height:.1f}" fill="{COLOURS[channel]}"/>'
            )
            if count:
                parts.append(
                    f'<text x="{x + bar / 2:.1f}" y="{y - 3:.1f}" font-size="10" text-anchor="middle">{count}</text>'
                )
        parts.append(
            f'<text x="{x0 + group / 2:.1f}" y="{PAD + inner_h + 14}" font-size="10" '
            f'text-anchor="middle">{_e(labels[i])}</text>'
        )
    for j, channel in enumerate(("ocsp", "crl")):
        x, y = CHART_W - PAD - 170, 12 + 14 * j  # the legend, top right, clear of the first bars' counts
        parts.append(f'<rect x="{x}" y="{y - 9}" width="10" height="10" fill="{COLOURS[channel]}"/>')
        parts.append(f'<text x="{x + 14}" y="{y}" font-size="11">{_e(LABELS[channel])}</text>')
    parts.append("</svg>")
    return "".join(parts)


def page(data: dict[str, Any], *, who: str, nonce: str) -> str:
    body = f"""
<h1>pca status</h1>
<p>Generated {_e(iso(data["generated_at"]))}; event log head <span data-testid="head">{_e(data["head"])}</span>.
Signed in as {_e(who)}. This page reloads every {REFRESH_SECONDS} s.
<form class="inline" method="post" action="/status/logout"><button type="submit">Sign out</button></form></p>
<h2>Issuers</h2>{issuers_table(data)}
<h2>CRL freshness per shard</h2>{crl_table(data)}
<h2>OCSP responders</h2>{responders_table(data)}
<h2>Propagation, last hour</h2>
<p><span data-testid="window-revocations">{_e(data["window_revocations"])}</span> revocations in the last hour
(SLO {_e(data["slo_seconds"])} s to every live responder).</p>
{chart(data["histogram"])}
<h2>Latest revocations</h2>{recent_table(data)}
"""
    return _document("pca status", body, nonce, refresh=REFRESH_SECONDS)


def login_page(message: str, *, nonce: str) -> str:
    body = f"""
<h1>pca status</h1>
<p data-testid="login-message">{_e(message)}</p>
<form method="post" action="/status/login">
<label>Admin API token (role auditor or admin):
<input type="password" name="token" autocomplete="off" required></label>
<button type="submit">Sign in</button>
</form>
<p>The token is exchanged for a session cookie valid 15 minutes; the token itself is not stored by the browser.</p>
"""
    return _document("pca status: sign in", body, nonce)


def _document(title: str, body: str, nonce: str, refresh: int | None = None) -> str:
    reload = f'<meta http-equiv="refresh" content="{refresh}">' if refresh else ""
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">{reload}'
        f'<title>{_e(title)}</title><link rel="icon" href="data:,">'
        f'<style nonce="{_e(nonce)}">{STYLE}</style></head><body>{body}</body></html>\n'
    )
