"""The pre-signer: keeps a fresh signed OCSP response for every known certificate.

It follows the event log (a consumer with its own position, stored in the same
transaction as the responses it wrote, so a restart resumes exactly), re-signs
every response before its refresh time, and re-signs all of an issuer's
responses when its delegated signer is rotated.

Signing is CPU-bound, so it runs in worker processes (``signing_pool``); the
event loop only reads, batches and stores.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from responders.ocsp_response import CertStatus, ResponseTemplate
from responders.store import ResponseStore, StoredResponse
from revocation.clock import Clock, from_epoch, iso, to_epoch
from revocation.eventlog import EventLog
from revocation.events import (
    REASONS,
    CertificateHoldReleased,
    CertificateIssued,
    CertificateRevoked,
    ResponderCertRotated,
)
from revocation.keys import KeyRef, SigningKey, open_key
from revocation.keys import usage as signing
from revocation.lifetime import exit_with
from revocation.projection import IssuerRecord, SigningSource, SigningState
from revocation.waiting import wait_event

log = logging.getLogger("pca.presigner")

CONSUMER = "presigner"
MIN_VALIDITY = 600  # seconds; responses shorter-lived than this are not worth signing
BATCH = 500  # responses per job sent to a worker
STORE_BATCH = 4000  # responses per write to the store
READ_BATCH = 10_000  # events read per step
REFRESH_BATCH = 10_000  # due responses re-signed per step

# (serial, revoked_at epoch or None, reason code or None, invalidity epoch or None)
Item = tuple[int, int | None, int | None, int | None]

# --- worker side: runs in the signing processes ------------------------------------

# One template (and its open signing key) per issuer and signer certificate.
_templates: dict[tuple[bytes, bytes], tuple[ResponseTemplate, SigningKey]] = {}


def _template(issuer_der: bytes, signer_der: bytes, key_ref: dict[str, str]) -> ResponseTemplate:
    cache_key = (issuer_der, signer_der)
    cached = _templates.get(cache_key)
    if cached is None:
        if len(_templates) > 16:
            for _, old_key in _templates.values():
                old_key.close()  # HSM and KMS keys hold sessions or threads
            _templates.clear()
        key = open_key(KeyRef.from_dict(key_ref))
        try:
            template = ResponseTemplate(
                x509.load_der_x509_certificate(issuer_der), x509.load_der_x509_certificate(signer_der), key
            )
        except BaseException:
            key.close()
            raise
        cached = _templates[cache_key] = (template, key)
    return cached[0]


def sign_batch(
    issuer_der: bytes,
    signer_der: bytes,
    key_ref: dict[str, str],
    items: Sequence[Item],
    this_update: int,
    next_update: int,
) -> list[bytes]:
    """Sign one response per item; runs in a worker process (module-level for pickling).

    The whole batch goes to the key at once (``SigningKey.sign_many``): a loop for
    file keys, one session for PKCS#11, concurrent requests for KMS.
    """
    template = _template(issuer_der, signer_der, key_ref)
    this = from_epoch(this_update)
    statuses = [
        CertStatus(
            serial,
            None if revoked_at is None else from_epoch(revoked_at),
            reason,
            None if invalidity is None else from_epoch(invalidity),
        )
        for serial, revoked_at, reason, invalidity in items
    ]
    return template.sign_many(statuses, this, from_epoch(next_update), this)


def _init_worker(environment: dict[str, str], server: int) -> None:
    # The forkserver was started with the environment of its first use; take the pool
    # creator's, which names the PINs, passphrases, HSM configuration and cloud credentials.
    os.environ.clear()
    os.environ.update(environment)
    # Its parent is the forkserver, which waits for its workers: a killed server leaves no signers
    # (nor, then, a forkserver) only if the workers end with the server.
    exit_with(server)


def _started() -> None:
    """Nothing: submitted to each worker once, so the pool is running before the first revocation."""


async def start_workers(executor: Executor, workers: int) -> None:
    """Start the signing processes now (a pool starts them at its first job): a restarted server
    that acknowledges a revocation then signs it at once, not after its workers have started."""
    loop = asyncio.get_running_loop()
    await asyncio.gather(*(loop.run_in_executor(executor, _started) for _ in range(workers)))


def signing_pool(workers: int) -> ProcessPoolExecutor:
    import multiprocessing

    if workers < 1:
        raise ValueError(f"need at least one signing process, got {workers}")
    count = workers
    # forkserver: the workers do not inherit the server's sockets, threads or event loop.
    return ProcessPoolExecutor(
        max_workers=count,
        mp_context=multiprocessing.get_context("forkserver"),
        initializer=_init_worker,
        initargs=(dict(os.environ), os.getpid()),
    )


def stop_pool(pool: ProcessPoolExecutor, timeout: float = 5.0) -> None:
    """Shut a process pool down and wait (up to ``timeout``) for its manager thread to end.

    Left running at interpreter exit, Python 3.11's exit hook may write to the manager thread's
    wake-up pipe after the thread closed it ("OSError: Bad file descriptor" in the log).
    """
    thread = getattr(pool, "_executor_manager_thread", None)
    pool.shutdown(wait=False, cancel_futures=True)
    if thread is not None:
        thread.join(timeout)


# --- coordinator side ------------------------------------------------------------------

_CERT_EVENTS = frozenset((CertificateIssued.TYPE, CertificateRevoked.TYPE, CertificateHoldReleased.TYPE))


@dataclasses.dataclass(frozen=True)
class _Job:
    records: list[SigningState]
    issuer_der: bytes
    signer_der: bytes
    key_ref: dict[str, str]
    next_update: int
    refresh_at: int


def _item(rec: SigningState) -> Item:
    if rec.status != "revoked" or rec.revoked_at is None:
        return (rec.serial, None, None, None)
    reason = REASONS.get(rec.reason or "unspecified")
    return (
        rec.serial,
        rec.revoked_at,
        None if reason in (None, 0) else reason,
        rec.invalidity_date,
    )


class PreSigner:
    def __init__(
        self,
        log_: EventLog,
        view: SigningSource,
        store: ResponseStore,
        clock: Clock,
        executor: Executor,
        *,
        validity_seconds: int,
        refresh_fraction: float,
        registry: CollectorRegistry,
        parallelism: int = 2,
        poll_seconds: float = 1.0,
        guard: Callable[[], None] | None = None,
    ) -> None:
        """``guard`` is called before every write to the store and raises if this pre-signer may
        no longer write (it lost its lease to another one)."""
        if validity_seconds <= 60:
            raise ValueError(f"validity_seconds must be above 60, got {validity_seconds}")
        if not 0 < refresh_fraction < 1:
            raise ValueError(f"refresh_fraction must be between 0 and 1, got {refresh_fraction}")
        self._log = log_
        self._view = view
        self._store = store
        self._clock = clock
        self._executor = executor
        self._validity = validity_seconds
        self._refresh_after = int(validity_seconds * refresh_fraction)
        self._parallelism = max(1, parallelism)
        self._poll = poll_seconds
        self._guard = guard
        self._wake = asyncio.Event()
        self._issuers: dict[str, IssuerRecord] = {}
        self.position = 0
        self._signed = Counter(
            "ocsp_presigned_responses_total", "OCSP responses signed by the pre-signer", ["status"], registry=registry
        )
        self._lag = Gauge(
            "ocsp_presigner_lag_events", "Events in the log not yet applied by the pre-signer", registry=registry
        )
        self._batch_seconds = Histogram(
            "ocsp_presign_batch_seconds", "Time to sign and store one batch of responses", registry=registry
        )

    def wake(self) -> None:
        """Tell the pre-signer that the log or the clock moved (in-process notification)."""
        self._wake.set()

    async def _refresh_issuers(self) -> None:
        self._issuers = {i.issuer_id: i for i in await self._view.issuers()}

    async def run(self) -> None:
        self.position = await self._store.position(CONSUMER)
        while True:
            try:
                # Bounded, so a steady stream of events cannot starve the refresh of due responses.
                busy = await self.follow_log(max_batches=10)
                busy = await self.refresh_due() or busy
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("pre-signer step failed; retrying")
                busy = False
                await asyncio.sleep(1.0)
            if not busy:
                await wait_event(self._wake, self._poll)
                self._wake.clear()

    async def _load(self, after: int) -> tuple[int, list[SigningState]]:
        """The next batch of events after ``after``: (its last seq or 0, the records to sign)."""
        events = await self._log.read_index(after, READ_BATCH)
        self._lag.set(await self._log.head() - after - len(events))
        if not events:
            return 0, []
        keys: dict[tuple[str, int], None] = {}
        rotated: list[tuple[str, int]] = []
        for seq, stream, type_ in events:
            # The stream names the certificate (cert/<issuer>/<serial hex>): no payload to decode.
            if type_ in _CERT_EVENTS:
                _, issuer_id, serial_hex = stream.split("/")
                keys[(issuer_id, int(serial_hex, 16))] = None
            elif type_ == ResponderCertRotated.TYPE:
                rotated.append((stream.split("/", 1)[1], seq))
        if rotated or any(k[0] not in self._issuers for k in keys):
            await self._refresh_issuers()
        records = await self._view.signing_states(list(keys))
        for issuer_id, seq in rotated:
            # Re-sign with the new signer; certificates changed after the rotation are
            # signed when their own events come up, so they are skipped here.
            records.extend(await self._view.issuer_signing_states(issuer_id, updated_before=seq))
        return events[-1][0], records

    async def _apply(self, last_seq: int, records: list[SigningState]) -> None:
        await self._sign_and_store(records, last_seq)
        self.position = last_seq

    async def follow_log(self, max_batches: int | None = None) -> bool:
        """Apply new events, reading the next batch while the workers sign the current one.

        Returns True if it stopped at ``max_batches`` with events possibly left.
        """
        last_seq, records = await self._load(self.position)
        batches = 0
        while last_seq:
            batches += 1
            if max_batches is not None and batches >= max_batches:
                await self._apply(last_seq, records)
                return True
            following = asyncio.create_task(self._load(last_seq))
            try:
                await self._apply(last_seq, records)
            except BaseException:
                following.cancel()
                raise
            last_seq, records = await following
        return False

    async def step(self) -> bool:
        """Apply one batch of new events, else refresh due responses. Returns True if it did work."""
        last_seq, records = await self._load(self.position)
        if last_seq:
            await self._apply(last_seq, records)
            return True
        return await self.refresh_due()

    async def refresh_due(self) -> bool:
        """Re-sign one batch of responses whose refresh time has come; True if any was stored.

        An issuer that cannot sign (its signer expired and was not rotated) stores nothing,
        so this reports no work and the caller sleeps instead of spinning.
        """
        due = await self._store.due(to_epoch(self._clock.now()), REFRESH_BATCH)
        if not due:
            return False
        await self._refresh_issuers()
        records = await self._view.signing_states(due)
        return await self._sign_and_store(records, self.position) > 0

    def _jobs(self, records: Iterable[SigningState], this_update: int) -> list[_Job]:
        """Chunks of work per issuer, with everything the worker needs."""
        by_issuer: dict[str, dict[int, SigningState]] = {}
        for rec in records:
            issuer = self._issuers.get(rec.issuer_id)
            if issuer is None or issuer.signer_cert is None or issuer.signer_key_ref is None:
                continue  # an issuer without a delegated signer (the root) has no OCSP service
            by_issuer.setdefault(rec.issuer_id, {})[rec.serial] = rec
        jobs = []
        for issuer_id, certs in by_issuer.items():
            issuer = self._issuers[issuer_id]
            signer_cert, signer_ref = issuer.signer_cert, issuer.signer_key_ref
            if signer_cert is None or signer_ref is None:
                continue
            # A response must not outlive its signer's certificate.
            next_update = min(this_update + self._validity, to_epoch(signer_cert.not_valid_after_utc))
            if next_update - this_update < MIN_VALIDITY:
                # Rotation keeps signers far from expiry; if it failed, signing now would only
                # produce responses that expire at once and would be re-signed in a busy loop.
                log.error(
                    "the OCSP signer of %s expires at %s: not signing until it is rotated", issuer_id, next_update
                )
                continue
            refresh_at = min(this_update + self._refresh_after, this_update + (next_update - this_update) // 2)
            issuer_der = issuer.cert.public_bytes(serialization.Encoding.DER)
            signer_der = signer_cert.public_bytes(serialization.Encoding.DER)
            key_ref = signer_ref.to_dict()
            recs = list(certs.values())
            for start in range(0, len(recs), BATCH):
                chunk = recs[start : start + BATCH]
                jobs.append(_Job(chunk, issuer_der, signer_der, key_ref, next_update, refresh_at))
        return jobs

    async def _sign_and_store(self, records: Iterable[SigningState], position: int) -> int:
        """Sign and store responses for ``records``, then record ``position``; returns how many were stored.

        Signing is pipelined: a few chunks are always in the workers while finished ones are
        stored. Only the last write records the new log position, so a crash part-way
        leaves the position where it was and the work is redone.
        """
        this_update = to_epoch(self._clock.now())
        loop = asyncio.get_running_loop()
        window: deque[tuple[_Job, asyncio.Future[list[bytes]]]] = deque()
        pending: list[StoredResponse] = []
        stored = 0

        async def finish_oldest() -> None:
            job, future = window.popleft()
            try:
                ders = await future
            except Exception:
                signing.record("presigner", job.key_ref.get("backend", "?"), failed=True)
                raise
            signing.record("presigner", job.key_ref.get("backend", "?"), len(ders))
            counts = {"good": 0, "revoked": 0}
            for rec, der_bytes in zip(job.records, ders, strict=True):
                pending.append(
                    StoredResponse(
                        rec.issuer_id,
                        rec.serial,
                        der_bytes,
                        rec.status,
                        this_update,
                        job.next_update,
                        job.refresh_at,
                        position,
                    )
                )
                counts[rec.status] = counts.get(rec.status, 0) + 1
            for status, n in counts.items():
                if n:
                    self._signed.labels(status).inc(n)

        async def flush(final: bool) -> None:
            nonlocal pending, stored
            if pending or final:
                batch, pending = pending, []
                if self._guard is not None:
                    self._guard()
                with self._batch_seconds.time():
                    # Until the last write, keep the old position: the step is not complete.
                    await self._store.put(batch, CONSUMER, position if final else self.position, iso(self._clock.now()))
                stored += len(batch)

        for job in self._jobs(records, this_update):
            items = [_item(r) for r in job.records]
            future = loop.run_in_executor(
                self._executor,
                sign_batch,
                job.issuer_der,
                job.signer_der,
                job.key_ref,
                items,
                this_update,
                job.next_update,
            )
            window.append((job, future))
            if len(window) > self._parallelism + 3:  # a few queued jobs keep the workers busy while we store
                await finish_oldest()
                if len(pending) >= STORE_BATCH:
                    await flush(final=False)
        while window:
            await finish_oldest()
        await flush(final=True)
        return stored

    async def catch_up(self) -> None:
        """Run steps until the log is applied and nothing is due (tests and the load tests drive the presigner so)."""
        self.position = max(self.position, await self._store.position(CONSUMER))
        await self.follow_log()
        while await self.step():
            pass
