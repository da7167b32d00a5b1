"""The ``pca issuer`` commands of an incident (docs/runbooks.md).

- ``pca issuer revoke ID --reason cACompromise``: revoke an issuing CA's own certificate through the
  admin API (``POST /v1/issuers/{id}/revoke``, admin only): the root's CRL and OCSP list it, issuance
  under it stops.
- ``pca issuer create --id ID``: a new issuing CA under pca's root (a local command, like ``pca init``:
  it uses the root key of this host), with its OCSP signer; its certificate and chain are written
  beside ``pca.toml``. The running server picks it up from the log.
- ``pca issuer rotate-signer --id ID --now``: an emergency rotation of the delegated OCSP signer of an
  issuer whose key pca holds; the pre-signer re-signs every response of that issuer with the new signer.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any
from urllib.parse import quote

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from pca.cli.common import cli_actor, fail
from pca.cli.issuers import _find, _runtime, _signer_template
from pca.cli.revoke_issued import add_revoke_issued_parser
from pca.config import load_config
from revocation import ca
from revocation.authority import certificate_issued, issuer_added
from revocation.errors import ConcurrencyError, ConflictError, ValidationError
from revocation.eventlog import NewEvent
from revocation.events import REVOCATION_REASONS
from revocation.files import check_writable, write_file
from revocation.issuers import check_issuer_id
from revocation.keys import generate_key, open_key

PEM = serialization.Encoding.PEM


def cmd_revoke(args: argparse.Namespace) -> None:
    from pca.cli.remote import _Client

    body: dict[str, Any] = {"reason": args.reason}
    if args.invalidity_date:
        body["invalidity_date"] = args.invalidity_date
    result = _Client(args).call("POST", f"/v1/issuers/{quote(args.issuer_id, safe='')}/revoke", body)
    print(
        f"CA certificate of {result['issuer_id']} (serial {result['serial']}, issued by {result['issuer']}) revoked "
        f"({result['reason']}) at {result['revoked_at']}, event seq {result['event']['seq']}"
    )
    print(f"  {result['issuer']}'s CRL and OCSP list it; {result['issuer_id']} issues no more certificates")


def cmd_create(args: argparse.Namespace) -> None:
    cfg = load_config(args.config)
    check_issuer_id(args.id)
    if not 1 <= args.validity_days <= 3650:
        fail("--validity-days must be from 1 to 3650")
    cert_path = cfg.data_dir / f"{args.id}.pem"
    chain_path = cfg.data_dir / f"{args.id}-chain.pem"
    for path in (cert_path, chain_path):
        check_writable(path, hint="; it belongs to another issuing CA")
    actor = cli_actor("issuer-create")

    async def run() -> tuple[bytes, bytes, int]:
        rt = await _runtime(cfg)
        try:
            issuers = await rt.view.issuers()
            roots = [r for r in issuers if r.kind == "root" and r.key_ref is not None]
            if not roots:
                raise ValidationError("no root CA whose key this host holds: create the issuing CA where the root is")
            root = _find(issuers, args.root) if args.root else roots[0]
            if root.kind != "root" or root.key_ref is None:
                raise ValidationError(f"issuer {root.issuer_id!r} is not a root CA whose key pca holds")
            if any(r.issuer_id == args.id for r in issuers):
                raise ConflictError(f"issuer id {args.id!r} is taken")
            now = rt.clock.now()
            template = _signer_template(cfg, issuers)
            authority_key = await asyncio.to_thread(open_key, root.key_ref)
            try:
                key = await asyncio.to_thread(generate_key, template, args.id, cfg.key_algorithm, cfg.data_dir / "keys")
                try:
                    cert = await asyncio.to_thread(
                        ca.create_intermediate,
                        root.cert,
                        authority_key,
                        key.public_key(),
                        ca.parse_subject(f"CN={args.cn}"),
                        now,
                        args.validity_days,
                        cfg.crl_url(root.issuer_id),
                        ocsp_url=cfg.ocsp_url,
                    )
                finally:
                    key.close()
            finally:
                authority_key.close()
            added = issuer_added(args.id, "intermediate", root.issuer_id, cert, key.ref, cfg.crl_url(args.id))
            try:
                await rt.log.append(
                    [
                        NewEvent(added, 0, actor.name, actor.request_id),
                        NewEvent(certificate_issued(root.issuer_id, cert, "ca"), 0, actor.name, actor.request_id),
                    ]
                )
            except ConcurrencyError as exc:
                raise ConflictError(f"issuer {args.id!r} was created by another command meanwhile") from exc
            from pca.serve import build_authority

            rotated = await build_authority(rt).rotate_signers(actor, issuer_id=args.id)
            return cert.public_bytes(PEM), root.cert.public_bytes(PEM), rotated[0].seq if rotated else 0
        finally:
            await rt.aclose()

    cert_pem, root_pem, signer_seq = asyncio.run(run())
    write_file(cert_path, cert_pem)
    write_file(chain_path, cert_pem + root_pem)
    print(f"created issuing CA {args.id} (CN={args.cn}) under the root; OCSP signer made (seq {signer_seq})")
    print(f"  certificate  {cert_path}  (chain: {chain_path})")
    print(f'  issue with   pca issue --issuer {args.id} ...  (or set ca.default_issuer = "{args.id}" in pca.toml)')


def cmd_rotate_signer(args: argparse.Namespace) -> None:
    cfg = load_config(args.config)
    actor = cli_actor("issuer-rotate-signer")

    async def run() -> list[tuple[int, str, str]]:
        rt = await _runtime(cfg)
        try:
            issuer = _find(await rt.view.issuers(), args.id)
            if issuer.key_ref is None:
                raise ValidationError(
                    f"pca does not hold the key of {args.id}: start a new signer with 'pca issuer renew-signer' "
                    "and have the CA sign its CSR"
                )
            from pca.serve import build_authority

            rotated = await build_authority(rt).rotate_signers(actor, force=args.now, issuer_id=args.id)
            return [(rec.seq, _serial(rec.payload), str(rec.payload.get("not_after"))) for rec in rotated]
        finally:
            await rt.aclose()

    rotated = asyncio.run(run())
    if not rotated:
        print(f"OCSP signer of {args.id} not due for rotation; nothing done (--now rotates it anyway)")
        return
    seq, serial, until = rotated[0]
    print(f"OCSP signer of {args.id} rotated (seq {seq}): serial {serial}, valid until {until}")
    print("  the pre-signer re-signs every response of this issuer with it; the old signer signs nothing more")


def _serial(payload: dict[str, Any]) -> str:
    return f"{x509.load_der_x509_certificate(bytes.fromhex(payload['cert_der_hex'])).serial_number:x}"


def add_incident_parsers(cmds: Any, remote_flags: Any) -> None:
    """``pca issuer revoke|revoke-issued|create|rotate-signer`` (``cmds``: the subparsers of ``pca issuer``)."""
    r = cmds.add_parser(
        "revoke",
        help="revoke an issuing CA's own certificate (admin API, admin only)",
        description="Revoke an issuing CA's certificate in the CRL and OCSP of the CA above it (pca's root, "
        "or the external CA it was imported under); issuance under it stops. Calls POST /v1/issuers/ID/revoke "
        "with an admin token.",
    )
    remote_flags(r)
    r.add_argument("issuer_id", metavar="ID", help="the issuer whose CA certificate is revoked")
    r.add_argument("--reason", required=True, choices=REVOCATION_REASONS, help="e.g. cACompromise")
    r.add_argument("--invalidity-date", help="ISO 8601 time the key is known or suspected compromised")
    r.set_defaults(func=cmd_revoke)
    add_revoke_issued_parser(cmds, remote_flags)

    c = cmds.add_parser(
        "create",
        help="create a new issuing CA under pca's root, with its OCSP signer",
        description="Create a new issuing CA signed by pca's root (its key in the backend of the current issuing "
        "CA's key), record it and make its OCSP signer. A local command: it uses this host's root key. The "
        "running server publishes its CRLs and answers OCSP for it without a restart.",
    )
    c.add_argument("--config", required=True)
    c.add_argument("--id", required=True, help="issuer id: lowercase letters, digits, inner hyphens")
    c.add_argument("--cn", required=True, help="common name of the new CA")
    c.add_argument("--root", help="the root issuer id (default: pca's root)")
    c.add_argument("--validity-days", type=int, default=1825, help="validity (default 1825)")
    c.set_defaults(func=cmd_create)

    s = cmds.add_parser(
        "rotate-signer",
        help="rotate the OCSP signer of an issuer whose key pca holds (--now: an emergency rotation)",
        description="Make a new delegated OCSP signer for an issuer whose key pca holds. Without --now only a "
        "signer near expiry is rotated; --now rotates at once (a signer key compromised). The pre-signer "
        "re-signs every response of the issuer with the new signer.",
    )
    s.add_argument("--config", required=True)
    s.add_argument("--id", required=True, help="issuer id")
    s.add_argument("--now", action="store_true", help="rotate even though the current signer is not near expiry")
    s.set_defaults(func=cmd_rotate_signer)
