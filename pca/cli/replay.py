"""``pca replay``: put back into a restored database the events it lost, from an archive of
``pca events --follow --format json`` (a SIEM's copy of the audit trail).

A local command, run while ``pca serve`` is stopped (a publisher started on the restored database
would publish CRLs without the lost revocations). The archive must be of this log: its events up to
the restored head must have the log's hashes; and intact: every event must match its own hash and
link to the one before (the first one replayed to the restored head). Else nothing is appended.
Each later event is appended again with its own payload (a revocation keeps its revocation time,
reason and invalidity date), on its stream at the version it had, by the actor ``cli:<user>`` with
the request id ``replay-of-seq-<N>``, in one transaction, whose progress is shown on stderr (a bar on a
terminal, a line per tenth otherwise). The chain after the restored head is a new one: a checkpoint signed before
the restore past that head no longer matches it, which ``pca audit verify --checkpoint`` reports.

The hash chain has no secret: someone who rewrites every archived event after the restored head and
computes their hashes again makes an archive that is intact by its own hashes. ``--checkpoint`` anchors
it: the signed checkpoint's seq must be in the log or the archive with the checkpointed hash, so every
event up to it is the one the publisher signed for (events after it are said to be unanchored).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from pca.cli.audit import verified_checkpoint
from pca.cli.common import cli_actor, fail
from pca.cli.progress import Progress
from pca.config import load_config
from pca.runtime import connect_runtime
from revocation.checkpoints import Checkpoint, check_log_against
from revocation.clock import SystemClock, iso
from revocation.errors import ConcurrencyError, ConflictError, IntegrityError, PCAError, ValidationError
from revocation.eventlog import GENESIS_HASH, NewEvent, canonical_payload, row_hash
from revocation.events import decode

# The fields of an archived event its hash covers, besides seq, version, type and payload (``row_hash``).
_HASHED = ("stream", "actor", "request_id", "recorded_at", "prev_hash", "hash")


def _archive(path: str) -> dict[int, dict[str, Any]]:
    """seq -> event of the archive; a line that is not an event is refused, naming it."""
    out: dict[int, dict[str, Any]] = {}
    try:
        with Path(path).open(encoding="utf-8") as lines:
            for number, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                try:
                    event = json.loads(line)
                    seq = int(event["seq"])
                    if not isinstance(event["payload"], dict) or not isinstance(event["type"], str):
                        raise TypeError("payload or type")
                    int(event["version"])
                    for field in _HASHED:
                        if not isinstance(event[field], str):
                            raise TypeError(field)
                except (ValueError, KeyError, TypeError) as exc:
                    raise ValidationError(
                        f"{path}:{number}: not an event of pca events --format json ({exc})"
                    ) from None
                out[seq] = event
    except OSError as exc:
        fail(f"cannot read the archive {path}: {exc.strerror or exc}")
    _check_chain(out, path)
    return out


def _check_chain(archive: dict[int, dict[str, Any]], path: str) -> None:
    """Refuse an archive whose events do not match their hashes or do not link up: altered or damaged."""
    for seq in sorted(archive):
        e = archive[seq]
        digest = row_hash(
            e["prev_hash"], seq, e["stream"], int(e["version"]), e["type"], canonical_payload(e["payload"]),
            e["actor"], e["request_id"], e["recorded_at"],
        )  # fmt: skip
        if digest != e["hash"]:
            raise ValidationError(
                f"seq {seq} of {path} does not match its hash: the archive was altered or damaged; nothing replayed"
            )
        before = archive.get(seq - 1)
        if before is not None and before["hash"] != e["prev_hash"]:
            raise ValidationError(
                f"seq {seq} of {path} does not follow seq {seq - 1} (its prev_hash is another): "
                "the archive was altered or damaged; nothing replayed"
            )


def _anchor(archive: dict[int, dict[str, Any]], head: int, checkpoint: Checkpoint, path: str) -> None:
    """The archive past the restored ``head`` must hold the checkpoint's seq with its hash (a checkpoint at or
    before ``head`` is the log's to hold: ``check_log_against``)."""
    first = archive.get(1)
    if first is not None and first["hash"] != checkpoint.log:
        raise IntegrityError(f"{path} is not of the checkpointed event log (its seq 1 differs); nothing replayed", 1)
    if checkpoint.seq <= head:
        return
    kept = archive.get(checkpoint.seq)
    if kept is None:
        raise IntegrityError(
            f"{path} ends at seq {max(archive)}, before the checkpoint's seq {checkpoint.seq}: it lacks events the "
            "checkpoint covers; nothing replayed",
            checkpoint.seq,
        )
    if kept["hash"] != checkpoint.hash:
        raise IntegrityError(
            f"seq {checkpoint.seq} of {path} is not the checkpointed one (another hash): the archive was rewritten "
            "up to there; nothing replayed",
            checkpoint.seq,
        )


def cmd_replay(args: argparse.Namespace) -> None:
    cfg = load_config(args.config)
    anchored = verified_checkpoint(args)
    archive = _archive(args.archive)
    if not archive:
        fail(f"{args.archive} holds no events")
    actor = cli_actor("replay")

    async def run() -> tuple[int, int, int]:
        rt = await connect_runtime(cfg, SystemClock())
        try:
            head = await rt.log.head()
            # The archive must be of this log: every archived event the restored log still holds has its hash.
            after, head_hash = 0, GENESIS_HASH
            while rows := await rt.log.read(after, 1000):
                for rec in rows:
                    kept = archive.get(rec.seq)
                    if kept is not None and kept.get("hash") != rec.hash:
                        raise ConflictError(
                            f"seq {rec.seq} of {args.archive} is not the log's seq {rec.seq} (another hash): "
                            "the archive is of another log, or the log changed since the restore; nothing replayed"
                        )
                after, head_hash = rows[-1].seq, rows[-1].hash
            later = sorted(seq for seq in archive if seq > head)
            if later and later[0] != head + 1:
                raise ValidationError(
                    f"the archive has no seq {head + 1} (the restored log ends at seq {head}, the archive's next "
                    f"event is seq {later[0]}): it cannot fill the gap; nothing replayed"
                )
            if later and later != list(range(head + 1, later[-1] + 1)):
                missing = next(s for s in range(head + 1, later[-1] + 1) if s not in archive)
                raise ValidationError(f"the archive lacks seq {missing}; nothing replayed")
            if later and archive[later[0]]["prev_hash"] != head_hash:
                raise ConflictError(
                    f"seq {later[0]} of {args.archive} does not follow the log's seq {head} (another prev_hash): "
                    "the archive is of another log, or the log changed since the restore; nothing replayed"
                )
            if anchored is not None:
                checkpoint = anchored[0]
                if checkpoint.seq <= head:
                    await check_log_against(rt.log, checkpoint)
                _anchor(archive, head, checkpoint, args.archive)
            events = []
            for seq in later:
                kept = archive[seq]
                event = decode(kept["type"], kept["payload"])
                request_id = f"replay-of-seq-{seq}"
                events.append(NewEvent(event, int(kept["version"]) - 1, actor.name, request_id))
            if args.dry_run or not events:
                return head, len(events), 0
            try:
                # One transaction, written a page at a time: a bar on a terminal, a line per tenth otherwise.
                with Progress("replay", "events", len(events), sys.stderr) as progress:
                    recorded = await rt.log.append(events, progress.update)
            except ConcurrencyError as exc:
                raise ConflictError(
                    f"the restored log does not continue as the archive does ({exc}); nothing replayed"
                ) from exc
            return head, len(events), recorded[-1].seq
        finally:
            await rt.aclose()

    try:
        head, count, last = asyncio.run(run())
    except (KeyError, TypeError) as exc:  # an archived payload this version of pca cannot decode
        raise PCAError(f"{args.archive}: an event pca cannot decode ({exc}); nothing replayed") from None
    if anchored is not None:
        checkpoint, signer = anchored
        print(
            f"archive anchored: seq {checkpoint.seq} has the hash checkpointed at {iso(checkpoint.time)}, signed by "
            f"{signer.subject.rfc4514_string()}"
        )
        if count and head + count > checkpoint.seq:
            print(
                f"  seq {max(head, checkpoint.seq) + 1} to {head + count} are after the checkpoint: not anchored by it"
            )
    if count == 0:
        print(f"nothing to replay: the log ends at seq {head} and the archive holds nothing after it")
    elif args.dry_run:
        print(f"would replay {count} events (seq {head + 1} to {head + count} of the archive); the log ends at {head}")
    else:
        print(f"replayed {count} events from {args.archive}: seq {head + 1} to {last}, as in the archive")
        print("  the chain from there is a new one: a checkpoint signed before the restore past seq "
              f"{head} no longer matches (pca audit verify --checkpoint says so)")  # fmt: skip


def add_replay_parser(sub: Any) -> None:
    p = sub.add_parser(
        "replay",
        help="put back the events a restored database lost, from a pca events --follow archive",
        description="After restoring the database from a backup older than the last events, append again the "
        "events an archive of 'pca events --follow --format json' holds after the restored head (revocations "
        "keep their time, reason and invalidity date). Run it while pca serve is stopped. The archive's events "
        "up to the head must match the log's hashes; nothing is appended otherwise.",
    )
    p.add_argument("--config", required=True)
    p.add_argument("--from", dest="archive", required=True, metavar="EVENTS.jsonl", help="the JSON lines archive")
    p.add_argument("--dry-run", action="store_true", help="say what would be replayed, append nothing")
    p.add_argument(
        "--checkpoint",
        metavar="FILE|URL",
        help="a signed checkpoint (checkpoints/latest.json beside the CRLs, kept from before the restore): the "
        "archive must hold its seq with its hash, so the events up to it are the ones signed for",
    )
    p.add_argument("--ca", metavar="FILE", help="CA certificates (PEM) the checkpoint signer must chain to "
                   "(default: the data directory's ca-chain.pem)")  # fmt: skip
    p.set_defaults(func=cmd_replay)
