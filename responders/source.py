"""Where responses come from: the responder knows only a ``Source``.

``StoreSource`` reads the response store; ``CachingSource`` wraps any source in a
bounded in-memory cache that the store's change feed keeps current; the
``IssuerIndex`` check turns a request's CertID into the issuer it names.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from email.utils import formatdate
from typing import Protocol

from cachetools import LRUCache, TTLCache
from cryptography import x509

from responders.ocsp_request import CertIDRequest
from responders.store import ResponseStore, StoredResponse
from revocation.certid import certid_hashes
from revocation.errors import PCAError, StorageError
from revocation.waiting import wait_event

log = logging.getLogger("pca.responder")


_SERIAL_LIMIT = 1 << 168  # cache keys put the issuer number above this
# How often a follower compares the end of the change feed with its position: a feed that ends
# behind it was restored from a backup, and changes numbered at or below the position would be missed.
FEED_CHECK_SECONDS = 1.0


class NotFound(PCAError):
    """No response for this issuer and serial: the edge answers ``unauthorized``."""


class Unavailable(PCAError):
    """A response may exist but cannot be served now: the edge answers ``tryLater``."""


class Entry:
    """A servable response, kept lean: a cache holds a million of these.

    HTTP validators are derived when asked: the ETag from the store's change id and
    thisUpdate (both change whenever the response does), the dates through a small
    shared cache of formatted times.
    """

    __slots__ = ("change_id", "der", "next_update", "status", "this_update")

    def __init__(self, stored: StoredResponse) -> None:
        self.der = stored.der
        self.status = stored.status
        self.this_update = stored.this_update
        self.next_update = stored.next_update
        self.change_id = stored.change_id

    @property
    def etag(self) -> bytes:
        return b'"%x-%x"' % (self.this_update, self.change_id)

    @property
    def last_modified(self) -> bytes:
        return http_date(self.this_update)

    @property
    def expires(self) -> bytes:
        return http_date(self.next_update)


_HTTP_DATES: dict[int, bytes] = {}


def http_date(epoch: int) -> bytes:
    """An HTTP-date; responses signed in the same second share one formatted string."""
    value = _HTTP_DATES.get(epoch)
    if value is None:
        if len(_HTTP_DATES) > 4096:
            _HTTP_DATES.clear()
        value = _HTTP_DATES[epoch] = formatdate(epoch, usegmt=True).encode()
    return value


class Source(Protocol):
    async def response(self, issuer_id: str, serial: int) -> Entry:
        """The current response; raises NotFound or Unavailable."""
        ...


class StoreSource:
    def __init__(self, store: ResponseStore) -> None:
        self._store = store

    async def response(self, issuer_id: str, serial: int) -> Entry:
        try:
            stored = await self._store.get(issuer_id, serial)
        except StorageError as exc:
            raise Unavailable(f"response store unreachable: {exc}") from exc
        if stored is None:
            raise NotFound(f"no response for {issuer_id}/{serial:x}")
        return Entry(stored)


class CachingSource:
    """A bounded LRU cache in front of a source, kept current by the change feed.

    Entries past their nextUpdate are never served: they are fetched again, and
    if the inner source has nothing newer the request gets ``tryLater``.
    """

    def __init__(
        self,
        inner: Source,
        store: ResponseStore,
        maxsize: int,
        *,
        poll_interval: float = 0.2,
        negative_ttl: float = 5.0,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """``clock`` gives the wall time (epoch seconds), ``monotonic`` times the polls."""
        if maxsize < 1:
            raise ValueError(f"cache size must be positive, got {maxsize}")
        self._inner = inner
        self._store = store
        # Keyed by one int (issuer number above the 160 bits a serial may use): a tuple key
        # would cost about 50 bytes more per cached response.
        self._cache: LRUCache[int, Entry] = LRUCache(maxsize)
        self._issuer_numbers: dict[str, int] = {}
        # Serials never issued are asked for too; remember briefly that they are unknown.
        self._missing: TTLCache[int, bool] = TTLCache(maxsize=100_000, ttl=negative_ttl)
        self._poll = poll_interval
        self._clock = clock
        self._monotonic = monotonic
        self._wake = asyncio.Event()
        self.position = 0
        self._feed_checked = monotonic()  # when the feed's end was last compared with ``position``
        self.last_sync = 0.0  # monotonic time of the last successful poll
        self.reachable = True  # whether the last poll of the store succeeded
        # Told (position, wall time) after each poll that applied changes: the responder's progress report.
        self.on_applied: Callable[[int, float], None] | None = None
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._cache)

    def _key(self, issuer_id: str, serial: int) -> int:
        number = self._issuer_numbers.get(issuer_id)
        if number is None:
            number = self._issuer_numbers[issuer_id] = len(self._issuer_numbers) + 1
        return (number << 168) | serial

    async def response(self, issuer_id: str, serial: int) -> Entry:
        if not 0 < serial < _SERIAL_LIMIT:
            raise NotFound(f"serial {serial} is outside what certificates carry")
        key = self._key(issuer_id, serial)
        entry = self._cache.get(key)
        if entry is not None and entry.next_update > self._clock():
            self.hits += 1
            return entry
        self.misses += 1
        if entry is None and key in self._missing:
            raise NotFound(f"no response for {issuer_id}/{serial:x}")
        try:
            fresh = await self._inner.response(issuer_id, serial)
        except NotFound:
            self._missing[key] = True
            raise
        if fresh.next_update <= self._clock():
            raise Unavailable(f"the newest response for {issuer_id}/{serial:x} has expired")
        self._put(key, fresh)
        return fresh

    def _put(self, key: int, entry: Entry) -> None:
        current = self._cache.get(key)
        if current is None or current.change_id <= entry.change_id:
            self._cache[key] = entry

    def notify(self) -> None:
        self._wake.set()

    async def _check_feed(self) -> None:
        """Start the feed again from its beginning if it now ends behind our position: the store's database
        was restored from a backup (its change numbers went back), so changes made since would be numbered at
        or below the position and never read, and the cache would keep answering from the lost future."""
        last = await self._store.last_change()
        if last >= self.position:
            return
        log.warning(
            "the response store's change feed ends at %d, behind this responder's position %d (its database was "
            "restored from a backup?): dropping %d cached responses and reading the feed from its start",
            last, self.position, len(self._cache),
        )  # fmt: skip
        self._cache.clear()
        self._missing.clear()
        self.position = 0

    async def sync_once(self, limit: int = 5000) -> int:
        if self.position and self._monotonic() - self._feed_checked >= FEED_CHECK_SECONDS:
            self._feed_checked = self._monotonic()
            await self._check_feed()
        changes = await self._store.changes(self.position, limit)
        for stored in changes:
            if not 0 < stored.serial < _SERIAL_LIMIT:
                continue
            key = self._key(stored.issuer_id, stored.serial)
            self._missing.pop(key, None)
            self._put(key, Entry(stored))
        if changes:
            self.position = changes[-1].change_id
            if self.on_applied is not None:
                self.on_applied(self.position, self._clock())
        self.last_sync = self._monotonic()
        self.reachable = True
        return len(changes)

    async def follow(self) -> None:
        """Follow the change feed forever; on store errors keep serving and retry with backoff."""
        backoff = self._poll
        while True:
            try:
                while await self.sync_once() > 0:
                    pass
                backoff = self._poll
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the store is down: serve what we hold
                self.reachable = False
                log.warning("change feed unavailable (%s); retrying in %.1fs", exc, backoff)
                backoff = min(backoff * 2, 5.0)
            await wait_event(self._wake, backoff)
            self._wake.clear()


class IssuerIndex:
    """Maps a CertID's (hash algorithm, issuer key hash) to an issuer, checking the name hash too."""

    def __init__(self) -> None:
        self._by_key: dict[tuple[str, bytes], tuple[bytes, str]] = {}

    def add(self, issuer_id: str, cert: x509.Certificate) -> None:
        # Only the CertID hashes responses are signed for: a request with another hash gets
        # ``unauthorized`` rather than a response that names a different CertID.
        for alg, (name_hash, key_hash) in certid_hashes(cert, ("sha1", "sha256")).items():
            self._by_key[(alg, key_hash)] = (name_hash, issuer_id)

    def resolve(self, req: CertIDRequest) -> str:
        found = self._by_key.get((req.hash_algorithm, req.issuer_key_hash))
        if found is None or found[0] != req.issuer_name_hash:
            raise NotFound("unknown issuer")
        return found[1]
