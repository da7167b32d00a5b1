"""``pca import``: record what an external CA has issued, from its ``openssl ca`` database or its files."""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from pca.cli.common import cli_actor, fail
from pca.cli.progress import Progress
from pca.config import Config, load_config
from pca.runtime import connect_runtime
from revocation.authority import Actor
from revocation.clock import SystemClock
from revocation.errors import NotFoundError
from revocation.importing.importer import (
    BATCH_SIZE,
    Importer,
    ImportSummary,
    Item,
    file_candidates,
    index_candidates,
)
from revocation.importing.plan import Outcome
from revocation.lifetime import exit_with


def add_import_parser(sub: Any) -> None:
    p = sub.add_parser(
        "import",
        help="record the certificates an external CA has issued (openssl ca database or certificate files)",
        description="Record the certificates an external CA has issued, from its openssl ca database "
        "(index.txt and newcerts/) or from certificate files (PEM, DER, bundles, directories). Each "
        "certificate must be signed by the issuer's key and name it as issuer. Certificates recorded "
        "already are skipped, so the same import can be run again; a serial recorded with other contents "
        "is refused and the record kept. Exits 1 if any certificate was refused.",
    )
    p.add_argument("--config", required=True)
    p.add_argument("--issuer", required=True, help="id of the issuer to import into (see pca issuer list)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--openssl-index", metavar="INDEX", help="the openssl ca database, index.txt")
    source.add_argument("--certs", nargs="+", metavar="PATH", help="certificate files or directories")
    p.add_argument("--certs-dir", metavar="DIR", help="the openssl ca new_certs_dir (default: newcerts/ beside INDEX)")
    p.add_argument(
        "--on-error",
        choices=("stop", "continue"),
        default="stop",
        help="stop (default): at the first bad line or refused certificate, having recorded everything "
        "before it; continue: report each and import the rest",
    )
    p.add_argument(
        "--workers", type=int, help="processes checking signatures (default: one per core; 0: in this process)"
    )
    p.add_argument("--batch-size", type=int, default=BATCH_SIZE, help=f"certificates per append (default {BATCH_SIZE})")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_import)


def _report_progress(progress: Progress) -> Callable[[ImportSummary], None]:
    def report(summary: ImportSummary) -> None:
        progress.update(
            summary.seen,
            detail=f"{summary.imported:,} imported, {summary.already_present:,} already present, "
            f"{summary.refused:,} refused",
        )

    return report


def _index_lines(index: Path) -> int:
    """How many entries an index holds (its non-blank lines): the total the progress bar counts toward."""
    with index.open("rb") as f:
        return sum(1 for line in f if line.strip())


def _items(args: argparse.Namespace) -> Iterator[Item]:
    if args.openssl_index is None:
        if args.certs_dir is not None:
            fail("--certs-dir goes with --openssl-index")
        return file_candidates(args.certs)
    index = Path(args.openssl_index)
    if not index.is_file():
        fail(f"the openssl ca database {index} does not exist or is not a file")
    certs_dir = Path(args.certs_dir) if args.certs_dir else index.parent / "newcerts"
    if not certs_dir.is_dir():
        fail(f"the newcerts directory {certs_dir} does not exist (give it with --certs-dir)")
    return index_candidates(index, certs_dir)


def summary_json(summary: ImportSummary, issuer: str, request_id: str) -> dict[str, Any]:
    return {
        "issuer": issuer,
        "request_id": request_id,
        "seen": summary.seen,
        "imported": summary.imported,
        "already_present": summary.already_present,
        "issuer_itself": summary.issuer_itself,
        "revocations_recorded": summary.revocations,
        "known_certificates_revoked": summary.known_revoked,
        "refused": summary.refused,
        "conflicts": summary.conflicts,
        "events": summary.events,
        "seconds": round(summary.elapsed, 3),
        "refusals": [{"where": o.where, "reason": o.message} for o in summary.refusals],
        "stopped_at": None if summary.stopped_at is None else str(summary.stopped_at),
    }


def _print_summary(summary: ImportSummary, issuer: str, request_id: str) -> None:
    rate = summary.seen / summary.elapsed if summary.elapsed > 0 else 0.0
    print(f"import into {issuer} (request {request_id}): {summary.seen:,} certificates in {summary.elapsed:.1f} s")
    print(f"  imported          {summary.imported:,}")
    print(f"  already present   {summary.already_present:,}")
    if summary.issuer_itself:
        print(f"  not recorded      {summary.issuer_itself:,} (the issuer's own certificate)")
    known = summary.known_revoked
    print(f"  revoked           {summary.revocations:,} revocations recorded ({known:,} of certificates known before)")
    conflicts = f" ({summary.conflicts:,} conflicting with what is recorded)" if summary.conflicts else ""
    print(f"  refused           {summary.refused:,}{conflicts}")
    for outcome in summary.refusals:
        print(f"    {outcome}")
    if summary.refused > len(summary.refusals):
        print(f"    ... and {summary.refused - len(summary.refusals):,} more (each was reported as it happened)")
    print(f"  rate              {rate:,.0f} certificates/s")


def cmd_import(args: argparse.Namespace) -> None:
    if args.batch_size < 1:
        fail("--batch-size must be at least 1")
    workers = (os.cpu_count() or 1) if args.workers is None else args.workers
    if workers < 0:
        fail("--workers must be 0 or more")
    cfg = load_config(args.config)
    items = _items(args)
    actor = cli_actor("import")
    total = _index_lines(Path(args.openssl_index)) if args.openssl_index else None
    progress = Progress("import", "certificates", total, sys.stderr)

    def on_refused(outcome: Outcome) -> None:
        if args.on_error == "continue":
            progress.note(f"pca: refused {outcome}")

    with progress:
        summary = asyncio.run(_run(cfg, args, items, actor, workers, _report_progress(progress), on_refused))
    if args.json:
        print(json.dumps(summary_json(summary, args.issuer, actor.request_id), indent=2))
    else:
        _print_summary(summary, args.issuer, actor.request_id)
    if summary.stopped_at is not None:
        fail(
            f"stopped at {summary.stopped_at}; everything before it is recorded, nothing after it. Fix it and run "
            "the same command again (recorded certificates are skipped), or use --on-error continue"
        )
    if summary.refused:
        fail(f"{summary.refused:,} certificates refused; the rest is recorded")


async def _run(
    cfg: Config,
    args: argparse.Namespace,
    items: Iterator[Item],
    actor: Actor,
    workers: int,
    progress: Callable[[ImportSummary], None],
    on_refused: Callable[[Outcome], None],
) -> ImportSummary:
    rt = await connect_runtime(cfg, SystemClock())
    pool = None
    try:
        issuers = await rt.view.issuers()
        issuer = next((i for i in issuers if i.issuer_id == args.issuer), None)
        if issuer is None:
            known = ", ".join(i.issuer_id for i in issuers) or "none"
            raise NotFoundError(f"unknown issuer {args.issuer!r} (known: {known}); add it with pca issuer add")
        if workers:
            pool = ProcessPoolExecutor(
                workers,
                mp_context=multiprocessing.get_context("forkserver"),
                initializer=exit_with,  # a killed import leaves no workers
                initargs=(os.getpid(),),
            )
        importer = Importer(
            rt.log,
            rt.view,
            issuer,
            actor,
            stop_on_error=args.on_error == "stop",
            pool=pool,
            parallelism=workers,
            batch_size=args.batch_size,
            on_refused=on_refused,
            on_progress=progress,
        )
        return await importer.run(items)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
        await rt.aclose()
