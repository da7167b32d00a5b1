"""Nobody takes the listeners down without a token: heads, bodies, idle connections and floods are bounded.

Real ``pca serve`` processes in both shapes of the public listener (uvicorn in the process,
granian in worker processes of its own), attacked with raw sockets as an attacker would:
oversized headers, slowloris heads, short bodies, idle connections, more connections than
the listener's cap, and, with a low open-files limit, a flood that must not cost the admin
listener its descriptors.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import http.client
import logging
import re
import resource
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509

from pca.listener_limits import LimitsConfig, connection_budget, parse_limits
from pca.listeners import OVER_CAP, SLOW_BODY, SLOW_HEAD, RefusalLog, quiet_resource_errors
from revocation.errors import ConfigError
from tests.support.processes import ServerProcess, descendants, init_ca
from tests.support.raw_http import connect, send_big_head, slowloris, status_of, until_closed
from tests.support.raw_http import rss_kb as resident_kb
from tests.support.scaled import ocsp_get_url

SHAPES = {"uvicorn": ("--server", "uvicorn"), "granian": ("--server", "granian", "--workers", "2")}
# Short timeouts keep the tests quick; the margins below are generous for a loaded machine.
FAST = {"header_timeout_seconds": 1, "body_timeout_seconds": 1, "idle_timeout_seconds": 1}
MARGIN = 6.0


# --- set-up ---------------------------------------------------------------------------------


def set_limits(config_path: Path, **values: int) -> None:
    """Rewrite keys of the ``[limits]`` table that ``pca init`` wrote."""
    text = config_path.read_text()
    for key, value in values.items():
        text, n = re.subn(rf"(?m)^{key} = \S+", f"{key} = {value}", text)
        assert n == 1, key
    config_path.write_text(text)


@contextlib.contextmanager
def serving(
    directory: Path, shape: str, preexec_fn: Callable[[], None] | None = None, **limits: int
) -> Iterator[ServerProcess]:
    config_path = init_ca(directory)
    set_limits(config_path, **limits)
    srv = ServerProcess(config_path, *SHAPES[shape], preexec_fn=preexec_fn)
    srv.start()
    try:
        yield srv
    except BaseException:
        print(srv.log_path.read_text()[-6000:])
        raise
    finally:
        srv.stop()


@pytest.fixture(scope="module", params=sorted(SHAPES))
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with serving(tmp_path_factory.mktemp(request.param), request.param, **FAST) as srv:
        yield srv


def issued(srv: ServerProcess) -> tuple[x509.Certificate, x509.Certificate]:
    """A certificate issued through the admin API, and its issuer."""
    with srv.admin() as admin:
        resp = admin.post("/v1/certificates", json={"subject": "CN=limits", "dns": ["limits.internal"]})
    assert resp.status_code == 201, resp.text
    issuer = x509.load_pem_x509_certificate((srv.config_path.parent / "issuing-ca.pem").read_bytes())
    return x509.load_pem_x509_certificate(resp.json()["certificate"].encode()), issuer


def ocsp_path(srv: ServerProcess, cert: x509.Certificate, issuer: x509.Certificate) -> str:
    return ocsp_get_url("/ocsp", cert, issuer)


def public_address(srv: ServerProcess) -> tuple[str, int]:
    return srv.config.public_listen


def rss_kb(srv: ServerProcess) -> int:
    """Resident memory of the processes that serve the public port (``pca serve`` and its children)."""
    assert srv.proc is not None
    return resident_kb({srv.proc.pid, *descendants(srv.proc.pid)})


def log_lines(srv: ServerProcess, pattern: str) -> list[str]:
    return [line for line in srv.log_path.read_text().splitlines() if re.search(pattern, line)]


# --- heads ----------------------------------------------------------------------------------


def test_an_oversized_header_gets_431_and_costs_no_memory(server: ServerProcess) -> None:
    address = public_address(server)
    before = rss_kb(server)
    answers: list[bytes] = []
    attackers = [threading.Thread(target=lambda: answers.append(send_big_head(address, 16 << 20))) for _ in range(8)]
    for thread in attackers:
        thread.start()
    for thread in attackers:
        thread.join()
    assert [status_of(a) for a in answers] == [431] * 8, answers
    grown_kb = rss_kb(server) - before
    assert grown_kb < 16 * 1024, f"RSS grew by {grown_kb} kB after 8 heads of 16 MB"
    # And the listener still answers.
    assert httpx.get(server.public_url + "/healthz", timeout=10).status_code == 200


def test_too_many_header_lines_get_431_and_a_fair_head_is_served(server: ServerProcess) -> None:
    address = public_address(server)
    lines = b"".join(b"X-Filler-%d: %s\r\n" % (i, b"b" * 4000) for i in range(12))  # 48 KB > 32 KB
    with connect(address) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: pca\r\n" + lines + b"\r\n")
        assert status_of(until_closed(sock)[0]) == 431
    fair = {f"x-filler-{i}": "b" * 4000 for i in range(3)}  # 12 KB: within the limits
    assert httpx.get(server.public_url + "/healthz", headers=fair, timeout=10).status_code == 200


def test_a_header_line_over_8_kb_gets_431_on_uvicorn(server: ServerProcess) -> None:
    if server.args == SHAPES["granian"]:
        pytest.skip("granian bounds the whole head (32 KB), not each line")
    with connect(public_address(server)) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: pca\r\nX-Long: " + b"c" * 9000 + b"\r\n\r\n")
        assert status_of(until_closed(sock)[0]) == 431


# --- timeouts -------------------------------------------------------------------------------


def test_slowloris_heads_are_cut_off_within_the_header_timeout(server: ServerProcess) -> None:
    """20 clients trickle one header line every 0.2 s, never ending the head."""
    result = slowloris(public_address(server), 20, 1 + MARGIN)
    assert result.open == 0, f"{result.open} slowloris connections still open after {result.took:.1f} s"
    if server.args == SHAPES["uvicorn"]:  # uvicorn answers 408; granian closes the connection
        assert result.statuses == {408}


@pytest.mark.parametrize("body", [b"abc", b""], ids=["short", "none"])
def test_a_body_shorter_than_its_content_length_gets_408(server: ServerProcess, body: bytes) -> None:
    with connect(public_address(server)) as sock:
        sock.sendall(
            b"POST /ocsp HTTP/1.1\r\nHost: pca\r\nContent-Type: application/ocsp-request\r\n"
            b"Content-Length: 10\r\n\r\n" + body
        )
        answer, took = until_closed(sock)
    assert status_of(answer) == 408, answer
    assert took < 1 + MARGIN


def test_the_admin_api_cuts_off_a_short_body_quietly(server: ServerProcess) -> None:
    """The admin listener has the same limits; a body cut off there is a 408, not a traceback."""
    with connect(server.config.admin_listen) as sock:
        sock.sendall(
            b"POST /v1/certificates HTTP/1.1\r\nHost: pca\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer " + server.token.encode() + b'\r\nContent-Length: 100\r\n\r\n{"subject"'
        )
        answer, took = until_closed(sock)
    assert status_of(answer) == 408, answer
    assert took < 1 + MARGIN
    assert not log_lines(server, r"Traceback|Exception in ASGI application")


def test_a_trickled_body_is_cut_off_at_the_body_timeout(server: ServerProcess) -> None:
    with connect(public_address(server)) as sock:
        sock.sendall(
            b"POST /ocsp HTTP/1.1\r\nHost: pca\r\nContent-Type: application/ocsp-request\r\nContent-Length: 100\r\n\r\n"
        )
        start = time.monotonic()
        while time.monotonic() - start < 1 + MARGIN:  # a byte every 0.2 s until the server speaks
            if select.select([sock], [], [], 0.2)[0]:
                break
            try:
                sock.sendall(b"x")
            except OSError:
                break
        answer, _ = until_closed(sock)
    assert status_of(answer) == 408, answer
    assert time.monotonic() - start < 1 + MARGIN


def test_idle_connections_are_closed_fresh_and_after_a_response(server: ServerProcess) -> None:
    address = public_address(server)
    with connect(address) as fresh:
        answer, took = until_closed(fresh)
    assert answer == b"" and took < 1 + MARGIN
    with connect(address) as used:
        used.sendall(b"GET /healthz HTTP/1.1\r\nHost: pca\r\n\r\n")
        answer, took = until_closed(used)
    assert status_of(answer) == 200 and took < 1 + MARGIN


def test_ordinary_requests_are_unaffected(server: ServerProcess) -> None:
    cert, issuer = issued(server)
    host, port = public_address(server)
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        for _ in range(3):  # one keep-alive connection, several requests
            conn.request("GET", ocsp_path(server, cert, issuer))
            resp = conn.getresponse()
            assert resp.status == 200 and resp.read()
    finally:
        conn.close()


# --- connection caps ------------------------------------------------------------------------


def test_connections_over_the_cap_are_refused_while_open_ones_are_served(tmp_path: Path) -> None:
    with serving(tmp_path, "uvicorn", public_connections=16, idle_timeout_seconds=60) as srv:
        cert, issuer = issued(srv)
        host, port = public_address(srv)
        keep = http.client.HTTPConnection(host, port, timeout=10)
        keep.request("GET", ocsp_path(srv, cert, issuer))
        assert keep.getresponse().read()
        idle = [connect((host, port)) for _ in range(15)]  # 16 open: the cap
        time.sleep(0.5)
        over = [connect((host, port)) for _ in range(50)]
        try:
            for sock in over:
                answer, took = until_closed(sock, limit=MARGIN)
                assert status_of(answer) in (503, None) and took < MARGIN, answer
            keep.request("GET", ocsp_path(srv, cert, issuer))  # the open connection is still served
            resp = keep.getresponse()
            assert resp.status == 200 and resp.read()
        finally:
            keep.close()
            for sock in idle + over:
                sock.close()
        # Room again once the idle ones are gone.
        time.sleep(0.5)
        assert httpx.get(srv.public_url + "/healthz", timeout=10).status_code == 200
        # 50 refusals, one log line.
        assert len(log_lines(srv, r"refusing connections over the cap")) == 1
        assert not log_lines(srv, r"refused \d+ connections over the cap")  # the summary comes after a minute


def test_granian_holds_connections_over_the_cap_in_the_backlog(tmp_path: Path) -> None:
    """Each granian worker accepts at most ``public_connections``; the rest wait in its backlog, unanswered.

    Every worker has a listening socket of its own (the kernel spreads connections over them),
    so 30 connections over 2 workers of 4 fill both: 7 beside the open keep-alive one are served.
    """
    limits = {"public_connections": 4, "idle_timeout_seconds": 30, "header_timeout_seconds": 30}
    with serving(tmp_path, "granian", **limits) as srv:
        cert, issuer = issued(srv)
        host, port = public_address(srv)
        keep = http.client.HTTPConnection(host, port, timeout=10)
        keep.request("GET", ocsp_path(srv, cert, issuer))
        assert keep.getresponse().read()
        socks = [connect((host, port)) for _ in range(30)]
        try:
            for sock in socks:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: pca\r\n\r\n")
            time.sleep(2)
            served = [sock for sock in socks if select.select([sock], [], [], 0)[0]]
            assert 1 <= len(served) <= 7, f"{len(served)} of 30 served over a cap of 2 x 4"
            keep.request("GET", ocsp_path(srv, cert, issuer))  # the open connection is still served
            resp = keep.getresponse()
            assert resp.status == 200 and resp.read()
            waiting = [sock for sock in socks if sock not in served]
            for sock in served:
                sock.close()
            time.sleep(2)
            assert any(select.select([sock], [], [], 0)[0] for sock in waiting), "none accepted once there was room"
        finally:
            keep.close()
            for sock in socks:
                sock.close()


def _low_descriptor_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (512, 512))


def test_a_flood_on_the_public_port_leaves_the_admin_listener_its_descriptors(tmp_path: Path) -> None:
    """1,100 idle connections used to exhaust 1,024 descriptors and take down OCSP and the admin API."""
    with serving(tmp_path, "uvicorn", preexec_fn=_low_descriptor_limit, idle_timeout_seconds=60) as srv:
        host, port = public_address(srv)
        flood: list[socket.socket] = []
        try:
            for _ in range(600):  # more than the process has descriptors
                with contextlib.suppress(OSError):
                    flood.append(connect((host, port), timeout=3))
            with httpx.Client(timeout=10) as client:
                assert client.get(srv.admin_url + "/healthz").status_code == 200
                with srv.admin() as admin:
                    resp = admin.post("/v1/certificates", json={"subject": "CN=flood", "dns": ["flood.internal"]})
                    assert resp.status_code == 201, resp.text
        finally:
            for sock in flood:
                sock.close()
        time.sleep(0.5)
        assert httpx.get(srv.public_url + "/healthz", timeout=10).status_code == 200
        assert len(log_lines(srv, r"refusing connections over the cap")) == 1
        assert not log_lines(srv, r"Too many open files|out of system resource")


# --- settings -------------------------------------------------------------------------------


def test_limits_are_checked_at_load() -> None:
    assert parse_limits({}) == LimitsConfig()
    assert parse_limits({"idle_timeout_seconds": 2}).idle_timeout_seconds == 2.0
    for bad, words in (
        ({"header_bytes": "big"}, "limits.header_bytes must be int"),
        ({"header_bytes": 4096}, "at least 16384"),
        ({"header_timeout_seconds": 0}, "above 0 and at most 60"),
        ({"body_timeout_seconds": 120}, "at most 60"),
        ({"public_connections": -1}, "0 (from the open-files limit) or more"),
        ({"max_everything": 1}, "unknown keys in [limits]: max_everything"),
    ):
        with pytest.raises(ConfigError, match=re.escape(words)):
            parse_limits(bad)


@pytest.mark.parametrize("descriptors", [256, 512, 1024, 20_000, 1 << 20])
def test_connection_caps_fit_the_open_files_limit(descriptors: int) -> None:
    budget = connection_budget(LimitsConfig(), descriptors)
    charged = (
        budget.public_connections + 2 * budget.public_backlog + budget.admin_connections + 2 * budget.admin_backlog
    )
    assert charged < descriptors - 64
    assert budget.admin_connections >= 16 and budget.public_connections >= 8
    workers = connection_budget(LimitsConfig(), descriptors, admin=False)
    assert workers.admin_connections == 0 and workers.public_connections >= budget.public_connections
    configured = connection_budget(LimitsConfig(public_connections=10**6), descriptors)
    assert configured.public_connections <= descriptors


async def test_refusals_are_logged_once_then_summarised(caplog: pytest.LogCaptureFixture) -> None:
    refusals = RefusalLog("public", interval=0.3)
    with caplog.at_level(logging.WARNING, logger="pca.listeners"):
        for _ in range(500):
            refusals.refused(OVER_CAP, "16 open")
        refusals.refused(SLOW_HEAD)
        assert [r.getMessage() for r in caplog.records] == [
            "public listener: refusing connections over the cap (503) (16 open); "
            "further refusals are summarised every 0.3 s"
        ]
        await asyncio.sleep(0.5)
        assert caplog.records[-1].getMessage() == (
            "public listener: refused 499 connections over the cap (503), "
            "1 request heads not received in time (408) in the last 0.3 s"
        )
        await asyncio.sleep(0.5)  # a quiet window logs nothing
        assert len(caplog.records) == 2
        refusals.refused(SLOW_BODY)  # a new flood is announced again
        assert len(caplog.records) == 3 and "refusing request bodies" in caplog.records[-1].getMessage()


async def test_out_of_descriptors_is_logged_once_a_minute(caplog: pytest.LogCaptureFixture) -> None:
    loop = asyncio.get_running_loop()
    quiet_resource_errors(loop)
    try:
        with caplog.at_level(logging.ERROR, logger="pca.listeners"):
            for _ in range(100):
                error = OSError(errno.EMFILE, "Too many open files")
                loop.call_exception_handler({"message": "socket.accept() out of system resource", "exception": error})
        assert len(caplog.records) == 1
        assert "Too many open files" in caplog.records[0].getMessage()
    finally:
        loop.set_exception_handler(None)
