"""Shared fixtures: an initialised CA directory, an in-process runtime, a real server process.

The throwaway PostgreSQL cluster lives in ``loadtests.pgcluster`` (the load tests use it too);
``PostgresCluster`` and ``postgres_cluster`` are re-exported here for the tests.
"""

from __future__ import annotations

import contextlib
import json
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

from loadtests.pgcluster import PostgresCluster, postgres_cluster
from pca.cli import main as pca_main
from pca.config import Config, load_config
from pca.runtime import Runtime, open_runtime
from revocation.clock import FakeClock

__all__ = ["PostgresCluster", "postgres_cluster"]


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
                [sys.executable, "-m", "pca.cli", "serve", "--config", str(self.config_path)],
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
        stop_process(self.proc)
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


class S3Server:
    """A real S3-speaking server (moto in server mode) on a free port; aioboto3 talks HTTP to it."""

    region = "us-east-1"

    def __init__(self, port: int) -> None:
        self.port = port
        self.endpoint_url = f"http://127.0.0.1:{port}"
        self._buckets = 0

    def new_bucket(self) -> str:
        """A fresh, empty bucket (one per test keeps tests apart on the shared server).

        Its policy lets anyone read objects, as a bucket behind a CDN lets the CDN read them.
        """
        self._buckets += 1
        name = f"crl-test-{self._buckets}"
        # moto does not check signatures, so plain HTTP is enough to set the bucket up.
        httpx.put(f"{self.endpoint_url}/{name}", timeout=10).raise_for_status()
        policy = {
            "Version": "2012-10-17",
            "Statement": [
                {"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject", "Resource": f"arn:aws:s3:::{name}/*"}
            ],
        }
        httpx.put(f"{self.endpoint_url}/{name}?policy", content=json.dumps(policy), timeout=10).raise_for_status()
        return name


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    port = free_port()
    log_path = tmp_path_factory.mktemp("moto") / "moto.log"
    env = pytest.MonkeyPatch()
    # The standard AWS credential chain finds these (moto accepts any); nothing from ~/.aws leaks in.
    env.setenv("AWS_ACCESS_KEY_ID", "testing")
    env.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    env.setenv("AWS_DEFAULT_REGION", S3Server.region)
    env.setenv("AWS_CONFIG_FILE", str(log_path.with_name("no-aws-config")))
    env.setenv("AWS_SHARED_CREDENTIALS_FILE", str(log_path.with_name("no-aws-credentials")))
    env.delenv("AWS_PROFILE", raising=False)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"moto server exited with {proc.returncode}:\n{log_path.read_text()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/moto-api/", timeout=1).status_code < 500:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"moto server did not start:\n{log_path.read_text()}")
            time.sleep(0.1)
        yield S3Server(port)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        env.undo()


@pytest.fixture(scope="session")
def postgres_dsn() -> Iterator[str]:
    """A throwaway PostgreSQL cluster for the session; yields a DSN to its ``postgres`` database."""
    with postgres_cluster() as cluster:
        yield cluster.dsn


async def create_database(server_dsn: str) -> str:
    """Create a fresh, empty database ``t_<random>`` on the cluster at ``server_dsn``; returns its DSN."""
    import secrets

    import asyncpg

    name = f"t_{secrets.token_hex(6)}"
    admin = await asyncpg.connect(server_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return server_dsn.rsplit("/", 1)[0] + "/" + name


async def drop_database(server_dsn: str, dsn: str) -> None:
    import asyncpg

    name = dsn.rsplit("/", 1)[1]
    admin = await asyncpg.connect(server_dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
async def postgres_database(postgres_dsn: str) -> AsyncIterator[str]:
    """A fresh, empty database on the throwaway cluster for one test; yields its DSN."""
    dsn = await create_database(postgres_dsn)
    try:
        yield dsn
    finally:
        await drop_database(postgres_dsn, dsn)
