"""Shared fixtures: an initialised CA directory, an in-process runtime, a real server process,
a moto S3 server and a throwaway PostgreSQL cluster.

The helpers behind them live in ``tests.support`` (tests import them from there).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from pca.config import Config, load_config
from pca.runtime import Runtime, open_runtime
from pca.serve import build_authority
from revocation.authority import Authority
from revocation.clock import FakeClock
from tests.support.ca import now_utc
from tests.support.moto import S3Server, moto_server
from tests.support.postgres import create_database, drop_database, postgres_cluster
from tests.support.processes import ServerProcess, init_ca, running_server


@pytest.fixture
def ca_config(tmp_path: Path) -> Config:
    """A freshly initialised CA (root, issuing CA, OCSP signer, admin token)."""
    return load_config(init_ca(tmp_path / "ca"))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def fake_clock() -> FakeClock:
    """A FakeClock at the real time on a whole second: the CA certificates were made with the real time."""
    return FakeClock(now_utc())


@pytest.fixture
async def rt(ca_config: Config, fake_clock: FakeClock) -> AsyncIterator[Runtime]:
    """The embedded runtime on the initialised CA's database, on ``fake_clock``."""
    runtime = open_runtime(ca_config, fake_clock)
    try:
        yield runtime
    finally:
        runtime.close()


@pytest.fixture
def authority(rt: Runtime) -> Authority:
    """The CA's authority on ``rt`` (as ``pca serve`` builds it)."""
    return build_authority(rt)


@pytest.fixture
async def runtime(ca_config: Config) -> AsyncIterator[Runtime]:
    """The embedded runtime on the initialised CA's database, with the system clock."""
    from revocation.clock import SystemClock

    rt = open_runtime(ca_config, SystemClock())
    try:
        yield rt
    finally:
        rt.close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    with running_server(tmp_path / "ca") as srv:
        yield srv


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    log_path = tmp_path_factory.mktemp("moto") / "moto.log"
    env = pytest.MonkeyPatch()
    # The standard AWS credential chain finds these (moto accepts any); nothing from ~/.aws leaks in.
    env.setenv("AWS_ACCESS_KEY_ID", "testing")
    env.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    env.setenv("AWS_DEFAULT_REGION", S3Server.region)
    env.setenv("AWS_CONFIG_FILE", str(log_path.with_name("no-aws-config")))
    env.setenv("AWS_SHARED_CREDENTIALS_FILE", str(log_path.with_name("no-aws-credentials")))
    env.delenv("AWS_PROFILE", raising=False)
    try:
        with moto_server(log_path) as port:
            yield S3Server(port)
    finally:
        env.undo()


@pytest.fixture(scope="session")
def postgres_dsn() -> Iterator[str]:
    """A throwaway PostgreSQL cluster for the session; yields a DSN to its ``postgres`` database."""
    with postgres_cluster() as cluster:
        yield cluster.dsn


@pytest.fixture
async def postgres_database(postgres_dsn: str) -> AsyncIterator[str]:
    """A fresh, empty database on the throwaway cluster for one test; yields its DSN."""
    dsn = await create_database(postgres_dsn)
    try:
        yield dsn
    finally:
        await drop_database(postgres_dsn, dsn)
