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
import logging
from collections.abc import Iterable, Sequence
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
from revocation.keys import KeyRef, open_key
from revocation.projection import CertificateRecord, IssuerRecord, StatusView

log = logging.getLogger("pca.presigner")

CONSUMER = "presigner"
MIN_VALIDITY = 600  # seconds; responses shorter-lived than this are not worth signing
BATCH = 1000

# (serial, revoked_at epoch or None, reason code or None, invalidity epoch or None)
Item = tuple[int, int | None, int | None, int | None]

# --- worker side: runs in the signing processes ------------------------------------

_templates: dict[tuple[bytes, bytes], ResponseTemplate] = {}


def _template(issuer_der: bytes, signer_der: bytes, key_ref: dict[str, str]) -> ResponseTemplate:
    cache_key = (issuer_der, signer_der)
    template = _templates.get(cache_key)
    if template is None:
        if len(_templates) > 16:
            _templates.clear()
        template = ResponseTemplate(
            x509.load_der_x509_certificate(issuer_der),
            x509.load_der_x509_certificate(signer_der),
            open_key(KeyRef.from_dict(key_ref)),
        )
        _templates[cache_key] = template
    return template


def sign_batch(
    issuer_der: bytes,
    signer_der: bytes,
    key_ref: dict[str, str],
    items: Sequence[Item],
    this_update: int,
    next_update: int,
) -> list[bytes]:
    """Sign one response per item; runs in a worker process (module-level for pickling)."""
    template = _template(issuer_der, signer_der, key_ref)
    this = from_epoch(this_update)
    nxt = from_epoch(next_update)
    out = []
    for serial, revoked_at, reason, invalidity in items:
        status = CertStatus(
            serial,
            None if revoked_at is None else from_epoch(revoked_at),
            reason,
            None if invalidity is None else from_epoch(invalidity),
        )
        out.append(template.sign(status, this, nxt, this))
    return out


def signing_pool(workers: int) -> ProcessPoolExecutor:
    import multiprocessing

    if workers < 1:
        raise ValueError(f"need at least one signing process, got {workers}")
    count = workers
    # forkserver: the workers do not inherit the server's sockets, threads or event loop.
    return ProcessPoolExecutor(max_workers=count, mp_context=multiprocessing.get_context("forkserver"))


# --- coordinator side ------------------------------------------------------------------


def _item(rec: CertificateRecord) -> Item:
    if rec.status != "revoked" or rec.revoked_at is None:
        return (rec.serial, None, None, None)
    reason = REASONS.get(rec.reason or "unspecified")
    return (
        rec.serial,
        to_epoch(rec.revoked_at),
        None if reason in (None, 0) else reason,
        None if rec.invalidity_date is None else to_epoch(rec.invalidity_date),
    )


class PreSigner:
    def __init__(
        self,
        log_: EventLog,
        view: StatusView,
        store: ResponseStore,
        clock: Clock,
        executor: Executor,
        *,
        validity_seconds: int,
        refresh_fraction: float,
        registry: CollectorRegistry,
        parallelism: int = 2,
        poll_seconds: float = 1.0,
    ) -> None:
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
                busy = await self.step()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("pre-signer step failed; retrying")
                busy = False
                await asyncio.sleep(1.0)
            if not busy:
                try:
                    await asyncio.wait_for(self._wake.wait(), self._poll)
                except TimeoutError:
                    pass
                self._wake.clear()

    async def step(self) -> bool:
        """Apply new events, then refresh due responses. Returns True if work remains likely."""
        events = await self._log.read(self.position, BATCH * 5)
        head = await self._log.head()
        self._lag.set(head - self.position - len(events))
        if events:
            keys: dict[tuple[str, int], None] = {}
            rotated: list[tuple[str, int]] = []
            for rec in events:
                ev = rec.event
                if isinstance(ev, (CertificateIssued, CertificateRevoked, CertificateHoldReleased)):
                    keys[(ev.issuer_id, int(ev.serial, 16))] = None
                elif isinstance(ev, ResponderCertRotated):
                    rotated.append((ev.issuer_id, rec.seq))
            if rotated or any(k[0] not in self._issuers for k in keys):
                await self._refresh_issuers()
            records = await self._view.certificates_many(list(keys))
            for issuer_id, seq in rotated:
                # Re-sign with the new signer; certificates changed after the rotation are
                # signed when their own events come up, so they are skipped here.
                records.extend(await self._view.issuer_certificates(issuer_id, updated_before=seq))
            stored = await self._sign_and_store(records, events[-1].seq)
            if not stored:  # events that need no response still move the position
                await self._store.put([], CONSUMER, events[-1].seq, iso(self._clock.now()))
            self.position = events[-1].seq
            return True
        due = await self._store.due(to_epoch(self._clock.now()), BATCH * self._parallelism)
        if due:
            await self._refresh_issuers()
            records = await self._view.certificates_many(due)
            await self._sign_and_store(records, self.position)
            return True
        return False

    async def _sign_and_store(self, records: Iterable[CertificateRecord], position: int) -> int:
        """Sign and store responses for ``records``; returns how many were stored."""
        by_issuer: dict[str, dict[int, CertificateRecord]] = {}
        for rec in records:
            issuer = self._issuers.get(rec.issuer_id)
            if issuer is None or issuer.signer_cert is None or issuer.signer_key_ref is None:
                continue  # an issuer without a delegated signer (the root) has no OCSP service
            by_issuer.setdefault(rec.issuer_id, {})[rec.serial] = rec
        now = self._clock.now()
        this_update = to_epoch(now)
        next_update = this_update + self._validity
        refresh_at = this_update + self._refresh_after
        loop = asyncio.get_running_loop()
        stored = 0
        for issuer_id, certs in by_issuer.items():
            issuer = self._issuers[issuer_id]
            signer_cert, signer_ref = issuer.signer_cert, issuer.signer_key_ref
            if signer_cert is None or signer_ref is None:
                continue
            issuer_der = issuer.cert.public_bytes(serialization.Encoding.DER)
            signer_der = signer_cert.public_bytes(serialization.Encoding.DER)
            key_ref = signer_ref.to_dict()
            # A response must not outlive its signer's certificate.
            nu = min(next_update, to_epoch(signer_cert.not_valid_after_utc))
            if nu - this_update < MIN_VALIDITY:
                # Rotation keeps signers far from expiry; if it failed, signing now would only
                # produce responses that expire at once and would be re-signed in a busy loop.
                log.error("the OCSP signer of %s expires at %s: not signing until it is rotated", issuer_id, nu)
                continue
            ra = min(refresh_at, this_update + (nu - this_update) // 2)
            recs = list(certs.values())
            step = BATCH * self._parallelism
            for start in range(0, len(recs), step):
                chunks = [recs[i : i + BATCH] for i in range(start, min(start + step, len(recs)), BATCH)]
                with self._batch_seconds.time():
                    results = await asyncio.gather(
                        *(
                            loop.run_in_executor(
                                self._executor,
                                sign_batch,
                                issuer_der,
                                signer_der,
                                key_ref,
                                [_item(r) for r in chunk],
                                this_update,
                                nu,
                            )
                            for chunk in chunks
                        )
                    )
                    responses = []
                    for chunk, ders in zip(chunks, results, strict=True):
                        for rec, der_bytes in zip(chunk, ders, strict=True):
                            responses.append(
                                StoredResponse(
                                    rec.issuer_id, rec.serial, der_bytes, rec.status, this_update, nu, ra, position
                                )
                            )
                            self._signed.labels(rec.status).inc()
                    await self._store.put(responses, CONSUMER, position, iso(self._clock.now()))
                    stored += len(responses)
        return stored

    async def catch_up(self) -> None:
        """Run steps until the log is applied and nothing is due (for tests and `pca rebuild`)."""
        self.position = max(self.position, await self._store.position(CONSUMER))
        while await self.step():
            pass
