"""The commands that operate the CA through the admin API over HTTP: issue, revoke, status and the rest."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import ssl
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from pca.cli.common import fail
from pca.config import load_config
from revocation.files import check_writable, write_file

if TYPE_CHECKING:
    from revocation.propagation.prober import ProbeSummary


def _admin_access(args: argparse.Namespace) -> tuple[str, str | None, ssl.SSLContext]:
    """The admin API's URL, the bearer token (flags, PCA_TOKEN, the configuration; None when a client
    certificate authenticates) and the TLS context that verifies the server (never switched off)."""
    url = args.admin_url
    token = args.token or os.environ.get("PCA_TOKEN")
    ca_file = getattr(args, "ca_file", None)
    client_cert = getattr(args, "client_cert", None)
    cfg = None
    if args.config is not None:
        cfg = load_config(args.config)
    elif url is None or (token is None and client_cert is None):
        fail("give --config, or --admin-url and --token (or PCA_TOKEN)")
    if cfg is not None:
        url = url or cfg.admin_url
        ca_file = ca_file or (str(cfg.admin_tls.ca_file) if cfg.admin_tls.ca_file else None)
        if token is None and client_cert is None:
            try:
                token = cfg.token_file.read_text().strip()
            except OSError as exc:
                fail(f"cannot read the admin token from {cfg.token_file}: {exc.strerror}")
    return url, token, _tls_context(ca_file, client_cert, getattr(args, "client_key", None))


def _tls_context(ca_file: str | None, client_cert: str | None, client_key: str | None) -> ssl.SSLContext:
    """Verify the admin API against ``ca_file`` (else the system's store); present a client certificate."""
    try:
        ctx = ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        fail(f"cannot load the CA bundle {ca_file} (--ca-file, admin.ca_file): {exc}")
    if client_cert:
        try:
            ctx.load_cert_chain(client_cert, client_key)
        except (OSError, ssl.SSLError) as exc:
            fail(f"cannot load the client certificate {client_cert} and its key: {exc}")
    return ctx


class _Client:
    def __init__(self, args: argparse.Namespace, timeout: float = 30.0, headers: dict[str, str] | None = None) -> None:
        url, token, tls = _admin_access(args)
        headers = {**(headers or {}), **({"authorization": f"Bearer {token}"} if token else {})}
        self._http = httpx.Client(base_url=url, headers=headers, timeout=timeout, verify=tls)

    def call(self, method: str, path: str, body: dict[str, Any] | None = None, ok: tuple[int, ...] = (200, 201)) -> Any:
        try:
            resp = self._http.request(method, path, json=body)
        except httpx.ConnectError as exc:
            hint = ""
            if "CERTIFICATE_VERIFY_FAILED" in str(exc):
                hint = " (is --ca-file / admin.ca_file the CA bundle that issued the admin API's certificate?)"
            fail(f"cannot reach the admin API at {self._http.base_url}: {exc}{hint}")
        except httpx.HTTPError as exc:
            fail(f"cannot reach the admin API at {self._http.base_url}: {exc}")
        if resp.status_code not in ok:
            try:
                problem = resp.json()
                fail(f"{problem.get('title', resp.status_code)}: {problem.get('detail', resp.text)}")
            except ValueError:
                fail(f"HTTP {resp.status_code}: {resp.text[:200]}")
        return resp.json()


def cmd_issue(args: argparse.Namespace) -> None:
    body: dict[str, Any] = {
        "profile": args.profile,
        "dns": args.dns,
        "ips": args.ip,
        "emails": args.email,
        "uris": args.uri,
    }
    if args.subject:
        body["subject"] = args.subject
    if args.validity_days:
        body["validity_days"] = args.validity_days
    if args.issuer:
        body["issuer"] = args.issuer
    if args.key_algorithm:
        body["key_algorithm"] = args.key_algorithm
    if args.csr:
        body["csr"] = _read_csr(args.csr)
    elif args.key_out is None:
        fail("without --csr the key is generated: give --key-out FILE to receive it")
    # Before issuing: a refused --out or --key-out afterwards would leave a certificate without its key.
    hint = "; --force replaces it"
    outputs = [Path(p) for p in (args.out, None if args.csr else args.key_out) if p]
    for path in outputs:
        check_writable(path, replace=args.force, hint=hint)
    result = _Client(args).call("POST", "/v1/certificates", body)
    print(result["serial"])
    if "private_key" in result and args.key_out:  # first: the key exists nowhere else
        key = result["private_key"].rstrip("\n") + "\n"
        write_file(Path(args.key_out), key.encode(), mode=0o600, replace=args.force, hint=hint)
    if args.out:
        write_file(Path(args.out), result["certificate"].encode(), replace=args.force, hint=hint)
    else:
        print(result["certificate"], end="")
    print(f"issued {result['subject']} by {result['issuer']}, valid until {result['not_after']}", file=sys.stderr)


def _read_csr(path: str) -> str:
    """The CSR as PEM, the API's form; a file that is neither PEM nor DER is refused here, naming it."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        fail(f"cannot read CSR {path}: {exc.strerror or exc}")
    try:
        pem = data.lstrip().startswith(b"-----")
        csr = x509.load_pem_x509_csr(data) if pem else x509.load_der_x509_csr(data)
    except ValueError:
        fail(f"CSR {path} is neither a PEM nor a DER certificate signing request")
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def cmd_revoke(args: argparse.Namespace) -> None:
    body: dict[str, Any] = {"reason": args.reason}
    if args.invalidity_date:
        body["invalidity_date"] = args.invalidity_date
    if args.issuer:
        body["issuer"] = args.issuer
    result = _Client(args).call("POST", f"/v1/certificates/{args.serial}/revoke", body)
    print(
        f"{result['serial']} revoked ({result['reason']}) at {result['revoked_at']}, event seq {result['event']['seq']}"
    )


def cmd_release_hold(args: argparse.Namespace) -> None:
    result = _Client(args).call("POST", f"/v1/certificates/{args.serial}/release-hold", {})
    print(f"{result['serial']} released from hold, event seq {result['event']['seq']}")


def cmd_status(args: argparse.Namespace) -> None:
    path = f"/v1/certificates/{args.serial}" + (f"?issuer={args.issuer}" if args.issuer else "")
    result = _Client(args).call("GET", path)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    line = f"{result['serial']} {result['status']}"
    if result["status"] == "revoked":
        line += f" reason={result['reason']} revoked_at={result['revoked_at']}"
        if result["invalidity_date"]:
            line += f" invalidity_date={result['invalidity_date']}"
    print(line)
    print(f"  issuer {result['issuer']}, subject {result['subject']}, valid until {result['not_after']}")


def cmd_propagation(args: argparse.Namespace) -> None:
    path = f"/v1/certificates/{quote(args.serial, safe='')}/propagation"
    if args.issuer:
        path += f"?issuer={quote(args.issuer, safe='')}"
    result = _Client(args).call("GET", path)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(format_timeline(result))


def format_timeline(t: dict[str, Any]) -> str:
    """The propagation tracker's timeline for a person: each stage with its time and delay from the commit."""
    lines = [f"{t.get('serial')} from {t.get('issuer_id')}: revoked by event seq {t.get('seq')}"]
    if t.get("superseded"):
        lines.append("  superseded: the hold was released since; nothing is waited for any more")
    lines.append(f"  committed          {t.get('committed_at') or '?'}")
    lines.append(f"  pre-signed         {_stage(t.get('presigned'))}")
    responders = [r for r in t.get("responders") or [] if isinstance(r, dict)]
    for r in responders:
        name = r.get("responder_id") or "?"
        url = f" {r['url']}" if r.get("url") else ""
        state = r.get("state") or "?"
        when = f" {_stage(r)}" if r.get("applied_at") or r.get("seconds") is not None else ""
        uncounted = "" if r.get("counted", True) else " (not counted)"
        lines.append(f"  responder {name}{url}: {state}{when}{uncounted}")
    if not responders:
        lines.append("  responders         none known")
    all_line = f"  all responders     {_stage(t.get('ocsp_all_responders'))}"
    pending = t.get("pending")
    if isinstance(pending, list) and pending:
        all_line += f" (not caught up: {', '.join(map(str, pending))})"
    lines.append(all_line)
    crl = t.get("crl")
    if isinstance(crl, dict):
        label = f"{crl.get('kind', '')} CRL number {crl.get('number', '?')}".strip()
        if crl.get("shard"):
            label += f" (shard {crl['shard']})"
        lines.append(f"  CRL                {label} {_stage(crl)}")
    elif t.get("crl_published") is False:
        lines.append("  CRL                not published by pca (it does not hold this issuer's key)")
    else:
        lines.append("  CRL                pending")
    parties = [r for r in t.get("relying_parties") or [] if isinstance(r, dict)]
    for party in parties:  # CRL sync agents at relying parties: informative, never part of the SLO
        label = f"{party.get('kind', '')} CRL number {party.get('number', '?')}".strip()
        lines.append(f"  relying party {party.get('agent') or '?'}: installed {label} {_stage(party)}")
    if not parties:
        lines.append("  relying parties    none reported")
    for probe in t.get("probes") or []:
        if isinstance(probe, dict):
            lines.append(f"  probe {probe.get('responder_url', '?')}: saw revoked {_stage(probe)}")
    slo, met = t.get("slo_seconds"), t.get("slo_met")
    verdict = "not decided yet" if met is None else ("met" if met else "NOT met")
    gone = [str(g) for g in t.get("gone_without") or []]
    if met and gone:  # responders that died before they had it: met by the ones still live only
        verdict = f"met by live responders; {', '.join(gone)} gone"
    lines.append(f"  SLO{'' if slo is None else f' {slo:g}s'}: {verdict}")
    return "\n".join(lines)


def _stage(value: Any) -> str:
    """One stage of a timeline, ``{"at": ..., "seconds": ...}``: its time and delay, or pending."""
    if not isinstance(value, dict):
        return "pending"
    at = value.get("at") or value.get("applied_at") or value.get("seen_at")
    seconds = value.get("seconds")
    delay = f"(+{seconds:.3f}s)" if isinstance(seconds, int | float) and not isinstance(seconds, bool) else ""
    return " ".join(part for part in (str(at) if at else "", delay) if part) or "done (time not known)"


def cmd_probe(args: argparse.Namespace) -> None:
    from revocation.propagation.prober import check_responder_url, probe

    responders = [check_responder_url(u) for u in args.responder]
    url, token, tls = _admin_access(args)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    async def run() -> ProbeSummary:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGINT, stop.set)  # Ctrl-C: stop and print what was seen so far
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        summary = await probe(
            url,
            token,
            responders,
            duration=args.duration,
            sample=args.sample,
            timeout=args.timeout,
            poll=args.poll,
            from_seq=1 if args.from_start else None,
            stop=stop,
            concurrency=args.concurrency,
            verify=tls,
        )
        return summary

    print(
        f"probing {', '.join(responders)} "
        + (f"for {args.duration:g}s" if args.duration else "until Ctrl-C")
        + f" (sample {args.sample:g}, timeout {args.timeout:g}s)",
        file=sys.stderr,
    )
    summary = asyncio.run(run())
    print(summary.render())
    problems = _probe_problems(summary)
    if problems:  # a monitoring job must see it in the exit status, not only in the text
        fail(f"probe failed: {'; '.join(problems)}")


def _probe_problems(summary: ProbeSummary) -> list[str]:
    """What makes a probe run fail: revocations some responder did not answer revoked in time, and sightings
    the admin API refused (a token without the prober role, say)."""
    out = []
    if summary.timeouts:
        done = len(summary.results)
        out.append(f"{summary.timeouts} of {done} revocations not seen revoked by every responder in time")
    if summary.post_failures:
        reasons = ", ".join(summary.post_failure_reasons)
        out.append(f"{summary.post_failures} sightings not accepted by the admin API ({reasons})")
    return out
