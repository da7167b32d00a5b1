"""``pca issuer``: register external CAs ("bring your own CA") and run their delegated OCSP signers.

Local commands, like ``pca init``: they open the database and the key backend of this host.
The checks and the events are in ``revocation.issuers``; this module reads files, opens keys,
appends and prints. Every event is recorded with the actor ``cli:<user>``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from pca.cli.common import cli_actor, fail
from pca.cli.issuer_support import issuer_text, key_ref_from_args
from pca.config import Config, load_config
from pca.runtime import Runtime, connect_runtime
from revocation.clock import SystemClock
from revocation.errors import ConcurrencyError, ConflictError, NotFoundError
from revocation.eventlog import NewEvent
from revocation.files import check_writable, write_file
from revocation.issuer_summary import PcaURLs, issuer_summaries
from revocation.issuers import (
    check_signer_renewable,
    external_issuer,
    load_certificate,
    signer_csr,
    signer_key_prepared,
    signer_notes,
    signer_rotated,
)
from revocation.keys import KeyRef, SigningKey, check_key_for_certificate, generate_key
from revocation.projection import IssuerRecord


def _read_certificate(path: str, what: str) -> x509.Certificate:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        fail(f"cannot read {what} {path}: {exc.strerror or exc}")
    return load_certificate(data, f"{what} {path}")


def _check_csr_path(path: str) -> Path:
    out = Path(path)
    check_writable(out, hint="; give a new file for the CSR")
    return out


async def _runtime(cfg: Config) -> Runtime:
    return await connect_runtime(cfg, SystemClock())


def _find(issuers: list[IssuerRecord], issuer_id: str) -> IssuerRecord:
    for rec in issuers:
        if rec.issuer_id == issuer_id:
            return rec
    known = ", ".join(r.issuer_id for r in issuers) or "none"
    raise NotFoundError(f"unknown issuer {issuer_id!r} (issuers: {known})")


def _signer_template(cfg: Config, issuers: list[IssuerRecord]) -> KeyRef:
    """Where a new signer key goes: the backend (token, region, secret references) of the default issuer's key,
    as ``pca init`` made it."""
    held = [r for r in issuers if r.key_ref is not None and r.kind != "external"]
    for rec in held:
        if rec.issuer_id == cfg.default_issuer:
            return rec.key_ref  # type: ignore[return-value]
    return held[0].key_ref if held and held[0].key_ref is not None else KeyRef("file")


async def _prepare_signer(
    rt: Runtime, issuer: IssuerRecord, issuers: list[IssuerRecord]
) -> tuple[SigningKey, bytes, Path | None]:
    """A new signer key in pca's backend and its CSR; returns the key file to remove if recording fails."""
    cfg = rt.config
    stamp = rt.clock.now().strftime("%Y%m%dT%H%M%S")
    name = f"{issuer.issuer_id}-ocsp-{stamp}-{secrets.token_hex(4)}"
    key = await asyncio.to_thread(
        generate_key, _signer_template(cfg, issuers), name, cfg.key_algorithm, cfg.data_dir / "keys"
    )
    made = Path(key.ref.path) if key.ref.backend == "file" else None
    try:
        csr = await asyncio.to_thread(signer_csr, issuer.cert, key)
    except BaseException:
        key.close()
        if made is not None:
            _remove(made)
        raise
    return key, csr, made


def _remove(path: Path) -> None:
    """Undo a file this command made, when what it belongs to was not recorded."""
    path.unlink(missing_ok=True)


def _write_csr(path: Path, csr_der: bytes) -> None:
    pem = x509.load_der_x509_csr(csr_der).public_bytes(serialization.Encoding.PEM)
    write_file(path, pem, hint="; give a new file for the CSR")


async def _record_prepared(rt: Runtime, issuer: IssuerRecord, issuers: list[IssuerRecord], out: Path) -> None:
    """Make the signer key and CSR, write the CSR, record the pending key; on failure undo the files."""
    key, csr, made = await _prepare_signer(rt, issuer, issuers)
    try:
        event = signer_key_prepared(issuer, key, csr)
        _write_csr(out, csr)
        try:
            await rt.log.append([NewEvent(event, issuer.version, *_actor_fields("renew-signer"))])
        except BaseException:
            _remove(out)
            raise
    except BaseException:
        if made is not None:
            _remove(made)
        raise
    finally:
        key.close()


def _actor_fields(what: str) -> tuple[str, str]:
    actor = cli_actor(f"issuer-{what}")
    return actor.name, actor.request_id


def cmd_add(args: argparse.Namespace) -> None:
    cfg = load_config(args.config)
    cert = _read_certificate(args.cert, "CA certificate")
    key_ref = key_ref_from_args(args)
    if key_ref is not None and args.ocsp_signer_csr:
        fail("--ocsp-signer-csr is for a CA whose key pca does not hold; with its key pca makes the signer itself")
    out = _check_csr_path(args.ocsp_signer_csr) if args.ocsp_signer_csr else None
    crl_url = args.crl_url or cfg.crl_url(args.id)
    actor = cli_actor("issuer-add")

    async def run() -> str:
        rt = await _runtime(cfg)
        try:
            issuers = await rt.view.issuers()
            event = external_issuer(args.id, cert, key_ref, crl_url, issuers, rt.clock.now())
            if key_ref is not None:
                await asyncio.to_thread(check_key_for_certificate, key_ref, cert, f"issuer {args.id}")
            new = [NewEvent(event, 0, actor.name, actor.request_id)]
            if out is None:
                await _append(rt, new, args.id)
                if key_ref is None:
                    return "no OCSP signer yet: run 'pca issuer renew-signer' to get a CSR for one"
                from pca.serve import build_authority

                rotated = await build_authority(rt).rotate_signers(actor, issuer_id=args.id)
                signer = f"OCSP signer created (seq {rotated[0].seq})" if rotated else "OCSP signer made by pca serve"
                return f"{signer}; pca rotates it and publishes this issuer's CRLs"
            # The issuer and its pending signer key in one append: both or neither.
            placeholder = _placeholder(args.id, cert, crl_url)
            key, csr, made = await _prepare_signer(rt, placeholder, issuers)
            try:
                prepared = signer_key_prepared(placeholder, key, csr)
                _write_csr(out, csr)
                try:
                    await _append(rt, [*new, NewEvent(prepared, 1, actor.name, actor.request_id)], args.id)
                except BaseException:
                    _remove(out)
                    raise
            except BaseException:
                if made is not None:
                    _remove(made)
                raise
            finally:
                key.close()
            return (
                f"OCSP signer CSR written to {out}: have the CA sign it (OCSPSigning EKU, id-pkix-ocsp-nocheck), "
                f"then run 'pca issuer set-signer --id {args.id} --cert SIGNER.pem'"
            )
        finally:
            await rt.aclose()

    note = asyncio.run(run())
    crls = f"CRL URL {crl_url}" if key_ref is not None else "CRLs not published by pca (it does not hold the key)"
    print(f"added external issuer {args.id} ({cert.subject.rfc4514_string()}); {crls}")
    print(f"  {note}")


def _placeholder(issuer_id: str, cert: x509.Certificate, crl_url: str) -> IssuerRecord:
    """The issuer as it will be recorded, for making its signer key before it is."""
    return IssuerRecord(issuer_id, "external", None, cert, None, crl_url, None, None, 1)


async def _append(rt: Runtime, events: list[NewEvent], issuer_id: str) -> None:
    try:
        await rt.log.append(events)
    except ConcurrencyError as exc:
        raise ConflictError(f"issuer {issuer_id!r} changed while this command ran; run it again") from exc


def cmd_renew_signer(args: argparse.Namespace) -> None:
    cfg = load_config(args.config)
    out = _check_csr_path(args.ocsp_signer_csr)

    async def run() -> IssuerRecord:
        rt = await _runtime(cfg)
        try:
            issuers = await rt.view.issuers()
            issuer = _find(issuers, args.id)
            check_signer_renewable(issuer)
            await _record_prepared(rt, issuer, issuers, out)
            return issuer
        finally:
            await rt.aclose()

    issuer = asyncio.run(run())
    current = "the current signer keeps signing until then" if issuer.signer_cert is not None else "no signer yet"
    print(
        f"OCSP signer CSR for {args.id} written to {out}; set its certificate with 'pca issuer set-signer' ({current})"
    )


def cmd_set_signer(args: argparse.Namespace) -> None:
    cfg = load_config(args.config)
    cert = _read_certificate(args.cert, "signer certificate")
    actor = cli_actor("issuer-set-signer")

    async def run() -> int:
        rt = await _runtime(cfg)
        try:
            issuer = _find(await rt.view.issuers(), args.id)
            event = signer_rotated(issuer, cert, rt.clock.now())
            ref = KeyRef.from_dict(event.key_ref)
            await asyncio.to_thread(check_key_for_certificate, ref, cert, f"the OCSP signer of {args.id}")
            [rec] = await rt.log.append([NewEvent(event, issuer.version, actor.name, actor.request_id)])
            return rec.seq
        except ConcurrencyError as exc:
            raise ConflictError(f"issuer {args.id!r} changed while this command ran; run it again") from exc
        finally:
            await rt.aclose()

    seq = asyncio.run(run())
    print(
        f"OCSP signer of {args.id} set (seq {seq}): {cert.subject.rfc4514_string()}, until {cert.not_valid_after_utc}"
    )
    for note in signer_notes(cert):
        print(f"  note: {note}")


def cmd_list(args: argparse.Namespace) -> None:
    cfg = load_config(args.config)

    async def run() -> list[dict[str, Any]]:
        rt = await _runtime(cfg)
        try:
            return await issuer_summaries(
                rt.view, PcaURLs(cfg.ocsp_url, cfg.crl_layout, cfg.public_url), rt.clock.now()
            )
        finally:
            await rt.aclose()

    summaries = asyncio.run(run())
    if args.json:
        print(json.dumps({"issuers": summaries}, indent=2))
        return
    for s in summaries:
        print(issuer_text(s))


def add_issuer_parsers(sub: Any) -> Any:
    """``pca issuer add|set-signer|renew-signer|list``; returns the subparsers (``pca.cli.incidents`` adds
    the commands of an incident)."""
    p = sub.add_parser(
        "issuer",
        help="register external CAs (bring your own CA), their OCSP signers; create, revoke issuing CAs",
        description="Register a CA that pca did not create (openssl ca, step-ca, Vault, EJBCA) so pca answers OCSP "
        "for its certificates and, with its key, publishes its CRLs; stand up, revoke and re-sign issuing CAs in an "
        "incident (docs/runbooks.md). Local commands: they open the database and the key backend of this host "
        "(but revoke and revoke-issued, which call the admin API).",
    )
    cmds = p.add_subparsers(dest="issuer_command", required=True, metavar="SUBCOMMAND")

    a = cmds.add_parser(
        "add",
        help="register an external CA certificate as an issuer",
        description="Register a CA certificate as an external issuer. Without its key (the usual case) give "
        "--ocsp-signer-csr: pca makes the delegated OCSP signer's key in its own key backend and writes a CSR "
        "for the CA to sign (then 'pca issuer set-signer'). With its key (--key-file, or a PKCS#11 or KMS "
        "key) pca makes and rotates the signer itself and publishes the issuer's CRLs.",
    )
    a.add_argument("--config", required=True)
    a.add_argument("--id", required=True, help="issuer id: lowercase letters, digits, inner hyphens (in CRL names)")
    a.add_argument("--cert", required=True, metavar="CA.pem", help="the CA certificate (PEM or DER)")
    a.add_argument(
        "--crl-url",
        metavar="URL",
        help="the CRL URL this CA's certificates carry in their CRL DP (named in the IDP of the CRL pca publishes "
        "with the key; default: pca's own URL for the issuer)",
    )
    a.add_argument("--ocsp-signer-csr", metavar="OUT.csr", help="without the CA key: write the OCSP signer CSR here")
    k = a.add_argument_group("the CA key (optional)", "Only references are recorded, never a secret.")
    k.add_argument("--key-file", metavar="PATH", help="the CA's PEM private key file")
    k.add_argument("--key-passphrase-env", metavar="NAME", help="its passphrase is in $NAME")
    k.add_argument("--key-passphrase-file", metavar="PATH", help="its passphrase is in PATH")
    k.add_argument("--pkcs11-module", metavar="PATH", help="pkcs11: the PKCS#11 library")
    k.add_argument("--pkcs11-token-label", metavar="LABEL", help="pkcs11: the token holding the CA key")
    k.add_argument("--pkcs11-key-label", metavar="LABEL", help="pkcs11: the key's CKA_LABEL")
    k.add_argument("--pkcs11-key-id", metavar="HEX", help="pkcs11: the key's CKA_ID in hex")
    k.add_argument("--pkcs11-pin-env", metavar="NAME", help="pkcs11: the user PIN is in $NAME")
    k.add_argument("--pkcs11-pin-file", metavar="PATH", help="pkcs11: the user PIN is in PATH")
    k.add_argument("--kms-key-id", metavar="ID", help="kms: key id, ARN or alias/NAME")
    k.add_argument("--kms-region", metavar="REGION", help="kms: AWS region (default: AWS_REGION)")
    k.add_argument("--kms-endpoint-url", metavar="URL", help="kms: endpoint (a VPC endpoint or a local KMS server)")
    a.set_defaults(func=cmd_add)

    r = cmds.add_parser(
        "renew-signer",
        help="start a new OCSP signer: a new key and its CSR",
        description="Make a new OCSP signer key for an external issuer and write its CSR. The current signer "
        "keeps signing until the new certificate is set with 'pca issuer set-signer' (no downtime).",
    )
    r.add_argument("--config", required=True)
    r.add_argument("--id", required=True, help="issuer id")
    r.add_argument("--ocsp-signer-csr", required=True, metavar="OUT.csr", help="write the CSR (PEM) here")
    r.set_defaults(func=cmd_renew_signer)

    s = cmds.add_parser(
        "set-signer",
        help="set the OCSP signer certificate the CA issued for pca's CSR",
        description="Check the signer certificate (issued by the issuer, OCSPSigning EKU, for the key of the "
        "last CSR, valid for more than a day) and make it the issuer's OCSP signer.",
    )
    s.add_argument("--config", required=True)
    s.add_argument("--id", required=True, help="issuer id")
    s.add_argument("--cert", required=True, metavar="SIGNER.pem", help="the signer certificate (PEM or DER)")
    s.set_defaults(func=cmd_set_signer)

    ls = cmds.add_parser(
        "list",
        help="show every issuer: kind, key, signer, counts, CRLs, URLs its certificates carry",
        description="Show every issuer: own or external, key held, OCSP signer, certificate counts, the CRLs pca "
        "publishes, and which OCSP and CRL DP URLs its newest certificates (a sample) carry and whether they "
        "reach pca.",
    )
    ls.add_argument("--config", required=True)
    ls.add_argument("--json", action="store_true", help="print JSON (as GET /v1/issuers)")
    ls.set_defaults(func=cmd_list)
    return cmds
