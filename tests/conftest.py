"""Shared fixtures: an initialised CA directory, an in-process runtime, a real server process."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from revocation.cli import main as pca_main
from revocation.clock import FakeClock
from revocation.config import Config, load_config
from revocation.runtime import Runtime, open_runtime


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def init_ca(directory: Path, *extra: str) -> Path:
    """Run ``pca init`` into ``directory`` on free ports; returns the config path."""
    public, admin = free_port(), free_port()
    pca_main(
        [
            "init",
            "--dir",
            str(directory),
            "--public-url",
            f"http://127.0.0.1:{public}",
            "--admin-listen",
            f"127.0.0.1:{admin}",
            *extra,
        ]
    )
    return directory / "pca.toml"


@pytest.fixture
def ca_config(tmp_path: Path) -> Config:
    """A freshly initialised CA (root, issuing CA, OCSP signer, admin token)."""
    return load_config(init_ca(tmp_path / "ca"))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def runtime(ca_config: Config) -> AsyncIterator[Runtime]:
    """The embedded runtime on the initialised CA's database, with the system clock."""
    from revocation.clock import SystemClock

    rt = open_runtime(ca_config, SystemClock())
    try:
        yield rt
    finally:
        rt.close()


class ServerProcess:
    """``pca serve`` as a real process on free ports."""

    def __init__(self, config_path: Path) -> None:
        self.config_path = config_path
        self.config = load_config(config_path)
        self.public_url = self.config.public_url
        self.admin_url = self.config.admin_url
        self.token = self.config.token_file.read_text().strip()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = config_path.parent / "serve.log"

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "revocation.cli", "serve", "--config", str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"pca serve exited with {self.proc.returncode}:\n{self.log_path.read_text()}")
            with contextlib.suppress(httpx.HTTPError):
                ok_admin = httpx.get(self.admin_url + "/healthz", timeout=1).status_code == 200
                ok_public = httpx.get(self.public_url + "/crl/issuing-ca.crl", timeout=1).status_code == 200
                if ok_admin and ok_public:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"pca serve did not become ready:\n{self.log_path.read_text()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def admin(self) -> httpx.Client:
        return httpx.Client(base_url=self.admin_url, headers={"authorization": f"Bearer {self.token}"}, timeout=30)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    srv = ServerProcess(init_ca(tmp_path / "ca"))
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()
