"""The publisher's checkpoints of the event log's head, written beside the CRLs (``revocation.checkpoints``).

Every ``every_events`` events, or every ``interval_seconds`` when the log has moved at all,
the publisher checks the chain from its last checkpoint to the head (the whole chain for the
first one), signs a checkpoint of the head and writes ``checkpoints/<seq>.json`` (never
overwritten) and ``checkpoints/latest.json``. The publisher's check of the store
(``Publisher.republish_missing``) writes the last one back when ``latest.json`` is gone (an
emptied bucket). A log that no longer holds the last checkpoint (rewound, rewritten) is never
checkpointed again: the publisher logs an error, counts it in
``audit_checkpoint_failures_total`` and reports it in ``/healthz``.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from collections.abc import Callable
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge

from publishers.objectstore import ObjectStore, PreconditionFailed
from revocation.chain import ChainCheck
from revocation.checkpoints import (
    Checkpoint,
    CheckpointError,
    check_log_against,
    ensure_signer,
    read_checkpoint,
    sign_with,
)
from revocation.clock import Clock, iso
from revocation.errors import IntegrityError
from revocation.eventlog import EventLog, canonical_payload
from revocation.projection import CertificateLookup

LATEST_KEY = "checkpoints/latest.json"
JSON_TYPE = "application/json"
_PAGE = 5000

log = logging.getLogger("pca.checkpoints")


def numbered_key(seq: int) -> str:
    return f"checkpoints/{seq:012d}.json"


class Checkpointer:
    def __init__(
        self,
        log_: EventLog,
        issuers: CertificateLookup,
        store: ObjectStore,
        clock: Clock,
        registry: CollectorRegistry,
        *,
        key_dir: Path,
        key_algorithm: str,
        every_events: int,
        interval_seconds: float,
        guard: Callable[[], None] | None = None,
    ) -> None:
        self._log = log_
        self._issuers = issuers
        self._store = store
        self._clock = clock
        self._key_dir = key_dir
        self._key_algorithm = key_algorithm
        self._every = every_events
        self._interval = datetime.timedelta(seconds=interval_seconds)
        self._guard = guard
        self._last: Checkpoint | None = None
        self._document: bytes | None = None  # the signed document of _last, as written or read
        self._writing = asyncio.Lock()  # a restore never puts an older checkpoint over a new one
        self.last_error = ""
        self._written = Counter("audit_checkpoints_total", "Audit checkpoints signed and written", registry=registry)
        self._failures = Counter(
            "audit_checkpoint_failures_total",
            "Checkpoints not written because the log no longer matches the last one",
            registry=registry,
        )
        self._seq = Gauge("audit_checkpoint_seq", "Seq of the last checkpoint written", registry=registry)

    async def _previous(self) -> Checkpoint | None:
        if self._last is None:
            stored = await self._store.get(LATEST_KEY)
            if stored is not None:
                try:
                    self._last, self._document = read_checkpoint(stored.data), stored.data
                except CheckpointError as exc:
                    log.warning("ignoring the unreadable %s: %s", LATEST_KEY, exc)
        return self._last

    async def tick(self) -> Checkpoint | None:
        """Write a checkpoint when one is due; returns it (None when none was due or possible)."""
        head = await self._log.head()
        last = await self._previous()
        now = self._clock.now()
        if head == 0:
            return None
        try:
            if last is not None:
                # Two reads a tick: a log rewound (or rewritten) since the last checkpoint is seen at once.
                await check_log_against(self._log, last)
                if head == last.seq or (head - last.seq < self._every and now - last.time < self._interval):
                    return None
            seq, hash_ = await self._verified_head(last)
        except IntegrityError as exc:
            self._failures.inc()
            if self.last_error != f"audit checkpoints stopped: {exc}":
                log.error("not checkpointing the event log: %s", exc)
            self.last_error = f"audit checkpoints stopped: {exc}"
            return None
        first = (await self._log.read(0, 1))[0]
        checkpoint = Checkpoint(first.hash, seq, hash_, now)
        signer = await ensure_signer(
            self._log, self._issuers, self._key_dir, self._key_algorithm, now, "system:checkpoints", "checkpoint"
        )
        # Off the event loop: opening a KMS or PKCS#11 key and signing with it are round trips.
        doc = await asyncio.to_thread(sign_with, signer, checkpoint)
        async with self._writing:
            await self._write(seq, doc)
            self._last, self._document, self.last_error = checkpoint, doc, ""
        self._written.inc()
        self._seq.set(seq)
        log.info("audit checkpoint of seq %d (%s) at %s", seq, hash_[:16], iso(now))
        return checkpoint

    async def restore_missing(self) -> bool:
        """Write the last checkpoint back when ``checkpoints/latest.json`` is gone from the store (an emptied
        bucket, a wiped directory), with its numbered copy: the next checkpoint waits for the log to move.
        Returns whether it did. Before this process wrote or read one there is nothing to put back; its
        first ``tick`` then checkpoints the head at once."""
        async with self._writing:
            if self._last is None or self._document is None or await self._store.head(LATEST_KEY) is not None:
                return False
            log.error("%s is missing from the store: writing the last audit checkpoint (seq %d) back", LATEST_KEY,
                      self._last.seq)  # fmt: skip
            await self._write(self._last.seq, self._document)
            return True

    async def _write(self, seq: int, doc: bytes) -> None:
        if self._guard is not None:
            self._guard()  # only the lease holder writes
        try:
            await self._store.put(numbered_key(seq), doc, content_type=JSON_TYPE, if_none_match=True)
        except PreconditionFailed:
            pass  # a previous holder checkpointed this seq: latest.json still moves on
        await self._store.put(LATEST_KEY, doc, content_type=JSON_TYPE, cache_control="public, max-age=60")

    async def _verified_head(self, last: Checkpoint | None) -> tuple[int, str]:
        """(seq, hash) of the head, after checking the chain from ``last`` (or from seq 1) up to it."""
        check = ChainCheck()
        after = 0
        if last is not None:
            check.prev, check.count, after = last.hash, last.seq, last.seq
        while rows := await self._log.read(after, _PAGE):
            for rec in rows:
                check.add(
                    (
                        rec.seq,
                        rec.stream,
                        rec.version,
                        rec.type,
                        canonical_payload(rec.payload),
                        rec.actor,
                        rec.request_id,
                        iso(rec.recorded_at),
                        rec.prev_hash,
                        rec.hash,
                    )
                )
            after = rows[-1].seq
        return check.count, check.prev
