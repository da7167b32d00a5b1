"""The JVM relying party of the enforcement scenario: ``loadtests/java/RevocationCheck.java``,
compiled with ``javac`` at the scenario's start and kept running (as a Tomcat would be) while the
scenario asks it, over stdin, to validate certificates (one line per request, answers by id).

What the JDK caches (read from the installed JDK's classes, see ``jdk_crl_cache``): a CRL fetched
from a CRL distribution point goes through ``sun.security.provider.certpath.URICertStore``, one
instance per URI kept in a soft cache; an instance hands back its last CRL without asking the
server again for ``CHECK_INTERVAL`` = 30,000 ms after the last fetch, and then fetches with
``If-Modified-Since`` (a 304 keeps the cached CRL). The interval is a ``private static final``
constant: no system property changes it in JDK 17 (the only URICertStore properties are
``com.sun.security.crl.timeout`` / ``crl.readtimeout`` and ``com.sun.security.cert.timeout`` /
``cert.readtimeout``, connect and read timeouts). OCSP answers are not cached by the checker.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

JAVA_SOURCE = Path(__file__).resolve().parent / "java" / "RevocationCheck.java"


def java_missing() -> str | None:
    """None if ``java`` and ``javac`` are on PATH, else what is missing (for the skip message)."""
    missing = [tool for tool in ("java", "javac") if shutil.which(tool) is None]
    if missing:
        return f"{' and '.join(missing)} not found (Debian: apt-get install -y default-jdk-headless)"
    return None


def java_version() -> str:
    proc = subprocess.run(["java", "-version"], capture_output=True, text=True, timeout=30, check=False)
    lines = (proc.stderr or proc.stdout).strip().splitlines()
    return lines[0] if lines else "unknown"


def compile_checker(out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        ["javac", "-d", str(out_dir), str(JAVA_SOURCE)], capture_output=True, text=True, timeout=120, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"javac failed:\n{proc.stderr}")
    return out_dir


def jdk_crl_cache() -> dict[str, object]:
    """What this JDK's URICertStore does: its CRL cache interval and the system properties it reads."""
    try:
        proc = subprocess.run(
            ["javap", "-p", "-constants", "-c", "--module", "java.base", "sun.security.provider.certpath.URICertStore"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"inspected": False, "why": str(exc)}
    text = proc.stdout
    interval = re.search(r"static final int CHECK_INTERVAL = (\d+);", text)
    properties = sorted(set(re.findall(r"// String (com\.sun\.security\.[\w.]+)", text)))
    return {
        "inspected": bool(interval),
        "class": "sun.security.provider.certpath.URICertStore",
        "check_interval_ms": int(interval.group(1)) if interval else None,
        "interval_is_constant": bool(interval),
        "system_properties_read": properties,
        "property_for_interval": next((p for p in properties if "cache" in p or "interval" in p), None),
    }


class JavaChecker:
    """One long-running JVM in one mode (``crl`` or ``ocsp``); ``check(pem_path)`` answers a verdict."""

    def __init__(self, classes: Path, mode: str, root: Path, issuing: Path, log: Path, jvm_options: list[str]) -> None:
        self.mode = mode
        self.cmd = ["java", *jvm_options, "-cp", str(classes), "RevocationCheck", mode, str(root), str(issuing)]
        self.log = log
        self.proc: asyncio.subprocess.Process | None = None
        self.version = ""
        self._pending: dict[str, asyncio.Future[str]] = {}
        self._next = 0
        self._reader: asyncio.Task[None] | None = None
        self._stderr = open(log, "ab")  # closed in stop()

    async def start(self, startup_s: float = 60.0) -> JavaChecker:
        self.proc = await asyncio.create_subprocess_exec(
            *self.cmd,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=self._stderr,
            start_new_session=True,
        )
        assert self.proc.stdout is not None
        async with asyncio.timeout(startup_s):
            first = (await self.proc.stdout.readline()).decode().strip()
        if not first.startswith("ready "):
            raise RuntimeError(f"the JVM ({self.mode}) did not start: {first!r}; see {self.log}")
        self.version = first.split(" ", 1)[1]
        self._reader = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            ident, _, answer = line.decode(errors="replace").strip().partition(" ")
            future = self._pending.pop(ident, None)
            if future is not None and not future.done():
                future.set_result(answer)
        for future in self._pending.values():
            if not future.done():
                future.set_exception(RuntimeError(f"the JVM ({self.mode}) exited"))

    async def check(self, pem: Path, answer_s: float = 20.0) -> tuple[str, str]:
        """("ok" | "refused" | "error", detail); refused means the JDK said REVOKED."""
        assert self.proc is not None and self.proc.stdin is not None
        self._next += 1
        ident = str(self._next)
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._pending[ident] = future
        self.proc.stdin.write(f"{ident} {pem}\n".encode())
        try:
            await self.proc.stdin.drain()
            async with asyncio.timeout(answer_s):
                answer = await future
        except (TimeoutError, RuntimeError, OSError) as exc:
            self._pending.pop(ident, None)
            return "error", f"{type(exc).__name__}: {exc}"
        kind, _, detail = answer.partition(" ")
        if kind == "ok":
            return "ok", ""
        return ("refused" if kind == "revoked" else "error"), detail

    async def stop(self) -> None:
        proc = self.proc
        self.proc = None
        if proc is not None:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(10):
                    await proc.wait()
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
        self._stderr.close()
