"""The full-CRL publisher and its gatekeeping storer.

For every issuer whose key we hold (the root, covering its intermediates, and
each intermediate, covering its leaves) it builds a full CRL from the status
projection, has the storer check it, and writes it to the object store: at a
stable key (the URL in certificates) and at an immutable key per CRL number.

CRL numbers never go backwards: a new number is above both the last number this
publisher recorded and the number of the CRL stored now (read back from the
store), and is at least the current time in milliseconds, so two publishers or
a publisher restarted on an old database still move forward.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import logging
import time
from email.utils import formatdate

from cryptography import x509
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from publishers.crl_der import MAX_CRL_NUMBER, CRLEntry, build_crl, verify_crl
from publishers.objectstore import ObjectStore, PreconditionFailed
from revocation.clock import Clock, to_epoch
from revocation.errors import PCAError, StorageError
from revocation.events import REASONS
from revocation.keys import SigningKey, open_key
from revocation.projection import CertificateRecord, IssuerRecord, StatusView

log = logging.getLogger("pca.publisher")

CRL_TYPE = "application/pkix-crl"


class RefusedCRL(PCAError):
    """The storer refused a CRL that failed a check before upload."""


def stable_key(issuer_id: str) -> str:
    return f"{issuer_id}.crl"


def numbered_key(issuer_id: str, number: int) -> str:
    return f"{issuer_id}/{number}.crl"


@dataclasses.dataclass(frozen=True)
class Published:
    issuer_id: str
    number: int
    entries: int
    size: int
    log_position: int
    seconds: float


def crl_entries(records: list[CertificateRecord], now: datetime.datetime) -> list[CRLEntry]:
    """Revoked and not yet expired: an expired certificate leaves the CRL (RFC 5280 3.3)."""
    out = []
    for rec in records:
        if rec.status != "revoked" or rec.revoked_at is None or rec.not_after < now:
            continue
        code = REASONS.get(rec.reason or "unspecified", 0)
        out.append(CRLEntry(rec.serial, rec.revoked_at, None if code == 0 else code, rec.invalidity_date))
    return out


class Storer:
    """Checks a CRL before it is written; refuses what would be wrong or backwards."""

    def __init__(self, store: ObjectStore) -> None:
        self._store = store

    async def current_number(self, issuer_id: str) -> tuple[int, str | None]:
        """The number and ETag of the CRL stored now (0, None when there is none)."""
        obj = await self._store.get(stable_key(issuer_id))
        if obj is None:
            return 0, None
        try:
            crl = x509.load_der_x509_crl(obj.data)
            number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
        except (ValueError, x509.ExtensionNotFound) as exc:
            raise RefusedCRL(f"the stored CRL for {issuer_id} cannot be read back: {exc}") from exc
        return number, obj.etag

    async def store(
        self, issuer: IssuerRecord, crl_der: bytes, expected: list[CRLEntry], next_update: datetime.datetime
    ) -> int:
        try:
            crl = verify_crl(crl_der, issuer.cert)
        except ValueError as exc:
            raise RefusedCRL(f"CRL for {issuer.issuer_id} failed verification: {exc}") from exc
        number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
        want = {(e.serial, to_epoch(e.revoked_at)) for e in expected}
        got = {(r.serial_number, to_epoch(r.revocation_date_utc)) for r in crl}
        if want != got:
            raise RefusedCRL(
                f"CRL {number} for {issuer.issuer_id} does not list what the log says "
                f"({len(got - want)} unexpected, {len(want - got)} missing entries)"
            )
        stored, etag = await self.current_number(issuer.issuer_id)
        if number <= stored:
            raise RefusedCRL(f"CRL number {number} for {issuer.issuer_id} is not above the stored {stored}")
        max_age = 300
        cache = f"public, max-age={max_age}, no-transform"
        expires = formatdate(next_update.timestamp(), usegmt=True)
        # The stable key first, conditionally: a CRL that loses a race is not published anywhere.
        await self._store.put(
            stable_key(issuer.issuer_id),
            crl_der,
            content_type=CRL_TYPE,
            cache_control=cache,
            expires=expires,
            if_match=etag,
            if_none_match=etag is None,
        )
        await self._store.put(
            numbered_key(issuer.issuer_id, number),
            crl_der,
            content_type=CRL_TYPE,
            cache_control=cache,
            expires=expires,
            if_none_match=True,
        )
        return number


class Publisher:
    def __init__(
        self,
        view: StatusView,
        store: ObjectStore,
        clock: Clock,
        registry: CollectorRegistry,
        *,
        validity_seconds: int,
        interval_seconds: int,
        after_revocation_seconds: float,
    ) -> None:
        if validity_seconds <= 0 or interval_seconds <= 0 or interval_seconds >= validity_seconds:
            raise ValueError(
                f"need 0 < interval ({interval_seconds}) < validity ({validity_seconds}) for CRLs to stay valid"
            )
        self._view = view
        self._storer = Storer(store)
        self._clock = clock
        self._validity = datetime.timedelta(seconds=validity_seconds)
        self._interval = interval_seconds
        self._debounce = after_revocation_seconds
        self._keys: dict[str, SigningKey] = {}
        self._numbers: dict[str, int] = {}
        self._dirty = asyncio.Event()
        self.published_position = 0
        self.last_error: str | None = None
        self._count = Counter("crl_publishes_total", "CRL publish attempts", ["issuer", "result"], registry=registry)
        self._seconds = Histogram("crl_publish_seconds", "Time to build, check and store a CRL", registry=registry)
        self._bytes = Gauge("crl_size_bytes", "Size of the last published CRL", ["issuer"], registry=registry)
        self._entries = Gauge("crl_entries", "Entries in the last published CRL", ["issuer"], registry=registry)
        self._number = Gauge("crl_number", "Number of the last published CRL", ["issuer"], registry=registry)

    def revocation_happened(self) -> None:
        self._dirty.set()

    def _key(self, issuer: IssuerRecord) -> SigningKey:
        if issuer.key_ref is None:
            raise RefusedCRL(f"no key for issuer {issuer.issuer_id}")
        key = self._keys.get(issuer.issuer_id)
        if key is None or key.ref != issuer.key_ref:
            key = self._keys[issuer.issuer_id] = open_key(issuer.key_ref)
        return key

    async def publish(self, issuer: IssuerRecord) -> Published:
        started = time.perf_counter()
        position, records = await self._view.revoked_snapshot(issuer.issuer_id)
        now = self._clock.now().replace(microsecond=0)
        entries = crl_entries(records, now)
        next_update = now + self._validity
        try:
            stored, _ = await self._storer.current_number(issuer.issuer_id)
            number = max(stored + 1, self._numbers.get(issuer.issuer_id, 0) + 1, int(now.timestamp() * 1000))
            if number > MAX_CRL_NUMBER:
                raise RefusedCRL(f"CRL number {number} for {issuer.issuer_id} exceeds the 20-octet limit")
            try:
                crl_der = build_crl(
                    issuer.cert, self._key(issuer), entries, number=number, this_update=now, next_update=next_update
                )
            except ValueError as exc:
                raise RefusedCRL(f"CRL for {issuer.issuer_id} cannot be built: {exc}") from exc
            await self._storer.store(issuer, crl_der, entries, next_update)
        except (RefusedCRL, PreconditionFailed) as exc:
            self._count.labels(issuer.issuer_id, "refused").inc()
            raise RefusedCRL(str(exc)) from exc
        except StorageError:
            self._count.labels(issuer.issuer_id, "error").inc()
            raise
        self._numbers[issuer.issuer_id] = number
        seconds = time.perf_counter() - started
        self._count.labels(issuer.issuer_id, "published").inc()
        self._seconds.observe(seconds)
        self._bytes.labels(issuer.issuer_id).set(len(crl_der))
        self._entries.labels(issuer.issuer_id).set(len(entries))
        self._number.labels(issuer.issuer_id).set(number)
        return Published(issuer.issuer_id, number, len(entries), len(crl_der), position, seconds)

    async def publish_all(self) -> list[Published]:
        done = []
        errors = []
        for issuer in await self._view.issuers():
            if issuer.key_ref is None:
                continue
            try:
                done.append(await self.publish(issuer))
            except PCAError as exc:
                log.error("CRL for %s not published: %s", issuer.issuer_id, exc)
                errors.append(f"{issuer.issuer_id}: {exc}")
        self.last_error = "; ".join(errors) or None
        if done:
            self.published_position = min(p.log_position for p in done)
        return done

    async def run(self) -> None:
        """Publish at start, on the interval, and shortly after revocations (debounced)."""
        while True:
            try:
                await self.publish_all()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.exception("CRL publishing failed")
                self.last_error = str(exc)
            try:
                await asyncio.wait_for(self._dirty.wait(), self._interval)
                # Let a burst of revocations settle into one CRL.
                await asyncio.sleep(self._debounce)
            except TimeoutError:
                pass
            self._dirty.clear()
