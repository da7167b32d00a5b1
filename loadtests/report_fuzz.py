"""The ``ocsp_fuzz`` scenario in ``docs/benchmarks.md``: its goal (issue 13) and its section."""

from __future__ import annotations

from typing import Any

Result = dict[str, Any]
GOAL_INPUTS = 1_000_000


def fuzz_headline(r: Result) -> str:
    app = r["in_process"]
    servers = "; ".join(
        f"{name}: {s['inputs']:,} inputs, {s['failures']} failures, up after: {s['up_and_answering_after']}"
        for name, s in r["servers"].items()
    )
    return f"{app['inputs']:,} inputs in-process at {app['inputs_per_s']:,}/s, {app['failures']} failures; {servers}"


def fuzz_goals(all_results: dict[str, Result]) -> list[tuple[str, str, str, bool | None]]:
    """(measure, goal, measured, met) rows."""
    r = all_results.get("ocsp_fuzz")
    measure = "OCSP responder under fuzzing"
    goal = f">= {GOAL_INPUTS:,} inputs: no 5xx, only well-formed OCSP answers or clean 4xx, servers up"
    if not r:
        return [(measure, goal, "–", None)]
    total = r["in_process"]["inputs"] + sum(s["inputs"] for s in r["servers"].values())
    up = all(s["up_and_answering_after"] for s in r["servers"].values())
    measured = f"{total:,} inputs, {r['failures']} failures, servers up after: {up}"
    return [(measure, goal, measured, total >= GOAL_INPUTS and r["failures"] == 0 and up)]


def _outcomes(counts: dict[str, int]) -> str:
    return ", ".join(f"{name} {n:,}" for name, n in counts.items())


def fuzz_section(r: Result | None) -> list[str]:
    if not r:
        return []
    p, app = r["params"], r["in_process"]
    lines = [
        "## OCSP responder fuzzing (issue 13)",
        "",
        f"`loadtests.ocsp_fuzz`: structure-aware inputs (`loadtests/fuzz_inputs.py`, seed {p['seed']}) to the "
        f"responder `pca serve` runs, on a CA with {p['certificates']:,} pre-signed certificates (1 in 4 revoked). "
        "OCSPRequests built field by field around the CertIDs the responder holds and broken at the field level "
        "(missing, repeated, moved or retagged fields, wrong hash lengths and algorithms, zero, negative and "
        "oversized serials, 0 to 40 CertIDs, extensions, requestorName, signatures), at the byte level (flips, "
        "truncations, lengths that lie, indefinite lengths) and as nested garbage (3,000 levels deep); sent as GET "
        "(standard and URL-safe base64, padding dropped, percent-encoded once or twice, bad percent escapes, bad "
        "characters, paths up to 50 KB) and POST (right and wrong content types, bodies up to 1 MB), with other "
        "methods and paths. An answer passes if it is a clean 4xx or a well-formed OCSP response (successful, "
        "malformedRequest or unauthorized; a successful one must hold the very CertID asked when the request was "
        "sent intact); a 5xx, internalError, tryLater or anything else fails. Most inputs go straight into the "
        "ASGI app (as uvicorn hands a request over); a slice goes over sockets to `pca serve` under uvicorn and "
        "under granian, which must still answer a valid request afterwards. The same grammar runs under "
        "Hypothesis in `tests/responders/test_ocsp_fuzz.py` (2,500 examples, shrinking).",
        "",
        "| target | inputs | inputs/s | failures | outcomes |",
        "|---|---|---|---|---|",
        f"| responder ASGI app, in-process | {app['inputs']:,} | {app['inputs_per_s']:,} | {app['failures']} | "
        f"{_outcomes(app['outcomes'])} |",
    ]
    for name, s in r["servers"].items():
        up = "" if s["up_and_answering_after"] else " (NOT ANSWERING AFTERWARDS)"
        lines.append(
            f"| `{name}`, over sockets | {s['inputs']:,} | {s['inputs_per_s']:,} | {s['failures']}{up} | "
            f"{_outcomes(s['outcomes'])} |"
        )
    lines += ["", "Inputs/s is the whole loop: making the input, the responder answering it, checking the answer."]
    if r["failures"]:
        lines += ["", "First failures:", ""]
        for f in (r["in_process"]["first_failures"] + [x for s in r["servers"].values() for x in s["first_failures"]])[
            :10
        ]:
            lines.append(f"- {f['why']}: `{f['method']} {f['target'][:120]}` body `{f['body_hex'][:80]}`")
    lines.append("")
    return lines
