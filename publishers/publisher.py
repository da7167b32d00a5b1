"""The CRL publisher: full and delta CRLs per issuer and shard, each passed through the storer.

For every issuer whose key we hold (the root, covering its intermediates, and
each intermediate, covering its leaves) and every shard of it (``revocation.
crl_layout``), it publishes:

- a **full CRL** at start, every ``interval_seconds``, and, when
  ``full_after_revocation`` (the default), ``after_revocation_seconds`` after a
  revocation, hold or release changed the shard (debounced from the first change,
  so a burst becomes one CRL, or a few if it lasts). Only the shards that changed
  since their last full CRL are rebuilt, and a shard's next full CRL waits at
  least as long as its last one took, so rebuilding a large shard during a long
  burst takes at most half of the publisher's time (deltas keep flowing
  meanwhile). Each full CRL carries a critical Issuing Distribution Point naming
  the shard's URL and, when deltas are on, a Freshest CRL naming the delta's URL;
- a **delta CRL** (RFC 5280 5.2.4) every ``delta_interval_seconds`` and
  ``after_revocation_seconds`` after a revocation or hold release: the
  certificates revoked or released since the base full CRL's log position,
  released holds as ``removeFromCRL``, with a critical Delta CRL Indicator naming
  the base's number. It reads only what changed (``CRLSource.crl_changes``).

Most relying parties (nginx ``ssl_crl``, HAProxy, OpenVPN, Java's PKIX checker in
CRL mode) read only full CRLs: a full CRL that waited for ``interval_seconds``
would leave a revoked certificate accepted there for hours.

Every ``check_seconds`` (5 minutes) it also checks that the current full and delta CRL
of every shard it publishes is still in the store, and republishes those that are
missing (an emptied bucket, a wiped directory): the root's CRL, renewed only every
``interval_seconds``, would otherwise stay missing for hours. The audit checkpoint written
beside the CRLs is put back by the same check (``restore_also``). A missing CRL is
reported in ``last_error`` (``/healthz``) until it is published again.

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
Each CRL is made by a ``CRLWriter`` (``publishers.crl_writer``) and checked and
written by the ``Storer`` the publisher is given.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable

from prometheus_client import CollectorRegistry

from publishers.crl_writer import DELTA, FULL, CRLWriter, Offload, Published, numbered_key, stable_key
from publishers.storer import CRL_TYPE, RefusedCRL, Storer
from revocation import crl_layout
from revocation.clock import Clock, to_epoch
from revocation.errors import PCAError
from revocation.projection import CRLSource, IssuerRecord
from revocation.waiting import wait_event

log = logging.getLogger("pca.publisher")

CHECK_SECONDS = 300.0  # how often the publisher checks that its CRLs are still in the store
SLOW_FULL_SECONDS = 1.0  # a shard whose full CRL takes longer gets a delta before it after a change

__all__ = ["CRL_TYPE", "Published", "Publisher", "RefusedCRL", "Storer", "numbered_key", "stable_key"]


@dataclasses.dataclass(frozen=True)
class _FullRun:
    """A shard's last full CRL: when it ended and how long it took (monotonic seconds)."""

    ended: float
    seconds: float

    @property
    def not_before(self) -> float:
        """The shard's next full CRL after a change waits as long as this one took."""
        return self.ended + self.seconds


_NEVER = _FullRun(0.0, 0.0)


class Publisher:
    def __init__(
        self,
        view: CRLSource,
        storer: Storer,
        clock: Clock,
        registry: CollectorRegistry,
        *,
        validity_seconds: int,
        interval_seconds: int,
        after_revocation_seconds: float,
        delta_interval_seconds: int = 0,
        full_after_revocation: bool = True,
        retry_seconds: float = 30.0,
        check_seconds: float = CHECK_SECONDS,
        guard: Callable[[], None] | None = None,
        on_published: Callable[[list[Published]], Awaitable[None]] | None = None,
        offload: Offload | None = None,
        restore_also: Callable[[], Awaitable[object]] | None = None,
    ) -> None:
        """``storer`` checks and writes each CRL, and says the layout, whether deltas are on and how
        long expired revocations stay listed. ``guard`` is called before every store and raises if
        this publisher may no longer publish (it lost its lease); ``on_published`` hears of every
        CRL ``run`` published; ``restore_also`` is called with every check of the store, to put back
        what else is published beside the CRLs (the audit checkpoint, ``Checkpointer.restore_missing``).
        Without deltas, full CRLs always follow revocations (nothing else would carry them before the
        next cycle), so ``full_after_revocation`` is then ignored."""
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
        if storer.deltas != deltas:
            raise ValueError(
                f"the storer's deltas is {storer.deltas} but delta_interval_seconds is {delta_interval_seconds}"
            )
        if after_revocation_seconds < 0:
            raise ValueError(f"after_revocation_seconds must not be negative, got {after_revocation_seconds}")
        if retry_seconds <= 0 or check_seconds <= 0:
            raise ValueError(f"retry_seconds and check_seconds must be positive, got {retry_seconds}, {check_seconds}")
        self._view = view
        self._deltas = deltas
        self._storer = storer
        self._writer = CRLWriter(
            view, storer, clock, registry, validity_seconds=validity_seconds, guard=guard, offload=offload
        )
        self._clock = clock
        self._interval = interval_seconds
        self._delta_interval = delta_interval_seconds
        self._debounce = after_revocation_seconds
        self._follow = full_after_revocation or not deltas
        self._retry = retry_seconds
        self._check = check_seconds
        self._targets: dict[str, list[int]] = {}  # issuer -> shards, refreshed by every full cycle
        self._errors: dict[tuple[str, int, str], str] = {}
        self._next_full: float | None = None
        self._next_delta = 0.0
        self._next_retry = 0.0
        self._next_check = 0.0
        self._dirty_since: float | None = None
        # Each shard's last full CRL: when it ended and how long it took (its spacing and delta-first).
        self._last_full: dict[tuple[str, int], _FullRun] = {}
        self._full_due: float | None = None  # a changed shard's full CRL waits for its spacing until then
        self._wake = asyncio.Event()
        self._on_published = on_published
        self._restore_also = restore_also
        self.published_position = 0
        self.last_error: str | None = None

    # --- events from outside ------------------------------------------------------------------

    def revocation_happened(self) -> None:
        """A revocation or hold release was committed: publish a delta (or full CRL) after the debounce."""
        if self._dirty_since is None:
            self._dirty_since = self._clock.monotonic()
        self._wake.set()

    def issuers_changed(self) -> None:
        """An issuer was added: start a full cycle now, so its CRLs need not wait for the next one."""
        self._next_full = None
        self._wake.set()

    # --- one CRL --------------------------------------------------------------------------------

    async def publish(self, issuer: IssuerRecord, shard: int = 0) -> Published:
        """Build, check and store the full CRL of one shard."""
        return await self._writer.publish(issuer, shard)

    async def publish_delta(self, issuer: IssuerRecord, shard: int = 0, *, force: bool = True) -> Published | None:
        """Build, check and store the delta CRL of one shard against its base (see ``CRLWriter``)."""
        return await self._writer.publish_delta(issuer, shard, force=force)

    # --- cycles ---------------------------------------------------------------------------------

    async def _issuers(self) -> list[IssuerRecord]:
        return [issuer for issuer in await self._view.issuers() if issuer.key_ref is not None]

    async def shards(self, issuer: IssuerRecord) -> list[int]:
        """The configured shards and every shard still holding an unexpired certificate."""
        layout = self._storer.layout(issuer)
        cutoff = to_epoch(self._clock.now()) - self._storer.expired_grace_seconds
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
                started = self._clock.monotonic()
                done.append(await self.publish(issuer, shard))
                # Spacing: the next full CRL of this shard after a change waits as long as this one took.
                ended = self._clock.monotonic()
                self._last_full[key[:2]] = _FullRun(ended, ended - started)
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
            state.published_position
            for issuer_id, shards in self._targets.items()
            for shard in shards
            if (state := self._writer.known(issuer_id, shard)) is not None
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

    async def _changed(self, issuer: IssuerRecord, shard: int) -> bool:
        """Whether a certificate of the shard was revoked or released after its last full CRL's position."""
        try:
            return await self._writer.changed_since_base(issuer.issuer_id, shard)
        except PCAError as exc:  # the full CRL's attempt reads the same rows: it says what is wrong
            log.warning("cannot tell whether %s changed: %s", crl_layout.label(issuer.issuer_id, shard), exc)
            return True

    async def publish_changes(self, *, refresh: bool = False) -> list[Published]:
        """After revocations: a full CRL of every shard changed since its last one (once its spacing
        has passed) and, when deltas are on, a delta of every shard (unless ``refresh``, only where
        something changed since the last delta). A shard without a base gets its full CRL first."""
        done: list[Published] = []
        self._full_due = None
        for issuer in await self._issuers():
            for shard in self._targets.get(issuer.issuer_id, []):
                if self._writer.state(issuer.issuer_id, shard).base_number is None:
                    await self._full_and_delta(issuer, shard, done)
                    continue
                if self._follow and await self._changed(issuer, shard):
                    last = self._last_full.get((issuer.issuer_id, shard), _NEVER)
                    not_before = last.not_before
                    if self._clock.monotonic() >= not_before:
                        if self._deltas and last.seconds > SLOW_FULL_SECONDS:
                            # A slow full CRL: the delta first, so these changes are out while it is built.
                            await self._attempt(issuer, shard, done, delta=True, force=False)
                        await self._full_and_delta(issuer, shard, done)
                        continue
                    self._full_due = not_before if self._full_due is None else min(self._full_due, not_before)
                if self._deltas:
                    await self._attempt(issuer, shard, done, delta=True, force=refresh)
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
            if (issuer_id, shard, FULL) in self._errors or self._writer.state(issuer_id, shard).base_number is None:
                await self._full_and_delta(issuer, shard, done)
            else:
                await self._attempt(issuer, shard, done, delta=True)
        self._report()
        return done

    async def republish_missing(self) -> list[Published]:
        """Republish (full CRL, then delta) every shard whose current full or delta CRL is gone from the store."""
        done: list[Published] = []
        issuers = {issuer.issuer_id: issuer for issuer in await self._issuers()}
        for issuer_id, shards in sorted(self._targets.items()):
            issuer = issuers.get(issuer_id)
            for shard in shards:
                if issuer is None or any(k[:2] == (issuer_id, shard) for k in self._errors):
                    continue  # failing already: reported, and retried by _retry_failed
                keys = [crl_layout.full_key(issuer_id, shard)]
                if self._deltas:
                    keys.append(crl_layout.delta_key(issuer_id, shard))
                try:
                    missing = [key for key in keys if (await self._storer.stored_number(key))[0] == 0]
                except PCAError as exc:
                    log.warning("cannot check the published CRLs of %s: %s", crl_layout.label(issuer_id, shard), exc)
                    continue
                if not missing:
                    continue
                log.error("published CRL %s is missing from the store: republishing", ", ".join(missing))
                self._writer.state(issuer_id, shard).base_number = None  # the deltas' base is gone too
                await self._full_and_delta(issuer, shard, done)
                for key in [k for k in self._errors if k[:2] == (issuer_id, shard)]:
                    self._errors[key] = f"{', '.join(missing)} missing from the store: {self._errors[key]}"
        if self._restore_also is not None:
            try:
                await self._restore_also()
            except PCAError as exc:
                log.warning("cannot check or restore the audit checkpoint in the store: %s", exc)
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
            self._next_check = now + self._check
            return done
        done = []
        if self._errors and now >= self._next_retry:
            self._next_retry = now + self._retry
            done += await self._retry_failed()
        if now >= self._next_check:
            self._next_check = now + self._check
            done += await self.republish_missing()
        debounced = self._dirty_since is not None and now - self._dirty_since >= self._debounce
        spaced = self._full_due is not None and now >= self._full_due
        refresh = self._deltas and now >= self._next_delta
        if refresh or debounced or spaced:
            # Whatever runs now reads the log from here: it covers every change noted so far.
            self._dirty_since = None
            if refresh:
                self._next_delta = now + self._delta_interval
            done += await self.publish_changes(refresh=refresh)
        return done

    def seconds_until_due(self) -> float:
        """How long ``run`` may sleep before ``tick`` has something to do (a revocation wakes it earlier)."""
        now = self._clock.monotonic()
        if self._next_full is None:
            return 0.0
        due = [self._next_full, self._next_check]
        if self._deltas:
            due.append(self._next_delta)
        if self._dirty_since is not None:
            due.append(self._dirty_since + self._debounce)
        if self._full_due is not None:
            due.append(self._full_due)
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
            await wait_event(self._wake, self.seconds_until_due() if wait is None else wait)
