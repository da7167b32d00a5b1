"""A minimal keep-alive HTTP/1.1 GET client on asyncio streams, for polling at high rates.

httpx costs a few hundred microseconds of CPU per request; a poller that asks many
serials every 20 ms on a 2-core machine under load must not become the bottleneck it
measures. Answers must carry Content-Length (the responder always sends it).
"""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit


class HTTPConnection:
    def __init__(self, base_url: str) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "http" or parts.hostname is None:
            raise ValueError(f"need an http:// URL, got {base_url!r}")
        self._host = parts.hostname
        self._port = parts.port or 80
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def get(self, path: str) -> tuple[int, bytes]:
        """GET ``path``; reconnects once if the kept-alive connection was closed."""
        for attempt in (0, 1):
            try:
                return await self._get(path)
            except (ConnectionError, asyncio.IncompleteReadError):
                await self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    async def _get(self, path: str) -> tuple[int, bytes]:
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self._host, self._port)
        assert self._reader is not None
        self._writer.write(f"GET {path} HTTP/1.1\r\nHost: {self._host}:{self._port}\r\n\r\n".encode())
        head = await self._reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        length = None
        close = False
        for line in lines[1:]:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value.strip())
            elif name == "connection" and value.strip().lower() == "close":
                close = True
        if length is None:
            raise ConnectionError("answer without Content-Length")
        body = await self._reader.readexactly(length)
        if close:
            await self.close()
        return status, body

    async def close(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, OSError):
                pass
