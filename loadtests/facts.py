"""Facts about the machine and the software a run measured on."""

from __future__ import annotations

import hashlib
import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

from loadtests.peers import tool_version

LIBRARIES = ("cryptography", "granian", "uvicorn", "starlette", "httpx", "uvloop", "httptools", "asn1crypto")
PRODUCT = ("revocation", "responders", "publishers", "pca")


def _first(path: str, prefix: str) -> str:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(prefix):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def _os_name() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return "unknown"


def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def product_digest(root: Path) -> str:
    """SHA-256 over the product's Python sources, to tell which code a run measured."""
    h = hashlib.sha256()
    for package in PRODUCT:
        for path in sorted((root / package).rglob("*.py")):
            h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def machine(root: Path) -> dict[str, Any]:
    versions = {}
    for lib in LIBRARIES:
        try:
            versions[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            versions[lib] = "not installed"
    try:
        from cryptography.hazmat.backends.openssl.backend import backend

        crypto_openssl = backend.openssl_version_text()
    except Exception:
        crypto_openssl = "unknown"
    mem_kb = _first("/proc/meminfo", "MemTotal").split()[0]
    return {
        "cpu_model": _first("/proc/cpuinfo", "model name"),
        "cores": os.cpu_count(),
        "memory_gib": round(int(mem_kb) / 1024 / 1024, 1) if mem_kb.isdigit() else None,
        "kernel": platform.release(),
        "os": _os_name(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "libraries": versions,
        "cryptography_openssl": crypto_openssl,
        "openssl": tool_version(["openssl", "version"]),
        "nginx": tool_version(["nginx", "-v"]),
        "wrk": tool_version(["wrk", "-v"]),
        "product_source_sha256": product_digest(root),
    }
