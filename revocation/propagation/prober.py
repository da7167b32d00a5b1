"""A black-box prober: how long until OCSP responders, asked over HTTP, say "revoked".

It follows the admin API's event log, and for each ``CertificateRevoked`` (all
of them, or a random sample) asks every responder, the way a TLS client would
(``GET {responder}/{base64 DER request}``, RFC 5019), until the answer is a
correctly signed "revoked" or the probe times out. Each first sighting is
reported to ``POST /v1/propagation/probes`` so the tracker can show it beside
its internal figures; the end of a run prints percentiles of the time from the
commit to the moment every responder said "revoked".

The figures are upper bounds: a sighting is timed when the answer arrives, and
the prober learns of a revocation only when it next reads the log (every
``poll`` seconds). Times are wall-clock: committed_at comes from the server, so
the prober's host is expected to run NTP like the servers'.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import dataclasses
import datetime
import logging
import math
import random
import ssl
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
from cryptography import x509

from revocation.clock import Clock, SystemClock, iso, parse_iso
from revocation.errors import ConfigError, PCAError
from revocation.propagation.ocsp_check import ProbedIssuer, says_revoked
from revocation.propagation.ocsp_check import ocsp_request_der as ocsp_request_der  # re-exported for callers
from revocation.waiting import wait_event

log = logging.getLogger("pca.prober")

PAGE = 1000
POST_ATTEMPTS = 3
REQUEST_TIMEOUT = 5.0  # one HTTP request; a probe as a whole is bounded by its own timeout
ADMIN_RETRY_SECONDS = 1.0


class ProberError(PCAError):
    """The prober cannot go on (the admin API refuses its token, a configuration value is wrong)."""


@dataclasses.dataclass(frozen=True)
class Revocation:
    issuer_id: str
    serial: int
    seq: int
    committed_at: float  # epoch seconds, as recorded in the log


@dataclasses.dataclass(frozen=True)
class RevocationProbe:
    """What the prober saw of one revocation."""

    revocation: Revocation
    seen_at: dict[str, float]  # responder URL -> when it first answered "revoked"
    timed_out: tuple[str, ...]  # responders that never did within the timeout

    @property
    def seconds(self) -> float | None:
        """From the commit until every responder said "revoked"; None if some never did."""
        if self.timed_out or not self.seen_at:
            return None
        return max(self.seen_at.values()) - self.revocation.committed_at


@dataclasses.dataclass
class ProbeSummary:
    responders: tuple[str, ...]
    revocations: int = 0  # CertificateRevoked events read
    sampled: int = 0  # of those, probed
    skipped: int = 0  # sampled but not answered by OCSP (their issuer has no OCSP signer)
    unfinished: int = 0  # still being probed when the run was interrupted
    posted: int = 0  # sightings reported to the admin API
    post_failures: int = 0  # sightings the admin API did not take, after retries
    post_failure_reasons: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    admin_errors: int = 0  # failed reads of the admin API (retried)
    results: list[RevocationProbe] = dataclasses.field(default_factory=list)

    @property
    def seconds(self) -> list[float]:
        """Commit to seen-by-all-responders, sorted, for the revocations every responder answered."""
        return sorted(s for s in (r.seconds for r in self.results) if s is not None)

    @property
    def timeouts(self) -> int:
        """Revocations that some responder did not answer "revoked" within the timeout."""
        return sum(1 for r in self.results if r.timed_out)

    def timeouts_by_responder(self) -> dict[str, int]:
        counts = dict.fromkeys(self.responders, 0)
        for r in self.results:
            for url in r.timed_out:
                counts[url] += 1
        return counts

    def percentile(self, p: float) -> float | None:
        """Nearest-rank percentile of :attr:`seconds` (``p`` from 0 to 100); None when nothing completed."""
        values = self.seconds
        if not values:
            return None
        rank = max(1, math.ceil(p / 100 * len(values)))
        return values[rank - 1]

    def render(self) -> str:
        def fmt(value: float | None) -> str:
            return "-" if value is None else f"{value:.3f}s"

        done = len(self.results)
        lines = [
            f"revocations read {self.revocations}, probed {self.sampled}, finished {done}"
            + (f", skipped {self.skipped} (no OCSP)" if self.skipped else "")
            + (f", unfinished {self.unfinished}" if self.unfinished else ""),
            f"seen by all {len(self.responders)} responders: {len(self.seconds)}; timeouts {self.timeouts}",
            "commit -> seen by all: "
            + ", ".join(f"{name} {fmt(self.percentile(p))}" for name, p in (("p50", 50), ("p90", 90), ("p99", 99)))
            + f", max {fmt(self.seconds[-1] if self.seconds else None)}",
        ]
        for url, count in self.timeouts_by_responder().items():
            if count:
                lines.append(f"  {url}: {count} timeouts")
        lines.append(f"probe results posted {self.posted}, not accepted {self.post_failures}")
        for reason, count in self.post_failure_reasons.most_common():
            lines.append(f"  {count} x {reason}")
        if self.admin_errors:
            lines.append(f"admin API read errors (retried): {self.admin_errors}")
        return "\n".join(lines)


def check_responder_url(url: str) -> str:
    """The URL without a trailing slash; ConfigError naming it unless it is http(s) with a host."""
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise ConfigError(f"responder URL {url!r} is not a URL: {exc}") from exc
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise ConfigError(f"responder URL {url!r} must be http(s)://host[:port][/path], e.g. http://ocsp.example/ocsp")
    return url.rstrip("/")


class Prober:
    """One run: follow the log, probe each sampled revocation at every responder, report sightings."""

    def __init__(
        self,
        admin: httpx.AsyncClient,
        responders: Sequence[str],
        *,
        sample: float = 1.0,
        timeout: float = 30.0,
        poll: float = 0.05,
        concurrency: int = 64,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        urls = list(dict.fromkeys(check_responder_url(u) for u in responders))
        if not urls:
            raise ConfigError("give at least one responder URL")
        if not 0 < sample <= 1:
            raise ConfigError(f"sample must be a fraction in (0, 1], got {sample}")
        if not timeout > 0:
            raise ConfigError(f"timeout must be positive, got {timeout}")
        if not poll > 0:
            raise ConfigError(f"poll must be positive, got {poll}")
        if concurrency < 1:
            raise ConfigError(f"concurrency must be at least 1, got {concurrency}")
        self._admin = admin
        self._http = http or httpx.AsyncClient(timeout=REQUEST_TIMEOUT, follow_redirects=False)
        self._own_http = http is None
        self._sample = sample
        self._timeout = timeout
        self._poll = poll
        self._limit = asyncio.Semaphore(concurrency)
        self._clock = clock or SystemClock()
        self._rng = rng or random.Random()
        self._issuers: dict[str, ProbedIssuer] = {}
        self._down: dict[str, asyncio.Event] = {}  # responders not answering -> set when one answers again
        self._scouts: dict[str, object] = {}  # down responder -> the probe that keeps asking it
        self.summary = ProbeSummary(tuple(urls))

    async def aclose(self) -> None:
        if self._own_http:
            await self._http.aclose()

    # --- the admin API ----------------------------------------------------------------

    async def _get(self, path: str) -> Any:
        resp = await self._admin.get(path)
        if resp.status_code in (401, 403):
            raise ProberError(f"the admin API refused the prober's token on {path}: {_problem(resp)}")
        if resp.status_code != 200:
            detail = f"HTTP {resp.status_code} on {path}: {_problem(resp)}"
            raise httpx.HTTPStatusError(detail, request=resp.request, response=resp)
        return resp.json()

    async def head(self) -> int:
        return int((await self._get("/v1/revocations?after=0&limit=1"))["head"])

    async def load_issuers(self) -> None:
        """The issuers' certificates, to build OCSP requests and check the answers' signatures."""
        issuers: dict[str, ProbedIssuer] = {}
        for item in (await self._get("/v1/issuers"))["issuers"]:
            cert = x509.load_pem_x509_certificate(item["certificate_pem"].encode())
            issuers[item["issuer_id"]] = ProbedIssuer.of(cert, ocsp=bool(item.get("ocsp_url")))
        self._issuers = issuers

    async def _post(self, rev: Revocation, url: str, seen_at: float) -> None:
        body = {
            "issuer_id": rev.issuer_id,
            "serial": f"{rev.serial:x}",
            "seq": rev.seq,
            "responder_url": url,
            "seen_at": iso(datetime.datetime.fromtimestamp(seen_at, datetime.UTC)),
        }
        detail = ""
        for attempt in range(POST_ATTEMPTS):
            try:
                resp = await self._admin.post("/v1/propagation/probes", json=body)
            except httpx.HTTPError as exc:
                detail = f"cannot reach the admin API: {type(exc).__name__}"
            else:
                if resp.status_code == 201:
                    self.summary.posted += 1
                    return
                detail = f"HTTP {resp.status_code}: {_problem(resp)}"
                if resp.status_code < 500 and resp.status_code != 429:
                    break  # the API will not change its mind
            if attempt + 1 < POST_ATTEMPTS:
                await asyncio.sleep(0.2 * 2**attempt)
        self.summary.post_failures += 1
        reason = detail[:200]
        # The first of each kind is worth a warning; the rest are counted in the summary.
        level = logging.DEBUG if self.summary.post_failure_reasons[reason] else logging.WARNING
        self.summary.post_failure_reasons[reason] += 1
        log.log(level, "probe of %x (seq %d) at %s not recorded: %s", rev.serial, rev.seq, url, detail)

    # --- following the log --------------------------------------------------------------

    async def run(self, after: int, stop: asyncio.Event, deadline: float | None) -> ProbeSummary:
        """Follow the log from ``after`` until ``stop`` is set (cancel what is in flight) or the
        monotonic ``deadline`` passes (then let what is in flight finish)."""
        tasks: set[asyncio.Task[None]] = set()
        try:
            while not stop.is_set() and (deadline is None or self._clock.monotonic() < deadline):
                try:
                    page = await self._get(f"/v1/revocations?after={after}&limit={PAGE}")
                    revocations: list[dict[str, Any]] = page["revocations"]
                    last, head = int(page["last_seq"]), int(page["head"])
                except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
                    self.summary.admin_errors += 1
                    log.warning("reading revocations after %d failed (retrying): %r", after, exc)
                    await _wait(stop, ADMIN_RETRY_SECONDS, deadline, self._clock)
                    continue
                for item in revocations:
                    rev = self._revocation(item)
                    if rev is not None and self._rng.random() < self._sample:
                        if rev.issuer_id not in self._issuers:
                            await self._reload_issuers()  # an issuer added since we started
                        task = asyncio.create_task(self._probe(rev))
                        tasks.add(task)
                        task.add_done_callback(tasks.discard)
                after = max(after, last)
                if after >= head:
                    await _wait(stop, self._poll, deadline, self._clock)
            # Every probe ends by its own timeout; a stop meanwhile cancels the rest.
            stopper = asyncio.ensure_future(stop.wait())
            try:
                while tasks and not stop.is_set():
                    await asyncio.wait([*tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
            finally:
                stopper.cancel()
        finally:
            self.summary.unfinished += len(tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        return self.summary

    async def _reload_issuers(self) -> None:
        try:
            await self.load_issuers()
        except (httpx.HTTPError, ValueError, KeyError) as exc:
            self.summary.admin_errors += 1
            log.warning("reading the issuers failed: %r", exc)

    def _revocation(self, item: dict[str, Any]) -> Revocation | None:
        """A revocation as ``GET /v1/revocations`` lists it."""
        self.summary.revocations += 1
        try:
            return Revocation(
                str(item["issuer_id"]),
                int(item["serial"], 16),
                int(item["seq"]),
                parse_iso(item["recorded_at"]).timestamp(),
            )
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("cannot read revocation %s: %r", item.get("seq"), exc)
            return None

    # --- probing one revocation ----------------------------------------------------------

    async def _probe(self, rev: Revocation) -> None:
        self.summary.sampled += 1
        issuer = self._issuers.get(rev.issuer_id)
        if issuer is None or not issuer.ocsp:
            self.summary.skipped += 1
            return
        path = quote(base64.b64encode(issuer.request(rev.serial)).decode(), safe="")
        deadline = self._clock.monotonic() + self._timeout
        urls = self.summary.responders
        try:
            sightings = await asyncio.gather(*(self._watch(rev, issuer, u, path, deadline) for u in urls))
        except Exception:  # a bug here must not end the run silently
            log.exception("probing %x (seq %d) failed", rev.serial, rev.seq)
            return
        seen = {u: t for u, t in zip(urls, sightings, strict=True) if t is not None}
        timed_out = tuple(u for u in urls if u not in seen)
        for url in timed_out:
            log.info("%s did not answer revoked for %x (seq %d) within %ss", url, rev.serial, rev.seq, self._timeout)
        self.summary.results.append(RevocationProbe(rev, seen, timed_out))

    async def _watch(
        self, rev: Revocation, issuer: ProbedIssuer, base: str, path: str, deadline: float
    ) -> float | None:
        """Ask until the answer is "revoked", report when it arrived (epoch seconds) and return that;
        None if the deadline passes first."""
        seen = await self._ask_until_revoked(rev, issuer, base, f"{base}/{path}", deadline)
        if seen is not None:
            await self._post(rev, base, seen)
        return seen

    async def _ask_until_revoked(
        self, rev: Revocation, issuer: ProbedIssuer, base: str, url: str, deadline: float
    ) -> float | None:
        me = object()
        try:
            while True:
                await self._until_answering(base, deadline, me)
                remaining = deadline - self._clock.monotonic()
                if remaining <= 0:
                    return None
                if base in self._down:
                    self._scouts[base] = me  # the one probe that asks a responder that is down
                try:
                    async with self._limit:
                        resp = await self._http.get(url, timeout=min(REQUEST_TIMEOUT, remaining))
                    arrived = self._clock.now().timestamp()
                    back = self._down.pop(base, None)
                    if back is not None:
                        self._scouts.pop(base, None)
                        back.set()
                    if resp.status_code == 200 and says_revoked(resp.content, issuer.cert, rev.serial):
                        return arrived
                except httpx.HTTPError as exc:
                    log.debug("asking %s failed: %r", url, exc)
                    self._down.setdefault(base, asyncio.Event())
                    self._scouts.setdefault(base, me)
                await asyncio.sleep(min(self._poll, max(0.0, deadline - self._clock.monotonic())))
        finally:
            if self._scouts.get(base) is me:
                del self._scouts[base]  # a probe that ends hands scouting to whoever asks next

    async def _until_answering(self, base: str, deadline: float, me: object) -> None:
        """While a responder does not answer, one probe (the scout) keeps asking it and the others
        wait to hear it is back: a dead responder must not flood the prober with failing connections
        and delay the probes of the live ones. Returns when the caller should ask."""
        while base in self._down and self._scouts.get(base, me) is not me:
            remaining = deadline - self._clock.monotonic()
            if remaining <= 0:
                return
            await wait_event(self._down[base], min(remaining, self._poll * 4))


async def probe(
    admin_url: str,
    token: str | None,
    responders: Sequence[str],
    *,
    duration: float | None,
    sample: float = 1.0,
    timeout: float = 30.0,  # noqa: ASYNC109 - how long one revocation is probed, not a deadline for this call
    poll: float = 0.05,
    from_seq: int | None = None,
    stop: asyncio.Event | None = None,
    concurrency: int = 64,
    clock: Clock | None = None,
    rng: random.Random | None = None,
    verify: ssl.SSLContext | bool = True,
) -> ProbeSummary:
    """Probe revocations committed from ``from_seq`` on (default: those after the current head)
    for ``duration`` seconds (None: until ``stop`` is set), then wait for the probes in flight.

    Setting ``stop`` ends the run at once; probes still in flight count as unfinished.
    """
    if duration is not None and not duration > 0:
        raise ConfigError(f"duration must be positive, got {duration}")
    if from_seq is not None and from_seq < 1:
        raise ConfigError(f"from_seq must be at least 1, got {from_seq}")
    clock = clock or SystemClock()
    stop = stop or asyncio.Event()
    headers = {"authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient(base_url=admin_url, headers=headers, timeout=30.0, verify=verify) as admin:
        prober = Prober(
            admin, responders, sample=sample, timeout=timeout, poll=poll, concurrency=concurrency, clock=clock, rng=rng
        )
        try:
            try:
                after = from_seq - 1 if from_seq is not None else await prober.head()
                await prober.load_issuers()
            except (httpx.HTTPError, ValueError, KeyError) as exc:
                raise ProberError(f"cannot read the event log and issuers at {admin_url}: {exc}") from exc
            deadline = None if duration is None else clock.monotonic() + duration
            return await prober.run(after, stop, deadline)
        finally:
            await prober.aclose()


async def _wait(stop: asyncio.Event, seconds: float, deadline: float | None, clock: Clock) -> None:
    """Sleep ``seconds``, less if ``stop`` is set or the deadline comes first."""
    if deadline is not None:
        seconds = min(seconds, max(0.0, deadline - clock.monotonic()))
    await wait_event(stop, seconds)


def _problem(resp: httpx.Response) -> str:
    try:
        body = resp.json()
        return str(body.get("detail") or body.get("title") or resp.text[:200])
    except (ValueError, AttributeError):
        return resp.text[:200]
