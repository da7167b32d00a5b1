"""``pca audit verify``: the hash chain, the projection against a replay of the log, and a signed checkpoint.

With ``--local`` the database is read directly; otherwise the admin API does the first two and the
checkpoint's seq is looked up through ``GET /v1/events``. The checkpoint's signature is always
checked here, against CA certificates from a file (``--ca``, by default the configuration's
``ca-chain.pem``), never against anything the database says.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

import httpx
from cryptography import x509

from pca.cli.common import fail
from pca.cli.progress import Working
from pca.config import load_config
from pca.runtime import connect_runtime
from revocation.audit import ProjectionReport, compare_projection
from revocation.checkpoints import (
    Checkpoint,
    CheckpointError,
    check_log_against,
    load_ca_certificates,
    verify_checkpoint,
)
from revocation.clock import SystemClock, iso
from revocation.errors import IntegrityError

MAX_CHECKPOINT_BYTES = 1 << 20
# The API replays the whole log before it answers: about 18 s per 100,000 certificates on a loaded 2-core machine.
AUDIT_TIMEOUT_SECONDS = 3600.0


def verified_checkpoint(args: argparse.Namespace) -> tuple[Checkpoint, x509.Certificate] | None:
    """The checkpoint named by ``--checkpoint``, its signature checked against ``--ca``; None without one."""
    source: str | None = args.checkpoint
    if not source:
        return None
    if args.ca:
        ca_path = Path(args.ca)
    elif args.config:
        ca_path = load_config(args.config).data_dir / "ca-chain.pem"
    else:
        fail("--checkpoint needs --ca FILE (the CA certificates, PEM) or --config")
    if source.startswith(("http://", "https://")):
        try:
            resp = httpx.get(source, timeout=30.0)
        except httpx.HTTPError as exc:
            fail(f"cannot fetch the checkpoint {source}: {exc}")
        if resp.status_code != 200:
            fail(f"cannot fetch the checkpoint {source}: HTTP {resp.status_code}")
        data = resp.content
    else:
        try:
            data = Path(source).read_bytes()
        except OSError as exc:
            fail(f"cannot read the checkpoint {source}: {exc.strerror}")
    if len(data) > MAX_CHECKPOINT_BYTES:
        fail(f"the checkpoint {source} is larger than {MAX_CHECKPOINT_BYTES} bytes: not a checkpoint")
    try:
        return verify_checkpoint(data, load_ca_certificates(ca_path))
    except CheckpointError as exc:
        fail(f"AUDIT FAILED: checkpoint {source} refused: {exc}")


def _report(
    events: int, projection: dict[str, Any] | None, anchored: tuple[Checkpoint, x509.Certificate] | None
) -> None:
    print(f"audit OK: {events} events, hash chain intact")
    if projection is not None:
        print(f"  projection matches a replay of the log ({projection['certificates']} certificates compared)")
    if anchored is not None:
        checkpoint, signer = anchored
        print(
            f"  checkpoint seq {checkpoint.seq} of {iso(checkpoint.time)} "
            f"(signed by {signer.subject.rfc4514_string()}): the log holds it"
        )


def _projection_failure(projection: dict[str, Any]) -> None:
    lines = "\n  ".join(projection["differences"])
    more = projection["count"] - len(projection["differences"])
    fail(
        f"AUDIT FAILED: the status projection disagrees with a replay of the log in {projection['count']} "
        f"places (fix it with pca rebuild):\n  {lines}" + (f"\n  ... and {more} more" if more > 0 else "")
    )


def cmd_audit_verify(args: argparse.Namespace) -> None:
    anchored = verified_checkpoint(args)
    if args.local:
        _verify_local(args, anchored)
    else:
        _verify_remote(args, anchored)


def _verify_local(args: argparse.Namespace, anchored: tuple[Checkpoint, x509.Certificate] | None) -> None:
    cfg = load_config(args.config) if args.config else fail("--local needs --config")

    async def run(working: Working) -> tuple[int, ProjectionReport]:
        rt = await connect_runtime(cfg, SystemClock())
        try:
            working.phase("walking the hash chain")
            count = await rt.log.verify_chain()
            if anchored is not None:
                await check_log_against(rt.log, anchored[0])
            working.phase(f"replaying {count:,} events and comparing the projection")
            return count, await compare_projection(rt.log, rt.view)
        finally:
            await rt.aclose()

    try:
        with Working("audit verify") as working:  # a spinner on a terminal, a line every 10 s otherwise
            count, report = asyncio.run(run(working))
    except IntegrityError as exc:
        fail(f"AUDIT FAILED: {exc}")
    projection = report.to_json()
    if not report.ok:
        _projection_failure(projection)
    _report(count, projection, anchored)


def _verify_remote(args: argparse.Namespace, anchored: tuple[Checkpoint, x509.Certificate] | None) -> None:
    from pca.cli.remote import _Client

    client = _Client(args, timeout=AUDIT_TIMEOUT_SECONDS)
    with Working("audit verify") as working:
        working.phase("the admin API walks the hash chain and replays the log")
        result = client.call("GET", "/v1/audit/verify", ok=(200, 409))
    if "first_bad_seq" in result:  # the hash chain is broken: the detail names the first bad seq
        fail(f"AUDIT FAILED: {result['detail']}")
    if anchored is not None:
        checkpoint = anchored[0]
        first = client.call("GET", "/v1/events?after=0&limit=1")["events"]
        rows = client.call("GET", f"/v1/events?after={checkpoint.seq - 1}&limit=1")["events"]
        when = iso(checkpoint.time)
        if first and first[0]["hash"] != checkpoint.log:
            fail(f"AUDIT FAILED: the checkpoint of {when} is of another event log (its seq 1 differs)")
        if not rows or rows[0]["seq"] != checkpoint.seq:
            fail(
                f"AUDIT FAILED: event log broken at seq {checkpoint.seq}: the checkpoint of {when} has seq "
                f"{checkpoint.seq}, but the log ends at seq {result['events']} "
                "(rows removed from the end, head rewound?)"
            )
        if rows[0]["hash"] != checkpoint.hash:
            fail(
                f"AUDIT FAILED: event log broken at seq {checkpoint.seq}: its hash is not the one checkpointed at "
                f"{when} (the log was rewritten up to there)"
            )
    if result["projection"] is not None and not result["projection"]["ok"]:
        _projection_failure(result["projection"])
    _report(result["events"], result["projection"], anchored)
