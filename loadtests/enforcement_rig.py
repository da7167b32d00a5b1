"""The relying parties of the enforcement scenario (``loadtests.enforcement``), as channels.

A channel checks one client certificate the way its relying party enforces revocation and says
"ok", "refused" or "error". ``Rig`` starts the nginx instances, the CRL feed and the JVMs the
channels need, says which channels it skipped and why, and stops everything in reverse order.

Two reference channels are no relying party: they say whether the full CRL (and the delta CRL)
served at the CRL DP lists the certificate yet, from one poller fetching both every 100 ms, so
that a relying party's time can be split into the CRL's publication and what follows it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ssl
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
from cryptography import x509

from loadtests.common import Service
from loadtests.enforcement_java import JavaChecker, compile_checker, java_missing, java_version, jdk_crl_cache
from loadtests.enforcement_nginx import (
    Nginx,
    crl_sync_command,
    nginx_build,
    nginx_missing,
    probe,
    ssl_ocsp_supported,
)

Verdict = tuple[str, str]  # ("ok" | "refused" | "error", detail)


@dataclasses.dataclass
class Client:
    serial: str
    cert: Path
    key: Path
    ctx: ssl.SSLContext


@dataclasses.dataclass
class Channel:
    name: str
    label: str
    check: Callable[[Client], Awaitable[Verdict]]
    notes: list[str]


class CRLPoller:
    """Fetches CRLs every ``interval`` s and keeps the serials each lists (a reference, not a relying party)."""

    def __init__(self, urls: dict[str, str], interval: float = 0.1) -> None:
        self.urls = urls  # name -> URL
        self.interval = interval
        self.listed: dict[str, set[int]] = {name: set() for name in urls}
        self.fetched: dict[str, int] = dict.fromkeys(urls, 0)
        self.failures: dict[str, str] = {}
        self._task: asyncio.Task[None] | None = None

    async def _poll(self) -> None:
        async with httpx.AsyncClient(timeout=5) as http:
            while True:
                started = time.perf_counter()
                for name, url in self.urls.items():
                    try:
                        r = await http.get(url)
                        r.raise_for_status()
                        crl = x509.load_der_x509_crl(r.content)
                        self.listed[name] = {entry.serial_number for entry in crl}
                        self.fetched[name] += 1
                    except (httpx.HTTPError, ValueError) as exc:
                        self.failures.setdefault(name, f"{type(exc).__name__}: {exc}"[:200])
                await asyncio.sleep(max(0.0, self.interval - (time.perf_counter() - started)))

    async def start(self) -> CRLPoller:
        self._task = asyncio.create_task(self._poll())
        return self

    def channel(self, name: str, label: str, note: str) -> Channel:
        async def check(client: Client) -> Verdict:
            if int(client.serial, 16) in self.listed[name]:
                return "refused", f"listed in {self.urls[name]}"
            return "ok", ""

        return Channel(f"ref_{name}", label, check, [note])

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


class Rig:
    """Everything the channels need, started in order and always stopped in reverse."""

    def __init__(self, work: Path, args: Any) -> None:
        self.work = work
        self.args = args
        self.services: list[Service] = []
        self.nginxes: list[Nginx] = []
        self.javas: list[JavaChecker] = []
        self.pollers: list[CRLPoller] = []
        self.skipped: dict[str, str] = {}
        self.info: dict[str, Any] = {}

    def start_nginx(self, files: dict[str, Path], urls: list[str]) -> list[Channel]:
        why_not = nginx_missing()
        if why_not:
            for name in ("nginx_crl", "nginx_ocsp", "nginx_ocsp_cached"):
                self.skipped[name] = why_not
            return []
        self.info["nginx"] = ".".join(map(str, nginx_build()[0] or ()))
        channels = [self._nginx_crl(files, urls)]
        why = ssl_ocsp_supported()
        if why:
            self.skipped["nginx_ocsp"] = self.skipped["nginx_ocsp_cached"] = why
        else:
            channels += self._nginx_ocsp(files)
        return channels

    def _nginx_crl(self, files: dict[str, Path], urls: list[str]) -> Channel:
        directory = self.work / "nginx-crl"
        bundle = directory / "crl-bundle.pem"
        nginx = Nginx(directory, {"crl": f"ssl_crl {bundle};"})
        nginx.write(files["server_chain"], files["server_key"], files["chain"])
        once = crl_sync_command(urls, files["chain"], bundle, interval=1, on_change=None)
        proc = Service("crl-sync --once", once, directory / "crl-sync-once.log")
        with proc:
            assert proc.proc is not None
            if proc.proc.wait(timeout=60) != 0:
                raise RuntimeError(f"crl-sync --once failed:\n{proc.log_tail()}")
        self.nginxes.append(nginx.start())
        sync_cmd = crl_sync_command(urls, files["chain"], bundle, interval=1, on_change=nginx.reload_command())
        self.services.append(Service("crl-sync", sync_cmd, directory / "crl-sync.log").start())
        port = nginx.ports["crl"]
        self.info["crl_sync"] = "pca crl-sync"
        self.info["crl_sync_command"] = " ".join(sync_cmd)
        return Channel(
            "nginx_crl",
            "nginx ssl_crl + pca crl-sync",
            lambda c: probe(port, c.ctx),
            [f"CRLs {', '.join(urls)} fed by `pca crl-sync` --interval 1, nginx reloaded on change"],
        )

    def _nginx_ocsp(self, files: dict[str, Path]) -> list[Channel]:
        directory = self.work / "nginx-ocsp"
        servers = {"off": "ssl_ocsp leaf;", "cached": "ssl_ocsp leaf;\nssl_ocsp_cache shared:ocsp:1m;"}
        nginx = Nginx(directory, servers)
        nginx.write(files["server_chain"], files["server_key"], files["chain"])
        self.nginxes.append(nginx.start())
        off, cached = nginx.ports["off"], nginx.ports["cached"]
        leaf = "ssl_ocsp leaf (the issuing CA's certificate names no OCSP responder), responder from the AIA"
        return [
            Channel(
                "nginx_ocsp",
                "nginx ssl_ocsp, cache off",
                lambda c: probe(off, c.ctx),
                [f"{leaf}; ssl_ocsp_cache off (the default): every handshake asks the responder"],
            ),
            Channel(
                "nginx_ocsp_cached",
                "nginx ssl_ocsp, ssl_ocsp_cache shared",
                lambda c: probe(cached, c.ctx),
                [
                    "ssl_ocsp_cache shared:ocsp:1m: nginx keeps a status (good too) until the response's "
                    "nextUpdate (ocsp.validity_seconds after its thisUpdate), an hour if it has none"
                ],
            ),
        ]

    async def start_java(self, files: dict[str, Path]) -> list[Channel]:
        why = java_missing()
        if why:
            self.skipped["java_crl"] = self.skipped["java_ocsp"] = why
            return []
        classes = compile_checker(self.work / "java-classes")
        cache = jdk_crl_cache()
        self.info["java"] = java_version()
        self.info["jdk_crl_cache"] = cache
        channels = []
        modes = {"crl": ["-Dcom.sun.security.enableCRLDP=true"], "ocsp": []}
        for mode, options in modes.items():
            log_path = self.work / f"java-{mode}.log"
            checker = JavaChecker(classes, mode, files["root"], files["issuing"], log_path, options)
            self.javas.append(checker)  # stopped by stop() even if it fails to start
            await checker.start()
            channels.append(Channel(f"java_{mode}", f"JDK PKIX, {mode.upper()}", self._java_check(checker), []))
        interval = cache.get("check_interval_ms")
        channels[0].notes.append(
            "PREFER_CRLS, NO_FALLBACK, -Dcom.sun.security.enableCRLDP=true; the JDK reuses a fetched CRL for "
            f"{interval if interval is not None else '?'} ms (URICertStore.CHECK_INTERVAL"
            + (", a constant: no system property lowers it)" if cache.get("interval_is_constant") else ")")
        )
        channels[1].notes.append("NO_FALLBACK, ONLY_END_ENTITY, responder from the AIA; no OCSP cache in the JDK")
        return channels

    @staticmethod
    def _java_check(checker: JavaChecker) -> Callable[[Client], Awaitable[Verdict]]:
        return lambda c: checker.check(c.cert)

    async def start_references(self, full: str, delta: str | None) -> list[Channel]:
        urls = {"full_crl": full, **({"delta_crl": delta} if delta else {})}
        poller = await CRLPoller(urls).start()
        self.pollers.append(poller)
        channels = [poller.channel("full_crl", "reference: the full CRL lists it", f"{full}, fetched every 100 ms")]
        if delta:
            note = (
                f"{delta} (the FreshestCRL URL), fetched every 100 ms; no relying party here reads it. With "
                "crl.full_after_revocation (the default) the revocation's shard gets a new full CRL and a delta "
                "on that base, which lists nothing new: a delta lists a revocation only while its full CRL waits "
                "(crl.full_after_revocation = false, or a large shard's spacing during a burst)"
            )
            channels.append(poller.channel("delta_crl", "reference: the delta CRL lists it", note))
        return channels

    async def stop(self) -> None:
        for poller in reversed(self.pollers):
            await poller.stop()
        for checker in reversed(self.javas):
            await checker.stop()
        for service in reversed(self.services):
            service.stop()
        for nginx in reversed(self.nginxes):
            nginx.stop()
