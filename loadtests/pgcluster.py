"""A throwaway PostgreSQL cluster for the tests and the load tests.

``initdb`` into a temporary directory, run as ``postgres`` (the machine runs as root), on a
free loopback port with trust authentication and ``fsync=off``. Fails, never skips, when
PostgreSQL is not installed: CI installs it.
"""

from __future__ import annotations

import contextlib
import glob
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path


class PostgresError(RuntimeError):
    """PostgreSQL is missing, or one of its commands failed."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresCluster:
    """A cluster in a temporary directory; ``dsn`` names its ``postgres`` database."""

    def __init__(self) -> None:
        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        if not bins:
            raise PostgresError(
                "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb): apt-get install postgresql"
            )
        self.bindir = Path(bins[-1]).parent
        self.base = Path(tempfile.mkdtemp(prefix="pca-pg-"))
        shutil.chown(self.base, "postgres", "postgres")
        self.data = self.base / "data"
        self.log_path = self.base / "postgres.log"
        self.port = _free_port()
        self.dsn = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _as_postgres(self, *args: str) -> None:
        result = subprocess.run(["runuser", "-u", "postgres", "--", *args], capture_output=True, text=True)
        if result.returncode != 0:
            log = self.log_path.read_text() if self.log_path.exists() else ""
            raise PostgresError(f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}\n{log}")

    def init(self) -> None:
        initdb = str(self.bindir / "initdb")
        self._as_postgres(initdb, "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8")

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        pg_ctl = str(self.bindir / "pg_ctl")
        self._as_postgres(pg_ctl, "-D", str(self.data), "-l", str(self.log_path), "-w", "-t", "60", "-o", opts, "start")

    def stop(self) -> None:
        self._as_postgres(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def remove(self) -> None:
        shutil.rmtree(self.base, ignore_errors=True)


@contextlib.contextmanager
def postgres_cluster() -> Iterator[PostgresCluster]:
    """A started cluster, stopped and removed on the way out."""
    cluster = PostgresCluster()
    try:
        cluster.init()
        cluster.start()
        try:
            yield cluster
        finally:
            with contextlib.suppress(BaseException):
                cluster.stop()
    finally:
        cluster.remove()
