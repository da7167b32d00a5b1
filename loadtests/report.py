"""The goals (issues 3 to 15) judged from scenario results, and ``docs/benchmarks.md`` rendered from them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from loadtests.enforcement_report import enforcement_goals, enforcement_section
from loadtests.report_crash import crash_goals, crash_section
from loadtests.report_crl import crl_follow_goals, crl_follow_section
from loadtests.report_fuzz import fuzz_goals, fuzz_section
from loadtests.report_import import import_goals, import_sections
from loadtests.report_scale import scale_section

GOAL_MEMORY_BYTES = 1.5 * 1024

Result = dict[str, Any]


def _fmt(value: Any, digits: int = 0) -> str:
    if value is None:
        return "–"
    if isinstance(value, float) and value != value:
        return "n/a"
    if isinstance(value, (int, float)):
        return f"{value:,.{digits}f}"
    return str(value)


def _ocsp_row(results: Result, name: str, mode: str) -> Result | None:
    return next((r for r in results.get("results", []) if r["target"] == name and r["mode"] == mode), None)


DEFAULT_SHAPE = "pca serve"  # the target row of the default shape: no --server, no --workers
GOAL_GET_X_NGINX = 0.5
GOAL_GET_X_OPENSSL = 3.0
GOAL_GET_P99_MS = 5.0
GOAL_POST_P99_MS = 10.0
GOAL_REVOCATIONS = 1500


def _ocsp_goals(ocsp: Result) -> list[tuple[str, str, str, bool | None]]:
    """Issue 15's serving goals, on the default shape (``pca serve`` without flags)."""
    get, post = _ocsp_row(ocsp, DEFAULT_SHAPE, "GET"), _ocsp_row(ocsp, DEFAULT_SHAPE, "POST")
    openssl_name = next((r["target"] for r in ocsp.get("results", []) if r["kind"] == "openssl"), "openssl ocsp")
    out: list[tuple[str, str, str, bool | None]] = []
    measure = "OCSP GET requests/s, default shape (`pca serve`)"
    goal = f">= {GOAL_GET_X_NGINX}x nginx static (2 workers), >= {GOAL_GET_X_OPENSSL:.0f}x `{openssl_name}`"
    if get and get.get("x_openssl") is not None and get.get("x_nginx") is not None:
        measured = f"{_fmt(get['requests_per_s'])}/s = {get['x_nginx']:.2f}x nginx, {get['x_openssl']:.2f}x openssl"
        out.append(
            (measure, goal, measured, get["x_nginx"] >= GOAL_GET_X_NGINX and get["x_openssl"] >= GOAL_GET_X_OPENSSL)
        )
    else:
        out.append((measure, goal, "–", None))
    for row, mode, limit in ((get, "GET", GOAL_GET_P99_MS), (post, "POST", GOAL_POST_P99_MS)):
        measure = f"OCSP {mode} p99 at 64 connections, default shape"
        if row:
            out.append((measure, f"<= {limit:.0f} ms", f"{row['p99_ms']:.2f} ms", row["p99_ms"] <= limit))
        else:
            out.append((measure, f"<= {limit:.0f} ms", "–", None))
    return out


def goals(all_results: dict[str, Result]) -> list[dict[str, str]]:
    """One row per goal: measure, goal, measured, met (yes / no / not measured)."""
    rows: list[dict[str, str]] = []

    def add(measure: str, goal: str, measured: str, met: bool | None) -> None:
        rows.append({"measure": measure, "goal": goal, "measured": measured, "met": _met(met)})

    ocsp = all_results.get("ocsp_serve", {})
    for measure, goal, measured, met in _ocsp_goals(ocsp):
        add(measure, goal, measured, met)

    presign = all_results.get("presign", {})
    one = next((r for r in presign.get("results", []) if r["workers"] == 1), None)
    two = next((r for r in presign.get("results", []) if r["workers"] == 2), None)
    if one:
        extra = f"; 2 workers: {_fmt(two['per_core'])}/s per core" if two else ""
        add(
            "pre-sign, per core",
            ">= 10,000 responses/s (>= 0.6x `private_key.sign()` alone)",
            f"1 worker: {_fmt(one['per_core'])}/s = {one['x_private_key_sign']:.2f}x sign() "
            f"({_fmt(presign['private_key_sign_per_s'])}/s){extra}",
            one["per_core"] >= 10_000 and one["x_private_key_sign"] >= 0.6,
        )
    else:
        add("pre-sign, per core", ">= 10,000 responses/s (>= 0.6x sign())", "–", None)

    crl = all_results.get("crl_build", {})
    big = max(crl.get("results", []), key=lambda r: r["entries"], default=None)
    if big:
        add(
            f"{big['entries']:,}-entry full CRL, build + sign",
            "<= 0.2x the `openssl ca -gencrl` time",
            f"{big['build_crl_s']:.2f} s vs {big['openssl_gencrl_s']:.2f} s = {big['x_openssl_time']:.2f}x",
            big["x_openssl_time"] <= 0.2,
        )
    else:
        add("1,000,000-entry full CRL, build + sign", "<= 0.2x openssl ca -gencrl", "–", None)

    rev = all_results.get("revocations", {})
    if "revocations_per_s" in rev:
        verified = "all read back revoked" if rev.get("all_verified") else "SOME NOT READ BACK AS REVOKED"
        add(
            "durable revocations through the API, every role running",
            f">= {GOAL_REVOCATIONS:,}/s",
            f"{_fmt(rev['revocations_per_s'])}/s with {rev['params']['clients']} clients ({verified})",
            rev["revocations_per_s"] >= GOAL_REVOCATIONS and bool(rev.get("all_verified")),
        )
    else:
        add("durable revocations through the API, every role running", f">= {GOAL_REVOCATIONS:,}/s", "–", None)

    prop = all_results.get("propagation", {})
    if "p99_ms" in prop:
        complete = "" if prop.get("all_propagated") else " (SOME NEVER PROPAGATED)"
        add(
            "propagation under load",
            "p99 < 1 s",
            f"p50 {prop['p50_ms']:.0f} ms, p99 {prop['p99_ms']:.0f} ms, max {prop['max_ms']:.0f} ms{complete}",
            prop["p99_ms"] < 1000 and bool(prop.get("all_propagated")),
        )
    else:
        add("propagation under load", "p99 < 1 s", "–", None)

    mem = all_results.get("memory", {})
    if mem.get("results"):
        worst_row = max(mem["results"], key=lambda r: r["bytes_per_response"])
        measured = ", ".join(f"{r['responses']:,}: {_fmt(r['bytes_per_response'])} B" for r in mem["results"])
        add(
            "responder memory",
            "<= 1.5 KB (1,536 B) per cached response",
            measured,
            worst_row["bytes_per_response"] <= GOAL_MEMORY_BYTES,
        )
    else:
        add("responder memory", "<= 1.5 KB per cached response", "–", None)
    for measure, goal, measured, met in [*import_goals(all_results), *crl_follow_goals(all_results)]:
        add(measure, goal, measured, met)
    for measure, goal, measured, met in enforcement_goals(all_results):
        add(measure, goal, measured, met)
    for measure, goal, measured, met in fuzz_goals(all_results):
        add(measure, goal, measured, met)
    for measure, goal, measured, met in crash_goals(all_results):
        add(measure, goal, measured, met)
    return rows


def _cpu_per_revocation(cpu: dict[str, float] | None) -> str:
    if not cpu:
        return "–"
    return " / ".join(f"{v:.2f}" for v in cpu.values())


def _pct(share: float | None) -> str:
    return "–" if share is None else f"{share * 100:.0f}%"


def _met(met: bool | None) -> str:
    return "not measured" if met is None else ("**met**" if met else "**not met**")


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return out


def render(data: Result, commands: dict[str, str], notes: str | None) -> str:
    m = data["machine"]
    r = data["results"]
    lines = [
        "# Benchmarks",
        "",
        f"Generated by `python -m loadtests.run_all` on {data['finished_at']} (run took {data['minutes']:.0f} min). "
        "Every figure is the median of the runs listed beside it; the peers were measured in the same run, "
        "interleaved with ours (each round runs every target once, the order reversed every other round). "
        "The load generator shares the 2 cores with the servers, and other work on the machine adds noise: "
        "the load average before each scenario is listed at the end.",
        "",
        "## Machine",
        "",
        *_table(
            ["what", "value"],
            [
                ["CPU", f"{m['cpu_model']}, {m['cores']} cores"],
                ["memory", f"{m['memory_gib']} GiB"],
                ["OS, kernel", f"{m['os']}, Linux {m['kernel']}"],
                ["Python", m["python"]],
                ["libraries", ", ".join(f"{k} {v}" for k, v in m["libraries"].items())],
                ["cryptography's OpenSSL", m["cryptography_openssl"]],
                ["openssl command", m["openssl"]],
                ["nginx", m["nginx"]],
                ["wrk", m["wrk"]],
                ["product sources (SHA-256 of the four packages)", m["product_source_sha256"]],
            ],
        ),
        "",
        "## Goals",
        "",
        *_table(
            ["measure", "goal", "measured", "met"],
            [[g["measure"], g["goal"], g["measured"], g["met"]] for g in data["goals"]],
        ),
        "",
    ]
    lines += _ocsp_section(r.get("ocsp_serve"))
    lines += _presign_section(r.get("presign"))
    lines += _crl_section(r.get("crl_build"))
    lines += _revocations_section(r.get("revocations"))
    lines += _propagation_section(r.get("propagation"))
    lines += _scaled_propagation_section(r.get("scaled_propagation"))
    lines += _memory_section(r.get("memory"))
    lines += import_sections(r)
    lines += crl_follow_section(r.get("crl_follow"))
    lines += enforcement_section(r.get("enforcement"))
    lines += fuzz_section(r.get("ocsp_fuzz"))
    lines += crash_section(r.get("crash"))
    lines += scale_section(r.get("scale"))
    failed = data.get("failed", {})
    if failed:
        lines += ["## Scenarios that failed in this run", ""]
        lines += [f"- `{name}`: {why}" for name, why in failed.items()]
        lines += [""]
    lines += [
        "## Commands",
        "",
        "Everything (about 10 minutes; `--smoke` runs every scenario at tiny sizes in well under 2 minutes and "
        "writes its report to a temporary directory instead of `docs/`):",
        "",
        "```",
        commands["run_all"],
        "```",
        "",
        "One scenario (each prints its result as JSON; `--runs N` for more runs, `--help` for sizes):",
        "",
        "```",
        *[commands[name] for name in commands if name != "run_all"],
        "```",
        "",
        "Rerun some scenarios and keep the others' figures from `docs/benchmarks.json`: "
        "`python -m loadtests.run_all --only ocsp_serve memory`.",
        "",
        "## When each scenario ran",
        "",
        *_table(
            ["scenario", "started", "minutes", "load average before (1, 5, 15 min)", "product sources"],
            [
                [
                    name,
                    res.get("started_at", "?"),
                    _fmt(res.get("minutes"), 1),
                    str(res.get("load_before", "?")),
                    str(res.get("product_source_sha256", "?")),
                ]
                for name, res in r.items()
            ],
        ),
        "",
    ]
    if notes:
        lines += ["## Analysis", "", notes.strip(), ""]
    return "\n".join(lines)


def _ocsp_section(res: Result | None) -> list[str]:
    if not res:
        return []
    p = res["params"]
    rows = []
    for row in res["results"]:
        rows.append(
            [
                row["target"],
                row["mode"],
                _fmt(row["requests_per_s"]),
                _fmt(row["p50_ms"], 2),
                _fmt(row["p90_ms"], 2),
                _fmt(row["p99_ms"], 2),
                _fmt(row["max_ms"], 1),
                _fmt(row["errors"]),
                _fmt(row["x_openssl"], 2),
                _fmt(row["x_nginx"], 2),
                _pct(row.get("client_cpu_share")),
                ", ".join(_fmt(v) for v in row["runs"]),
                f"{row['answers_checked']} / {row['answers_wrong']}",
            ]
        )
    openssl_name = next((r["target"] for r in res["results"] if r["kind"] == "openssl"), "openssl ocsp")
    return [
        "## OCSP serving",
        "",
        f"{p['certificates']:,} certificates ({p['revoked']:,} revoked), all pre-signed before the servers start. "
        f"wrk, {p['connections']} connections, {p['wrk_threads']} threads, {p['duration_s']:.0f} s per run "
        f"after a {p['warmup_s']:.0f} s warm-up (ours and nginx), {p['runs']} runs; requests rotate over "
        f"{p['distinct_requests']:,} certificates ({p['revoked_in_rotation']} of them revoked) with SHA-1 CertIDs "
        "and no nonce: GET paths, or POST bodies, changed per request by the Lua script. "
        "Latency in ms. Errors: socket errors plus non-2xx answers. "
        f"Ratios: requests/s over `{openssl_name}` in the same mode, and over nginx (GET). "
        "Answers: how many sampled answers were fetched and checked (successful, the asked SHA-1 CertID and serial, "
        "the expected status) / how many were wrong. wrk CPU: the load generator's own user + system time over the "
        "run's wall time and the machine's cores (from its rusage), the share of the machine it took from the "
        "server it measured.",
        "",
        *_table(
            [
                "target",
                "mode",
                "req/s",
                "p50",
                "p90",
                "p99",
                "max",
                "errors",
                "x openssl",
                "x nginx",
                "wrk CPU",
                "runs (req/s)",
                "answers / wrong",
            ],
            rows,
        ),
        "",
        f"- `openssl ocsp` ran in: {res['openssl_network']}. OpenSSL 3.0's `-port` takes only a number and binds "
        "every interface, hence the namespace (its wrk and answer checks run there too). "
        + (
            f"It runs with `-multi {p['openssl_multi']}` (one process per core, as fair as it gets), "
            "restarted before every run: after wrk closes its connections its processes spin at 100% CPU and "
            "stop answering. wrk's connectivity probe (a connection opened and closed without a request, which "
            "triggers that) is skipped by overriding `wrk.resolve` in the Lua script. `openssl ocsp` answers "
            "HTTP/1.0 and closes every connection, so wrk reconnects for each request; it signs each response "
            "live with the delegated signer's key. It dies on a request path it cannot decode, so it gets "
            "`/<base64>` paths (ours and nginx get `/ocsp/<base64>`)."
            if p["openssl_multi"] > 1
            else "It runs as a single process."
        )
        + (
            " The `(1 process)` row is `openssl ocsp` without `-multi`, for reference."
            if p.get("openssl_single_reference")
            else ""
        ),
        "- nginx: 2 worker processes, `access_log off`, keep-alive, each pre-signed response (dumped from the "
        "response store, the very bytes we serve) in a file named by its raw request path "
        "(`try_files $request_uri`); GET only, since a static file cannot be chosen by a POST body.",
        "- ours: `pca serve` runs the API, pre-signer and publisher in its main process; under granian the public "
        "listener runs in worker processes of its own (by default one per core less one beside those roles: one "
        "here), each answering OCSP through granian's RSGI interface from a cache loaded from the whole change "
        "feed at start. uvicorn runs everything in one process.",
        "",
    ]


def _presign_section(res: Result | None) -> list[str]:
    if not res:
        return []
    rows = [
        [
            str(r["workers"]),
            _fmt(r["seconds"], 2),
            _fmt(r["responses_per_s"]),
            _fmt(r["per_core"]),
            _fmt(r["x_private_key_sign"], 2),
            _fmt(r["x_openssl_speed"], 2),
            ", ".join(_fmt(v) for v in r["runs"]),
        ]
        for r in res["results"]
    ]
    return [
        "## Pre-signing",
        "",
        f"{res['params']['certificates']:,} certificates (1% revoked) from an empty response store, "
        "`PreSigner.catch_up` with a pool of 1 or 2 signing processes (started before the clock). "
        f"Same run: `openssl speed -seconds {res['params']['speed_seconds']} ecdsap256` = "
        f"{_fmt(res['openssl_speed_sign_per_s'])} sign/s; cryptography's `private_key.sign()` alone "
        f"(ECDSA P-256, SHA-256, 250 bytes, one core) = {_fmt(res['private_key_sign_per_s'])}/s.",
        "",
        *_table(
            [
                "workers",
                "seconds",
                "responses/s",
                "per core",
                "x sign() alone",
                "x openssl speed",
                "runs (responses/s)",
            ],
            rows,
        ),
        "",
    ]


def _crl_section(res: Result | None) -> list[str]:
    if not res:
        return []
    rows = [
        [
            f"{r['entries']:,}",
            _fmt(r["build_crl_s"], 3),
            _fmt(r["build_crl_bytes"]),
            _fmt(r["openssl_gencrl_s"], 3),
            _fmt(r["openssl_bytes"]),
            _fmt(r["x_openssl_time"], 3),
            ", ".join(_fmt(v, 3) for v in r["build_runs"]),
            ", ".join(_fmt(v, 3) for v in r["openssl_runs"]),
        ]
        for r in res["results"]
    ]
    pub = res["publish"]
    return [
        "## CRL building",
        "",
        "`build_crl`: DER assembly and one signature over a prepared list of entries (reason keyCompromise, "
        "revocation times spread over a day). `openssl ca -gencrl`: the whole command over an index file with the "
        "same serials, times and reasons, signed with the same issuing CA key (ECDSA P-256, SHA-256), AKI and "
        "CRL number included.",
        "",
        *_table(
            [
                "entries",
                "build_crl s",
                "bytes",
                "openssl ca -gencrl s",
                "bytes",
                "x openssl time",
                "runs (ours)",
                "runs (openssl)",
            ],
            rows,
        ),
        "",
        f"The publisher's whole path, `Publisher.publish` (read {pub['entries']:,} revoked certificates from the "
        "projection, build, sign, parse back and verify against the log, store in the directory object store): "
        f"{_fmt(pub['seconds'], 3)} s, {_fmt(pub['bytes'])} bytes"
        + (
            f", {pub['x_openssl_time']:.2f}x the `openssl ca -gencrl` time for as many entries"
            if pub["x_openssl_time"]
            else ""
        )
        + f" (runs: {', '.join(_fmt(v, 3) for v in pub['runs'])}).",
        "",
    ]


def _revocations_section(res: Result | None) -> list[str]:
    if not res:
        return []
    p = res["params"]
    rows = [
        [
            str(n + 1),
            _fmt(r["revocations_per_s"]),
            _fmt(r["revoked"]),
            _fmt(r["seconds"], 1),
            _fmt(r["p50_ms"], 1),
            _fmt(r["p99_ms"], 1),
            str(r["non_2xx_or_errors"] or "none"),
            _cpu_per_revocation(r.get("cpu_ms_per_revocation")),
            _pct(r.get("client_cpu_share")),
            f"{r['verified']:,} / {r['revoked']:,}",
        ]
        for n, r in enumerate(res["runs"])
    ]
    return [
        "## Revocation throughput",
        "",
        f"`pca serve` in {p.get('server', 'uvicorn')}, roles: {p.get('roles', 'all')} (the pre-signer re-signs and "
        "the publisher republishes meanwhile), on "
        f"{p['certificates']:,} certificates; wrk ({p['load_generator']}) keeps {p['clients']} keep-alive "
        f"connections revoking one certificate after another (each request names another one) for "
        f"{p['duration_s']:.0f} s; a 2xx is sent after the commit. Revocations counted from the log's new "
        "CertificateRevoked events; every one is read back with `GET /v1/certificates/{serial}`. (An httpx load "
        "generator saturates a core by itself at a few hundred requests/s on this machine, hence wrk.) "
        "Server CPU per revocation: user + system time of `pca serve` itself / of its whole process group (signing, "
        "CRL and granian worker processes) over the revocations; it moves much less with the machine's other load "
        "than the rate does. wrk CPU: the load generator's share of the machine. "
        f"Median: **{_fmt(res['revocations_per_s'])} revocations/s**.",
        "",
        *_table(
            [
                "run",
                "revocations/s",
                "revoked",
                "seconds",
                "p50 ms",
                "p99 ms",
                "errors",
                "server CPU ms per revocation",
                "wrk CPU",
                "read back revoked",
            ],
            rows,
        ),
        "",
    ]


def _propagation_section(res: Result | None) -> list[str]:
    if not res:
        return []
    p = res["params"]
    rows = [
        [
            str(n + 1),
            f"{r['propagated']} / {r['revocations']}",
            _fmt(r["p50_ms"]),
            _fmt(r["p99_ms"]),
            _fmt(r["max_ms"]),
            f"{_fmt(r.get('revoke_p50_ms'))} / {_fmt(r.get('revoke_p99_ms'))}",
            _fmt(r["load_requests_per_s"]),
            _fmt(r["load_p99_ms"], 1),
            _fmt(r["load_errors"]),
            f"{_fmt(r.get('client_cpu_fraction'), 2)} / {_fmt(r.get('client_loop_lag_p99_ms'), 1)}",
            "yes" if r["all_under_load"] else "no",
        ]
        for n, r in enumerate(res["runs"])
    ]
    return [
        "## Propagation under load",
        "",
        f"`{p['server']}` on {p['certificates']:,} pre-signed certificates under {p['load']}. "
        f"{p['revocations_per_run']} certificates outside the rotation are revoked per run at {p['rate_per_s']:.0f}/s "
        "through the admin API; for each, from its 2xx, a black-box client polls that serial's GET every "
        f"{p['poll_ms']:.0f} ms until the answer says revoked. Times in ms; median over runs: "
        f"p50 {_fmt(res['p50_ms'])}, p99 {_fmt(res['p99_ms'])}, max {_fmt(res['max_ms'])}. "
        "Also shown: the revocation request's own round trip under this load (p50 / p99, ms, not part of the "
        "propagation time), and the polling client's CPU (fraction of a core) / event-loop lag p99 (ms): the "
        "client runs at nice -20 so that waiting for a core does not count as propagation; its loop lag bounds "
        "that error.",
        "",
        *_table(
            [
                "run",
                "propagated",
                "p50",
                "p99",
                "max",
                "revoke API p50 / p99",
                "load req/s",
                "load p99 ms",
                "load errors",
                "client CPU / loop lag p99",
                "all under load",
            ],
            rows,
        ),
        "",
    ]


def _quartet(q: dict[str, Any], keys: Sequence[str]) -> str:
    return " / ".join(_fmt(q.get(k)) for k in keys)


def _scaled_propagation_section(res: Result | None) -> list[str]:
    if not res:
        return []
    p = res["params"]
    rows = [
        [
            str(n + 1),
            f"{r['seen_by_all']} / {r['timelines_complete']} / {r['revocations']}",
            _quartet(r["tracker_ocsp_all"], ("p50", "p90", "p99", "max")),
            _quartet(r["blackbox_all"], ("p50", "p90", "p99", "max")),
            _quartet(r["tracker_crl"], ("p50", "p99")),
            _fmt(r["slo_breaches"]),
            f"{_fmt(r['load_requests_per_s'])} / {_fmt(r['load_p99_ms'], 1)} / {_fmt(r['load_errors'])}",
            f"{_fmt(r['revoke_p50_ms'])} / {_fmt(r['revoke_p99_ms'])}",
            f"{_fmt(r['client_cpu_fraction'], 2)} / {_fmt(r['client_loop_lag_p99_ms'], 1)}",
        ]
        for n, r in enumerate(res["runs"])
    ]
    agreement = [
        [str(n + 1), rid, _fmt(a["pairs"]), _fmt(a["p50"], 1), _fmt(a["p99"], 1)]
        for n, r in enumerate(res["runs"])
        for rid, a in r["agreement"].items()
    ]
    t, b, c = res["tracker_ocsp_all"], res["blackbox_all"], res["tracker_crl"]
    return [
        "## Propagation in the scaled shape",
        "",
        f"A throwaway PostgreSQL cluster and every role in a `pca serve --roles R` process of its own: api, "
        f"tracker, presigner, publisher and {p['responders']} responders (uvicorn, `--responder-id rN`, each on its "
        f"own port). Set in `pca.toml`: {p['settings']} (the rest as `pca init` writes it; SLO "
        f"{_fmt(p['slo_seconds'])} s). {p['certificates']:,} certificates issued through the admin API "
        f"({_fmt(p['issue_s'], 1)} s); then, under {p['load']}, {p['revocations_per_run']} others are revoked per "
        f"run at {p['rate_per_s']:.0f}/s. Tracker: each revocation's timeline read afterwards through "
        "`GET /v1/certificates/{serial}/propagation` (`ocsp_all_responders`, `crl`), and the SLO breaches its "
        "`/metrics` counted during the run. Black-box: from the revocation's 2xx, a client polls every responder "
        f'every {p["poll_ms"]:.0f} ms (a keep-alive connection each, nice -20) until it says revoked; "all" is '
        "the last responder's. Both count from the commit (the timeline's `committed_at`), so the black-box times "
        "run late by up to one poll interval. Times in ms; median over runs: "
        f"tracker `ocsp_all_responders` p50 {_fmt(t['p50'])}, p90 {_fmt(t['p90'])}, p99 {_fmt(t['p99'])}, "
        f"max {_fmt(t['max'])}; black-box all responders p50 {_fmt(b['p50'])}, p90 {_fmt(b['p90'])}, "
        f"p99 {_fmt(b['p99'])}, max {_fmt(b['max'])}; `crl` p50 {_fmt(c['p50'])}, p99 {_fmt(c['p99'])}; "
        f"SLO breaches over all runs: {res['slo_breaches']}.",
        "",
        *_table(
            [
                "run",
                "seen by all / timelines complete / revoked",
                "tracker ocsp_all_responders p50 / p90 / p99 / max",
                "black-box all responders p50 / p90 / p99 / max",
                "tracker crl p50 / p99",
                "SLO breaches",
                "load req/s / p99 ms / errors",
                "revoke API p50 / p99",
                "client CPU / loop lag p99",
            ],
            rows,
        ),
        "",
        "Agreement, per (revocation, responder) pair: the black-box time minus the time the tracker's timeline "
        "gives for that responder (ms; positive: the client saw it later than the responder reported it).",
        "",
        *_table(["run", "responder", "pairs", "difference p50", "difference p99"], agreement),
        "",
    ]


def _memory_section(res: Result | None) -> list[str]:
    if not res:
        return []
    rows = [
        [
            f"{r['responses']:,}",
            _fmt(r["rss_before_mb"], 1),
            _fmt(r["rss_after_mb"], 1),
            _fmt(r["bytes_per_response"]),
            ", ".join(_fmt(v) for v in r["runs"]),
        ]
        for r in res["results"]
    ]
    return [
        "## Responder memory",
        "",
        "A fresh process builds a `CachingSource` over `StoreSource(SQLiteResponseStore)`, reads VmRSS once the "
        "store is open, fills the cache through the change feed (`sync_once` in a loop) and reads VmRSS again. "
        "The store holds real signed responses (the pre-signer's `sign_batch`, 1% revoked) of "
        f"{res['params']['mean_der_bytes']:.0f} bytes on average (two SingleResponses and the signer certificate).",
        "",
        *_table(["cached responses", "RSS before MB", "RSS after MB", "bytes per response", "runs"], rows),
        "",
    ]
