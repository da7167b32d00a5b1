"""``pca issuer revoke-issued ID``: revoke everything an issuer issued, through the admin API (admin only).

It asks for confirmation on a terminal (``--yes`` skips it; off a terminal ``--yes`` is required), then calls
``POST /v1/issuers/{id}/revoke-issued`` until ``remaining`` is 0, every call with the same request id (so the
audit trail groups the run), shows its progress on stderr (a bar on a terminal, plain lines otherwise) and
prints a summary on stdout.
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from typing import Any
from urllib.parse import quote

from pca.cli.common import fail
from pca.cli.progress import Progress, clock
from revocation.issued_revocation import REASONS

CALL_TIMEOUT = 300.0  # seconds for one call (10,000 revocations take a few on a loaded machine)


def _confirm(client: Any, issuer_id: str, reason: str) -> None:
    if not sys.stdin.isatty() or not sys.stderr.isatty():
        fail(f"revoking everything issuer {issuer_id} issued asks for confirmation on a terminal: give --yes")
    found = [i for i in client.call("GET", "/v1/issuers")["issuers"] if i.get("issuer_id") == issuer_id]
    if not found:
        fail(f"unknown issuer {issuer_id!r} (pca issuer list shows the issuers)")
    counts = found[0].get("certificates") or {}
    recorded = f"{counts['total']:,} certificates recorded, {counts['revoked']:,} revoked" if counts else "?"
    print(
        f"issuer {issuer_id} ({found[0].get('subject', '?')}): {recorded}.\n"
        f"Revoke every certificate it issued that is not revoked yet, with reason {reason}? "
        f"This cannot be undone. Type the issuer id to confirm: ",
        end="",
        file=sys.stderr,
        flush=True,
    )
    if sys.stdin.readline().strip() != issuer_id:
        fail("not confirmed: nothing was revoked")


def cmd_revoke_issued(args: argparse.Namespace) -> None:
    from pca.cli.remote import _Client

    request_id = f"revoke-issued-{uuid.uuid4().hex[:16]}"
    client = _Client(args, timeout=CALL_TIMEOUT, headers={"x-request-id": request_id})
    if not args.yes:
        _confirm(client, args.issuer_id, args.reason)
    body: dict[str, Any] = {"reason": args.reason, "include_expired": args.include_expired}
    if args.invalidity_date:
        body["invalidity_date"] = args.invalidity_date
    path = f"/v1/issuers/{quote(args.issuer_id, safe='')}/revoke-issued"
    started = time.monotonic()
    calls: list[dict[str, Any]] = []
    revoked = 0
    with Progress("revoke-issued", "certificates", None, sys.stderr) as progress:
        while True:
            result = client.call("POST", path, body, ok=(200,))
            calls.append(result)
            revoked += result["revoked"]
            progress.update(revoked, revoked + result["remaining"])
            if result["remaining"] == 0:
                break
            if result["revoked"] == 0:  # something else keeps them from being revoked: never loop for ever
                fail(f"{result['remaining']} certificates remain but the last call revoked none; run it again")
    first, last = calls[0], calls[-1]
    seqs = [c[k] for c in calls for k in ("first_seq", "last_seq") if c.get(k) is not None]
    events = f", events seq {min(seqs)} to {max(seqs)}" if seqs else ""
    print(
        f"revoked {revoked:,} certificate{'' if revoked == 1 else 's'} of {args.issuer_id} ({args.reason}) in "
        f"{clock(time.monotonic() - started)}{events} (request {request_id})"
    )
    print(f"  already revoked   {first['already_revoked']:,}")
    expired_note = "" if args.include_expired else "  (--include-expired revokes them too)"
    print(f"  skipped expired   {last['skipped_expired']:,}{expired_note}")
    ca_note = "  (CA certificates: each has its own 'pca issuer revoke ID')" if last["skipped_ca"] else ""
    print(f"  skipped CA        {last['skipped_ca']:,}{ca_note}")


def add_revoke_issued_parser(cmds: Any, remote_flags: Any) -> None:
    p = cmds.add_parser(
        "revoke-issued",
        help="revoke every certificate an issuer issued (admin API, admin only)",
        description="Revoke every certificate issuer ID issued that is not revoked for good (good ones, and "
        "ones on certificateHold), after its key was compromised; its sub-CAs are left (revoke each with "
        "'pca issuer revoke'), and expired certificates unless --include-expired. Calls "
        "POST /v1/issuers/ID/revoke-issued with an admin token until nothing remains; asks for "
        "confirmation on a terminal unless --yes.",
    )
    remote_flags(p)
    p.add_argument("issuer_id", metavar="ID", help="the issuer whose certificates are revoked")
    p.add_argument("--reason", required=True, choices=REASONS, help="e.g. cACompromise (not certificateHold)")
    p.add_argument("--invalidity-date", help="ISO 8601 time the CA key is known or suspected compromised")
    p.add_argument("--include-expired", action="store_true", help="revoke expired certificates too")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation (needed off a terminal)")
    p.set_defaults(func=cmd_revoke_issued)
