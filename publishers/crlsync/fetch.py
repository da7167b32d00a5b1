"""Bounded conditional GETs of CRLs.

Each fetch sends the validators of the last good response (If-None-Match, If-Modified-Since),
has a time limit for the whole exchange (connect, headers and body: a server that trickles
bytes is cut off too), and reads the body in chunks up to a maximum size, so a hostile or
broken server can neither hang the agent nor exhaust its memory. Every failure is a
``Refused`` with a reason: unreachable, timeout, http-status, truncated, too-large.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ssl
from pathlib import Path

import httpx

from publishers.crlsync.verify import Refused
from revocation import __version__
from revocation.digits import ascii_digits

ACCEPT = "application/pkix-crl, application/x-pkcs7-crl;q=0.9, */*;q=0.1"
MAX_REDIRECTS = 5


@dataclasses.dataclass(frozen=True)
class Validators:
    """The cache validators of the last good response of a URL."""

    etag: str | None = None
    last_modified: str | None = None

    def headers(self) -> dict[str, str]:
        out = {}
        if self.etag:
            out["if-none-match"] = self.etag
        if self.last_modified:
            out["if-modified-since"] = self.last_modified
        return out


@dataclasses.dataclass(frozen=True)
class Fetched:
    """A response: ``body`` is None for 304 Not Modified."""

    body: bytes | None
    validators: Validators


def tls_context(ca_file: Path | None) -> ssl.SSLContext:
    """The system's trust store, or only the CAs of ``ca_file`` (``--tls-ca``)."""
    try:
        return ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"cannot load the TLS CA file {ca_file}: {exc}") from exc


class Fetcher:
    def __init__(self, *, timeout: float, max_bytes: int, tls_ca: Path | None = None) -> None:
        self._timeout = timeout
        self._max_bytes = max_bytes
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout),
            verify=tls_context(tls_ca),
            follow_redirects=True,
            max_redirects=MAX_REDIRECTS,
            headers={"user-agent": f"pca-crl-sync/{__version__}", "accept": ACCEPT},
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def fetch(self, url: str, validators: Validators) -> Fetched:
        try:
            async with asyncio.timeout(self._timeout):
                return await self._get(url, validators)
        except TimeoutError as exc:
            raise Refused("timeout", f"no complete answer within {self._timeout:g} s") from exc
        except httpx.TimeoutException as exc:
            raise Refused("timeout", f"no complete answer within {self._timeout:g} s ({type(exc).__name__})") from exc
        except httpx.RemoteProtocolError as exc:
            text = str(exc)
            reason = "truncated" if "complete message body" in text or "incomplete" in text else "protocol-error"
            raise Refused(reason, f"download broken off: {text[:200]}") from exc
        except httpx.TooManyRedirects as exc:
            raise Refused("http-status", f"more than {MAX_REDIRECTS} redirects") from exc
        except (httpx.HTTPError, ssl.SSLError, OSError) as exc:
            raise Refused("unreachable", f"{type(exc).__name__}: {str(exc)[:200] or 'connection failed'}") from exc

    async def _get(self, url: str, validators: Validators) -> Fetched:
        async with self._client.stream("GET", url, headers=validators.headers()) as resp:
            if resp.status_code == 304:
                return Fetched(None, validators)
            if resp.status_code != 200:
                raise Refused("http-status", f"HTTP {resp.status_code} {resp.reason_phrase}".strip())
            length = resp.headers.get("content-length", "")
            if ascii_digits(length) and int(length) > self._max_bytes:
                raise Refused("too-large", f"Content-Length {length} exceeds the limit of {self._max_bytes} bytes")
            body = bytearray()
            async for chunk in resp.aiter_bytes():
                body += chunk
                if len(body) > self._max_bytes:
                    raise Refused("too-large", f"the body exceeds the limit of {self._max_bytes} bytes")
            got = Validators(resp.headers.get("etag"), resp.headers.get("last-modified"))
            return Fetched(bytes(body), got)
