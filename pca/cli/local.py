"""The commands that work on this host's files and database: init, serve, migrate, rebuild
(``pca token`` is in ``pca.cli.tokens``, ``pca audit`` in ``pca.cli.audit``)."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
from pathlib import Path
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import serialization

from pca.admin_tls import issue_certificate
from pca.cli.common import fail
from pca.cli.progress import Progress, Working
from pca.config import Config, listen_from_url, load_config, parse_listen
from pca.config_template import render_config
from pca.runtime import connect_runtime
from pca.schemas import PG_SCHEMAS, SQLITE_SCHEMAS
from revocation import ca
from revocation.admin.tokens import add_token, write_secret_file
from revocation.authority import Actor, certificate_issued, issuer_added
from revocation.checkpoints import ensure_signer
from revocation.clock import SystemClock
from revocation.errors import PCAError
from revocation.eventlog import NewEvent
from revocation.events import TokenCreated
from revocation.files import check_writable, write_file
from revocation.keys import KeyRef, SigningKey, generate_key

ROOT_ID = "root-ca"
CA_FILES = ("root-ca.pem", "issuing-ca.pem", "ca-chain.pem")  # what pca init writes beside pca.toml
PEM = serialization.Encoding.PEM
ISSUING_ID = "issuing-ca"


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
        fail(f"{', '.join(foreign)} do not apply to --key-backend {backend}")
    for pair in (file_flags, ("pkcs11_pin_env", "pkcs11_pin_file"), ("pkcs11_root_pin_env", "pkcs11_root_pin_file")):
        if len(_given(args, *pair)) > 1:
            fail(f"give one of {' and '.join(_given(args, *pair))}, not both")
    if backend == "file":
        template = KeyRef("file", passphrase_env=args.key_passphrase_env or "")
        template = dataclasses.replace(template, passphrase_file=_absolute(args.key_passphrase_file))
        return {ROOT_ID: template, ISSUING_ID: template}
    if backend == "pkcs11":
        missing = [f"--{f.replace('_', '-')}" for f in ("pkcs11_module", "pkcs11_token_label") if not getattr(args, f)]
        if not args.pkcs11_pin_env and not args.pkcs11_pin_file:
            missing.append("--pkcs11-pin-env or --pkcs11-pin-file")
        if missing:
            fail(f"--key-backend pkcs11 needs {', '.join(missing)}")
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
        fail("--key-backend kms needs --kms-region (or AWS_REGION)")
    template = KeyRef("kms", region=region, endpoint_url=args.kms_endpoint_url or "")
    return {ROOT_ID: template, ISSUING_ID: template}


def cmd_init(args: argparse.Namespace) -> None:
    directory = Path(args.dir).resolve()
    config_path = directory / "pca.toml"
    if config_path.exists():
        fail(f"{config_path} exists already; refusing to overwrite an initialised CA")
    listen_from_url(args.public_url)
    parse_listen(args.admin_listen, "--admin-listen")
    scheme = "http" if args.no_admin_tls else "https"
    if args.admin_url and (urlsplit(args.admin_url).scheme != scheme or not urlsplit(args.admin_url).hostname):
        fail(f"--admin-url {args.admin_url!r} must be a {scheme}:// URL with a host (the admin API serves {scheme})")
    templates = _key_templates(args)
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    for name in CA_FILES:  # written last, once the CA is recorded: a path refused then would be too late
        check_writable(directory / name, replace=True)
    rendered = render_config(
        public_url=args.public_url,
        admin_listen=args.admin_listen,
        key_algorithm=args.key_algorithm,
        database_url=args.database_url or "",
        admin_tls=not args.no_admin_tls,
        admin_url=args.admin_url or "",
    )
    write_file(config_path, rendered.encode())
    recorded: list[bool] = []
    cfg: Config | None = None  # stays None when the written configuration does not load
    try:
        cfg = load_config(config_path)
        with Working("init") as working:  # key generation in an HSM, KMS or for RSA-4096 takes seconds
            working.phase(f"creating the CA keys ({args.key_backend}), certificates and OCSP signers")
            asyncio.run(_init_hierarchy(cfg, args.root_cn, args.issuing_cn, args.key_algorithm, templates, recorded))
    except PCAError:
        if not recorded:  # nothing was recorded: let the same command be run again
            config_path.unlink()
            # PCA_DATABASE_URL can name PostgreSQL without --database-url: ask the configuration.
            if cfg is not None and not cfg.database_url:
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
    if cfg.admin_tls.enabled:
        print(f"  admin TLS       {cfg.admin_tls.managed_file}  (key and certificate, mode 0600; for {cfg.admin_url})")
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
            ocsp_url=cfg.ocsp_url,
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
                # The admin token cmd_init writes next: audited like every token.
                NewEvent(TokenCreated("admin", "admin"), 0, actor, rid),
            ]
        )
        if recorded is not None:
            recorded.append(True)
        from pca.serve import build_authority

        authority = build_authority(rt)
        await authority.rotate_signers(Actor(actor, rid))
        await ensure_signer(rt.log, rt.view, key_dir, algorithm, clock.now(), actor, rid)  # audit checkpoints
        if cfg.admin_tls.enabled and cfg.admin_tls.cert is None:
            await issue_certificate(cfg, authority, Actor(actor, rid))
    finally:
        await rt.aclose()
    root_pem, issuing_pem = root_cert.public_bytes(PEM), issuing_cert.public_bytes(PEM)
    for name, data in zip(CA_FILES, (root_pem, issuing_pem, issuing_pem + root_pem), strict=True):
        write_file(cfg.data_dir / name, data, replace=True)  # public copies of what the log holds


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
            insecure_admin_http=args.insecure_admin_http,
        )
    )


def cmd_migrate(args: argparse.Namespace) -> None:
    cfg = load_config(args.config)
    where = cfg.database_label
    with Working("migrate") as working:  # an index built over millions of rows takes a while
        working.phase(f"applying schema migrations to {where}")
        if cfg.database_url:
            from revocation.storage.postgres.db import migrate_url

            applied = asyncio.run(migrate_url(cfg.database_url, PG_SCHEMAS))
        else:
            from revocation.storage.sqlite.db import SQLiteDatabase

            applied = SQLiteDatabase(cfg.database).migrate_sync(SQLITE_SCHEMAS)
    print(f"applied migrations {applied} to {where}" if applied else f"schema of {where} is up to date")


def cmd_rebuild(args: argparse.Namespace) -> None:
    cfg = load_config(args.config)

    async def run(progress: Progress) -> int:
        rt = await connect_runtime(cfg, SystemClock())
        try:
            return await rt.log.rebuild_projection(lambda done, total: progress.update(done, total))
        finally:
            await rt.aclose()

    with Progress("rebuild", "events") as progress:  # a bar on a terminal, a line per tenth otherwise
        count = asyncio.run(run(progress))
    print(f"rebuilt the certificate-status projection from {count} events")
