"""The HTTP app that serves CRLs from the object store the publisher writes to."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

from starlette.types import Receive, Scope, Send

from publishers.objectstore import ObjectStore
from revocation.errors import StorageError

log = logging.getLogger("pca.crl")


class CRLApp:
    """``GET /crl/{key}``: every CRL object (``{issuer}.crl``, shards, deltas, numbered) from the store.

    With S3, CRL URLs in certificates normally point at a CDN in front of the
    bucket (``crl.base_url``); this app still answers from the bucket.
    """

    def __init__(
        self, store: ObjectStore, prefix: str = "/crl", aliases: Callable[[], Mapping[str, str]] | None = None
    ) -> None:
        """With ``aliases`` (path -> object key), the app serves those paths only: an external issuer's
        CRL at the path its certificates' CRL DP names, when that URL is on this listener."""
        self._store = store
        self._prefix = prefix.rstrip("/") + "/"
        self._aliases = aliases

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] not in ("GET", "HEAD"):
            return await _plain(send, 405, b"method not allowed\n", [(b"allow", b"GET, HEAD")])
        if self._aliases is not None:
            alias = self._aliases().get(scope["path"])
            if alias is None:
                return await _plain(send, 404, b"not found\n")
            key = alias
        else:
            key = scope["path"][len(self._prefix) :]
        try:
            # CRLs, and the audit checkpoints of the event log written beside them (publishers.checkpointer).
            servable = key.endswith(".crl") or (key.startswith("checkpoints/") and key.endswith(".json"))
            obj = await self._store.get(key) if servable else None
        except ValueError:  # a key with "..", an absolute path, an empty or overlong segment
            obj = None
        except StorageError as exc:
            log.error("cannot read CRL %r: %s", key[:100], exc)
            return await _plain(send, 503, b"CRL store unavailable\n")
        if obj is None:
            return await _plain(send, 404, b"no such CRL\n")
        headers = [
            (b"content-type", obj.content_type.encode()),
            (b"etag", obj.etag.encode()),
            (b"last-modified", obj.last_modified.encode()),
        ]
        if obj.cache_control:
            headers.append((b"cache-control", obj.cache_control.encode()))
        if obj.expires:
            headers.append((b"expires", obj.expires.encode()))
        for name, value in scope["headers"]:
            if name == b"if-none-match" and value == obj.etag.encode():
                # A 304 repeats the validators and caching headers only, not the CRL's type or length.
                validators = [h for h in headers if h[0] != b"content-type"]
                await send({"type": "http.response.start", "status": 304, "headers": validators})
                await send({"type": "http.response.body", "body": b""})
                return
        body = b"" if scope["method"] == "HEAD" else obj.data
        headers.append((b"content-length", b"%d" % len(obj.data)))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})


async def _plain(send: Send, status: int, body: bytes, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    headers = [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(body)), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
