"""``pca crl-sync --metrics-listen`` is bounded like every other listener of pca.

A real agent process, attacked with raw sockets as an unauthenticated client would: oversized
heads, slowloris heads, short bodies, idle connections, more connections than the cap. Its
``[limits]`` (in the agent's --config file) are short here to keep the tests quick; the margins
are generous for a loaded machine.
"""

from __future__ import annotations

import gzip
import http.client
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.crlsync import AgentProcess, ControlledServer, SigningCA, controlled_server, running_agent
from tests.support.raw_http import connect, long_heads, rss_kb, send_big_head, slowloris, status_of, until_closed

FAST = "[limits]\nheader_timeout_seconds = 1\nbody_timeout_seconds = 1\nidle_timeout_seconds = 1\n"
MARGIN = 6.0


@pytest.fixture(scope="module")
def ca() -> SigningCA:
    return SigningCA.make()


@pytest.fixture(scope="module")
def crl_server() -> Iterator[ControlledServer]:
    with controlled_server() as srv:
        yield srv


@pytest.fixture(scope="module")
def agent(
    tmp_path_factory: pytest.TempPathFactory, crl_server: ControlledServer, ca: SigningCA
) -> Iterator[AgentProcess]:
    with running_agent(tmp_path_factory.mktemp("agent"), crl_server, ca, FAST) as running:
        yield running


def metrics_lines(agent: AgentProcess, pattern: str) -> list[str]:
    return [line for line in agent.log().splitlines() if re.search(pattern, line)]


def test_ordinary_scrapes_work(agent: AgentProcess) -> None:
    host, port = agent.metrics_address
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        for _ in range(3):  # one keep-alive connection, several scrapes
            conn.request("GET", "/metrics", headers={"Accept-Encoding": "gzip"})
            resp = conn.getresponse()
            body = resp.read()
            assert resp.status == 200
            text = gzip.decompress(body).decode() if resp.getheader("content-encoding") == "gzip" else body.decode()
            assert "crl_sync_installs_total 1.0" in text
            assert "crl_sync_crl_number{" in text
    finally:
        conn.close()
    scrape = httpx.get(agent.metrics_url, timeout=10)
    assert scrape.status_code == 200 and scrape.headers["content-type"].startswith("text/plain")


def test_an_oversized_header_gets_431_and_costs_no_memory(agent: AgentProcess) -> None:
    before = rss_kb({agent.proc.pid})
    answers = [send_big_head(agent.metrics_address, 16 << 20, "/metrics") for _ in range(4)]
    assert [status_of(a) for a in answers] == [431] * 4, answers
    # 8 clients send 5 MB of head each, in lines of 60 KB, and hold their connections open.
    held = long_heads(agent.metrics_address, 8, 5 << 20, "/metrics")
    try:
        grown_kb = rss_kb({agent.proc.pid}) - before
        answers = [until_closed(sock, limit=MARGIN)[0] for sock in held]
    finally:
        for sock in held:
            sock.close()
    assert grown_kb < 16 * 1024, f"RSS grew by {grown_kb} kB with 4 heads of 16 MB sent and 8 of 5 MB held"
    assert [status_of(a) for a in answers] == [431] * 8, answers
    assert httpx.get(agent.metrics_url, timeout=10).status_code == 200


def test_a_header_line_over_8_kb_or_a_head_over_32_kb_gets_431(agent: AgentProcess) -> None:
    with connect(agent.metrics_address) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: pca\r\nX-Long: " + b"c" * 9000 + b"\r\n\r\n")
        assert status_of(until_closed(sock)[0]) == 431
    lines = b"".join(b"X-Filler-%d: %s\r\n" % (i, b"b" * 4000) for i in range(12))  # 48 KB > 32 KB
    with connect(agent.metrics_address) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: pca\r\n" + lines + b"\r\n")
        assert status_of(until_closed(sock)[0]) == 431
    fair = {f"x-filler-{i}": "b" * 4000 for i in range(3)}  # 12 KB: within the limits
    assert httpx.get(agent.metrics_url, headers=fair, timeout=10).status_code == 200


def test_slowloris_heads_are_cut_off_within_the_header_timeout(agent: AgentProcess) -> None:
    """20 clients trickle one header line every 0.2 s, never ending the head; the header timeout is 1 s."""
    result = slowloris(agent.metrics_address, 20, 1 + MARGIN, "/metrics")
    assert result.open == 0, f"{result.open} slowloris connections still open after {result.took:.1f} s"
    assert result.statuses == {408}


def test_a_short_body_and_an_idle_connection_are_cut_off(agent: AgentProcess) -> None:
    with connect(agent.metrics_address) as sock:
        sock.sendall(b"POST /metrics HTTP/1.1\r\nHost: pca\r\nContent-Length: 10\r\n\r\nabc")
        answer, took = until_closed(sock)
    # /metrics answers without reading a body; the connection is closed once the body is late all the same.
    assert status_of(answer) in (200, 408) and took < 1 + MARGIN, answer
    with connect(agent.metrics_address) as fresh:
        answer, took = until_closed(fresh)
    assert answer == b"" and took < 1 + MARGIN


def test_a_query_string_that_is_not_utf8_gets_400(agent: AgentProcess) -> None:
    with connect(agent.metrics_address) as sock:
        sock.sendall(b"GET /metrics?name[]=%ff\xff HTTP/1.1\r\nHost: pca\r\nConnection: close\r\n\r\n")
        answer, _ = until_closed(sock)
    assert status_of(answer) in (400,), answer
    assert not metrics_lines(agent, r"Traceback|Exception in ASGI application")


def test_connections_over_the_cap_are_refused_while_metrics_still_answers(
    tmp_path: Path, crl_server: ControlledServer, ca: SigningCA
) -> None:
    config = "[limits]\nconnections = 8\nidle_timeout_seconds = 60\nheader_timeout_seconds = 60\n"
    with running_agent(tmp_path, crl_server, ca, config) as agent:
        host, port = agent.metrics_address
        keep = http.client.HTTPConnection(host, port, timeout=10)
        keep.request("GET", "/metrics")
        assert keep.getresponse().read()
        idle = [connect((host, port)) for _ in range(7)]  # 8 open: the cap
        time.sleep(0.5)
        over = [connect((host, port)) for _ in range(30)]
        try:
            for sock in over:
                answer, took = until_closed(sock, limit=MARGIN)
                assert status_of(answer) in (503, None) and took < MARGIN, answer
            keep.request("GET", "/metrics")  # the open connection is still served
            resp = keep.getresponse()
            assert resp.status == 200 and b"crl_sync_installs_total" in resp.read()
        finally:
            keep.close()
            for sock in idle + over:
                sock.close()
        time.sleep(0.5)  # room again once the idle ones are gone
        assert httpx.get(agent.metrics_url, timeout=10).status_code == 200
        # 30 refusals, one log line (the summary comes after a minute).
        assert len(metrics_lines(agent, r"metrics listener: refusing connections over the cap")) == 1


def test_bad_limits_are_a_usage_error(tmp_path: Path) -> None:
    common = ["--url", "http://127.0.0.1:1/x.crl", "--ca-bundle", "b.pem", "--out", str(tmp_path / "o.pem")]
    for table, words in (
        ("header_timeout_seconds = 0", "limits.header_timeout_seconds must be above 0 and at most 60"),
        ("connections = -1", "limits.connections must be 0 (from the open-files limit) or more"),
        ("admin_connections = 5", "the metrics listener's cap is limits.connections"),
        ("max_everything = 1", "unknown keys in [limits]: max_everything"),
    ):
        (tmp_path / "c.toml").write_text(f"[limits]\n{table}\n")
        done = subprocess.run(
            [sys.executable, "-m", "pca.cli", "crl-sync", "--config", str(tmp_path / "c.toml"), *common, "--once"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 2 and words in done.stderr, done.stderr
        assert "Traceback" not in done.stderr


def test_a_port_in_use_exits_1_naming_the_flag(tmp_path: Path, crl_server: ControlledServer, ca: SigningCA) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        url = crl_server.url("/crl/issuing-ca.crl")
        done = subprocess.run(
            [
                sys.executable, "-m", "pca.cli", "crl-sync", "--url", url,
                "--ca-bundle", str(ca.bundle(tmp_path / "chain.pem")), "--out", str(tmp_path / "crl.pem"),
                "--metrics-listen", f"127.0.0.1:{port}",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )  # fmt: skip
    assert done.returncode == 1, done.stderr
    errors = [line for line in done.stderr.splitlines() if "error" in line]
    assert errors == [
        f"pca crl-sync: error: cannot listen on 127.0.0.1:{port} (--metrics-listen): address already in use"
    ]
