"""``/healthz`` of granian's workers covers the roles of ``pca serve``'s own process too.

Under granian the public listener runs in worker processes; the pre-signer, the publisher and
the API's checks (CA certificates, OCSP signers) run in ``pca serve``'s process. A load balancer
asks the public port, so each worker's ``/healthz`` must say when, say, nothing pre-signs.
``pca serve`` writes its roles' reports every second to a file in the run's directory (the one the
workers' metrics go to); a worker adds them to its own. A report older than ``STALE_SECONDS``
is a problem in itself: the process that writes it is stuck or gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from pca.runtime import HealthApp, HealthReport
from revocation.clock import Clock, SystemClock
from revocation.waiting import wait_event

HEALTH_FILE = "main-health.json"
WRITE_EVERY = 1.0
CHECK_EVERY = 0.2
MIN_SPACING = 0.2
STALE_SECONDS = 10.0
PART = "server"  # the name of the part that reports on the file itself


async def _parts(health: HealthApp) -> bytes:
    report = await health.report()
    report.pop("status", None)
    return json.dumps(report, sort_keys=True).encode()


async def _write(directory: Path, parts: bytes, clock: Clock) -> None:
    data = b'{"written": %.3f, "parts": %s}' % (clock.time(), parts)

    def write() -> None:
        with contextlib.suppress(OSError):  # the directory went with the server that made it
            partial = directory / (HEALTH_FILE + ".partial")
            partial.write_bytes(data)
            partial.replace(directory / HEALTH_FILE)

    await asyncio.to_thread(write)


async def write_once(health: HealthApp, directory: Path, clock: Clock | None = None) -> None:
    await _write(directory, await _parts(health), clock or SystemClock())


async def publish_main_health(
    health: HealthApp, directory: Path, changed: asyncio.Event, clock: Clock | None = None
) -> None:
    """In ``pca serve``: keep the file current. The report is taken every ``CHECK_EVERY`` seconds
    and at once when the log moves (``changed``, set by the runtime's log-change hook); the file is
    rewritten when it changed, and every ``WRITE_EVERY`` seconds anyway (its age says the process
    lives). The first write (``write_once``) precedes granian's start."""
    clock = clock or SystemClock()
    last, written = b"", 0.0
    while True:
        await wait_event(changed, CHECK_EVERY)
        changed.clear()
        parts = await _parts(health)
        if parts != last or clock.monotonic() - written >= WRITE_EVERY:
            await _write(directory, parts, clock)
            last, written = parts, clock.monotonic()
        await asyncio.sleep(MIN_SPACING)  # a burst of events costs a report per MIN_SPACING at most


def main_health_reader(
    directory: Path,
    fresh: dict[str, HealthReport] | None = None,
    stale_after: float = STALE_SECONDS,
    clock: Clock | None = None,
) -> Callable[[], Awaitable[dict[str, Any]]]:
    """In a worker: the parts ``pca serve``'s process reported, or a problem when it has not lately.

    A part named in ``fresh`` that the process reports is computed here instead, from the store the
    worker reads too (the CA certificates' standing: a CA revoked a moment ago shows at once).
    The report's age is counted in wall time (``clock.time()``): it was written by another process.
    """
    wall = clock or SystemClock()

    async def read() -> dict[str, Any]:
        try:
            doc = json.loads((directory / HEALTH_FILE).read_bytes())
        except FileNotFoundError:
            return {PART: {"problem": "pca serve's own roles have not reported their health yet"}}
        except (OSError, ValueError) as exc:
            return {PART: {"problem": f"pca serve's health report is unreadable: {exc}"}}
        age = wall.time() - float(doc.get("written", 0))
        if age > stale_after:
            return {PART: {"problem": f"pca serve's own roles last reported their health {age:.0f} s ago"}}
        parts: dict[str, Any] = doc.get("parts", {})
        for name, check in (fresh or {}).items():
            if name in parts:
                try:
                    parts[name] = await check()
                except Exception as exc:  # noqa: BLE001 - a health check must answer, not fail
                    parts[name] = {"problem": f"{type(exc).__name__}: {exc}"}
        return parts

    return read
