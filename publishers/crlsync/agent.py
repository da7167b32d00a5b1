"""One pass over every URL, and the loop that repeats it.

A pass fetches every URL at once (each bounded by the fetch timeout), verifies what came
(full CRLs first, so that a delta is checked against the full CRL installed in the same
pass), builds the output from the newest good CRL of every URL, and only when its bytes
differ from the file's writes it atomically, saves the state, runs ``--on-change`` and queues
installation reports. A refused URL keeps its last good CRL in the output.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import hashlib
import logging
import os
import signal

from publishers.crlsync.fetch import Fetcher, Validators
from publishers.crlsync.install import URLRecord, atomic_write, bundle, load_state, read_bundle
from publishers.crlsync.metrics import SyncMetrics
from publishers.crlsync.report import Reporter
from publishers.crlsync.settings import SyncSettings
from publishers.crlsync.verify import CRLInfo, Refused, TrustStore, check_against, check_floor, describe, inspect
from revocation.clock import Clock, SystemClock
from revocation.waiting import wait_event

log = logging.getLogger("pca.crlsync")
RELOG_SECONDS = 600.0  # a refusal that repeats unchanged is logged again this often, not every pass
ON_CHANGE_OUTPUT = 2000  # characters of a failed --on-change's output that are logged


@dataclasses.dataclass(frozen=True)
class PassResult:
    refused: int  # URLs whose fetch or CRL failed this pass (or the install itself)
    changed: bool  # the output file was rewritten


@dataclasses.dataclass
class _Outcome:
    url: str
    info: CRLInfo | None = None
    validators: Validators = dataclasses.field(default_factory=Validators)
    refused: Refused | None = None


class Agent:
    def __init__(
        self,
        settings: SyncSettings,
        metrics: SyncMetrics,
        *,
        reporter: Reporter | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.reporter = reporter
        self._clock = clock or SystemClock()
        if not settings.out.parent.is_dir():
            raise ValueError(f"the directory of --out {settings.out} does not exist")
        self._trust = TrustStore.from_file(settings.ca_bundle)
        self._fetcher = Fetcher(timeout=settings.timeout, max_bytes=settings.max_bytes, tls_ca=settings.tls_ca)
        self._urls = settings.all_urls()
        self.state = load_state(settings.state_path)
        self.installed: dict[str, CRLInfo] = {}
        self._read_back()
        self._written: tuple[tuple[int, int, int], str] | None = None  # (inode, size, mtime_ns), sha256
        self._logged: dict[str, tuple[str, float]] = {}
        self._warned: set[tuple[str, int]] = set()
        self._dirty = False  # the state holds validators not yet saved

    def _read_back(self) -> None:
        """The CRLs installed before, from the output file, matched to URLs by the digests in the state."""
        by_digest = {}
        for crl in read_bundle(self.settings.out):
            try:
                info = describe(crl)
            except ValueError:
                continue
            by_digest[info.sha256] = info
        for url, rec in self.state.urls.items():
            if url in self._urls and rec.sha256 in by_digest:
                self.installed[url] = by_digest[rec.sha256]
                self.metrics.crl_number.labels(url).set(rec.number)

    async def aclose(self) -> None:
        await self._fetcher.aclose()

    async def run_pass(self) -> PassResult:
        outcomes = await asyncio.gather(*(self._fetch(url) for url in self._urls))
        now = self._clock.now()
        # Full CRLs first: a delta is checked against the full CRL of this pass.
        outcomes.sort(key=lambda o: o.info is not None and o.info.delta)
        view = dict(self.installed)
        new: list[str] = []
        validators: dict[str, Validators] = {}
        refused = 0
        for out in outcomes:
            if out.info is not None and out.refused is None:
                try:
                    if self._accept(out.url, out.info, view):
                        view[out.url] = out.info
                        new.append(out.url)
                        self.metrics.fetches.labels(out.url, "updated").inc()
                    else:
                        self.metrics.fetches.labels(out.url, "unchanged").inc()
                    validators[out.url] = out.validators
                except Refused as exc:
                    self.metrics.fetches.labels(out.url, "refused").inc()
                    out.refused = exc
            if out.refused is not None:
                refused += 1
                self._refuse(out.url, out.refused)
            elif out.info is None:
                self.metrics.fetches.labels(out.url, "not_modified").inc()
            if out.refused is None:
                self._logged.pop(out.url, None)
        changed = False
        try:
            changed = self._install(view, new, validators)
        except OSError as exc:
            refused += 1
            self.metrics.install_errors.inc()
            log.error("cannot install %s: %s; the previous file stays", self.settings.out, exc.strerror or exc)
        if self.state.on_change_pending and self.settings.on_change:
            await self._on_change()
        self._watch_expiry(now)
        self.metrics.last_pass.set(self._clock.time())
        return PassResult(refused, changed)

    async def _fetch(self, url: str) -> _Outcome:
        rec = self.state.urls.get(url)
        # Conditional only while the last good CRL is at hand: otherwise a 304 would leave nothing to install.
        validators = rec.validators if rec is not None and url in self.installed else Validators()
        try:
            fetched = await self._fetcher.fetch(url, validators)
            if fetched.body is None:
                if url not in self.installed:
                    raise Refused("http-status", "304 Not Modified to a request without validators")
                return _Outcome(url, validators=fetched.validators)
            skew = datetime.timedelta(seconds=self.settings.max_skew)
            info = await asyncio.to_thread(inspect, fetched.body, self._trust, self._clock.now(), skew)
            return _Outcome(url, info, fetched.validators)
        except Refused as exc:
            self.metrics.fetches.labels(url, "error" if _is_fetch_reason(exc.reason) else "refused").inc()
            return _Outcome(url, refused=exc)
        except Exception as exc:  # a body that trips the parser in a way not foreseen is still just refused
            log.exception("unexpected error on the CRL of %s", url)
            self.metrics.fetches.labels(url, "refused").inc()
            return _Outcome(url, refused=Refused("parse", f"{type(exc).__name__}: {str(exc)[:200]}"))

    def _accept(self, url: str, info: CRLInfo, view: dict[str, CRLInfo]) -> bool:
        rec = self.state.urls.get(url)
        if url not in view and rec is not None:
            check_floor(info, rec.number, rec.sha256)
        return check_against(info, url, view, full_urls=self.settings.urls, delta_urls=self.settings.delta_urls)

    def _refuse(self, url: str, exc: Refused) -> None:
        self.metrics.refusals.labels(url, exc.reason).inc()
        line = f"{exc.reason}: {exc.detail}"
        last = self._logged.get(url)
        now = self._clock.monotonic()
        if last is None or last[0] != line or now - last[1] >= RELOG_SECONDS:
            kept = "keeping the last good CRL" if url in self.installed else "nothing installed for it yet"
            log.warning("refused %s: %s; %s", url, line, kept)
            self._logged[url] = (line, now)

    def _install(self, view: dict[str, CRLInfo], new: list[str], validators: dict[str, Validators]) -> bool:
        """Write the output when its bytes change, then the state; True when the output was written.
        ``validators``: those of the good responses of this pass (new CRLs and the installed ones again).
        Raises OSError when the output cannot be written: then nothing of this pass is remembered."""
        ders = [view[url].der for url in self._urls if url in view]
        changed = False
        if ders:
            data = bundle(ders, self.settings.format)
            digest = hashlib.sha256(data).hexdigest()
            if self._file_digest() != digest:
                atomic_write(self.settings.out, data)
                stat = os.stat(self.settings.out)
                self._written = ((stat.st_ino, stat.st_size, stat.st_mtime_ns), digest)
                changed = True
                log.info("installed %s (%d CRLs, %d bytes)", self.settings.out, len(ders), len(data))
                if self.settings.on_change:
                    self.state.on_change_pending = True
        installed_at = self._clock.now()
        stamp = installed_at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        for url, got in validators.items():
            rec = self.state.urls.get(url)
            if url in new:
                info = view[url]
                self.state.urls[url] = URLRecord(info.number, info.sha256, info.delta, stamp, got)
            elif rec is not None and rec.validators != got:
                rec.validators = got
                self._dirty = True
        self.installed = view
        if new or changed or self._dirty:
            self._save_state()
        for url in new:
            info = view[url]
            self.metrics.last_install.labels(url).set(installed_at.timestamp())
            self.metrics.crl_number.labels(url).set(info.number)
            kind = "delta CRL" if info.delta else "CRL"
            log.info("installed %s number %d from %s (nextUpdate %s)", kind, info.number, url, _iso(info.next_update))
            if self.reporter is not None:
                self.reporter.submit(url, info, installed_at)
        if changed:
            # counted last, so that a scrape that sees the install also sees its CRL number
            self.metrics.installs.inc()
        return changed

    def _file_digest(self) -> str | None:
        """The digest of the output file: remembered while the file is the one written last, else read."""
        try:
            stat = os.stat(self.settings.out)
        except OSError:
            return None
        key = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
        if self._written is not None and self._written[0] == key:
            return self._written[1]
        try:
            digest = hashlib.sha256(self.settings.out.read_bytes()).hexdigest()
        except OSError:
            return None
        self._written = (key, digest)
        return digest

    def _save_state(self) -> None:
        atomic_write(self.settings.state_path, self.state.dumps(), mode=0o600)
        self._dirty = False

    async def _on_change(self) -> None:
        command = self.settings.on_change
        assert command is not None
        result = await run_command(
            command, self.settings.on_change_timeout, {"PCA_CRL_SYNC_OUT": str(self.settings.out)}
        )
        self.metrics.on_change.labels(result).inc()
        if result == "ok":
            self.state.on_change_pending = False
        else:
            log.warning("--on-change will run again after the next pass")
        try:
            self._save_state()
        except OSError as exc:
            self.metrics.install_errors.inc()
            log.error("cannot write the state file %s: %s", self.settings.state_path, exc.strerror or exc)

    def _watch_expiry(self, now: datetime.datetime) -> None:
        for url in self._urls:
            info = self.installed.get(url)
            if info is None:
                continue
            left = (info.next_update - now).total_seconds()
            self.metrics.until_next_update.labels(url).set(left)
            if left < self.settings.warn_before and (url, info.number) not in self._warned:
                self._warned.add((url, info.number))
                log.warning(
                    "the installed CRL of %s (number %d) %s at %s and no newer one is available",
                    url,
                    info.number,
                    "expired" if left <= 0 else "expires",
                    _iso(info.next_update),
                )


def _iso(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _is_fetch_reason(reason: str) -> bool:
    return reason in {"unreachable", "timeout", "http-status", "truncated", "too-large", "protocol-error"}


async def run_command(command: str, seconds: float, env: dict[str, str]) -> str:
    """Run ``command`` through the shell in a session of its own; ok, failed or timeout (then killed)."""
    try:
        proc = await asyncio.create_subprocess_shell(
            command,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **env},
        )
    except OSError as exc:
        log.error("--on-change could not start: %s", exc)
        return "failed"
    try:
        async with asyncio.timeout(seconds):
            output, _ = await proc.communicate()
    except (TimeoutError, asyncio.CancelledError) as exc:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        await proc.wait()
        if isinstance(exc, asyncio.CancelledError):
            raise
        log.error("--on-change did not finish within %g s and was killed", seconds)
        return "timeout"
    if proc.returncode != 0:
        text = output.decode(errors="replace").strip()[-ON_CHANGE_OUTPUT:]
        log.error("--on-change exited with status %s%s", proc.returncode, f": {text}" if text else "")
        return "failed"
    log.info("--on-change ran")
    return "ok"


async def run_agent(agent: Agent, stop: asyncio.Event, *, once: bool) -> int:
    """Passes until ``stop`` is set (or one with ``once``); the exit status: 0, or 1 when ``once`` and
    something was refused. A pass under way when ``stop`` is set is cancelled between its steps."""
    status = 0
    while not stop.is_set():
        task = asyncio.create_task(agent.run_pass(), name="crl-sync-pass")
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            break
        try:
            result = task.result()
        except Exception:  # the agent outlives a bug in one pass; the next pass starts afresh
            log.exception("the pass failed")
            result = PassResult(1, False)
        if once:
            status = 1 if result.refused else 0
            break
        await wait_event(stop, agent.settings.interval)
    return status
