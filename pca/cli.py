"""``pca``: set up a CA, serve it, and operate it through the admin API."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import quote

import httpx
from cryptography.hazmat.primitives import serialization

from pca.config import Config, listen_from_url, load_config, parse_listen, render_config
from pca.runtime import connect_runtime
from pca.schemas import PG_SCHEMAS, SQLITE_SCHEMAS
from revocation import __version__, ca
from revocation.admin.tokens import ROLES, add_token, write_secret_file
from revocation.authority import Actor, certificate_issued, issuer_added
from revocation.clock import SystemClock
from revocation.errors import IntegrityError, PCAError
from revocation.eventlog import NewEvent
from revocation.events import REVOCATION_REASONS
from revocation.keys import BACKENDS, KEY_ALGORITHMS, KeyRef, SigningKey, generate_key

ROOT_ID = "root-ca"
ISSUING_ID = "issuing-ca"


def _fail(message: str, code: int = 1) -> NoReturn:
    print(f"pca: error: {message}", file=sys.stderr)
    raise SystemExit(code)


# --- local commands ---------------------------------------------------------------


def _given(args: argparse.Namespace, *names: str) -> list[str]:
    return ["--" + n.replace("_", "-") for n in names if getattr(args, n) is not None]


def _absolute(path: str | None) -> str:
    return str(Path(path).resolve()) if path else ""


def _key_templates(args: argparse.Namespace) -> dict[str, KeyRef]:
    """Where ``pca init`` creates each CA's key: a KeyRef holding the location and secret references."""
    backend = args.key_backend
    file_flags = ("key_passphrase_env", "key_passphrase_file")
    pkcs11_flags = (
        "pkcs11_module",
        "pkcs11_token_label",
        "pkcs11_pin_env",
        "pkcs11_pin_file",
        "pkcs11_root_token_label",
        "pkcs11_root_pin_env",
        "pkcs11_root_pin_file",
    )
    kms_flags = ("kms_region", "kms_endpoint_url")
    own = {"file": file_flags, "pkcs11": pkcs11_flags, "kms": kms_flags}[backend]
    foreign = _given(args, *(f for f in (*file_flags, *pkcs11_flags, *kms_flags) if f not in own))
    if foreign:
        _fail(f"{', '.join(foreign)} do not apply to --key-backend {backend}")
    for pair in (file_flags, ("pkcs11_pin_env", "pkcs11_pin_file"), ("pkcs11_root_pin_env", "pkcs11_root_pin_file")):
        if len(_given(args, *pair)) > 1:
            _fail(f"give one of {' and '.join(_given(args, *pair))}, not both")
    if backend == "file":
        template = KeyRef("file", passphrase_env=args.key_passphrase_env or "")
        template = dataclasses.replace(template, passphrase_file=_absolute(args.key_passphrase_file))
        return {ROOT_ID: template, ISSUING_ID: template}
    if backend == "pkcs11":
        missing = [f"--{f.replace('_', '-')}" for f in ("pkcs11_module", "pkcs11_token_label") if not getattr(args, f)]
        if not args.pkcs11_pin_env and not args.pkcs11_pin_file:
            missing.append("--pkcs11-pin-env or --pkcs11-pin-file")
        if missing:
            _fail(f"--key-backend pkcs11 needs {', '.join(missing)}")
        template = KeyRef(
            "pkcs11",
            module=_absolute(args.pkcs11_module),
            token_label=args.pkcs11_token_label,
            pin_env=args.pkcs11_pin_env or "",
            pin_file=_absolute(args.pkcs11_pin_file),
        )
        root = template
        if args.pkcs11_root_token_label:
            root = dataclasses.replace(template, token_label=args.pkcs11_root_token_label)
        if args.pkcs11_root_pin_env or args.pkcs11_root_pin_file:
            root = dataclasses.replace(
                root, pin_env=args.pkcs11_root_pin_env or "", pin_file=_absolute(args.pkcs11_root_pin_file)
            )
        return {ROOT_ID: root, ISSUING_ID: template}
    region = args.kms_region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if not region:
        _fail("--key-backend kms needs --kms-region (or AWS_REGION)")
    template = KeyRef("kms", region=region, endpoint_url=args.kms_endpoint_url or "")
    return {ROOT_ID: template, ISSUING_ID: template}


def cmd_init(args: argparse.Namespace) -> None:
    directory = Path(args.dir).resolve()
    config_path = directory / "pca.toml"
    if config_path.exists():
        _fail(f"{config_path} exists already; refusing to overwrite an initialised CA")
    listen_from_url(args.public_url)
    parse_listen(args.admin_listen, "--admin-listen")
    templates = _key_templates(args)
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    config_path.write_text(
        render_config(
            public_url=args.public_url,
            admin_listen=args.admin_listen,
            key_algorithm=args.key_algorithm,
            database_url=args.database_url or "",
        )
    )
    recorded: list[bool] = []
    try:
        cfg = load_config(config_path)
        asyncio.run(_init_hierarchy(cfg, args.root_cn, args.issuing_cn, args.key_algorithm, templates, recorded))
    except PCAError:
        if not recorded:  # nothing was recorded: let the same command be run again
            config_path.unlink()
            if not args.database_url:
                for leftover in (
                    cfg.database,
                    *(cfg.database.with_name(cfg.database.name + s) for s in ("-wal", "-shm")),
                ):
                    leftover.unlink(missing_ok=True)
        raise
    token = add_token(cfg.tokens_db, "admin", "admin")
    write_secret_file(cfg.token_file, token)
    print(f"initialised {directory}")
    print(f"  configuration   {config_path}")
    print(f"  root CA         {directory / 'root-ca.pem'}  (key {templates[ROOT_ID].backend})")
    print(f"  issuing CA      {directory / 'issuing-ca.pem'}  (chain: {directory / 'ca-chain.pem'})")
    print(f"  admin token     {cfg.token_file}  (mode 0600)")
    print(f"next: pca serve --config {config_path}")


async def _init_hierarchy(
    cfg: Config,
    root_cn: str,
    issuing_cn: str,
    algorithm: str,
    templates: dict[str, KeyRef] | None = None,
    recorded: list[bool] | None = None,
) -> None:
    """Create the CA hierarchy and record it; ``recorded`` gets True once the log holds it."""
    clock = SystemClock()
    now = clock.now()
    key_dir = cfg.data_dir / "keys"
    templates = templates or {ROOT_ID: KeyRef("file"), ISSUING_ID: KeyRef("file")}
    keys: dict[str, SigningKey] = {}
    rt = await connect_runtime(cfg, clock)
    try:
        # Before any key is made: a database shared by the scaled shape may hold a CA already.
        if await rt.view.issuers():
            raise PCAError(f"the database {cfg.database_label} already holds a CA; refusing to add another root")
    except BaseException:
        await rt.aclose()
        raise
    try:
        for name in (ROOT_ID, ISSUING_ID):
            keys[name] = generate_key(templates[name], name, algorithm, key_dir)
        root_cert = ca.create_root(keys[ROOT_ID], ca.parse_subject(f"CN={root_cn}"), now, 3650)
        issuing_cert = ca.create_intermediate(
            root_cert,
            keys[ROOT_ID],
            keys[ISSUING_ID].public_key(),
            ca.parse_subject(f"CN={issuing_cn}"),
            now,
            1825,
            cfg.crl_url(ROOT_ID),
        )
    except BaseException:
        await rt.aclose()
        raise
    finally:
        for key in keys.values():
            key.close()
    try:
        actor, rid = "system:init", "init"
        await rt.log.append(
            [
                NewEvent(
                    issuer_added(ROOT_ID, "root", None, root_cert, keys[ROOT_ID].ref, cfg.crl_url(ROOT_ID)),
                    0,
                    actor,
                    rid,
                ),
                NewEvent(
                    issuer_added(
                        ISSUING_ID, "intermediate", ROOT_ID, issuing_cert, keys[ISSUING_ID].ref, cfg.crl_url(ISSUING_ID)
                    ),
                    0,
                    actor,
                    rid,
                ),
                NewEvent(certificate_issued(ROOT_ID, issuing_cert, "ca"), 0, actor, rid),
            ]
        )
        if recorded is not None:
            recorded.append(True)
        from pca.serve import build_authority

        await build_authority(rt).rotate_signers(Actor(actor, rid))
    finally:
        await rt.aclose()
    pem = serialization.Encoding.PEM
    (cfg.data_dir / "root-ca.pem").write_bytes(root_cert.public_bytes(pem))
    (cfg.data_dir / "issuing-ca.pem").write_bytes(issuing_cert.public_bytes(pem))
    (cfg.data_dir / "ca-chain.pem").write_bytes(issuing_cert.public_bytes(pem) + root_cert.public_bytes(pem))


def cmd_serve(args: argparse.Namespace) -> None:
    from pca.serve import ALL_ROLES, serve

    cfg = load_config(args.config)
    if args.public_listen:
        cfg = dataclasses.replace(cfg, public_listen=parse_listen(args.public_listen, "--public-listen"))
    if args.admin_listen:
        cfg = dataclasses.replace(cfg, admin_listen=parse_listen(args.admin_listen, "--admin-listen"))
    roles = tuple(r.strip() for r in args.roles.split(",") if r.strip()) if args.roles else ALL_ROLES
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(
        serve(
            cfg,
            roles,
            server=args.server,
            workers=args.workers,
            responder_id=args.responder_id,
            responder_url=args.responder_url,
        )
    )


def cmd_migrate(args: argparse.Namespace) -> None:
    cfg = load_config(args.config)
    if cfg.database_url:
        from revocation.storage.postgres.db import migrate_url

        applied = asyncio.run(migrate_url(cfg.database_url, PG_SCHEMAS))
    else:
        from revocation.storage.sqlite.db import SQLiteDatabase

        applied = SQLiteDatabase(cfg.database).migrate_sync(SQLITE_SCHEMAS)
    where = cfg.database_label
    print(f"applied migrations {applied} to {where}" if applied else f"schema of {where} is up to date")


def cmd_rebuild(args: argparse.Namespace) -> None:
    cfg = load_config(args.config)

    async def run() -> int:
        rt = await connect_runtime(cfg, SystemClock())
        try:
            return await rt.log.rebuild_projection()
        finally:
            await rt.aclose()

    count = asyncio.run(run())
    print(f"rebuilt the certificate-status projection from {count} events")


def cmd_token_create(args: argparse.Namespace) -> None:
    cfg = load_config(args.config)
    token = add_token(cfg.tokens_db, args.name, args.role)
    print(token)


# --- admin API client commands ---------------------------------------------------------


def _admin_access(args: argparse.Namespace) -> tuple[str, str]:
    """The admin API's URL and the bearer token: from the flags, PCA_TOKEN, then the configuration."""
    url = args.admin_url
    token = args.token or os.environ.get("PCA_TOKEN")
    if url is None or token is None:
        if args.config is None:
            _fail("give --config, or --admin-url and --token (or PCA_TOKEN)")
        cfg = load_config(args.config)
        url = url or cfg.admin_url
        if token is None:
            try:
                token = cfg.token_file.read_text().strip()
            except OSError as exc:
                _fail(f"cannot read the admin token from {cfg.token_file}: {exc.strerror}")
    return url, token


class _Client:
    def __init__(self, args: argparse.Namespace) -> None:
        url, token = _admin_access(args)
        self._http = httpx.Client(base_url=url, headers={"authorization": f"Bearer {token}"}, timeout=30.0)

    def call(self, method: str, path: str, body: dict[str, Any] | None = None, ok: tuple[int, ...] = (200, 201)) -> Any:
        try:
            resp = self._http.request(method, path, json=body)
        except httpx.HTTPError as exc:
            _fail(f"cannot reach the admin API at {self._http.base_url}: {exc}")
        if resp.status_code not in ok:
            try:
                problem = resp.json()
                _fail(f"{problem.get('title', resp.status_code)}: {problem.get('detail', resp.text)}")
            except ValueError:
                _fail(f"HTTP {resp.status_code}: {resp.text[:200]}")
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
        try:
            body["csr"] = Path(args.csr).read_text()
        except (OSError, UnicodeDecodeError) as exc:
            _fail(f"cannot read CSR {args.csr}: {exc}")
    elif args.key_out is None:
        _fail("without --csr the key is generated: give --key-out FILE to receive it")
    result = _Client(args).call("POST", "/v1/certificates", body)
    print(result["serial"])
    if args.out:
        Path(args.out).write_text(result["certificate"])
    else:
        print(result["certificate"], end="")
    if "private_key" in result and args.key_out:
        write_secret_file(Path(args.key_out), result["private_key"].rstrip("\n"))
    print(f"issued {result['subject']} by {result['issuer']}, valid until {result['not_after']}", file=sys.stderr)


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
    else:
        lines.append("  CRL                pending")
    for probe in t.get("probes") or []:
        if isinstance(probe, dict):
            lines.append(f"  probe {probe.get('responder_url', '?')}: saw revoked {_stage(probe)}")
    slo, met = t.get("slo_seconds"), t.get("slo_met")
    verdict = "not decided yet" if met is None else ("met" if met else "NOT met")
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
    url, token = _admin_access(args)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    async def run() -> str:
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
        )
        return summary.render()

    print(
        f"probing {', '.join(responders)} "
        + (f"for {args.duration:g}s" if args.duration else "until Ctrl-C")
        + f" (sample {args.sample:g}, timeout {args.timeout:g}s)",
        file=sys.stderr,
    )
    print(asyncio.run(run()))


def cmd_events(args: argparse.Namespace) -> None:
    result = _Client(args).call("GET", f"/v1/events?after={args.after}&limit={args.limit}")
    for event in result["events"]:
        print(json.dumps(event, sort_keys=True))


def cmd_audit_verify(args: argparse.Namespace) -> None:
    if args.local:
        cfg = load_config(args.config) if args.config else _fail("--local needs --config")

        async def run() -> int:
            rt = await connect_runtime(cfg, SystemClock())
            try:
                return await rt.log.verify_chain()
            finally:
                await rt.aclose()

        try:
            count = asyncio.run(run())
        except IntegrityError as exc:
            _fail(f"AUDIT FAILED: {exc}")
        print(f"audit OK: {count} events, hash chain intact")
        return
    result = _Client(args).call("GET", "/v1/audit/verify", ok=(200, 409))
    if not result["ok"]:
        _fail(f"AUDIT FAILED: {result['detail']}")
    print(f"audit OK: {result['events']} events, hash chain intact")


# --- argument parsing -----------------------------------------------------------------


def _remote(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="pca.toml (for the admin URL and token file)")
    p.add_argument("--admin-url", help="admin API base URL (overrides the configuration)")
    p.add_argument("--token", help="bearer token (default: PCA_TOKEN, then the configured token file)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pca",
        description="Revocation and status infrastructure for a private CA: pre-signed OCSP, CRLs, audit log.",
    )
    parser.add_argument("--version", action="version", version=f"pca {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "init",
        help="create a root CA, an issuing CA, an OCSP signer and a configuration",
        description="Create a root CA, an issuing CA, an OCSP signer and a configuration.",
    )
    p.add_argument("--dir", required=True, help="directory for configuration, keys, database and CRLs")
    p.add_argument("--public-url", default="http://127.0.0.1:8080", help="base URL of OCSP and CRLs (in certificates)")
    p.add_argument("--admin-listen", default="127.0.0.1:8081", help="HOST:PORT of the admin API")
    p.add_argument(
        "--database-url",
        metavar="URL",
        help="PostgreSQL (postgresql://user@host:port/db; no password: use PGPASSWORD or ~/.pgpass) "
        "instead of the embedded SQLite file",
    )
    p.add_argument("--key-algorithm", default="ec-p256", choices=KEY_ALGORITHMS, help="algorithm of every CA key")
    p.add_argument("--root-cn", default="PCA Root CA", help="common name of the root CA")
    p.add_argument("--issuing-cn", default="PCA Issuing CA", help="common name of the issuing CA")
    k = p.add_argument_group(
        "signing keys",
        "Where the CA and OCSP signer keys are created. Only references (paths, labels, key ids, the names of "
        "environment variables or files holding a PIN or passphrase) are recorded, never a secret.",
    )
    k.add_argument("--key-backend", default="file", choices=BACKENDS, help="file (default), pkcs11 (an HSM) or kms")
    k.add_argument("--key-passphrase-env", metavar="NAME", help="file: encrypt key files with the passphrase in $NAME")
    k.add_argument("--key-passphrase-file", metavar="PATH", help="file: encrypt key files with the passphrase in PATH")
    k.add_argument("--pkcs11-module", metavar="PATH", help="pkcs11: the PKCS#11 library, e.g. libsofthsm2.so")
    k.add_argument("--pkcs11-token-label", metavar="LABEL", help="pkcs11: token of the issuing CA and OCSP signers")
    k.add_argument("--pkcs11-pin-env", metavar="NAME", help="pkcs11: the user PIN is in $NAME")
    k.add_argument("--pkcs11-pin-file", metavar="PATH", help="pkcs11: the user PIN is in PATH")
    k.add_argument("--pkcs11-root-token-label", metavar="LABEL", help="pkcs11: a token of its own for the root key")
    k.add_argument("--pkcs11-root-pin-env", metavar="NAME", help="pkcs11: PIN of the root's token in $NAME")
    k.add_argument("--pkcs11-root-pin-file", metavar="PATH", help="pkcs11: PIN of the root's token in PATH")
    k.add_argument("--kms-region", metavar="REGION", help="kms: AWS region (default: AWS_REGION)")
    k.add_argument("--kms-endpoint-url", metavar="URL", help="kms: endpoint (a VPC endpoint or a local KMS server)")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser(
        "serve", help="run the server (all roles by default)", description="Run the server (all roles by default)."
    )
    p.add_argument("--config", required=True)
    p.add_argument("--roles", help="comma-separated subset of api,presigner,responder,publisher,tracker (default: all)")
    p.add_argument("--public-listen", metavar="HOST:PORT", help="override public.listen (e.g. one per responder)")
    p.add_argument("--admin-listen", metavar="HOST:PORT", help="override admin.listen")
    p.add_argument(
        "--responder-id", help="this responder's name in heartbeats and propagation timelines (default: host:pid)"
    )
    p.add_argument("--responder-url", help="the OCSP URL this responder answers on, shown in timelines")
    p.add_argument(
        "--server",
        default="uvicorn",
        choices=["uvicorn", "granian"],
        help="ASGI server of the public listener (granian runs it in --workers processes of its own)",
    )
    p.add_argument("--workers", type=int, default=1, help="public listener processes (granian only)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser(
        "issue",
        help="issue a leaf certificate (prints the serial first)",
        description="Issue a leaf certificate (prints the serial first).",
    )
    _remote(p)
    p.add_argument("--subject", help='RFC 4514 subject, e.g. "CN=svc1,O=Example" (default: from the CSR)')
    p.add_argument("--dns", action="append", default=[], help="DNS subject alternative name (repeatable)")
    p.add_argument("--ip", action="append", default=[], help="IP address SAN (repeatable)")
    p.add_argument("--email", action="append", default=[], help="email SAN (repeatable)")
    p.add_argument("--uri", action="append", default=[], help="URI SAN (repeatable)")
    p.add_argument("--profile", default="server", choices=ca.PROFILES)
    p.add_argument("--validity-days", type=int, help="validity (default from the configuration, 90)")
    p.add_argument("--csr", help="PEM or DER CSR file; without it a key is generated")
    p.add_argument("--key-algorithm", choices=KEY_ALGORITHMS, help="algorithm of a generated key")
    p.add_argument("--issuer", help="issuing CA id (default from the configuration)")
    p.add_argument("--out", help="write the certificate PEM here (default: stdout)")
    p.add_argument("--key-out", help="write the generated private key here (mode 0600)")
    p.set_defaults(func=cmd_issue)

    p = sub.add_parser("revoke", help="revoke a certificate", description="Revoke a certificate.")
    _remote(p)
    p.add_argument("serial", help="serial number in hex")
    p.add_argument("--reason", required=True, choices=REVOCATION_REASONS)
    p.add_argument("--invalidity-date", help="ISO 8601 time the key is known or suspected compromised")
    p.add_argument("--issuer", help="issuer id, when the serial exists under several issuers")
    p.set_defaults(func=cmd_revoke)

    p = sub.add_parser(
        "release-hold",
        help="release a certificate from certificateHold",
        description="Release a certificate from certificateHold.",
    )
    _remote(p)
    p.add_argument("serial")
    p.set_defaults(func=cmd_release_hold)

    p = sub.add_parser("status", help="show a certificate's status", description="Show a certificate's status.")
    _remote(p)
    p.add_argument("serial")
    p.add_argument("--issuer")
    p.add_argument("--json", action="store_true", help="print the API's JSON")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser(
        "propagation",
        help="show where a revocation has got to: OCSP responders, CRLs, probes, SLO",
        description="Show where a certificate's revocation has got to: pre-signed, applied by each OCSP "
        "responder, published in a CRL, seen by probes, and whether the SLO was met.",
    )
    _remote(p)
    p.add_argument("serial", help="serial number in hex")
    p.add_argument("--issuer", help="issuer id, when the serial exists under several issuers")
    p.add_argument("--json", action="store_true", help="print the API's JSON")
    p.set_defaults(func=cmd_propagation)

    p = sub.add_parser(
        "probe",
        help="probe OCSP responders over HTTP as a client would, timing each revocation",
        description="Follow the event log and ask each OCSP responder about every revocation (or a sample) "
        "until it answers revoked; report each sighting to the admin API (needs a prober or admin token) "
        "and print percentiles from commit to seen-by-all-responders at the end (--duration or Ctrl-C).",
    )
    _remote(p)
    p.add_argument("--responder", action="append", required=True, metavar="URL", help="OCSP responder URL (repeatable)")
    p.add_argument("--sample", type=float, default=1.0, help="fraction of revocations to probe (default 1.0)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for revoked (default 30)")
    p.add_argument("--duration", type=float, help="stop following the log after this many seconds")
    p.add_argument("--poll", type=float, default=0.05, help="seconds between asks and log reads (default 0.05)")
    p.add_argument("--from-start", action="store_true", help="probe every revocation in the log, not only new ones")
    p.add_argument("--concurrency", type=int, default=64, help="OCSP requests in flight at most (default 64)")
    p.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=cmd_probe)

    p = sub.add_parser(
        "events", help="print events from the log as JSON lines", description="Print events from the log as JSON lines."
    )
    _remote(p)
    p.add_argument("--after", type=int, default=0)
    p.add_argument("--limit", type=int, default=100)
    p.set_defaults(func=cmd_events)

    p = sub.add_parser("audit", help="audit the event log", description="Audit the event log.")
    audit = p.add_subparsers(dest="audit_command", required=True, metavar="SUBCOMMAND")
    v = audit.add_parser(
        "verify",
        help="walk the hash chain; fails naming the first bad seq",
        description="Walk the hash chain; fails naming the first bad seq.",
    )
    _remote(v)
    v.add_argument("--local", action="store_true", help="read the database directly instead of asking the API")
    v.set_defaults(func=cmd_audit_verify)

    p = sub.add_parser(
        "rebuild",
        help="rebuild the certificate-status projection from the event log",
        description="Rebuild the certificate-status projection from the event log.",
    )
    p.add_argument("--config", required=True)
    p.set_defaults(func=cmd_rebuild)

    p = sub.add_parser(
        "migrate", help="apply database schema migrations", description="Apply database schema migrations."
    )
    p.add_argument("--config", required=True)
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser("token", help="manage admin API tokens", description="Manage admin API tokens.")
    tok = p.add_subparsers(dest="token_command", required=True, metavar="SUBCOMMAND")
    t = tok.add_parser(
        "create", help="create a token and print it once", description="Create a token and print it once."
    )
    t.add_argument("--config", required=True)
    t.add_argument("--name", required=True)
    t.add_argument("--role", required=True, choices=ROLES)
    t.set_defaults(func=cmd_token_create)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except PCAError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
