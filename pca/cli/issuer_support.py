"""What ``pca issuer`` reads from its flags (the CA key) and how ``pca issuer list`` prints an issuer."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from pca.cli.common import fail
from revocation.keys import KeyRef

_FILE = ("key_file", "key_passphrase_env", "key_passphrase_file")
_PKCS11 = (
    "pkcs11_module",
    "pkcs11_token_label",
    "pkcs11_key_label",
    "pkcs11_key_id",
    "pkcs11_pin_env",
    "pkcs11_pin_file",
)
_KMS = ("kms_key_id", "kms_region", "kms_endpoint_url")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _absolute(path: str | None) -> str:
    return str(Path(path).resolve()) if path else ""


def key_ref_from_args(args: argparse.Namespace) -> KeyRef | None:
    """The CA key named by the flags, or None when none is given (the usual case)."""
    given = {name for name in (*_FILE, *_PKCS11, *_KMS) if getattr(args, name, None)}
    groups = [g for g in (_FILE, _PKCS11, _KMS) if given & set(g)]
    if not groups:
        return None
    if len(groups) > 1:
        fail(f"{', '.join(sorted(_flag(n) for n in given))}: name the CA key in one backend only")
    for pair in (("key_passphrase_env", "key_passphrase_file"), ("pkcs11_pin_env", "pkcs11_pin_file")):
        if set(pair) <= given:
            fail(f"give one of {_flag(pair[0])} and {_flag(pair[1])}, not both")
    if groups[0] is _FILE:
        if not args.key_file:
            fail("--key-passphrase-env/--key-passphrase-file need --key-file")
        return KeyRef(
            "file",
            path=_absolute(args.key_file),
            passphrase_env=args.key_passphrase_env or "",
            passphrase_file=_absolute(args.key_passphrase_file),
        )
    if groups[0] is _PKCS11:
        missing = [_flag(n) for n in ("pkcs11_module", "pkcs11_token_label") if n not in given]
        if not given & {"pkcs11_key_label", "pkcs11_key_id"}:
            missing.append("--pkcs11-key-label or --pkcs11-key-id")
        if not given & {"pkcs11_pin_env", "pkcs11_pin_file"}:
            missing.append("--pkcs11-pin-env or --pkcs11-pin-file")
        if missing:
            fail(f"a CA key in a PKCS#11 token needs {', '.join(missing)}")
        return KeyRef(
            "pkcs11",
            module=_absolute(args.pkcs11_module),
            token_label=args.pkcs11_token_label,
            label=args.pkcs11_key_label or "",
            object_id=args.pkcs11_key_id or "",
            pin_env=args.pkcs11_pin_env or "",
            pin_file=_absolute(args.pkcs11_pin_file),
        )
    region = args.kms_region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if not args.kms_key_id or not region:
        fail("a CA key in AWS KMS needs --kms-key-id and --kms-region (or AWS_REGION)")
    return KeyRef("kms", key_id=args.kms_key_id, region=region, endpoint_url=args.kms_endpoint_url or "")


def issuer_text(s: dict[str, Any]) -> str:
    signer = s["ocsp_signer"]
    if signer["status"] == "active":
        signer_text = f"{signer['subject']}, expires {signer['not_after']}"
        if signer.get("pending_csr"):
            signer_text += " (a renewal CSR waits for its certificate)"
    else:
        signer_text = signer["status"]
    crl = s["crl"]
    crl_text = ", ".join(crl["urls"]) if crl["published"] else crl["reason"]
    lines = [
        f"{s['issuer_id']}  {s['kind'] if s['origin'] == 'own' else 'external'}  "
        f"key {'held' if s['key_held'] else 'not held'}",
        f"  certificate   {s['subject']} (expires {s['not_after']})",
        f"  OCSP signer   {signer_text}",
        f"  certificates  {s['certificates']['total']} recorded, {s['certificates']['revoked']} revoked",
        f"  CRLs          {crl_text}",
    ]
    urls = s["certificate_urls"]
    lines.append(f"  URLs in its certificates (sample: the newest {urls['sampled']}, at most {urls['sample_limit']}):")
    for label, key in (("OCSP  ", "ocsp"), ("CRL DP", "crl")):
        for item in urls[key]:
            reach = "reaches pca" if item["reaches_pca"] else "does NOT reach pca"
            lines.append(f"    {label} {item['url']}  ({item['certificates']} certificates; {reach})")
        if not urls[key]:
            lines.append(f"    {label} none")
    return "\n".join(lines)
