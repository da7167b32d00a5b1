"""Reporting installed CRLs to the admin API, in the background.

After a bundle is installed, each CRL new in it is queued; one worker task POSTs them to
``{admin}/v1/propagation/crl-installations`` with a bearer token. A report is retried with
backoff on network errors, timeouts, 429 and 5xx, a bounded number of times, then given up;
a 4xx (the server does not know that CRL, or refuses the token) is not retried. Each given-up
report is logged once, never each attempt, and the token never. The queue is bounded: when the
admin API hangs, installs go on and the oldest reports are dropped (and counted).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import ssl
from typing import Any

import httpx

from publishers.crlsync.metrics import SyncMetrics
from publishers.crlsync.verify import CRLInfo
from revocation import __version__
from revocation.waiting import wait_event

log = logging.getLogger("pca.crlsync")
PATH = "/v1/propagation/crl-installations"


def report_body(agent: str, url: str, info: CRLInfo, installed_at: datetime.datetime) -> dict[str, Any]:
    """The JSON body of one installation report."""
    return {
        "agent": agent,
        "crl_url": url,
        "issuer_key_id": info.issuer_key_id,
        "crl_number": info.number,
        "delta": info.delta,
        "idp_url": info.idp_url,
        "this_update": info.this_update.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "installed_at": installed_at.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
    }


class Reporter:
    def __init__(
        self,
        admin_url: str,
        token: str,
        agent_id: str,
        metrics: SyncMetrics,
        *,
        attempts: int = 5,
        backoff: float = 0.5,
        timeout: float = 10.0,
        queue_size: int = 1000,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        self._url = admin_url.rstrip("/") + PATH
        self._agent = agent_id
        self._metrics = metrics
        self._attempts = attempts
        self._backoff = backoff
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=queue_size)
        self._idle = asyncio.Event()
        self._idle.set()
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout),
            verify=verify,  # an https admin API is verified (--tls-ca, else the system's store)
            headers={"authorization": f"Bearer {token}", "user-agent": f"pca-crl-sync/{__version__}"},
        )
        self._worker: asyncio.Task[None] | None = None

    def submit(self, url: str, info: CRLInfo, installed_at: datetime.datetime) -> None:
        """Queue a report; never waits. A full queue drops its oldest report."""
        if self._worker is None:
            self._worker = asyncio.create_task(self._work(), name="crl-sync-reporter")
        body = report_body(self._agent, url, info, installed_at)
        if self._queue.full():
            dropped = self._queue.get_nowait()
            self._metrics.reports.labels("dropped").inc()
            log.warning(
                "report queue full: dropped the report of %s number %s", dropped["crl_url"], dropped["crl_number"]
            )
        self._idle.clear()
        self._queue.put_nowait(body)

    async def drain(self, seconds: float) -> bool:
        """Wait up to ``seconds`` for every queued report to be sent or given up; whether it was."""
        return await wait_event(self._idle, seconds)

    async def aclose(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        left = self._queue.qsize()
        if left:
            self._metrics.reports.labels("dropped").inc(left)
            log.warning("%d installation report(s) not sent at shutdown", left)
        await self._client.aclose()

    async def _work(self) -> None:
        while True:
            body = await self._queue.get()
            try:
                result = await self._send(body)
            except asyncio.CancelledError:
                self._metrics.reports.labels("dropped").inc()
                raise
            except Exception:  # a report must never take the agent down
                log.exception("report of %s number %s failed", body["crl_url"], body["crl_number"])
                result = "failed"
            self._metrics.reports.labels(result).inc()
            if self._queue.empty():
                self._idle.set()

    async def _send(self, body: dict[str, Any]) -> str:
        what = f"{body['crl_url']} number {body['crl_number']}"
        problem = ""
        for attempt in range(self._attempts):
            if attempt:
                await asyncio.sleep(self._backoff * 2 ** (attempt - 1))
            try:
                resp = await self._client.post(self._url, json=body)
            except httpx.HTTPError as exc:
                problem = f"{type(exc).__name__}: {str(exc)[:200] or 'no answer'}"
                continue
            if resp.status_code in (200, 201, 202, 204):
                log.info("reported the installation of %s", what)
                return "sent"
            problem = f"HTTP {resp.status_code}{_problem_text(resp)}"
            if resp.status_code != 429 and resp.status_code < 500:
                log.warning("the admin API refused the installation report of %s: %s", what, problem)
                return "rejected"
        log.warning("gave up reporting the installation of %s after %d attempts: %s", what, self._attempts, problem)
        return "failed"


def _problem_text(resp: httpx.Response) -> str:
    """The title and detail of an RFC 9457 problem, when the answer is one."""
    try:
        data = resp.json()
    except ValueError:
        return ""
    if not isinstance(data, dict):
        return ""
    parts = [str(data[k])[:200] for k in ("title", "detail") if data.get(k)]
    return f" ({': '.join(parts)})" if parts else ""
