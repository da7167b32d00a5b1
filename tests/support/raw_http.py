"""An attacker's raw sockets against a listener: oversized heads, slowloris heads, and reading until closed."""

from __future__ import annotations

import contextlib
import dataclasses
import re
import select
import socket
import threading
import time
from pathlib import Path


def connect(address: tuple[str, int], timeout: float = 10) -> socket.socket:
    sock = socket.create_connection(address, timeout=timeout)
    sock.settimeout(timeout)
    return sock


def until_closed(sock: socket.socket, limit: float = 30) -> tuple[bytes, float]:
    """What the server sends until it closes the connection (a reset counts as a close), and when."""
    start = time.monotonic()
    sock.settimeout(limit)
    data = b""
    with contextlib.suppress(ConnectionResetError, BrokenPipeError, TimeoutError):
        while chunk := sock.recv(65536):
            data += chunk
    return data, time.monotonic() - start


def status_of(answer: bytes) -> int | None:
    match = re.match(rb"HTTP/1\.[01] (\d{3}) ", answer)
    return int(match.group(1)) if match else None


def send_big_head(address: tuple[str, int], size: int, path: str = "/healthz") -> bytes:
    """A request whose one header line is ``size`` bytes, sent while the answer is read."""
    sock = connect(address)

    def send() -> None:
        with contextlib.suppress(OSError):
            sock.sendall(b"GET %s HTTP/1.1\r\nHost: pca\r\nX-Big: " % path.encode())
            chunk = b"a" * (1 << 20)
            for _ in range(size >> 20):
                sock.sendall(chunk)

    sender = threading.Thread(target=send)
    sender.start()
    try:
        return until_closed(sock)[0]
    finally:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)  # wakes the sender if it is blocked in send()
        sock.close()
        sender.join()


def long_heads(address: tuple[str, int], clients: int, size: int, path: str = "/healthz") -> list[socket.socket]:
    """``clients`` connections that each send ``size`` bytes of a request head in header lines of 60,000
    bytes (each within what most servers take for a line), at once, and never end it: the connections,
    still open, once every client has sent its head (or been cut off)."""
    socks = [connect(address) for _ in range(clients)]
    line = b"X-Long: " + b"a" * 60_000 + b"\r\n"

    def send(sock: socket.socket) -> None:
        with contextlib.suppress(OSError):
            sock.sendall(b"GET %s HTTP/1.1\r\nHost: pca\r\n" % path.encode())
            for _ in range(size // len(line)):
                sock.sendall(line)

    senders = [threading.Thread(target=send, args=(sock,)) for sock in socks]
    for thread in senders:
        thread.start()
    for thread in senders:
        thread.join()
    return socks


@dataclasses.dataclass(frozen=True)
class Slowloris:
    open: int  # connections the server left open
    statuses: set[int | None]  # what it answered the others (None: closed without an answer)
    took: float  # seconds until the last was closed (or the limit)


def slowloris(address: tuple[str, int], clients: int, limit: float, path: str = "/healthz") -> Slowloris:
    """``clients`` connections that trickle one header line every 0.2 s and never end the head, for at most
    ``limit`` seconds: how many the server left open, what it answered them, and how long it took."""
    socks = [connect(address) for _ in range(clients)]
    answers = {sock: b"" for sock in socks}
    still_open = set(socks)
    start = time.monotonic()
    try:
        for sock in socks:
            sock.sendall(b"GET %s HTTP/1.1\r\nHost: pca\r\n" % path.encode())
        while still_open and time.monotonic() - start < limit:
            readable, _, _ = select.select(list(still_open), [], [], 0.2)
            for sock in readable:
                try:
                    chunk = sock.recv(65536)
                except OSError:
                    chunk = b""
                answers[sock] += chunk
                if not chunk:
                    still_open.discard(sock)
            for sock in list(still_open):
                try:
                    sock.send(b"X-Slow: 1\r\n")
                except OSError:
                    still_open.discard(sock)
        took = time.monotonic() - start
    finally:
        for sock in socks:
            sock.close()
    return Slowloris(len(still_open), {status_of(a) for a in answers.values()}, took)


def rss_kb(pids: set[int]) -> int:
    """Resident memory of these processes, in kB (those that are gone count 0)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            match = re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
            total += int(match.group(1)) if match else 0
    return total
