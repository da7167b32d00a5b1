"""The relying parties of the enforcement scenario (``loadtests.enforcement``), as channels.

A channel checks one client certificate the way its relying party enforces revocation and says
"ok", "refused" or "error". ``Rig`` starts the nginx instances, the CRL feed and the JVMs the
channels need, says which channels it skipped and why, and stops everything in reverse order.
"""

from __future__ import annotations

import dataclasses
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from loadtests.common import Service
from loadtests.enforcement_java import JavaChecker, compile_checker, java_missing, java_version, jdk_crl_cache
from loadtests.enforcement_nginx import (
    Nginx,
    crl_sync_command,
    nginx_version,
    pca_has_crl_sync,
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


class Rig:
    """Everything the channels need, started in order and always stopped in reverse."""

    def __init__(self, work: Path, args: Any) -> None:
        self.work = work
        self.args = args
        self.services: list[Service] = []
        self.nginxes: list[Nginx] = []
        self.javas: list[JavaChecker] = []
        self.skipped: dict[str, str] = {}
        self.info: dict[str, Any] = {}

    def start_nginx(self, files: dict[str, Path], urls: list[str]) -> list[Channel]:
        if nginx_version() is None:
            for name in ("nginx_crl", "nginx_ocsp", "nginx_ocsp_cached"):
                self.skipped[name] = "nginx is not installed"
            return []
        self.info["nginx"] = ".".join(map(str, nginx_version() or ()))
        channels = []
        stand_in = self.args.crl_sync_stand_in
        if stand_in or pca_has_crl_sync():
            channels.append(self._nginx_crl(files, urls, stand_in))
        else:
            self.skipped["nginx_crl"] = (
                "`pca crl-sync` is not in this build (branch crlsync); --crl-sync-stand-in measures with the stand-in"
            )
        why = ssl_ocsp_supported()
        if why:
            self.skipped["nginx_ocsp"] = self.skipped["nginx_ocsp_cached"] = why
        else:
            channels += self._nginx_ocsp(files)
        return channels

    def _nginx_crl(self, files: dict[str, Path], urls: list[str], stand_in: bool) -> Channel:
        directory = self.work / "nginx-crl"
        bundle = directory / "crl-bundle.pem"
        nginx = Nginx(directory, {"crl": f"ssl_crl {bundle};"})
        nginx.write(files["server_chain"], files["server_key"], files["chain"])
        once = crl_sync_command(stand_in, urls, files["chain"], bundle, interval=1, on_change=None)
        proc = Service("crl-sync --once", once, directory / "crl-sync-once.log")
        with proc:
            assert proc.proc is not None
            if proc.proc.wait(timeout=60) != 0:
                raise RuntimeError(f"crl-sync --once failed:\n{proc.log_tail()}")
        self.nginxes.append(nginx.start())
        sync_cmd = crl_sync_command(
            stand_in, urls, files["chain"], bundle, interval=1, on_change=nginx.reload_command()
        )
        self.services.append(Service("crl-sync", sync_cmd, directory / "crl-sync.log").start())
        port = nginx.ports["crl"]
        self.info["crl_sync"] = "stand-in (loadtests/enforcement_standin.py)" if stand_in else "pca crl-sync"
        self.info["crl_sync_command"] = " ".join(sync_cmd)
        feed = "the crl-sync STAND-IN" if stand_in else "`pca crl-sync`"
        return Channel(
            "nginx_crl",
            f"nginx ssl_crl + {'crl-sync stand-in' if stand_in else 'pca crl-sync'}",
            lambda c: probe(port, c.ctx),
            [f"CRLs {', '.join(urls)} fed by {feed} --interval 1, nginx reloaded on change"],
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
            self.javas.append(await checker.start())
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

    async def stop(self) -> None:
        for checker in reversed(self.javas):
            await checker.stop()
        for service in reversed(self.services):
            service.stop()
        for nginx in reversed(self.nginxes):
            nginx.stop()
