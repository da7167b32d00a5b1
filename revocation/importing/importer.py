"""Importing what another CA issued: its ``openssl ca`` database or its certificate files, into the log.

The input streams (``index_candidates``, ``file_candidates``); certificates go through the
signature checks by chunks, in worker processes when a pool is given, a few chunks ahead of the
recording; checked certificates are decided against the projection (``revocation.importing.plan``)
and appended a batch at a time, one ``EventLog.append`` per batch. Memory stays bounded by the
batch and the chunks in flight, whatever the size of the input.

Errors: with ``stop_on_error`` (``--on-error stop``) the first refused certificate or bad line
ends the import; everything before it is recorded, nothing after it. Otherwise each refusal is
reported and the import goes on. Either way re-running the import is safe: what is recorded
already is skipped.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor
from pathlib import Path

from cryptography.hazmat.primitives.serialization import Encoding

from revocation.authority import Actor
from revocation.errors import ConcurrencyError, ConflictError
from revocation.eventlog import EventLog
from revocation.importing.certfiles import CertificateReadError, read_certificates
from revocation.importing.checks import CertificateSource, Checked, Failed, NewcertsFile, check_chunk
from revocation.importing.openssl_index import IndexLineError, read_openssl_index
from revocation.importing.plan import (
    ALREADY_PRESENT,
    CONFLICT,
    IMPORTED,
    ISSUER_ITSELF,
    REFUSED,
    REVOCATION_RECORDED,
    Outcome,
    Revocation,
    plan,
    refused,
)
from revocation.projection import IssuerRecord, RecordedCertificates

BATCH_SIZE = 1000  # certificates per EventLog.append (up to twice as many events)
CHUNK_SIZE = 250  # certificates per unit of checking work
KEPT_REFUSALS = 20  # refusals the summary lists; every one goes to ``on_refused``
_RETRIES = 5
_AHEAD = 8  # at most this many chunks queued beyond the workers, whatever the batch size (memory)


@dataclasses.dataclass(frozen=True)
class Candidate:
    """A certificate to import, where it was found, and its revocation in the source (if revoked)."""

    where: str
    source: CertificateSource
    revocation: Revocation | None = None


# What the readers hand the importer: a certificate to check, or a refusal found while reading.
Item = Candidate | Outcome


def index_candidates(index: str | Path, certs_dir: str | Path) -> Iterator[Item]:
    """Each line of an ``openssl ca`` ``index.txt``, its certificate to be read from ``certs_dir``."""
    for entry in read_openssl_index(index):
        if isinstance(entry, IndexLineError):
            yield refused(entry.where, entry.message)
            continue
        revocation = None
        if entry.revoked_at is not None:
            # openssl ca -revoke without -crl_reason records no reason: unspecified, as its CRLs say
            revocation = Revocation(entry.revoked_at, entry.reason or "unspecified", entry.invalidity_date)
        yield Candidate(entry.where, NewcertsFile(str(certs_dir), entry.serial), revocation)


def file_candidates(paths: Iterable[str | Path]) -> Iterator[Item]:
    """Every certificate in ``paths`` (PEM, DER, bundles, directories); none is revoked."""
    for found in read_certificates(paths):
        if isinstance(found, CertificateReadError):
            yield refused(found.where, found.message)
        else:
            yield Candidate(found.where, found.certificate.public_bytes(Encoding.DER))


@dataclasses.dataclass
class ImportSummary:
    imported: int = 0  # certificates recorded by this import
    already_present: int = 0  # recorded before, identically: skipped
    issuer_itself: int = 0  # the issuer's own certificate, listed by the source: not recorded
    known_revoked: int = 0  # recorded before and good; their revocation in the source is recorded now
    revocations: int = 0  # revocations recorded (of imported certificates and of known ones)
    refused: int = 0
    conflicts: int = 0  # refusals because the log holds something else for the serial
    refusals: list[Outcome] = dataclasses.field(default_factory=list)  # the first KEPT_REFUSALS
    stopped_at: Outcome | None = None  # the refusal that ended an import with stop_on_error
    events: int = 0  # events appended
    started: float = dataclasses.field(default_factory=time.monotonic)

    @property
    def seen(self) -> int:
        return self.imported + self.already_present + self.refused + self.known_revoked + self.issuer_itself

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def add(self, outcome: Outcome) -> None:
        if outcome.result == IMPORTED:
            self.imported += 1
        elif outcome.result == ALREADY_PRESENT:
            self.already_present += 1
        elif outcome.result == ISSUER_ITSELF:
            self.issuer_itself += 1
        elif outcome.result == REVOCATION_RECORDED:
            self.known_revoked += 1
        elif outcome.result == REFUSED:
            self.refused += 1
            self.conflicts += outcome.kind == CONFLICT
            if len(self.refusals) < KEPT_REFUSALS:
                self.refusals.append(outcome)
        self.revocations += outcome.revoked
        self.events += len(outcome.events)


Pending = list[tuple[str, Checked, Revocation | None]]


class Importer:
    """Imports candidates into ``issuer``; one ``run`` per import."""

    def __init__(
        self,
        log: EventLog,
        view: RecordedCertificates,
        issuer: IssuerRecord,
        actor: Actor,
        *,
        stop_on_error: bool = True,
        pool: Executor | None = None,
        parallelism: int = 1,
        batch_size: int = BATCH_SIZE,
        chunk_size: int = CHUNK_SIZE,
        on_refused: Callable[[Outcome], None] | None = None,
        on_progress: Callable[[ImportSummary], None] | None = None,
    ) -> None:
        self._log = log
        self._view = view
        self._issuer = issuer
        self._issuer_der = issuer.cert.public_bytes(Encoding.DER)
        self._actor = actor
        self._stop = stop_on_error
        self._pool = pool
        # Chunks in flight: every worker busy with one more queued each, plus a batch's worth, so
        # that the workers go on checking while the main process waits for a batch's append.
        self._depth = max(2, 2 * parallelism) + min(_AHEAD, -(-batch_size // chunk_size))
        self._batch_size = batch_size
        self._chunk_size = chunk_size
        self._on_refused = on_refused
        self._on_progress = on_progress
        self.summary = ImportSummary()
        self._recording: asyncio.Task[bool] | None = None  # the batch being appended

    async def run(self, items: Iterable[Item]) -> ImportSummary:
        inflight: collections.deque[tuple[list[Item], asyncio.Future[list[Checked | Failed]]]] = collections.deque()
        pending: Pending = []
        try:
            for chunk in _chunks(items, self._chunk_size):
                inflight.append((chunk, self._check(chunk)))
                if len(inflight) >= self._depth and not await self._take(*inflight.popleft(), pending):
                    return self.summary
            while inflight:
                if not await self._take(*inflight.popleft(), pending):
                    return self.summary
            await self._flush(pending)
            await self._wait()
            return self.summary
        finally:
            for _, future in inflight:
                future.cancel()
            if self._recording is not None:
                self._recording.cancel()

    def _check(self, chunk: list[Item]) -> asyncio.Future[list[Checked | Failed]]:
        sources = [item.source for item in chunk if isinstance(item, Candidate)]
        loop = asyncio.get_running_loop()
        if self._pool is not None:
            return loop.run_in_executor(self._pool, check_chunk, self._issuer_der, sources)
        future: asyncio.Future[list[Checked | Failed]] = loop.create_future()
        future.set_result(check_chunk(self._issuer_der, sources))
        return future

    async def _take(self, chunk: list[Item], future: asyncio.Future[list[Checked | Failed]], pending: Pending) -> bool:
        """Queue a checked chunk for recording; False when the import stops at a refusal in it."""
        results = iter(await future)
        for item in chunk:
            if isinstance(item, Candidate):
                result = next(results)
                if isinstance(result, Checked):
                    pending.append((item.where, result, item.revocation))
                    if len(pending) >= self._batch_size and not await self._flush(pending):
                        return False
                    continue
                item = refused(item.where, result.message)
            # a refusal found while reading or checking: what came before it is recorded first
            if self._stop and not (await self._flush(pending) and await self._wait()):
                return False
            self._refuse(item)
            if self._stop:
                return False
        return True

    def _refuse(self, outcome: Outcome) -> None:
        self.summary.add(outcome)
        if self._stop:
            self.summary.stopped_at = outcome
        if self._on_refused is not None:
            self._on_refused(outcome)

    async def _flush(self, pending: Pending) -> bool:
        """Start recording the pending certificates once the batch before them is recorded.

        The append of one batch overlaps the checks of the next. False when an earlier batch
        stopped the import.
        """
        if not await self._wait():
            return False
        if pending:
            self._recording = asyncio.create_task(self._record(list(pending)))
            pending.clear()
        return True

    async def _wait(self) -> bool:
        """Wait for the batch being recorded; False when it stopped the import."""
        task, self._recording = self._recording, None
        return True if task is None else await task

    async def _record(self, pending: Pending) -> bool:
        """Record ``pending`` in one append; False when one is refused and the import stops."""
        issuer_id = self._issuer.issuer_id
        serials = [checked.serial for _, checked, _ in pending]
        for _ in range(_RETRIES):
            records = {r.serial: r for r in await self._view.recorded_certificates(issuer_id, serials)}
            outcomes = plan(issuer_id, pending, records, self._actor, self._issuer_der)
            stop = next((n for n, o in enumerate(outcomes) if o.result == REFUSED), None) if self._stop else None
            kept = outcomes if stop is None else outcomes[:stop]
            try:
                await self._log.append([event for outcome in kept for event in outcome.events])
            except ConcurrencyError:
                continue  # recorded meanwhile by someone else (the API, another import): decide again
            break
        else:
            raise ConflictError(f"the certificates changed {_RETRIES} times while importing them; run it again")
        for outcome in kept:
            if outcome.result == REFUSED:
                self._refuse(outcome)
            else:
                self.summary.add(outcome)
        if stop is not None:
            self._refuse(outcomes[stop])
        if self._on_progress is not None:
            self._on_progress(self.summary)
        return stop is None


def _chunks(items: Iterable[Item], size: int) -> Iterator[list[Item]]:
    chunk: list[Item] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
