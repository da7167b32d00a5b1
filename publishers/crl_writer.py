"""One CRL at a time: number, build, sign and store a shard's full or delta CRL, and count it.

``Publisher`` decides when CRLs are due; this writer makes each one and remembers,
per issuer and shard, the last number used and the base that deltas refer to.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
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
from publishers.objectstore import PreconditionFailed
from publishers.storer import (
    BaseNotPublished,
    Candidate,
    ProjectionDisagrees,
    RefusedCRL,
    Storer,
    idp_url,
    listed,
    reason_code,
    scoped,
    user_certs_only,
)
from revocation import crl_layout
from revocation.clock import Clock, from_epoch, to_epoch
from revocation.errors import StorageError
from revocation.keys import SigningKey, open_key
from revocation.keys import usage as signing
from revocation.keys.usage import CountedKey
from revocation.projection import CRLRecord, CRLSource, IssuerRecord

FULL = "full"
DELTA = "delta"

# Publishes a full CRL elsewhere (a child process running this same writer): (issuer id, shard, the
# last CRL number used) -> what it published.
Offload = Callable[[str, int, int], Awaitable["Published"]]


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
    published_at: float = dataclasses.field(kw_only=True)  # wall clock (epoch seconds), when it was stored

    @property
    def label(self) -> str:
        return crl_layout.label(self.issuer_id, self.shard)


@dataclasses.dataclass
class ShardState:
    """What this publisher knows of one shard; rebuilt by a full CRL after a restart."""

    last_number: int = 0
    base_number: int | None = None  # the last full CRL published, the base of the next deltas
    base_position: int = 0
    delta_newest_change: int = -1  # seq of the newest change in the last delta on this base; -1: none yet
    published_position: int = 0


def crl_entries(records: list[CRLRecord], cutoff: int, now: datetime.datetime, *, delta: bool) -> list[CRLEntry]:
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


class CRLWriter:
    def __init__(
        self,
        view: CRLSource,
        storer: Storer,
        clock: Clock,
        registry: CollectorRegistry,
        *,
        validity_seconds: int,
        guard: Callable[[], None] | None = None,
        offload: Offload | None = None,
    ) -> None:
        """``guard`` is called before every store and raises if this writer may no longer publish.
        ``offload`` makes full CRLs elsewhere (``pca.roles.crl_worker``); this writer adopts them."""
        self._view = view
        self._storer = storer
        self._clock = clock
        self._validity = datetime.timedelta(seconds=validity_seconds)
        self._grace = storer.expired_grace_seconds
        self._guard = guard
        self._offload = offload
        self._keys: dict[str, SigningKey] = {}
        self._shards: dict[tuple[str, int], ShardState] = {}
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
        self._published_at = Gauge(
            "crl_published_timestamp_seconds", "When the last CRL was stored (epoch seconds)", labels, registry=registry
        )
        self._next_update = Gauge(
            "crl_next_update_timestamp_seconds", "nextUpdate of the last CRL (epoch)", labels, registry=registry
        )

    def known(self, issuer_id: str, shard: int) -> ShardState | None:
        """What this writer knows of a shard, None before its first attempt."""
        return self._shards.get((issuer_id, shard))

    def _key(self, issuer: IssuerRecord) -> SigningKey:
        if issuer.key_ref is None:
            raise RefusedCRL(f"no key for issuer {issuer.issuer_id}")
        key = self._keys.get(issuer.issuer_id)
        if key is None or key.ref != issuer.key_ref:
            key = self._keys[issuer.issuer_id] = CountedKey(open_key(issuer.key_ref), "publisher")
        return key

    async def changed_since_base(self, issuer_id: str, shard: int) -> bool:
        """Whether a certificate of the shard was revoked or released after its last full CRL's position."""
        _, records = await self._view.crl_changes(issuer_id, shard, self.state(issuer_id, shard).base_position)
        return bool(records)

    def state(self, issuer_id: str, shard: int) -> ShardState:
        return self._shards.setdefault((issuer_id, shard), ShardState())

    async def _next_number(self, issuer: IssuerRecord, shard: int, now: datetime.datetime, *, delta: bool) -> int:
        stored = await self._storer.highest_number(issuer.issuer_id, shard, delta=delta)
        last = self.state(issuer.issuer_id, shard).last_number
        number = max(stored + 1, last + 1, int(now.timestamp() * 1000))
        if number > MAX_CRL_NUMBER:
            raise RefusedCRL(f"CRL number {number} for {issuer.issuer_id} exceeds the 20-octet limit")
        return number

    def _extensions(self, issuer: IssuerRecord, shard: int, base_number: int | None) -> list[bytes]:
        layout = self._storer.layout(issuer)
        out = []
        if scoped(issuer):
            url = idp_url(issuer, layout, shard)
            out.append(issuing_distribution_point(url, only_user_certs=user_certs_only(issuer), only_ca_certs=False))
        if base_number is not None:
            out.append(delta_crl_indicator(base_number))
        elif layout.deltas:
            out.append(freshest_crl(layout.delta_url(issuer.issuer_id, shard)))
        return out

    async def publish(self, issuer: IssuerRecord, shard: int = 0) -> Published:
        """Build, check and store the full CRL of one shard."""
        if self._offload is not None:
            return await self._publish_offloaded(issuer, shard)
        started = time.perf_counter()
        position, records = await self._view.crl_revoked(issuer.issuer_id, shard)
        now = self._clock.now().replace(microsecond=0)
        entries = await asyncio.to_thread(crl_entries, records, to_epoch(now) - self._grace, now, delta=False)
        crl_der, number = await self._sign_and_store(issuer, shard, now, entries, position, None)
        state = self.state(issuer.issuer_id, shard)
        state.base_number, state.base_position, state.delta_newest_change = number, position, -1
        return self._published(issuer, shard, FULL, number, None, entries, crl_der, position, started)

    async def _publish_offloaded(self, issuer: IssuerRecord, shard: int) -> Published:
        """The full CRL made by ``offload`` (the same path, in another process), adopted as if made here."""
        state, offload = self.state(issuer.issuer_id, shard), self._offload
        assert offload is not None
        try:
            if self._guard is not None:
                self._guard()
            published = await offload(issuer.issuer_id, shard, state.last_number)
        except (RefusedCRL, PreconditionFailed) as exc:
            self._count.labels(issuer.issuer_id, FULL, _refusal(exc)).inc()
            raise _refused(exc) from exc
        except StorageError:
            self._count.labels(issuer.issuer_id, FULL, "error").inc()
            raise
        if issuer.key_ref is not None:  # signed in the child process: counted here
            signing.record("publisher", issuer.key_ref.backend)
        state.last_number = max(state.last_number, published.number)
        state.base_number, state.base_position, state.delta_newest_change = published.number, published.log_position, -1
        state.published_position = max(state.published_position, published.log_position)
        self._count.labels(issuer.issuer_id, FULL, "published").inc()
        self._seconds.labels(FULL).observe(published.seconds)
        self._set_gauges(published)
        return published

    def _set_gauges(self, published: Published) -> None:
        labels = (published.issuer_id, str(published.shard), published.kind)
        self._bytes.labels(*labels).set(published.size)
        self._entries.labels(*labels).set(published.entries)
        self._number.labels(*labels).set(published.number)
        self._published_at.labels(*labels).set(published.published_at)
        # thisUpdate is taken (to the second) before the CRL is built, which took ``seconds``.
        this_update = int(published.published_at - published.seconds)
        self._next_update.labels(*labels).set(this_update + self._validity.total_seconds())

    async def publish_delta(self, issuer: IssuerRecord, shard: int = 0, *, force: bool = True) -> Published | None:
        """Build, check and store the delta CRL of one shard against its base.

        None when there is no base yet (a full CRL comes first), or, unless
        ``force``, when nothing changed since the last delta.
        """
        started = time.perf_counter()
        state = self.state(issuer.issuer_id, shard)
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
        entries = crl_entries(records, to_epoch(now) - self._grace, now, delta=True)
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
        state = self.state(issuer.issuer_id, shard)
        try:
            number = await self._next_number(issuer, shard, now, delta=base is not None)
            extensions = self._extensions(issuer, shard, None if base is None else base[0])
            try:
                # Off the event loop: a million entries take a second or two, and OCSP may share the loop.
                # The key is opened there too: opening a KMS or HSM key is a round trip.
                crl_der = await asyncio.to_thread(
                    lambda: build_crl(
                        issuer.cert,
                        self._key(issuer),
                        entries,
                        number=number,
                        this_update=now,
                        next_update=now + self._validity,
                        extra_extensions=extensions,
                    )
                )
            except ValueError as exc:
                raise RefusedCRL(f"CRL for {issuer.issuer_id} cannot be built: {exc}") from exc
            if self._guard is not None:
                self._guard()
            await self._storer.store(Candidate(issuer, shard, crl_der, position, None if base is None else base[1]))
        except (RefusedCRL, PreconditionFailed) as exc:
            self._count.labels(issuer.issuer_id, kind, _refusal(exc)).inc()
            if isinstance(exc, BaseNotPublished):
                state.base_number = None  # deltas wait for a new full CRL, which the retry publishes
            raise _refused(exc) from exc
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
        published = Published(
            issuer.issuer_id,
            number,
            len(entries),
            len(crl_der),
            position,
            seconds,
            shard,
            kind,
            base_number,
            published_at=self._clock.time(),
        )
        self._set_gauges(published)
        return published


def _refused(exc: Exception) -> RefusedCRL:
    """The RefusedCRL to raise for ``exc``, keeping a projection disagreement's kind (across processes too)."""
    return ProjectionDisagrees(str(exc)) if isinstance(exc, ProjectionDisagrees) else RefusedCRL(str(exc))


def _refusal(exc: Exception) -> str:
    """The ``result`` label of a refused CRL: a projection that disagrees with the log is told apart."""
    return "projection_disagrees" if isinstance(exc, ProjectionDisagrees) else "refused"
