"""``pca token create|list|revoke``: the admin API's tokens, in this host's token file, audited in the event log.

Each creation and revocation is an event (``TokenCreated``, ``TokenRevoked``) with the actor
``cli:<user>``, so ``pca events`` and ``pca audit verify`` cover them. A token is created only
once its event is recorded; a revocation takes effect first (the running server re-reads the
file on its next request) and is recorded right after; if the database cannot be reached then,
running the same revoke again records it.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import re
import sys
from collections.abc import Sequence

from pca.cli.common import cli_actor, fail
from pca.config import Config, load_config
from pca.runtime import connect_runtime
from revocation.admin.tokens import (
    ROLES,
    TokenInfo,
    TokenStore,
    add_token,
    check_new_token,
    read_last_used,
    revoke_token,
)
from revocation.clock import SystemClock, iso, parse_iso
from revocation.errors import PCAError, ValidationError
from revocation.eventlog import NewEvent, RecordedEvent
from revocation.events import DomainEvent, TokenCreated, TokenRevoked, token_stream

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_expiry(args: argparse.Namespace, now: datetime.datetime) -> datetime.datetime | None:
    """``--expires-in 90d`` (s, m, h, d or w) or ``--expires-at ISO-8601``, or None (never expires)."""
    if args.expires_in is not None:
        match = re.fullmatch(r"(\d{1,9})([smhdw])", args.expires_in.strip())
        if match is None:
            raise ValidationError(f"--expires-in {args.expires_in!r}: give a number and a unit, e.g. 90d, 12h, 30m")
        seconds = int(match.group(1)) * _UNITS[match.group(2)]
        if seconds <= 0:
            raise ValidationError("--expires-in must be more than 0")
        try:
            return now + datetime.timedelta(seconds=seconds)
        except OverflowError:
            raise ValidationError(f"--expires-in {args.expires_in!r} is too far in the future") from None
    if args.expires_at is not None:
        try:
            return parse_iso(args.expires_at)
        except ValueError as exc:
            raise ValidationError(f"--expires-at {args.expires_at!r} is not an ISO 8601 time: {exc}") from exc
    return None


async def _stream(cfg: Config, name: str) -> list[RecordedEvent]:
    rt = await connect_runtime(cfg, SystemClock())
    try:
        return await rt.log.read_stream(token_stream(name))
    finally:
        await rt.aclose()


async def _record(cfg: Config, event: DomainEvent, what: str) -> int:
    """Append ``event`` after whatever its token's stream holds; returns its seq."""
    actor = cli_actor(what)
    rt = await connect_runtime(cfg, SystemClock())
    try:
        previous = await rt.log.read_stream(event.stream())
        version = previous[-1].version if previous else 0
        [rec] = await rt.log.append([NewEvent(event, version, actor.name, actor.request_id)])
        return rec.seq
    finally:
        await rt.aclose()


def cmd_token_create(args: argparse.Namespace) -> None:
    cfg = load_config(args.config)
    now = datetime.datetime.now(datetime.UTC)
    expires = parse_expiry(args, now)
    if expires is not None and expires <= now:
        raise ValidationError(f"the expiry {iso(expires)} is not in the future")
    check_new_token(cfg.tokens_db, args.name, args.role)
    seq = asyncio.run(_record(cfg, TokenCreated(args.name, args.role, expires), "token-create"))
    token = add_token(cfg.tokens_db, args.name, args.role, now=now, expires=expires)
    print(token)  # the only line on stdout: scripts read it
    until = f"expires {iso(expires)}" if expires is not None else "never expires"
    print(f"created token {args.name!r} (role {args.role}, {until}; event seq {seq})", file=sys.stderr)


def cmd_token_revoke(args: argparse.Namespace) -> None:
    cfg = load_config(args.config)
    infos = {t.name: t for t in TokenStore.load(cfg.tokens_db).tokens()}
    if args.name not in infos:
        fail(f"no token named {args.name!r} in {cfg.tokens_db}")
    info = infos[args.name]
    if info.revoked is not None:
        # Revoked, but was it recorded? A revocation whose event could not be appended is recorded now.
        history = asyncio.run(_stream(cfg, args.name))
        if history and history[-1].type == TokenRevoked.TYPE:
            fail(f"the token {args.name!r} was revoked already, at {iso(info.revoked)}")
    else:
        info = revoke_token(cfg.tokens_db, args.name)
    try:
        seq = asyncio.run(_record(cfg, TokenRevoked(info.name, info.role), "token-revoke"))
    except PCAError as exc:
        fail(
            f"the token {args.name!r} is revoked (the API refuses it), but the event log could not record it: {exc}; "
            "run the same command again when the database is reachable"
        )
    at = iso(info.revoked) if info.revoked is not None else "?"
    print(f"revoked token {args.name!r} (role {info.role}) at {at}; event seq {seq}")


def cmd_token_list(args: argparse.Namespace) -> None:
    cfg = load_config(args.config)
    tokens = TokenStore.load(cfg.tokens_db).tokens()
    used = read_last_used(cfg.tokens_db)
    now = _now()
    if args.json:
        print(json.dumps({"tokens": [{**t.to_json(now), "last_used": used.get(t.name)} for t in tokens]}, indent=2))
        return
    print(_table(tokens, used, now))


def _table(tokens: Sequence[TokenInfo], used: dict[str, str], now: datetime.datetime) -> str:
    def when(t: datetime.datetime | None, none: str) -> str:
        return none if t is None else iso(t)

    rows = [("NAME", "ROLE", "STATE", "CREATED", "EXPIRES", "REVOKED", "LAST USED")]
    rows += [
        (
            t.name,
            t.role,
            t.state(now),
            when(t.created, "unknown"),
            when(t.expires, "never"),
            when(t.revoked, "-"),
            used.get(t.name, "-"),
        )
        for t in tokens
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def add_token_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "token",
        help="manage admin API tokens (create, list, revoke)",
        description="Manage the admin API's tokens in this host's token file (admin.tokens_file). Creations and "
        "revocations are recorded in the event log; the running server applies them at once.",
    )
    tok = p.add_subparsers(dest="token_command", required=True, metavar="SUBCOMMAND")
    t = tok.add_parser(
        "create", help="create a token and print it once", description="Create a token and print it once (stdout)."
    )
    t.add_argument("--config", required=True)
    t.add_argument("--name", required=True, help="who or what holds it: the actor of its events")
    t.add_argument("--role", required=True, choices=ROLES)
    when = t.add_mutually_exclusive_group()
    when.add_argument("--expires-in", metavar="N{s,m,h,d,w}", help="the token expires after this, e.g. 90d")
    when.add_argument("--expires-at", metavar="TIME", help="the token expires at this ISO 8601 time (with a zone)")
    t.set_defaults(func=cmd_token_create)
    t = tok.add_parser(
        "list",
        help="list tokens: name, role, state, created, expires, revoked, last used (never a secret)",
        description="List the tokens of the token file: name, role, state (active, expired, revoked), creation, "
        "expiry and revocation times, and when the API on this host last accepted each (to the minute). "
        "Secrets are never stored, so never shown.",
    )
    t.add_argument("--config", required=True)
    t.add_argument("--json", action="store_true", help="print JSON")
    t.set_defaults(func=cmd_token_list)
    t = tok.add_parser(
        "revoke",
        help="revoke a token: the API refuses it from its next request on",
        description="Revoke a token: the running server refuses it from its next request on (401). "
        "Its name stays listed, and taken.",
    )
    t.add_argument("--config", required=True)
    t.add_argument("--name", required=True)
    t.set_defaults(func=cmd_token_revoke)
