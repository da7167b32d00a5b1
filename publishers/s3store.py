"""The ObjectStore on S3 or any S3-compatible endpoint (MinIO, Ceph RGW), through aioboto3.

The only module of the object stores that imports aioboto3 (the KMS key backend,
``revocation/keys/kms.py``, is the other one in the product). Credentials come from the standard AWS
chain (environment, shared config and credentials files, container or instance
role); the configuration names a bucket, never a secret.

Conditional writes map onto S3's conditional PutObject: ``if_none_match``
sends ``If-None-Match: *`` and ``if_match`` sends ``If-Match: <ETag>``. S3
answers 412 PreconditionFailed when the condition does not hold, 409
ConditionalRequestConflict when another conditional write to the key is in
flight, and 404 NoSuchKey for ``If-Match`` on a key that does not exist; all
three become ``PreconditionFailed``. Transient failures (connection errors,
timeouts, 5xx, throttling) are retried with exponential backoff and jitter;
what is still failing after the last attempt is a ``StorageError`` naming the
operation, the key and the cause.

A conditional write whose reply was lost (the connection broke after S3 stored
the object) fails its condition when it is sent again, by us or by the HTTP
client (aiohttp resends an idempotent PUT once when the connection breaks, out of
our sight): the object in the way is our own write. So a failed condition reads
the object back (a HEAD, then the body if size and metadata match), and if its
bytes, content type and metadata are exactly the ones we sent, the write counts
as done: the store holds what the caller asked for.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable, Mapping
from email.utils import formatdate, parsedate_to_datetime
from typing import Any, TypeVar

import aioboto3
import aiohttp
from aiobotocore.config import AioConfig
from botocore.exceptions import BotoCoreError, ClientError, ConnectionError, HTTPClientError

from publishers.objectstore import ObjectHead, PreconditionFailed, StoredObject, check_key, check_metadata
from revocation.errors import StorageError

_PRECONDITION_CODES = frozenset({"PreconditionFailed", "ConditionalRequestConflict", "412", "409"})
_NOT_FOUND_CODES = frozenset({"NoSuchKey", "NotFound", "404"})
_RETRY_CODES = frozenset(
    {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "InternalError", "ServiceUnavailable"}
)

# Worth another attempt: the endpoint was unreachable, the connection broke, a timeout.
_TRANSIENT_ERRORS = (ConnectionError, HTTPClientError, aiohttp.ClientError, TimeoutError, OSError)

log = logging.getLogger("pca.s3")

Sleep = Callable[[float], Awaitable[None]]
T = TypeVar("T")


class S3Store:
    """Objects in ``bucket`` under ``prefix``; see the module docstring for conditions and retries."""

    def __init__(
        self,
        bucket: str,
        *,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str | None = None,
        addressing_style: str = "auto",
        profile: str | None = None,
        attempts: int = 5,
        backoff_seconds: float = 0.2,
        max_backoff_seconds: float = 10.0,
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if not 3 <= len(bucket) <= 63:
            raise ValueError(f"S3 bucket name {bucket!r} must be 3 to 63 characters")
        if prefix and (prefix.startswith("/") or "//" in prefix):
            raise ValueError(f"S3 key prefix {prefix!r} must be relative, such as 'crl/'")
        if attempts < 1:
            raise ValueError(f"attempts must be at least 1, got {attempts}")
        if addressing_style not in ("auto", "path", "virtual"):
            raise ValueError(f"addressing_style {addressing_style!r} is not auto, path or virtual")
        self.bucket = bucket
        self.prefix = prefix if not prefix or prefix.endswith("/") else prefix + "/"
        self._endpoint_url = endpoint_url or None
        self._region = region or None
        self._session = aioboto3.Session(profile_name=profile or None)
        # Retries are ours (below), so botocore makes exactly one attempt per call.
        self._config = AioConfig(
            retries={"total_max_attempts": 1, "mode": "standard"},
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            s3={"addressing_style": addressing_style},
        )
        self._attempts = attempts
        self._backoff = backoff_seconds
        self._max_backoff = max_backoff_seconds
        self._sleep = sleep
        self._client: Any = None
        self._exit: contextlib.AsyncExitStack | None = None
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"S3Store(s3://{self.bucket}/{self.prefix}, endpoint={self._endpoint_url or 'AWS'})"

    async def _s3(self) -> Any:
        """One client (one connection pool) per store, made on first use."""
        async with self._lock:
            if self._client is None:
                stack = contextlib.AsyncExitStack()
                client_cm = self._session.client(
                    "s3", endpoint_url=self._endpoint_url, region_name=self._region, config=self._config
                )
                self._client = await stack.enter_async_context(client_cm)
                self._exit = stack
            return self._client

    async def close(self) -> None:
        async with self._lock:
            if self._exit is not None:
                await self._exit.aclose()
            self._client, self._exit = None, None

    async def _retrying(self, what: str, key: str, operation: Callable[[Any], Awaitable[T]]) -> T:
        """Run ``operation(client)``, retrying transient failures with exponential backoff and jitter.

        ClientErrors that are not transient (412, 404, 403...) go straight to the caller.
        """
        delay = self._backoff
        attempt = 1
        while True:
            try:
                return await operation(await self._s3())
            except ClientError as exc:
                if not _transient(exc) or attempt >= self._attempts:
                    raise
                cause: Exception = exc
            except _TRANSIENT_ERRORS as exc:
                if attempt >= self._attempts:
                    raise StorageError(
                        f"{what} s3://{self.bucket}/{self.prefix}{key}: {exc!r} (after {attempt} attempts)"
                    ) from exc
                cause = exc
            except BotoCoreError as exc:  # credentials, configuration: retrying will not help
                raise StorageError(f"{what} s3://{self.bucket}/{self.prefix}{key}: {exc}") from exc
            log.warning("%s s3://%s/%s%s failed (attempt %d): %r", what, self.bucket, self.prefix, key, attempt, cause)
            await self._sleep(delay * (0.5 + random.random() / 2))  # jitter: writers do not retry in step
            delay = min(delay * 2, self._max_backoff)
            attempt += 1

    def _failure(self, what: str, key: str, exc: ClientError) -> StorageError:
        error = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "?")
        retried = f" (after {self._attempts} attempts)" if _transient(exc) else ""
        return StorageError(
            f"{what} s3://{self.bucket}/{self.prefix}{key}: HTTP {status} {error.get('Code', '')}: "
            f"{error.get('Message', exc)}{retried}"
        )

    async def put(
        self,
        key: str,
        data: bytes,
        *,
        content_type: str,
        cache_control: str = "",
        expires: str = "",
        if_match: str | None = None,
        if_none_match: bool = False,
        metadata: Mapping[str, str] | None = None,
    ) -> str:
        check_key(key)
        params: dict[str, Any] = {
            "Key": self.prefix + key,
            "Body": data,
            "ContentType": content_type,
            "Metadata": check_metadata(metadata),
        }
        if cache_control:
            params["CacheControl"] = cache_control
        if expires:
            try:
                params["Expires"] = parsedate_to_datetime(expires)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"expires {expires!r} is not an HTTP-date") from exc
        if if_match is not None:
            params["IfMatch"] = if_match
        if if_none_match:
            params["IfNoneMatch"] = "*"

        async def put_object(client: Any) -> Any:
            return await client.put_object(Bucket=self.bucket, **params)

        try:
            response = await self._retrying("writing", key, put_object)
        except ClientError as exc:
            code = _code(exc)
            conditional = if_match is not None or if_none_match
            if code in _PRECONDITION_CODES or (conditional and code in _NOT_FOUND_CODES):
                if (etag := await self._own_write(key, data, params)) is not None:
                    return etag
                raise PreconditionFailed(
                    f"object {key} is not in the state the writer expected "
                    f"({'If-Match ' + if_match if if_match is not None else 'If-None-Match: *'}): {code}"
                ) from exc
            raise self._failure("writing", key, exc) from exc
        return str(response["ETag"])

    async def _own_write(self, key: str, data: bytes, params: Mapping[str, Any]) -> str | None:
        """The ETag of the object at ``key`` if it is exactly what ``params`` wrote (an earlier attempt
        whose reply was lost), else None."""
        try:
            head = await self.head(key)
            if head is None or head.size != len(data) or dict(head.metadata) != params["Metadata"]:
                return None
            stored = await self.get(key)
        except StorageError as exc:
            log.warning("cannot read back s3://%s/%s%s after a refused retry: %s", self.bucket, self.prefix, key, exc)
            return None
        if (
            stored is None
            or stored.data != data
            or stored.content_type != params["ContentType"]
            or dict(stored.metadata) != params["Metadata"]
        ):
            return None
        log.warning(
            "writing s3://%s/%s%s: the retry was refused, but the object is our own write (its reply was lost)",
            self.bucket,
            self.prefix,
            key,
        )
        return stored.etag

    async def get(self, key: str) -> StoredObject | None:
        check_key(key)

        async def get_object(client: Any) -> tuple[Any, bytes]:
            # The body is read inside the retried operation: a connection cut mid-body is retried too.
            response = await client.get_object(Bucket=self.bucket, Key=self.prefix + key)
            async with response["Body"] as body:
                return response, bytes(await body.read())

        try:
            response, data = await self._retrying("reading", key, get_object)
        except ClientError as exc:
            if _code(exc) in _NOT_FOUND_CODES:
                return None
            raise self._failure("reading", key, exc) from exc
        return StoredObject(
            key,
            data,
            str(response.get("ETag", "")),
            str(response.get("ContentType", "application/octet-stream")),
            str(response.get("CacheControl", "")),
            _expires(response),
            formatdate(response["LastModified"].timestamp(), usegmt=True) if "LastModified" in response else "",
            dict(response.get("Metadata") or {}),
        )

    async def head(self, key: str) -> ObjectHead | None:
        check_key(key)

        async def head_object(client: Any) -> Any:
            return await client.head_object(Bucket=self.bucket, Key=self.prefix + key)

        try:
            response = await self._retrying("reading", key, head_object)
        except ClientError as exc:
            if _code(exc) in _NOT_FOUND_CODES:
                return None
            raise self._failure("reading", key, exc) from exc
        return ObjectHead(
            key,
            str(response.get("ETag", "")),
            int(response.get("ContentLength", 0)),
            dict(response.get("Metadata") or {}),
        )


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _transient(exc: ClientError) -> bool:
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    return _code(exc) in _RETRY_CODES or (isinstance(status, int) and status >= 500)


def _expires(response: Mapping[str, Any]) -> str:
    """The Expires header as sent (newer botocore keeps the string; older ones parse it)."""
    raw = response.get("ExpiresString")
    if raw:
        return str(raw)
    value = response.get("Expires")
    return formatdate(value.timestamp(), usegmt=True) if value is not None else ""
