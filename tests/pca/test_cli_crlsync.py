"""``pca crl-sync`` as a command: usage errors, the --config file, exit statuses, metrics, SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from pca.cli import build_parser
from pca.cli.crlsync import settings_from_args
from publishers.crlsync.settings import UsageError
from tests.support.crlsync import ControlledServer, Reply, SigningCA, controlled_server
from tests.support.ports import free_port

FULL = "/crl/issuing-ca.crl"
ENV = {k: v for k, v in os.environ.items() if k != "PCA_TOKEN"}


def crl_sync(*args: object, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pca.cli", "crl-sync", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env or ENV,
        check=False,
    )


@pytest.fixture
def server() -> Iterator[ControlledServer]:
    with controlled_server() as srv:
        yield srv


@pytest.fixture(scope="module")
def ca() -> SigningCA:
    return SigningCA.make()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--ca-bundle", "b.pem", "--out", "o.pem"], "give at least one --url"),
        (["--url", "http://a/x.crl", "--out", "o.pem"], "--ca-bundle is required"),
        (
            [
                "--url",
                "http://a/x.crl",
                "--url",
                "http://a/y.crl",
                "--ca-bundle",
                "b.pem",
                "--out",
                "o",
                "--format",
                "der",
            ],
            "--format der writes a single CRL: give exactly one --url (got 2)",
        ),
        (["--url", "ftp://a/x.crl", "--ca-bundle", "b.pem", "--out", "o"], "is not an http:// or https:// URL"),
        (
            ["--url", "http://a/x.crl", "--ca-bundle", "b.pem", "--out", "o", "--report-to", "http://127.0.0.1:1"],
            "--report-to needs a token",
        ),
        (["--url", "http://a/x.crl", "--ca-bundle", "b.pem", "--out", "o", "--interval", "0"], "must be positive"),
    ],
)
def test_usage_errors_exit_2(args: list[str], message: str) -> None:
    done = crl_sync(*args, "--once")
    assert done.returncode == 2, done.stderr
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_flags_override_the_config_file(tmp_path: Path) -> None:
    config = tmp_path / "crl-sync.toml"
    config.write_text(
        'urls = ["http://ca.internal/crl/root-ca.crl", "http://ca.internal/crl/issuing-ca.crl"]\n'
        'ca_bundle = "chain.pem"\n'
        'out = "crl-bundle.pem"\n'
        "interval = 30\n"
        'on_change = "nginx -s reload"\n'
        'agent_id = "web-1"\n'
        'report_to = "http://127.0.0.1:8081"\n'
        'token_file = "agent.token"\n'
    )
    (tmp_path / "agent.token").write_text("tok\n")
    args = build_parser().parse_args(["crl-sync", "--config", str(config), "--interval", "7", "--agent-id", "web-2"])
    settings = settings_from_args(args)
    assert settings.urls == ("http://ca.internal/crl/root-ca.crl", "http://ca.internal/crl/issuing-ca.crl")
    assert (settings.ca_bundle, settings.out) == (tmp_path / "chain.pem", tmp_path / "crl-bundle.pem")
    assert settings.state_path == tmp_path / "crl-bundle.pem.state.json"
    assert (settings.interval, settings.agent_id, settings.on_change) == (7.0, "web-2", "nginx -s reload")
    assert settings.token == "tok" and "tok" not in repr(settings)

    args = build_parser().parse_args(["crl-sync", "--config", str(config), "--url", "http://other/x.crl"])
    assert settings_from_args(args).urls == ("http://other/x.crl",)

    config.write_text('urls = ["http://a/x.crl"]\nca_bundle = "b"\nout = "o"\nintervall = 3\n')
    with pytest.raises(UsageError, match="unknown setting 'intervall'"):
        settings_from_args(build_parser().parse_args(["crl-sync", "--config", str(config)]))


def test_once_exits_1_on_a_refused_crl_and_0_when_installed_or_unchanged(
    tmp_path: Path, server: ControlledServer, ca: SigningCA
) -> None:
    url = server.url(FULL)
    bundle, out = ca.bundle(tmp_path / "chain.pem"), tmp_path / "crl.pem"
    common = ["--once", "--url", url, "--ca-bundle", bundle, "--out", out]
    server.routes[FULL] = Reply(b"oops", status=500, content_type="text/plain")

    done = crl_sync(*common)
    assert done.returncode == 1, done.stderr
    assert f"refused {url}: http-status: HTTP 500" in done.stderr
    assert not out.exists()

    server.routes[FULL] = Reply(ca.crl(10, idp=url))
    done = crl_sync(*common)
    assert done.returncode == 0, done.stderr
    assert out.read_bytes().startswith(b"-----BEGIN X509 CRL-----")

    assert crl_sync(*common).returncode == 0  # unchanged


def test_the_agent_serves_metrics_and_stops_cleanly_on_sigterm(
    tmp_path: Path, server: ControlledServer, ca: SigningCA
) -> None:
    url = server.url(FULL)
    server.routes[FULL] = Reply(ca.crl(10, idp=url))
    out, port = tmp_path / "crl.pem", free_port()
    log = tmp_path / "agent.log"
    with open(log, "wb") as sink:
        bundle = str(ca.bundle(tmp_path / "c.pem"))
        argv = ["crl-sync", "--url", url, "--ca-bundle", bundle, "--out", str(out), "--interval", "0.2"]
        proc = subprocess.Popen(
            [sys.executable, "-m", "pca.cli", *argv, "--metrics-listen", f"127.0.0.1:{port}"],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=ENV,
        )
    try:
        text = ""
        deadline = time.monotonic() + 30
        while "crl_sync_installs_total 1.0" not in text and time.monotonic() < deadline:
            try:
                text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        assert "crl_sync_installs_total 1.0" in text, log.read_text()
        assert f'crl_sync_crl_number{{url="{url}"}} 10.0' in text
        assert f'crl_sync_fetches_total{{result="updated",url="{url}"}} 1.0' in text
        assert out.exists()
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
    assert code == 0, log.read_text()
    assert "Traceback" not in log.read_text()
