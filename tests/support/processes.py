"""An initialised CA directory and ``pca serve`` as a real process."""

from __future__ import annotations

import contextlib
import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from pca.cli import main as pca_main
from pca.config import load_config
from revocation.coordination.holders import this_machine
from tests.support.ports import free_port


def init_ca(directory: Path, *extra: str, tls: bool = False) -> Path:
    """Run ``pca init`` into ``directory`` on free ports; returns the config path.

    The admin API is plain HTTP on loopback unless ``tls`` (the default of ``pca init`` itself)."""
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
            *([] if tls else ["--no-admin-tls"]),
            *extra,
        ]
    )
    return directory / "pca.toml"


def stop_process(proc: subprocess.Popen[bytes] | None, timeout: float = 15) -> None:
    """SIGTERM, then SIGKILL if it has not exited within ``timeout`` seconds."""
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class ServerProcess:
    """``pca serve`` as a real process on free ports."""

    def __init__(self, config_path: Path, *args: str, preexec_fn: Callable[[], None] | None = None) -> None:
        self.config_path = config_path
        self.args = args  # more ``pca serve`` arguments (``--server granian``, say)
        self.preexec_fn = preexec_fn  # run in the child before ``pca serve`` starts (resource limits, say)
        self.config = load_config(config_path)
        self.public_url = self.config.public_url
        self.admin_url = self.config.admin_url
        self.token = self.config.token_file.read_text().strip()
        # The admin API over TLS is verified against the CA bundle pca init wrote (admin.ca_file).
        ca_file = self.config.admin_tls.ca_file
        self.verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=ca_file) if ca_file else True
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = config_path.parent / "serve.log"

    def start(self, *args: str, ready: bool = True, env: dict[str, str] | None = None) -> None:
        """Start ``pca serve`` (with ``args``, e.g. ``--server granian``); unless ``ready`` is False,
        wait until /healthz says ok and CRLs are served."""
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "pca.cli", "serve", "--config", str(self.config_path), *self.args, *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
                preexec_fn=self.preexec_fn,
            )
        if not ready:
            return
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"pca serve exited with {self.proc.returncode}:\n{self.log_path.read_text()}")
            with contextlib.suppress(httpx.HTTPError):
                ok_admin = httpx.get(self.admin_url + "/healthz", timeout=1, verify=self.verify).status_code == 200
                ok_public = httpx.get(self.public_url + "/crl/issuing-ca.crl", timeout=1).status_code == 200
                if ok_admin and ok_public:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"pca serve did not become ready:\n{self.log_path.read_text()}")

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None

    def admin(self) -> httpx.Client:
        headers = {"authorization": f"Bearer {self.token}"}
        return httpx.Client(base_url=self.admin_url, headers=headers, timeout=30, verify=self.verify)


def descendants(pid: int) -> set[int]:
    """The processes below ``pid`` (granian and its workers below ``pca serve``), from /proc."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    below: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {p for p, parent in parents.items() if parent in frontier} - below
        below |= frontier
    return below


def living(pids: set[int]) -> set[int]:
    """Those of ``pids`` still running (a zombie waiting for its parent to reap it is not)."""
    out = set()
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        if stat.rsplit(")", 1)[1].split()[0] != "Z":
            out.add(pid)
    return out


@contextlib.contextmanager
def running_server(directory: Path, *, tls: bool = False) -> Iterator[ServerProcess]:
    """``pca init`` into ``directory``, then ``pca serve`` it until the block ends."""
    srv = ServerProcess(init_ca(directory, tls=tls))
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


# Tests of telling a dead process of this machine from a live one (``revocation.coordination.holders``).
linux_proc = pytest.mark.skipif(this_machine() is None, reason="needs /proc to tell a process's start time")


@contextlib.contextmanager
def other_process() -> Iterator[subprocess.Popen[bytes]]:
    """A real process of this machine that the test can kill (it sleeps until then)."""
    proc = subprocess.Popen(["sleep", "600"])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()
