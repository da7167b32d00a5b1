"""Exactly one active pre-signer (and one publisher) however many are started.

A role that must run once takes a lease in the database (``LeaseStore.try_lease``)
and renews it every third of its time to live. A second copy started by mistake,
or a standby on another host, waits and retries; when the holder dies, its lease
runs out and the standby takes over within ``ttl`` seconds. A holder that stops
cleanly releases the lease, so the standby takes over at once; so does a process
that finds the lease held by a dead process of its own machine (a crashed
predecessor on the same host: ``revocation.coordination.holders``).

A holder that cannot renew (the database is unreachable) stops its work when its
lease has run out by its own clock, before anyone else can have taken it over.
The work also checks ``valid()`` before each write; the stores add their own guard
(a response is never replaced by one reflecting an older log position; a CRL number
never goes down), so a holder paused past its lease cannot undo a successor's work.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry, Gauge

from revocation.coordination import LeaseState, LeaseStore
from revocation.coordination.holders import holder_is_dead, lease_holder
from revocation.errors import PCAError

log = logging.getLogger("pca.lease")


class LeaseLost(PCAError):
    """This process no longer holds the lease its work needs."""


_GAUGES: weakref.WeakKeyDictionary[CollectorRegistry, Gauge] = weakref.WeakKeyDictionary()


def _lease_gauge(registry: CollectorRegistry) -> Gauge:
    """One gauge per registry, with a label per lease (a process may hold several)."""
    gauge = _GAUGES.get(registry)
    if gauge is None:
        gauge = _GAUGES[registry] = Gauge(
            "role_lease_active", "1 while this process holds the role's lease and works", ["role"], registry=registry
        )
    return gauge


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


_STOP_RETRY_SECONDS = 1.0


async def _stop(task: asyncio.Future[None]) -> None:
    """Cancel the work and wait for it to end.

    Unlike awaiting the task under ``suppress``, this lets a cancellation of the caller itself through
    (the process is stopping): swallowing it would send the keeper back to take the lease again.
    """
    task.add_done_callback(lambda t: t.cancelled() or t.exception())  # its end is of no interest
    task.cancel()
    # Work that swallows a cancellation (Python 3.11's asyncio.wait_for does, when what it waits for
    # completes at that moment) would keep this process working without the lease, and never standing
    # by: cancel it again until it ends.
    while not (await asyncio.wait([task], timeout=_STOP_RETRY_SECONDS))[0]:
        log.warning("the work did not stop when cancelled; cancelling it again")
        task.cancel()


class LeaseKeeper:
    def __init__(
        self,
        coord: LeaseStore,
        name: str,
        *,
        ttl: float,
        holder: str | None = None,
        registry: CollectorRegistry | None = None,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        is_dead: Callable[[str], bool] = holder_is_dead,
    ) -> None:
        if ttl <= 0:
            raise ValueError(f"lease time to live must be positive, got {ttl}")
        self.name = name
        self.holder = holder or lease_holder()
        self._coord = coord
        self._ttl = ttl
        self._wall = wall
        self._monotonic = monotonic
        self._is_dead = is_dead
        self._valid_until = 0.0  # monotonic; a margin below the database's expiry
        self.active = False
        self.takeovers = 0
        if registry is not None:
            _lease_gauge(registry).labels(name).set_function(lambda: 1.0 if self.active else 0.0)

    @property
    def renew_every(self) -> float:
        return self._ttl / 3

    def valid(self) -> bool:
        """Whether this process may still act on the lease (by its own clock)."""
        return self.active and self._monotonic() < self._valid_until

    def check(self) -> None:
        """Raise LeaseLost unless ``valid()``: call before each write the lease protects."""
        if not self.valid():
            raise LeaseLost(f"the {self.name} lease is no longer held by {self.holder}")

    async def _try(self) -> bool | None:
        """True: held (acquired or renewed); False: someone else holds it; None: the database is unreachable."""
        started = self._monotonic()
        try:
            got = await self._coord.try_lease(self.name, self.holder, self._ttl, self._wall())
            if not got and not self.active:
                got = await self._take_over_dead()
        except PCAError as exc:
            log.warning("cannot reach the lease table for %s: %s", self.name, exc)
            return None
        if got:
            # Count from before the request: the database's expiry is at least this late.
            self._valid_until = started + self._ttl * 0.9
        return got

    async def _take_over_dead(self) -> bool:
        """Take the lease from a holder known to be dead (see ``holders``), without waiting it out."""
        state = await self._coord.lease(self.name)
        if state is None or state.holder == self.holder or not self._is_dead(state.holder):
            return False
        got = await self._coord.try_lease(self.name, self.holder, self._ttl, self._wall(), replacing=state.holder)
        if got:
            log.warning(
                "%s lease taken over from %s, a dead process on this machine (it would have run until %s)",
                self.name,
                state.holder,
                _iso(state.expires_at),
            )
        return got

    async def health(self, doing: str) -> dict[str, Any]:
        """For ``/healthz``: a ``problem`` (503) while nobody ``doing`` the work holds the lease.

        A standby behind a live holder is healthy and says whose lease it waits for.
        """
        report: dict[str, Any] = {"lease": "active" if self.active else "standby", "holder": self.holder}
        if self.active:
            return report
        try:
            state: LeaseState | None = await self._coord.lease(self.name)
        except PCAError as exc:
            report["problem"] = f"cannot read the {self.name} lease: {exc}"
            return report
        if state is None or state.expires_at <= self._wall():
            ran_out = "" if state is None else f" ({state.holder}'s ran out at {_iso(state.expires_at)})"
            report["problem"] = f"nothing {doing}: no process holds the {self.name} lease{ran_out}"
        elif self._is_dead(state.holder):
            report["problem"] = (
                f"nothing {doing}: the {self.name} lease is held by {state.holder}, a dead process on this "
                f"machine, until {_iso(state.expires_at)}; taking it over"
            )
        else:
            report["standby"] = f"standing by, lease held by {state.holder} until {_iso(state.expires_at)}"
        return report

    async def run(self, work: Callable[[], Awaitable[None]]) -> None:
        """Wait for the lease, run ``work`` while it is held, and start over when it is lost.

        ``work`` normally runs forever; if it ends or fails, the lease is released and
        the error (if any) propagates.
        """
        while True:
            await self._acquire()
            self.active = True
            self.takeovers += 1
            log.info("%s lease acquired by %s: active", self.name, self.holder)
            task = asyncio.ensure_future(work())
            try:
                lost = await self._keep(task)
            except BaseException:
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
                self.active = False
                await self._release()
                raise
            self.active = False
            if not lost:  # the work ended by itself
                await self._release()
                task.result()
                return
            await _stop(task)
            log.warning("%s lease lost by %s: standing by", self.name, self.holder)

    async def _acquire(self) -> None:
        """Poll the database until the lease is ours (another holder's lease must expire first)."""
        while True:
            if await self._try():
                return
            await asyncio.sleep(self.renew_every)

    async def _keep(self, task: asyncio.Future[None]) -> bool:
        """Renew until the work ends (False) or the lease is lost (True).

        Neither the wait between renewals nor a renewal that hangs (a database that does not
        answer) keeps the work going past the lease's end by this process's clock.
        """
        while True:
            done, _ = await asyncio.wait([task], timeout=max(0.0, min(self.renew_every, self._left())))
            if done:
                return False
            left = self._left()
            if left <= 0:
                return True
            try:
                async with asyncio.timeout(left):
                    held = await self._try()
            except TimeoutError:
                log.warning("renewing the %s lease took too long: it runs out", self.name)
                held = None
            if held is False or (held is None and self._left() <= 0):
                return True

    def _left(self) -> float:
        """Seconds until the lease runs out by this process's clock."""
        return self._valid_until - self._monotonic()

    async def _release(self) -> None:
        try:
            await self._coord.release_lease(self.name, self.holder)
        except PCAError as exc:
            log.warning("could not release the %s lease (it will expire): %s", self.name, exc)
