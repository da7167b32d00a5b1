"""Metrics of a running product: the granian workers' series on /metrics, every name the rules and
dashboards read exported by some role, and a real Prometheus evaluating the rules against `pca serve`."""

from __future__ import annotations

import datetime
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from cryptography import x509

from tests.support.monitoring import (
    PROMETHEUS_OWN,
    RULES,
    dashboard_exprs,
    exported_names,
    load_dashboards,
    metric_names,
    recorded_names,
    rules,
    sample_values,
)
from tests.support.ports import free_port
from tests.support.processes import ServerProcess, init_ca, stop_process
from tests.support.scaled import RoleProcess, ocsp_get_url, wait_for

pytestmark = pytest.mark.e2e

GRANIAN = ("--server", "granian", "--workers", "2")


def _ready(srv: ServerProcess) -> None:
    """Also wait for the granian workers: the admin listener answers before they do."""
    wait_for("the public listener", lambda: httpx.get(srv.public_url + "/crl/issuing-ca.crl", timeout=2).is_success)


def _issue(srv: ServerProcess, name: str) -> tuple[str, x509.Certificate]:
    with srv.admin() as admin:
        resp = admin.post("/v1/certificates", json={"subject": f"CN={name}", "dns": [f"{name}.internal"]})
    assert resp.status_code == 201, resp.text
    return resp.json()["serial"], x509.load_pem_x509_certificate(resp.json()["certificate"].encode())


def _ocsp(url: str, cert: x509.Certificate, issuer: x509.Certificate, times: int) -> None:
    for _ in range(times):
        with httpx.Client(timeout=5) as client:  # a new connection each time, so both workers answer
            assert client.get(ocsp_get_url(url, cert, issuer)).status_code == 200


def _metrics(srv: ServerProcess) -> str:
    return httpx.get(srv.admin_url + "/metrics", timeout=10, verify=srv.verify).text


def _total(text: str, name: str, **labels: str) -> float:
    return sum(value for _, value in sample_values(text, name, **labels))


def test_the_admin_metrics_cover_the_granian_workers(tmp_path: Path) -> None:
    srv = ServerProcess(init_ca(tmp_path / "ca", tls=True))
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    srv.start(*GRANIAN, env={"TMPDIR": str(scratch)})
    try:
        _ready(srv)
        issuer = x509.load_pem_x509_certificate((tmp_path / "ca" / "issuing-ca.pem").read_bytes())
        _, cert = _issue(srv, "svc1")
        url = srv.public_url + "/ocsp"
        asked = []

        def ask(times: int) -> None:
            _ocsp(url, cert, issuer, times)
            asked.append(times)

        wait_for("a good answer", lambda: ask(1) is None)
        ask(40)
        # Every request counted once, whichever worker answered it (each writes its counts every second).
        wait_for("every request counted", lambda: _total(_metrics(srv), "ocsp_requests_total") == sum(asked))
        text = _metrics(srv)
        assert _total(text, "ocsp_http_requests_total", method="GET") == sum(asked)

        # Each worker's cache, by pid.
        def worker_gauges() -> set[str] | None:
            pids = {labels["pid"] for labels, _ in sample_values(_metrics(srv), "ocsp_cache_entries")}
            return pids if len(pids) == 2 else None

        wait_for("both workers' cache gauges", worker_gauges)
        # The caches count with plain integers, read when the worker writes its series.
        wait_for("the workers' cache hits", lambda: _total(_metrics(srv), "ocsp_cache_hits_total") or None)
        # The main process's own series sit beside them.
        assert _total(text, "certificates_issued_total", issuer="issuing-ca") == 1
        assert [d.name for d in scratch.iterdir() if d.name.startswith("pca-metrics-")]
    finally:
        srv.stop()
    assert not [d.name for d in scratch.iterdir() if d.name.startswith("pca-metrics-")], "the run's directory stays"


@pytest.fixture(scope="module")
def every_role(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The embedded server under granian (api, presigner, publisher, tracker; responders in 2 workers),
    and on its database a responder alone under granian and one under uvicorn, after some traffic."""
    base = tmp_path_factory.mktemp("roles")
    srv = ServerProcess(init_ca(base / "ca", tls=True))
    config = srv.config_path
    ports = free_port(), free_port()
    alone = [
        RoleProcess(
            "responder-granian", config, "responder", f"http://127.0.0.1:{ports[0]}/healthz",
            *GRANIAN, "--public-listen", f"127.0.0.1:{ports[0]}", "--responder-id", "gr",
        ),
        RoleProcess(
            "responder", config, "responder", f"http://127.0.0.1:{ports[1]}/healthz",
            "--public-listen", f"127.0.0.1:{ports[1]}", "--responder-id", "uv",
        ),
    ]  # fmt: skip
    # Signing roles beside a granian listener and no api: the workers' /metrics serves their series too.
    signers_port = free_port()
    alone.append(
        RoleProcess(
            "signers-granian", config, "presigner,publisher,responder", f"http://127.0.0.1:{signers_port}/healthz",
            "--server", "granian", "--workers", "1", "--public-listen", f"127.0.0.1:{signers_port}",
            "--responder-id", "sg",
        )
    )  # fmt: skip
    srv.start(*GRANIAN)
    try:
        _ready(srv)
        for proc in alone:
            proc.start()
        issuer = x509.load_pem_x509_certificate((base / "ca" / "issuing-ca.pem").read_bytes())
        serial, cert = _issue(srv, "svc1")
        with srv.admin() as admin:
            resp = admin.post(f"/v1/certificates/{serial}/revoke", json={"reason": "keyCompromise"})
            assert resp.status_code == 201, resp.text
        urls = [srv.public_url + "/ocsp", *(f"http://127.0.0.1:{port}/ocsp" for port in ports)]
        for url in urls:
            wait_for(f"{url} answers", lambda url=url: _ocsp(url, cert, issuer, 1) is None)
            _ocsp(url, cert, issuer, 5)
        # The stored responses' freshness is read by a scan of the store, once responses exist.
        earliest = "ocsp_responses_earliest_next_update_timestamp_seconds"
        wait_for("the responses' freshness", lambda: earliest in exported_names(_metrics(srv)) or None)
        yield {
            "server": srv, "ports": ports, "base": base, "cert": cert, "issuer": issuer, "urls": urls,
            "signers_port": signers_port,
        }  # fmt: skip
    finally:
        for proc in alone:
            proc.stop()
        srv.stop()


def test_rules_and_dashboards_read_only_what_the_product_exports(every_role: dict[str, Any]) -> None:
    srv: ServerProcess = every_role["server"]
    scrapes = {"admin (embedded, granian workers)": _metrics(srv)}
    for port, name in zip(every_role["ports"], ("responder (granian)", "responder (uvicorn)"), strict=True):
        resp = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
        assert resp.status_code == 200, (name, resp.text)
        scrapes[name] = resp.text
    exported = set().union(*(exported_names(text) for text in scrapes.values()))
    admin = scrapes["admin (embedded, granian workers)"]
    assert _total(admin, "certificates_revoked_total", issuer="issuing-ca", reason="keyCompromise") == 1
    assert _total(admin, "admin_requests_total", route="revoke", status="201", role="admin") == 1
    assert _total(admin, "signing_operations_total", role="presigner", backend="file") >= 2
    # The tracker's own place in the log, beside the pre-signer's and the publisher's.
    assert {labels["role"] for labels, _ in sample_values(admin, "eventlog_position")} >= {"presigner", "tracker"}
    # Certificates near expiry per issuer and window, read at start: the admin listener's own TLS
    # certificate (svc1 came later, and was revoked); an issuer with none near expiry shows 0.
    expiring = {(labels["issuer"], labels["within"]): v for labels, v in sample_values(admin, "certificates_expiring")}
    tls = x509.load_pem_x509_certificate((every_role["base"] / "ca" / "keys" / "admin-tls.pem").read_bytes())
    left = tls.not_valid_after_utc - datetime.datetime.now(datetime.UTC)
    assert expiring[("issuing-ca", "7d")] == (left.days < 7), expiring
    assert expiring[("issuing-ca", "30d")] == (left.days < 30) == 1, (expiring, left)
    assert expiring[("root-ca", "30d")] == 0, expiring
    # The responders alone export what the workers export, under both servers.
    assert "ocsp_requests_total" in exported_names(scrapes["responder (granian)"])
    assert "ocsp_cache_hits_total" in exported_names(scrapes["responder (uvicorn)"])
    known = exported | recorded_names() | PROMETHEUS_OWN
    for rule in rules():
        missing = metric_names(rule["expr"]) - known
        assert not missing, f"{rule.get('record') or rule.get('alert')} reads {sorted(missing)}, which nothing exports"
    for name, board in load_dashboards().items():
        for expr in dashboard_exprs(board):
            missing = metric_names(expr) - known
            assert not missing, f"{name}: {expr!r} reads {sorted(missing)}, which nothing exports"
    # The series item 2 of issue 14 names, each exported by some role.
    for wanted in (
        "certificates_issued_total", "certificates_revoked_total", "admin_requests_total", "ocsp_requests_total",
        "ocsp_http_requests_total", "ocsp_cache_hits_total", "ocsp_presigned_responses_total",
        "ocsp_responses_earliest_next_update_timestamp_seconds", "crl_published_timestamp_seconds", "crl_size_bytes",
        "crl_entries", "crl_number", "signing_operations_total", "signing_errors_total", "ocsp_signer_expiry_seconds",
        "eventlog_position", "eventlog_lag_events", "revocation_propagation_seconds_bucket", "certificates_expiring",
    ):  # fmt: skip
        assert wanted in exported, wanted


def test_signing_roles_beside_granian_workers_are_scraped_without_an_api(every_role: dict[str, Any]) -> None:
    """No admin listener: the public /metrics that covers the workers covers the main process's roles too."""
    url = f"http://127.0.0.1:{every_role['signers_port']}/metrics"
    leases: list[tuple[dict[str, str], float]] = []

    def scraped() -> bool:
        nonlocal leases
        text = httpx.get(url, timeout=10).text
        leases = sample_values(text, "role_lease_active")
        return bool(leases) and "ocsp_requests_total" in exported_names(text)

    wait_for("the main process's series beside the workers'", lambda: scraped() or None)
    # The embedded server holds both leases: this process stands by, and says so, once, with no pid label.
    by_role = sorted(leases, key=lambda sample: sample[0]["role"])
    assert by_role == [({"role": "presigner"}, 0.0), ({"role": "publisher"}, 0.0)], leases


PROMETHEUS = shutil.which("prometheus")


@pytest.mark.skipif(PROMETHEUS is None, reason="prometheus not installed (Debian package prometheus)")
def test_a_real_prometheus_evaluates_the_recording_rules(every_role: dict[str, Any], tmp_path: Path) -> None:
    srv: ServerProcess = every_role["server"]
    # The shipped rules, evaluated every second instead of every 30 s so the test need not wait.
    data = yaml.safe_load(RULES.read_text())
    for group in data["groups"]:
        group["interval"] = "1s"
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(data))
    admin_host = srv.admin_url.removeprefix("https://")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(tmp_path / "rules.yml")],
        "scrape_configs": [
            {
                "job_name": "pca-api",
                "scheme": "https",
                "tls_config": {"ca_file": str(every_role["base"] / "ca" / "ca-chain.pem")},
                "static_configs": [{"targets": [admin_host]}],
            },
            {
                "job_name": "pca-responder",
                "static_configs": [{"targets": [f"127.0.0.1:{port}" for port in every_role["ports"]]}],
            },
        ],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    api = f"http://127.0.0.1:{port}/api/v1"
    with open(tmp_path / "prometheus.log", "wb") as log:
        proc = subprocess.Popen(
            [
                str(PROMETHEUS), f"--config.file={tmp_path / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:

        def targets_up() -> list[dict[str, Any]] | None:
            active = httpx.get(f"{api}/targets", timeout=5).json()["data"]["activeTargets"]
            return active if len(active) == 3 and all(t["health"] == "up" for t in active) else None

        try:
            wait_for("every pca target up in Prometheus", targets_up, timeout=60)
        except AssertionError:
            print((tmp_path / "prometheus.log").read_text()[-3000:])
            print(httpx.get(f"{api}/targets", timeout=5).text)
            raise

        def query(expr: str) -> list[dict[str, Any]] | None:
            result: list[dict[str, Any]] = httpx.get(f"{api}/query", params={"query": expr}, timeout=5).json()["data"][
                "result"
            ]
            return result or None

        # The age of the issuing CA's full CRL: published when the server started, a minute ago at most.
        ages = wait_for("pca:crl_age_seconds", lambda: query('pca:crl_age_seconds{issuer="issuing-ca",kind="full"}'))
        age = float(ages[0]["value"][1])
        assert 0 <= age < 600, ages
        # The OCSP request rate over the responders, once two scrapes saw new requests.
        url, cert, issuer = every_role["urls"][1], every_role["cert"], every_role["issuer"]
        started = time.monotonic()

        def rate() -> float | None:
            _ocsp(url, cert, issuer, 2)
            found = query('sum(pca:ocsp_requests:rate5m{job="pca-responder",result="revoked"})')
            value = float(found[0]["value"][1]) if found else 0.0
            return value if value > 0 else None

        assert 0 < wait_for("pca:ocsp_requests:rate5m", rate, timeout=60) < 1000
        assert time.monotonic() - started < 60
        # A signer's expiry in days, from the recording rule: about ocsp.signer_validity_days (30).
        days = wait_for(
            "pca:ocsp_signer_expiry_days", lambda: query('pca:ocsp_signer_expiry_days{issuer="issuing-ca"}')
        )
        assert 25 < float(days[0]["value"][1]) <= 30
        # No alert fires on a healthy product.
        firing = [a for a in httpx.get(f"{api}/alerts", timeout=5).json()["data"]["alerts"] if a["state"] == "firing"]
        assert firing == []
    finally:
        stop_process(proc)
