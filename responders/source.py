"""Where responses come from: the responder knows only a ``Source``.

``StoreSource`` reads the response store; ``CachingSource`` wraps any source in a
bounded in-memory cache that the store's change feed keeps current; the
``IssuerIndex`` check turns a request's CertID into the issuer it names.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable
from email.utils import formatdate
from typing import Protocol

from cachetools import LRUCache, TTLCache
from cryptography import x509

from responders.ocsp_request import CertIDRequest
from responders.ocsp_response import certid_hashes
from responders.store import ResponseStore, StoredResponse
from revocation.errors import PCAError, StorageError

log = logging.getLogger("pca.responder")


class NotFound(PCAError):
    """No response for this issuer and serial: the edge answers ``unauthorized``."""


class Unavailable(PCAError):
    """A response may exist but cannot be served now: the edge answers ``tryLater``."""


class Entry:
    """A servable response with its precomputed HTTP validators."""

    __slots__ = ("change_id", "der", "etag", "expires", "last_modified", "next_update", "status")

    def __init__(self, stored: StoredResponse) -> None:
        self.der = stored.der
        self.status = stored.status
        self.etag = b'"' + hashlib.sha1(stored.der, usedforsecurity=False).hexdigest()[:20].encode() + b'"'
        self.last_modified = formatdate(stored.this_update, usegmt=True).encode()
        self.expires = formatdate(stored.next_update, usegmt=True).encode()
        self.next_update = stored.next_update
        self.change_id = stored.change_id


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
    ) -> None:
        if maxsize < 1:
            raise ValueError(f"cache size must be positive, got {maxsize}")
        self._inner = inner
        self._store = store
        self._cache: LRUCache[tuple[str, int], Entry] = LRUCache(maxsize)
        # Serials never issued are asked for too; remember briefly that they are unknown.
        self._missing: TTLCache[tuple[str, int], bool] = TTLCache(maxsize=100_000, ttl=negative_ttl)
        self._poll = poll_interval
        self._clock = clock
        self._wake = asyncio.Event()
        self.position = 0
        self.last_sync = 0.0  # monotonic time of the last successful poll
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._cache)

    async def response(self, issuer_id: str, serial: int) -> Entry:
        key = (issuer_id, serial)
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

    def _put(self, key: tuple[str, int], entry: Entry) -> None:
        current = self._cache.get(key)
        if current is None or current.change_id <= entry.change_id:
            self._cache[key] = entry

    def notify(self) -> None:
        self._wake.set()

    async def sync_once(self, limit: int = 5000) -> int:
        changes = await self._store.changes(self.position, limit)
        for stored in changes:
            key = (stored.issuer_id, stored.serial)
            self._missing.pop(key, None)
            self._put(key, Entry(stored))
        if changes:
            self.position = changes[-1].change_id
        self.last_sync = time.monotonic()
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
                log.warning("change feed unavailable (%s); retrying in %.1fs", exc, backoff)
                backoff = min(backoff * 2, 10.0)
            try:
                await asyncio.wait_for(self._wake.wait(), backoff)
            except TimeoutError:
                pass
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
