"""``publishers.crlsync``: one agent pass at a time against a CRL server the test controls.

The CRLs are real (signed by an in-process CA with ``build_crl``), the HTTP is real (a threaded
server on loopback), the files are real; the test sets what the server answers, including
hostile answers: truncated bodies, CRLs of another CA, lower numbers, expired CRLs, errors,
garbage, oversized bodies and a server that never answers.
"""

from __future__ import annotations

import datetime
import logging
import stat
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from prometheus_client import CollectorRegistry

from publishers.crlsync.agent import RELOG_SECONDS, Agent
from publishers.crlsync.install import read_bundle
from publishers.crlsync.metrics import SyncMetrics
from publishers.crlsync.settings import SyncSettings
from revocation.clock import FakeClock
from tests.support.crlsync import ControlledServer, Reply, SigningCA, controlled_server, now, tls_server_context
from tests.support.ports import free_port

FULL = "/crl/issuing-ca.crl"
DELTA = "/crl/issuing-ca-delta.crl"
ROOT = "/crl/root-ca.crl"


@pytest.fixture(scope="module")
def ours() -> SigningCA:
    return SigningCA.make()


@pytest.fixture
def server() -> Iterator[ControlledServer]:
    with controlled_server() as srv:
        yield srv


class Harness:
    """Agents over one output file, as restarts of the same ``pca crl-sync`` would be."""

    def __init__(self, tmp_path: Path, server: ControlledServer, ca: SigningCA, ca_bundle: Path) -> None:
        self.tmp = tmp_path
        self.server = server
        self.ca = ca
        self.ca_bundle = ca_bundle
        self.out = tmp_path / "crl-bundle.pem"
        self.changes = tmp_path / "changes"
        self.registry = CollectorRegistry()
        self.agents: list[Agent] = []
        self.clock: FakeClock | None = None  # None: the agents read the system's clock

    def settings(self, *paths: str, **overrides: Any) -> SyncSettings:
        values: dict[str, Any] = {
            "urls": tuple(self.server.url(p) for p in paths),
            "ca_bundle": self.ca_bundle,
            "out": self.out,
            "on_change": f"echo changed >> {self.changes}",
            "timeout": 2.0,
            "agent_id": "rp-1",
        }
        values.update(overrides)
        return SyncSettings(**values)

    def agent(self, *paths: str, **overrides: Any) -> Agent:
        self.registry = CollectorRegistry()
        agent = Agent(self.settings(*paths, **overrides), SyncMetrics(self.registry), clock=self.clock)
        self.agents.append(agent)
        return agent

    def serve(self, path: str, der: bytes, **kw: Any) -> bytes:
        self.server.routes[path] = Reply(der, **kw)
        return der

    def on_change_runs(self) -> int:
        return len(self.changes.read_text().splitlines()) if self.changes.exists() else 0

    def installed(self) -> list[x509.CertificateRevocationList]:
        return read_bundle(self.out)

    def numbers(self) -> list[int]:
        return [c.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number for c in self.installed()]

    def metric(self, name: str, **labels: str) -> float | None:
        return self.registry.get_sample_value(name, labels)


@pytest.fixture
async def h(tmp_path: Path, server: ControlledServer, ours: SigningCA) -> AsyncIterator[Harness]:
    harness = Harness(tmp_path, server, ours, ours.bundle(tmp_path / "ca-bundle.pem"))
    try:
        yield harness
    finally:
        for agent in harness.agents:
            await agent.aclose()


async def test_installs_a_verified_crl_atomically_and_then_asks_conditionally(h: Harness) -> None:
    der = h.serve(FULL, h.ca.crl(10, idp=h.server.url(FULL), serials=[0x1234]), etag='"v10"')
    agent = h.agent(FULL)

    first = await agent.run_pass()

    assert (first.refused, first.changed) == (0, True)
    [crl] = h.installed()
    assert crl.get_revoked_certificate_by_serial_number(0x1234) is not None
    assert stat.S_IMODE(h.out.stat().st_mode) == 0o644
    assert h.on_change_runs() == 1
    assert h.metric("crl_sync_installs_total") == 1
    assert h.metric("crl_sync_crl_number", url=h.server.url(FULL)) == 10
    state = h.out.with_name("crl-bundle.pem.state.json")
    assert '"number": 10' in state.read_text()
    assert stat.S_IMODE(state.stat().st_mode) == 0o600
    assert [p.name for p in h.tmp.iterdir() if p.name.startswith(".")] == []  # no temporary file left

    second = await agent.run_pass()

    assert (second.refused, second.changed) == (0, False)
    assert h.server.requests(FULL)[-1].headers["if-none-match"] == '"v10"'
    assert h.metric("crl_sync_fetches_total", url=h.server.url(FULL), result="not_modified") == 1
    assert h.on_change_runs() == 1
    assert h.out.read_bytes().count(b"BEGIN X509 CRL") == 1
    assert read_bundle(h.out)[0].public_bytes(serialization.Encoding.DER) == der


async def test_on_change_runs_exactly_when_the_bytes_change(h: Harness) -> None:
    url = h.server.url(FULL)
    h.serve(FULL, h.ca.crl(10, idp=url))
    agent = h.agent(FULL)
    await agent.run_pass()
    assert h.on_change_runs() == 1

    await agent.run_pass()  # the same CRL again (no validators: a 200 with the same bytes)
    assert h.on_change_runs() == 1
    assert h.metric("crl_sync_fetches_total", url=url, result="unchanged") == 1

    h.serve(FULL, h.ca.crl(11, idp=url))
    assert (await agent.run_pass()).changed
    assert h.on_change_runs() == 2
    assert h.numbers() == [11]

    h.serve(FULL, h.ca.crl(9, idp=url))  # refused: no install, no --on-change
    result = await agent.run_pass()
    assert (result.refused, result.changed) == (1, False)
    assert h.on_change_runs() == 2
    assert h.metric("crl_sync_on_change_runs_total", result="ok") == 2
    assert h.metric("crl_sync_fetches_total", url=url, result="refused") == 1


def _other_ca_same_name() -> bytes:
    return SigningCA.make("PCA Issuing CA").crl(20)


def _other_ca() -> bytes:
    return SigningCA.make("Some Other CA").crl(20)


HOSTILE: dict[str, tuple[str, Any]] = {
    "server error": ("http-status", lambda ca, url: Reply(b"oops", status=500, content_type="text/plain")),
    "truncated download": ("truncated", lambda ca, url: Reply(ca.crl(20, idp=url), truncate_at=40)),
    "CRL of another CA with the same name": ("bad-signature", lambda ca, url: Reply(_other_ca_same_name())),
    "CRL of a CA not in the bundle": ("untrusted-issuer", lambda ca, url: Reply(_other_ca())),
    "lower number": ("number-regressed", lambda ca, url: Reply(ca.crl(9, idp=url))),
    "same number, other content": ("number-reused", lambda ca, url: Reply(ca.crl(10, idp=url, serials=[7]))),
    "past nextUpdate": (
        "expired",
        lambda ca, url: Reply(
            ca.crl(
                20,
                idp=url,
                this_update=now() - datetime.timedelta(days=2),
                next_update=now() - datetime.timedelta(seconds=1),
            )
        ),
    ),
    "thisUpdate in the future": (
        "not-yet-valid",
        lambda ca, url: Reply(ca.crl(20, idp=url, this_update=now() + datetime.timedelta(hours=1))),
    ),
    "garbage": ("parse", lambda ca, url: Reply(b"\x30\x82\xff\xff" + b"garbage" * 100)),
    "html error page with 200": ("parse", lambda ca, url: Reply(b"<html>maintenance</html>", content_type="text/html")),
    "IDP naming another URL": ("idp-mismatch", lambda ca, url: Reply(ca.crl(20, idp=url + "x"))),
    "delta CRL at a full CRL's URL": ("unexpected-delta", lambda ca, url: Reply(ca.crl(20, idp=url, delta_base=10))),
    "larger than the limit": ("too-large", lambda ca, url: Reply(b"\x30" * 5000)),
    "a server that never answers": ("timeout", lambda ca, url: Reply(hang=True)),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
async def test_a_bad_answer_keeps_the_last_good_crl(h: Harness, case: str, caplog: pytest.LogCaptureFixture) -> None:
    url = h.server.url(FULL)
    h.serve(FULL, h.ca.crl(10, idp=url))
    agent = h.agent(FULL, max_bytes=4096, timeout=1.0)
    await agent.run_pass()
    good = h.out.read_bytes()
    reason, reply = HOSTILE[case]
    h.server.routes[FULL] = reply(h.ca, url)
    caplog.set_level(logging.WARNING, "pca.crlsync")

    result = await agent.run_pass()

    assert (result.refused, result.changed) == (1, False)
    assert h.out.read_bytes() == good
    assert h.on_change_runs() == 1
    assert h.metric("crl_sync_refusals_total", url=url, reason=reason) == 1
    [line] = [r.getMessage() for r in caplog.records if r.name == "pca.crlsync"]
    assert line.startswith(f"refused {url}: {reason}: ") and line.endswith("keeping the last good CRL")


async def test_an_unreachable_url_is_refused(h: Harness, tmp_path: Path) -> None:
    settings = h.settings()
    agent = Agent(
        SyncSettings(**{**settings.__dict__, "urls": (f"http://127.0.0.1:{free_port()}/crl/x.crl",)}),
        SyncMetrics(h.registry),
    )
    h.agents.append(agent)
    result = await agent.run_pass()
    assert (result.refused, result.changed) == (1, False)
    assert not h.out.exists()
    assert h.metric("crl_sync_refusals_total", url=agent.settings.urls[0], reason="unreachable") == 1


async def test_a_ca_without_crl_sign_is_not_trusted_for_crls(h: Harness, tmp_path: Path) -> None:
    signer = SigningCA.make("Cert Only CA", crl_sign=False)
    h.serve(FULL, signer.crl(1))
    agent = h.agent(FULL, ca_bundle=signer.bundle(tmp_path / "cert-only.pem"))
    assert (await agent.run_pass()).refused == 1
    assert h.metric("crl_sync_refusals_total", url=h.server.url(FULL), reason="ca-key-usage") == 1


async def test_a_failing_url_keeps_its_crl_in_the_bundle_across_a_restart(h: Harness) -> None:
    root = SigningCA.make("PCA Root CA")
    h.ca_bundle = h.ca.bundle(h.tmp / "chain.pem", root)
    h.serve(ROOT, root.crl(5))
    h.serve(FULL, h.ca.crl(10, idp=h.server.url(FULL)))
    await h.agent(ROOT, FULL).run_pass()
    assert h.numbers() == [5, 10]

    h.server.routes[ROOT] = Reply(b"", status=503)
    h.serve(FULL, h.ca.crl(11, idp=h.server.url(FULL)))
    restarted = h.agent(ROOT, FULL)  # a new process: the root's CRL is read back from the bundle
    result = await restarted.run_pass()

    assert (result.refused, result.changed) == (1, True)
    assert h.numbers() == [5, 11]
    assert h.on_change_runs() == 2


async def test_the_number_never_goes_backwards_even_when_the_output_file_is_lost(h: Harness) -> None:
    url = h.server.url(FULL)
    first = h.serve(FULL, h.ca.crl(10, idp=url), etag='"a"')
    await h.agent(FULL).run_pass()
    h.out.unlink()

    h.serve(FULL, h.ca.crl(9, idp=url), etag='"a"')  # an old CRL, even under the old validator
    agent = h.agent(FULL)
    assert (await agent.run_pass()).refused == 1
    assert "if-none-match" not in h.server.requests(FULL)[-1].headers  # nothing at hand: asked unconditionally
    assert not h.out.exists()

    h.serve(FULL, h.ca.crl(10, idp=url))  # number 10 signed again: not the CRL installed as 10
    assert (await agent.run_pass()).refused == 1
    assert h.metric("crl_sync_refusals_total", url=url, reason="number-reused") == 1

    h.serve(FULL, first)  # the very CRL installed before is installed again
    assert (await agent.run_pass()).changed
    assert h.numbers() == [10]


async def test_a_delta_is_accepted_where_the_full_crl_points_and_checked_against_it(h: Harness) -> None:
    full, delta = h.server.url(FULL), h.server.url(DELTA)
    h.serve(FULL, h.ca.crl(10, idp=full, freshest=delta))
    h.serve(DELTA, h.ca.crl(11, idp=full, delta_base=10, serials=[0xABC]))
    agent = h.agent(FULL, DELTA)
    assert (await agent.run_pass()).refused == 0
    assert h.numbers() == [10, 11]

    h.serve(DELTA, h.ca.crl(13, idp=full, delta_base=12))  # its base is newer than the full CRL installed
    assert (await agent.run_pass()).refused == 1
    assert h.metric("crl_sync_refusals_total", url=delta, reason="delta-base-ahead") == 1

    h.serve(FULL, h.ca.crl(12, idp=full, freshest=delta))  # the base arrives: both install in one pass
    assert (await agent.run_pass()).refused == 0
    assert h.numbers() == [12, 13]


async def test_a_delta_is_refused_where_nothing_says_a_delta_is_expected(h: Harness) -> None:
    full = h.server.url(FULL)
    h.serve(FULL, h.ca.crl(10, idp=full))  # no Freshest CRL
    h.serve(DELTA, h.ca.crl(11, idp=full, delta_base=10))
    assert (await h.agent(FULL, DELTA).run_pass()).refused == 1
    assert h.metric("crl_sync_refusals_total", url=h.server.url(DELTA), reason="unexpected-delta") == 1

    configured = h.agent(FULL, delta_urls=frozenset({h.server.url(DELTA)}))  # --delta-url
    assert (await configured.run_pass()).refused == 0
    assert h.numbers() == [10, 11]


async def test_der_output_is_the_crl_itself(h: Harness) -> None:
    der = h.serve(FULL, h.ca.crl(10, idp=h.server.url(FULL)))
    await h.agent(FULL, format="der").run_pass()
    assert h.out.read_bytes() == der


async def test_a_crl_near_its_next_update_is_warned_about_once(h: Harness, caplog: pytest.LogCaptureFixture) -> None:
    url = h.server.url(FULL)
    h.serve(FULL, h.ca.crl(10, idp=url, next_update=now() + datetime.timedelta(minutes=10)))
    agent = h.agent(FULL, warn_before=3600.0)
    caplog.set_level(logging.WARNING, "pca.crlsync")
    await agent.run_pass()
    await agent.run_pass()
    warnings = [r.getMessage() for r in caplog.records if "no newer one is available" in r.getMessage()]
    assert len(warnings) == 1 and url in warnings[0]
    left = h.metric("crl_sync_seconds_until_next_update", url=url)
    assert left is not None and 0 < left <= 600


async def test_a_failing_on_change_is_counted_and_run_again_after_the_next_pass(h: Harness) -> None:
    h.serve(FULL, h.ca.crl(10, idp=h.server.url(FULL)))
    flag = h.tmp / "reload-works"
    command = f"test -e {flag} && echo changed >> {h.changes}"
    agent = h.agent(FULL, on_change=command)
    assert (await agent.run_pass()).changed
    assert h.metric("crl_sync_on_change_runs_total", result="failed") == 1
    assert h.on_change_runs() == 0

    flag.touch()
    assert not (await agent.run_pass()).changed
    assert h.on_change_runs() == 1
    await agent.run_pass()
    assert h.on_change_runs() == 1


async def test_an_on_change_that_hangs_is_killed(h: Harness) -> None:
    h.serve(FULL, h.ca.crl(10, idp=h.server.url(FULL)))
    agent = h.agent(FULL, on_change="sleep 60", on_change_timeout=0.5)
    assert (await agent.run_pass()).changed
    assert h.metric("crl_sync_on_change_runs_total", result="timeout") == 1


async def test_a_pem_body_is_accepted_and_installed(h: Harness) -> None:
    der = h.ca.crl(10, idp=h.server.url(FULL))
    pem = x509.load_der_x509_crl(der).public_bytes(serialization.Encoding.PEM)
    h.serve(FULL, pem, content_type="application/x-pem-file")
    assert (await h.agent(FULL).run_pass()).changed
    assert h.out.read_bytes() == pem


async def test_a_repeated_refusal_is_logged_once_until_it_changes(h: Harness, caplog: pytest.LogCaptureFixture) -> None:
    h.server.routes[FULL] = Reply(b"", status=500)
    agent = h.agent(FULL)
    caplog.set_level(logging.WARNING, "pca.crlsync")
    for _ in range(3):
        await agent.run_pass()
    h.server.routes[FULL] = Reply(b"", status=502)
    await agent.run_pass()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("refused")]
    assert [line.split(": ")[2].split(";")[0] for line in lines] == [
        "HTTP 500 Internal Server Error",
        "HTTP 502 Bad Gateway",
    ]
    assert h.metric("crl_sync_refusals_total", url=h.server.url(FULL), reason="http-status") == 4


async def test_the_agent_judges_time_by_its_clock(h: Harness, caplog: pytest.LogCaptureFixture) -> None:
    """Expiry warnings, the seconds left and the last pass's time all follow the clock the agent is given."""
    h.clock = FakeClock(now())
    url = h.server.url(FULL)
    h.serve(FULL, h.ca.crl(10, idp=url, next_update=now() + datetime.timedelta(hours=2)))
    agent = h.agent(FULL, warn_before=3600.0)
    caplog.set_level(logging.WARNING, "pca.crlsync")
    await agent.run_pass()
    assert h.metric("crl_sync_last_pass_timestamp_seconds") == h.clock.time()
    assert h.metric("crl_sync_seconds_until_next_update", url=url) == 7200
    assert not [r for r in caplog.records if "no newer one is available" in r.getMessage()]

    h.clock.advance(5400)  # half an hour before nextUpdate, by the agent's clock only
    await agent.run_pass()
    assert h.metric("crl_sync_last_pass_timestamp_seconds") == h.clock.time()
    assert h.metric("crl_sync_seconds_until_next_update", url=url) == 1800
    [warning] = [r.getMessage() for r in caplog.records if "no newer one is available" in r.getMessage()]
    assert url in warning and " expires at " in warning


async def test_a_repeated_refusal_is_logged_again_after_relog_seconds(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    h.clock = FakeClock(now())
    h.server.routes[FULL] = Reply(b"", status=500)
    agent = h.agent(FULL)
    caplog.set_level(logging.WARNING, "pca.crlsync")
    await agent.run_pass()
    h.clock.advance(RELOG_SECONDS - 1)
    await agent.run_pass()
    h.clock.advance(1)
    await agent.run_pass()
    assert len([r for r in caplog.records if r.getMessage().startswith("refused")]) == 2


async def test_https_is_verified_with_the_system_trust_or_tls_ca(
    tmp_path: Path, ours: SigningCA, caplog: pytest.LogCaptureFixture
) -> None:
    context, cert_file = tls_server_context(tmp_path)
    with controlled_server(context) as tls:
        h = Harness(tmp_path, tls, ours, ours.bundle(tmp_path / "ca-bundle.pem"))
        h.serve(FULL, ours.crl(10, idp=tls.url(FULL)))
        try:
            untrusted = h.agent(FULL)  # the system's trust store does not know this server's certificate
            assert (await untrusted.run_pass()).refused == 1
            assert h.metric("crl_sync_refusals_total", url=tls.url(FULL), reason="unreachable") == 1
            assert "CERTIFICATE_VERIFY_FAILED" in caplog.text

            trusted = h.agent(FULL, tls_ca=cert_file)
            assert (await trusted.run_pass()).changed
        finally:
            for agent in h.agents:
                await agent.aclose()
