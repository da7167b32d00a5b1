"""moto in server mode: a real S3- and KMS-speaking server on a free port, talked to over HTTP."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from publishers.s3store import S3Store
from tests.support.ports import free_port


@contextlib.contextmanager
def moto_server(log_path: Path, timeout: float = 60) -> Iterator[int]:
    """Start ``moto.server`` on a free port, logging to ``log_path``; yields the port, stops it on exit."""
    port = free_port()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"moto server exited with {proc.returncode}:\n{log_path.read_text()}")
            with contextlib.suppress(httpx.HTTPError, OSError):
                if httpx.get(f"http://127.0.0.1:{port}/moto-api/", timeout=1).status_code < 500:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"moto server did not start:\n{log_path.read_text()}")
            time.sleep(0.1)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


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


def s3_store(server: S3Server, bucket: str | None = None, **options: object) -> S3Store:
    """An S3Store on ``server`` (a fresh bucket unless given), keys under ``crl/``."""
    return S3Store(
        bucket or server.new_bucket(),
        prefix="crl/",
        endpoint_url=server.endpoint_url,
        region=server.region,
        addressing_style="path",
        **options,  # type: ignore[arg-type]
    )
