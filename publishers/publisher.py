"""The CRL publisher: full and delta CRLs per issuer and shard, each passed through the storer.

For every issuer whose key we hold (the root, covering its intermediates, and
each intermediate, covering its leaves) and every shard of it (``revocation.
crl_layout``), it publishes:

- a **full CRL** at start and every ``interval_seconds``: the shard's revoked,
  unexpired certificates, with a critical Issuing Distribution Point naming the
  shard's URL and, when deltas are on, a Freshest CRL naming the delta's URL;
- a **delta CRL** (RFC 5280 5.2.4) every ``delta_interval_seconds`` and
  ``after_revocation_seconds`` after a revocation or hold release (debounced
  from the first one, so a burst becomes one delta, or a few if it lasts): the
  certificates revoked or released since the base full CRL's log position,
  released holds as ``removeFromCRL``, with a critical Delta CRL Indicator naming
  the base's number. It reads only what changed (``StatusView.crl_changes``).

The shards published are the configured ones plus every shard that still holds
an unexpired certificate, so lowering or raising ``crl.shards`` never leaves a
certificate without a CRL.

CRL numbers share one sequence per issuer and shard across full and delta CRLs
and never go backwards: a new number is above the numbers stored now (read back
from the store), above the last number this publisher used, and at least the
current time in milliseconds, so a restart, a second publisher or a store that
was unreachable for a while still move forward.

Scheduling is driven by ``tick()``, which publishes whatever is due by the
clock passed in; ``run()`` calls it and sleeps until the next thing is due.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import logging
import time
from collections.abc import Awaitable, Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from publishers.crl_der import (
    MAX_CRL_NUMBER,
    REMOVE_FROM_CRL,
    CRLEntry,
    build_crl,
    delta_crl_indicator,
    freshest_crl,
    issuing_distribution_point,
)
from publishers.objectstore import ObjectStore, PreconditionFailed
from publishers.storer import (
    CRL_TYPE,
    BaseNotPublished,
    Candidate,
    RefusedCRL,
    Storer,
    layout_for,
    listed,
    reason_code,
    scoped,
)
from revocation import crl_layout
from revocation.clock import Clock, from_epoch, to_epoch
from revocation.crl_layout import CRLLayout
from revocation.errors import PCAError, StorageError
from revocation.keys import SigningKey, open_key
from revocation.projection import CRLRecord, IssuerRecord, StatusView

log = logging.getLogger("pca.publisher")

__all__ = ["CRL_TYPE", "Published", "Publisher", "RefusedCRL", "Storer", "numbered_key", "stable_key"]

FULL = "full"
DELTA = "delta"


def stable_key(issuer_id: str, shard: int = 0) -> str:
    return crl_layout.full_key(issuer_id, shard)


def numbered_key(issuer_id: str, number: int, shard: int = 0) -> str:
    return crl_layout.numbered_key(issuer_id, shard, number)


@dataclasses.dataclass(frozen=True)
class Published:
    issuer_id: str
    number: int
    entries: int
    size: int
    log_position: int
    seconds: float
    shard: int = 0
    kind: str = FULL
    base_number: int | None = None  # delta CRLs: the number of their base
    published_at: float = dataclasses.field(default_factory=time.time)  # wall clock, when it was stored

    @property
    def label(self) -> str:
        return crl_layout.label(self.issuer_id, self.shard)


@dataclasses.dataclass
class _ShardState:
    """What this publisher knows of one shard; rebuilt by a full CRL after a restart."""

    last_number: int = 0
    base_number: int | None = None  # the last full CRL published, the base of the next deltas
    base_position: int = 0
    delta_newest_change: int = -1  # seq of the newest change in the last delta on this base; -1: none yet
    published_position: int = 0


def _entries(records: list[CRLRecord], cutoff: int, now: datetime.datetime, *, delta: bool) -> list[CRLEntry]:
    """CRL entries for the records: revoked and not expired past the cutoff; in a delta, releases too."""
    out = []
    times: dict[int, datetime.datetime] = {}  # revocations come in bursts: share the datetimes
    for rec in records:
        if listed(rec, cutoff):
            assert rec.revoked_at is not None
            revoked_at = times.get(rec.revoked_at)
            if revoked_at is None:
                revoked_at = times[rec.revoked_at] = from_epoch(rec.revoked_at)
            invalidity = None if rec.invalidity_date is None else from_epoch(rec.invalidity_date)
            out.append(CRLEntry(rec.serial, revoked_at, reason_code(rec.reason), invalidity))
        elif delta and rec.status == "good":
            # Released from hold since the base: the relying party takes it off its copy of the base.
            out.append(CRLEntry(rec.serial, now, REMOVE_FROM_CRL))
    return out


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
        delta_interval_seconds: int = 0,
        layout: CRLLayout | None = None,
        expired_grace_seconds: int = 0,
        retry_seconds: float = 30.0,
        guard: Callable[[], None] | None = None,
        on_published: Callable[[list[Published]], Awaitable[None]] | None = None,
    ) -> None:
        """``guard`` is called before every store and raises if this publisher may no longer publish
        (it lost its lease); ``on_published`` hears of every CRL ``run`` published."""
        if validity_seconds <= 0 or interval_seconds <= 0 or interval_seconds >= validity_seconds:
            raise ValueError(
                f"need 0 < interval ({interval_seconds}) < validity ({validity_seconds}) for CRLs to stay valid"
            )
        if not 0 <= delta_interval_seconds < interval_seconds:
            raise ValueError(
                f"delta_interval_seconds {delta_interval_seconds} must be 0 (no deltas) or below the full "
                f"interval {interval_seconds}"
            )
        deltas = delta_interval_seconds > 0
        if layout is not None and layout.deltas != deltas:
            raise ValueError(f"layout.deltas is {layout.deltas} but delta_interval_seconds is {delta_interval_seconds}")
        for name, value in (
            ("after_revocation_seconds", after_revocation_seconds),
            ("expired_grace_seconds", expired_grace_seconds),
        ):
            if value < 0:
                raise ValueError(f"{name} must not be negative, got {value}")
        if retry_seconds <= 0:
            raise ValueError(f"retry_seconds must be positive, got {retry_seconds}")
        self._view = view
        self._layout = layout
        self._deltas = deltas
        self._storer = Storer(store, view, layout=layout, deltas=deltas, expired_grace_seconds=expired_grace_seconds)
        self._clock = clock
        self._validity = datetime.timedelta(seconds=validity_seconds)
        self._interval = interval_seconds
        self._delta_interval = delta_interval_seconds
        self._debounce = after_revocation_seconds
        self._grace = expired_grace_seconds
        self._retry = retry_seconds
        self._keys: dict[str, SigningKey] = {}
        self._shards: dict[tuple[str, int], _ShardState] = {}
        self._targets: dict[str, list[int]] = {}  # issuer -> shards, refreshed by every full cycle
        self._errors: dict[tuple[str, int, str], str] = {}
        self._next_full: float | None = None
        self._next_delta = 0.0
        self._next_retry = 0.0
        self._dirty_since: float | None = None
        self._wake = asyncio.Event()
        self._guard = guard
        self._on_published = on_published
        self.published_position = 0
        self.last_error: str | None = None
        self._count = Counter(
            "crl_publishes_total", "CRL publish attempts", ["issuer", "kind", "result"], registry=registry
        )
        self._seconds = Histogram(
            "crl_publish_seconds", "Time to build, check and store a CRL", ["kind"], registry=registry
        )
        labels = ["issuer", "shard", "kind"]
        self._bytes = Gauge("crl_size_bytes", "Size of the last published CRL", labels, registry=registry)
        self._entries = Gauge("crl_entries", "Entries in the last published CRL", labels, registry=registry)
        self._number = Gauge("crl_number", "Number of the last published CRL", labels, registry=registry)

    # --- events from outside ------------------------------------------------------------------

    def revocation_happened(self) -> None:
        """A revocation or hold release was committed: publish a delta (or full CRL) after the debounce."""
        if self._dirty_since is None:
            self._dirty_since = self._clock.monotonic()
        self._wake.set()

    # --- one CRL --------------------------------------------------------------------------------

    def _key(self, issuer: IssuerRecord) -> SigningKey:
        if issuer.key_ref is None:
            raise RefusedCRL(f"no key for issuer {issuer.issuer_id}")
        key = self._keys.get(issuer.issuer_id)
        if key is None or key.ref != issuer.key_ref:
            key = self._keys[issuer.issuer_id] = open_key(issuer.key_ref)
        return key

    def _state(self, issuer_id: str, shard: int) -> _ShardState:
        return self._shards.setdefault((issuer_id, shard), _ShardState())

    async def _next_number(self, issuer: IssuerRecord, shard: int, now: datetime.datetime, *, delta: bool) -> int:
        stored = await self._storer.highest_number(issuer.issuer_id, shard, delta=delta)
        last = self._state(issuer.issuer_id, shard).last_number
        number = max(stored + 1, last + 1, int(now.timestamp() * 1000))
        if number > MAX_CRL_NUMBER:
            raise RefusedCRL(f"CRL number {number} for {issuer.issuer_id} exceeds the 20-octet limit")
        return number

    def _extensions(self, issuer: IssuerRecord, shard: int, base_number: int | None) -> list[bytes]:
        layout = layout_for(issuer, self._layout, deltas=self._deltas)
        out = []
        if scoped(issuer):
            url = layout.full_url(issuer.issuer_id, shard)
            out.append(issuing_distribution_point(url, only_user_certs=True, only_ca_certs=False))
        if base_number is not None:
            out.append(delta_crl_indicator(base_number))
        elif layout.deltas:
            out.append(freshest_crl(layout.delta_url(issuer.issuer_id, shard)))
        return out

    async def publish(self, issuer: IssuerRecord, shard: int = 0) -> Published:
        """Build, check and store the full CRL of one shard."""
        started = time.perf_counter()
        position, records = await self._view.crl_revoked(issuer.issuer_id, shard)
        now = self._clock.now().replace(microsecond=0)
        entries = await asyncio.to_thread(_entries, records, to_epoch(now) - self._grace, now, delta=False)
        crl_der, number = await self._sign_and_store(issuer, shard, now, entries, position, None)
        state = self._state(issuer.issuer_id, shard)
        state.base_number, state.base_position, state.delta_newest_change = number, position, -1
        return self._published(issuer, shard, FULL, number, None, entries, crl_der, position, started)

    async def publish_delta(self, issuer: IssuerRecord, shard: int = 0, *, force: bool = True) -> Published | None:
        """Build, check and store the delta CRL of one shard against its base.

        None when there is no base yet (a full CRL comes first), or, unless
        ``force``, when nothing changed since the last delta.
        """
        started = time.perf_counter()
        state = self._state(issuer.issuer_id, shard)
        base_number = state.base_number
        if base_number is None:
            return None
        position, records = await self._view.crl_changes(issuer.issuer_id, shard, state.base_position)
        newest = max((r.updated_seq for r in records), default=state.base_position)
        if not force and newest <= state.delta_newest_change:
            # Nothing new for this shard: the published delta is the log's view at this position too.
            state.published_position = max(state.published_position, position)
            return None
        now = self._clock.now().replace(microsecond=0)
        entries = _entries(records, to_epoch(now) - self._grace, now, delta=True)
        base = (base_number, state.base_position)
        crl_der, number = await self._sign_and_store(issuer, shard, now, entries, position, base)
        state.delta_newest_change = newest
        return self._published(issuer, shard, DELTA, number, base_number, entries, crl_der, position, started)

    async def _sign_and_store(
        self,
        issuer: IssuerRecord,
        shard: int,
        now: datetime.datetime,
        entries: list[CRLEntry],
        position: int,
        base: tuple[int, int] | None,
    ) -> tuple[bytes, int]:
        """Number, build and sign a CRL (a delta on ``base``: its number and log position), then store it."""
        kind = FULL if base is None else DELTA
        state = self._state(issuer.issuer_id, shard)
        try:
            number = await self._next_number(issuer, shard, now, delta=base is not None)
            extensions = self._extensions(issuer, shard, None if base is None else base[0])
            try:
                # Off the event loop: a million entries take a second or two, and OCSP may share the loop.
                crl_der = await asyncio.to_thread(
                    build_crl,
                    issuer.cert,
                    self._key(issuer),
                    entries,
                    number=number,
                    this_update=now,
                    next_update=now + self._validity,
                    extra_extensions=extensions,
                )
            except ValueError as exc:
                raise RefusedCRL(f"CRL for {issuer.issuer_id} cannot be built: {exc}") from exc
            if self._guard is not None:
                self._guard()
            await self._storer.store(Candidate(issuer, shard, crl_der, position, None if base is None else base[1]))
        except (RefusedCRL, PreconditionFailed) as exc:
            self._count.labels(issuer.issuer_id, kind, "refused").inc()
            if isinstance(exc, BaseNotPublished):
                state.base_number = None  # deltas wait for a new full CRL, which the retry publishes
            raise RefusedCRL(str(exc)) from exc
        except StorageError:
            self._count.labels(issuer.issuer_id, kind, "error").inc()
            raise
        state.last_number = number
        state.published_position = max(state.published_position, position)
        return crl_der, number

    def _published(
        self,
        issuer: IssuerRecord,
        shard: int,
        kind: str,
        number: int,
        base_number: int | None,
        entries: list[CRLEntry],
        crl_der: bytes,
        position: int,
        started: float,
    ) -> Published:
        seconds = time.perf_counter() - started
        self._count.labels(issuer.issuer_id, kind, "published").inc()
        self._seconds.labels(kind).observe(seconds)
        labels = (issuer.issuer_id, str(shard), kind)
        self._bytes.labels(*labels).set(len(crl_der))
        self._entries.labels(*labels).set(len(entries))
        self._number.labels(*labels).set(number)
        return Published(
            issuer.issuer_id, number, len(entries), len(crl_der), position, seconds, shard, kind, base_number
        )

    # --- cycles ---------------------------------------------------------------------------------

    async def _issuers(self) -> list[IssuerRecord]:
        return [issuer for issuer in await self._view.issuers() if issuer.key_ref is not None]

    async def shards(self, issuer: IssuerRecord) -> list[int]:
        """The configured shards and every shard still holding an unexpired certificate."""
        layout = layout_for(issuer, self._layout, deltas=self._deltas)
        cutoff = to_epoch(self._clock.now()) - self._grace
        live = {
            shard for shard, not_after in (await self._view.crl_shards(issuer.issuer_id)).items() if not_after >= cutoff
        }
        return sorted(set(layout.configured_shards(issuer.kind)) | live)

    async def _attempt(
        self, issuer: IssuerRecord, shard: int, done: list[Published], *, delta: bool, force: bool = True
    ) -> bool:
        """Publish one CRL, recording its success or its failure (for the report and a retry); never raises."""
        key = (issuer.issuer_id, shard, DELTA if delta else FULL)
        try:
            if delta:
                published = await self.publish_delta(issuer, shard, force=force)
                if published is not None:
                    done.append(published)
            else:
                done.append(await self.publish(issuer, shard))
        except PCAError as exc:
            what = crl_layout.label(issuer.issuer_id, shard) + (" delta" if delta else "")
            log.error("CRL for %s not published: %s", what, exc)
            self._errors[key] = f"{what}: {exc}"
            return False
        self._errors.pop(key, None)
        return True

    async def _full_and_delta(self, issuer: IssuerRecord, shard: int, done: list[Published]) -> None:
        if await self._attempt(issuer, shard, done, delta=False) and self._deltas:
            await self._attempt(issuer, shard, done, delta=True)

    def _report(self) -> None:
        self.last_error = "; ".join(self._errors[k] for k in sorted(self._errors)) or None
        positions = [
            self._shards[(issuer_id, shard)].published_position
            for issuer_id, shards in self._targets.items()
            for shard in shards
            if (issuer_id, shard) in self._shards
        ]
        if positions:
            self.published_position = min(positions)

    async def publish_all(self) -> list[Published]:
        """A full CRL for every shard of every issuer (each followed by its first delta when deltas are on)."""
        done: list[Published] = []
        targets: dict[str, list[int]] = {}
        for issuer in await self._issuers():
            targets[issuer.issuer_id] = shards = await self.shards(issuer)
            for shard in shards:
                await self._full_and_delta(issuer, shard, done)
        self._targets = targets
        for key in [k for k in self._errors if k[1] not in targets.get(k[0], [])]:
            del self._errors[key]  # a shard no longer published (its certificates expired)
        self._report()
        return done

    async def publish_deltas(self, *, force: bool = True) -> list[Published]:
        """A delta CRL for every shard (unless ``force``, only where something changed).

        A shard without a base (its full CRL failed, or the store lost it) gets its full CRL first.
        """
        done: list[Published] = []
        for issuer in await self._issuers():
            for shard in self._targets.get(issuer.issuer_id, []):
                if self._state(issuer.issuer_id, shard).base_number is None:
                    await self._full_and_delta(issuer, shard, done)
                else:
                    await self._attempt(issuer, shard, done, delta=True, force=force)
        self._report()
        return done

    async def _retry_failed(self) -> list[Published]:
        """Try again what failed: a shard without a base gets its full CRL first."""
        done: list[Published] = []
        issuers = {issuer.issuer_id: issuer for issuer in await self._issuers()}
        for issuer_id, shard in sorted({(k[0], k[1]) for k in self._errors}):
            issuer = issuers.get(issuer_id)
            if issuer is None:
                continue
            if (issuer_id, shard, FULL) in self._errors or self._state(issuer_id, shard).base_number is None:
                await self._full_and_delta(issuer, shard, done)
            else:
                await self._attempt(issuer, shard, done, delta=True)
        self._report()
        return done

    async def tick(self) -> list[Published]:
        """Publish whatever is due now: full CRLs, deltas, retries of what failed."""
        now = self._clock.monotonic()
        if self._next_full is None or now >= self._next_full:
            # If the cycle cannot even start (the log is unreadable), it is tried again after the retry delay.
            self._next_full = now + self._retry
            self._dirty_since = None  # the cycle reads the log after this point: it covers those revocations
            done = await self.publish_all()
            self._next_full = now + self._interval
            self._next_delta = now + self._delta_interval
            self._next_retry = now + self._retry
            return done
        done = []
        if self._errors and now >= self._next_retry:
            self._next_retry = now + self._retry
            done += await self._retry_failed()
        debounced = self._dirty_since is not None and now - self._dirty_since >= self._debounce
        if self._deltas:
            refresh = now >= self._next_delta
            if refresh or debounced:
                self._dirty_since = None
                if refresh:
                    self._next_delta = now + self._delta_interval
                done += await self.publish_deltas(force=refresh)
        elif debounced:
            self._dirty_since = None
            done += await self.publish_all()
        return done

    def seconds_until_due(self) -> float:
        """How long ``run`` may sleep before ``tick`` has something to do (a revocation wakes it earlier)."""
        now = self._clock.monotonic()
        if self._next_full is None:
            return 0.0
        due = [self._next_full]
        if self._deltas:
            due.append(self._next_delta)
        if self._dirty_since is not None:
            due.append(self._dirty_since + self._debounce)
        if self._errors:
            due.append(self._next_retry)
        return max(0.0, min(due) - now)

    async def run(self) -> None:
        """Publish at start, then full and delta CRLs as they fall due and soon after revocations."""
        while True:
            wait = None
            try:
                done = await self.tick()
                if done and self._on_published is not None:
                    await self._on_published(done)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a failure outside one CRL (reading the issuers): report, retry later
                log.exception("CRL publishing failed")
                self.last_error = str(exc)
                wait = self._retry
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), self.seconds_until_due() if wait is None else wait)
            except TimeoutError:
                pass
