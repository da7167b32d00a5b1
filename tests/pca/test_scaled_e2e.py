"""The scaled shape end to end: PostgreSQL, and every role in a process of its own.

One run: an API process, a tracker, a pre-signer, a publisher, three responders and
the black-box prober (``pca probe``). 500 certificates are revoked at a steady rate;
one responder is killed part-way and restarted; then PostgreSQL is stopped for 20 s
while OCSP load runs. Everything is checked over HTTP, as a client would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509

from tests.support.postgres import postgres_cluster
from tests.support.scaled import (
    Deployment,
    metric,
    ocsp_answer,
    ocsp_get_url,
    ocsp_get_url_for_serial,
    pca,
    percentile,
    set_options,
    wait_for,
)

pytestmark = pytest.mark.e2e

CERTS = 500
RATE = 50.0  # revocations per second
SLO_P99 = 2.0  # seconds, the bound for ocsp_all_responders
GONE_AFTER = 3.0
PROBE_SAMPLE = 0.3


class OCSPLoad(threading.Thread):
    """GETs round-robin over responders and certificates until stopped; tallies every answer."""

    def __init__(self, urls: list[str]) -> None:
        super().__init__(daemon=True)
        self.urls = urls
        self.stop_event = threading.Event()
        self.answers: Counter[tuple[int, str]] = Counter()
        self.errors: Counter[str] = Counter()

    def run(self) -> None:
        with httpx.Client(timeout=5) as client:
            i = 0
            while not self.stop_event.is_set():
                url = self.urls[i % len(self.urls)]
                i += 1
                time.sleep(0.002)  # steady load, leaving CPU for the eight processes under test
                try:
                    self.answers[ocsp_answer(client, url)] += 1
                except httpx.HTTPError as exc:
                    self.errors[type(exc).__name__] += 1
                    time.sleep(0.05)


def test_three_responders_on_postgresql_with_a_responder_killed_and_the_database_stopped(tmp_path: Path) -> None:
    with postgres_cluster() as pg:
        dep = Deployment(tmp_path / "ca", pg)
        set_options(
            dep.config,
            scale={"lease_seconds": 3, "heartbeat_seconds": 0.5, "responder_gone_seconds": GONE_AFTER},
            ocsp={"workers": 1},
            crl={"after_revocation_seconds": 0.5},
        )
        api = dep.role("api", "api")
        tracker = dep.role("tracker", "tracker")
        presigner = dep.role("presigner", "presigner")
        publisher = dep.role("publisher", "publisher", port=dep.crl_port)
        responders = [dep.responder(f"r{i}") for i in (1, 2, 3)]
        urls = [f"http://127.0.0.1:{r.port}/ocsp" for r in responders]  # type: ignore[attr-defined]
        tracker_metrics = tracker.health_url.replace("/healthz", "/metrics")
        prober_log = tmp_path / "prober.log"
        prober: subprocess.Popen[bytes] | None = None
        admin: httpx.Client | None = None
        try:
            for proc in (api, tracker, presigner, publisher, *responders):
                proc.start()
            token = pca("token", "create", "--config", dep.config, "--name", "prober", "--role", "prober")
            assert token.returncode == 0, token.stderr
            admin = dep.admin()

            certs: list[x509.Certificate] = []
            for i in range(CERTS):
                resp = admin.post("/v1/certificates", json={"subject": f"CN=svc-{i}", "dns": [f"svc-{i}.internal"]})
                assert resp.status_code == 201, resp.text
                certs.append(x509.load_pem_x509_certificate(resp.json()["certificate"].encode()))

            with httpx.Client(timeout=5) as client:
                last = certs[-1]
                for url in urls:
                    wait_for(
                        f"{url} to answer good for the last issued certificate",
                        lambda url=url: ocsp_answer(client, ocsp_get_url(url, last, dep.issuer)) == (200, "good"),
                    )

            # The prober samples a third of the revocations: on two cores it shares the CPU with eight
            # processes, and probing every one would measure the prober's own queue.
            with open(prober_log, "wb") as out:
                prober = subprocess.Popen(
                    [sys.executable, "-m", "pca.cli", "probe", "--config", str(dep.config)]
                    + ["--token", token.stdout.strip(), "--duration", "16", "--timeout", "15", "--poll", "0.05"]
                    + ["--sample", str(PROBE_SAMPLE)]
                    + [arg for url in urls for arg in ("--responder", url)],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env={**os.environ, "PYTHONUNBUFFERED": "1"},
                )
            time.sleep(2)  # the prober starts following the log at its head

            # --- 500 revocations at a steady rate; r2 is killed after 150 and restarted after the last ---
            killed_at = 0.0
            started = time.monotonic()
            for i, cert in enumerate(certs):
                time.sleep(max(0.0, started + i / RATE - time.monotonic()))
                resp = admin.post(f"/v1/certificates/{cert.serial_number:x}/revoke", json={"reason": "keyCompromise"})
                assert resp.status_code == 201, resp.text
                if i == 150:
                    responders[1].kill()
                    killed_at = time.monotonic()
                if i == 400:
                    # By now the tracker has marked r2 gone (it stopped heartbeating GONE_AFTER s ago).
                    up = metric(httpx.get(tracker_metrics).text, "ocsp_responder_up", responder_id="r2")
                    assert up == 0.0, f"r2 should be marked gone, ocsp_responder_up={up}"
            assert killed_at
            # Restarted once the revocations are in (a Python process starting takes most of a core
            # for a second here, which would show up in the prober's figures, not in the product's).
            responders[1].start()

            # --- every responder answers revoked for every certificate ---
            with httpx.Client(timeout=10) as client:
                for url in urls:

                    def all_revoked(url: str = url) -> bool:
                        return all(
                            ocsp_answer(client, ocsp_get_url(url, c, dep.issuer)) == (200, "revoked") for c in certs
                        )

                    wait_for(f"{url} to answer revoked for all {CERTS}", all_revoked, timeout=90, interval=1)

            # --- the tracker's figures, and the prober's beside them ---
            prober.wait(60)
            summary = prober_log.read_text()
            print("\n" + summary[-600:])
            assert "not accepted 0" in summary, summary[-3000:]
            latest: list[dict[str, Any]] = []

            def timelines_done() -> list[dict[str, Any]] | None:
                out = latest
                out.clear()
                for cert in certs:
                    resp = admin.get(f"/v1/certificates/{cert.serial_number:x}/propagation")
                    assert resp.status_code == 200, resp.text
                    out.append(resp.json())
                done = all(t["ocsp_all_responders"] and t["crl"] for t in out)
                return out if done else None

            try:
                timelines: list[dict[str, Any]] = wait_for("finished timelines", timelines_done, timeout=60, interval=2)
            except AssertionError:
                unfinished = [t for t in latest if not (t["ocsp_all_responders"] and t["crl"])]
                raise AssertionError(f"{len(unfinished)} timelines unfinished, e.g. {unfinished[:2]}") from None
            (tmp_path / "timelines.json").write_text(json.dumps(timelines))
            ocsp_all = [float(t["ocsp_all_responders"]["seconds"]) for t in timelines]
            crl = [float(t["crl"]["seconds"]) for t in timelines]
            p50, p90, p99 = (percentile(ocsp_all, q) for q in (0.5, 0.9, 0.99))
            print(
                f"\nocsp_all_responders p50 {p50:.3f}s p90 {p90:.3f}s p99 {p99:.3f}s max {max(ocsp_all):.3f}s; "
                f"crl p50 {percentile(crl, 0.5):.3f}s p99 {percentile(crl, 0.99):.3f}s"
            )
            assert p99 < SLO_P99, f"p99 {p99:.3f}s for ocsp_all_responders"

            # While r2 was gone it did not hold revocations open; after its restart it caught up.
            gone_states = [r["state"] for t in timelines for r in t["responders"] if r["responder_id"] == "r2"]
            assert "applied" in gone_states

            # The prober, from outside, agrees with the tracker within 1 s: the same (revocation,
            # responder) pairs, the prober's time to "revoked" over HTTP beside the responder's own report.
            outside: list[float] = []
            inside: list[float] = []
            for t in timelines:
                applied = {r["url"]: r["seconds"] for r in t["responders"] if r["state"] == "applied"}
                for probe in t["probes"]:
                    if applied.get(probe["responder_url"]) is not None:
                        outside.append(float(probe["seconds"]))
                        inside.append(float(applied[probe["responder_url"]]))
            assert len(outside) >= CERTS * PROBE_SAMPLE, f"only {len(outside)} probe results to compare"
            for q in (0.5, 0.9, 0.99):
                prober_q, tracker_q = percentile(outside, q), percentile(inside, q)
                print(f"p{round(q * 100)}: prober {prober_q:.3f}s, tracker {tracker_q:.3f}s")
                assert abs(prober_q - tracker_q) < 1.0, (q, prober_q, tracker_q)
            worst = max(abs(a - b) for a, b in zip(outside, inside, strict=True))
            print(f"largest single disagreement {worst:.3f}s over {len(outside)} pairs")

            metrics = httpx.get(tracker_metrics).text
            count = metric(metrics, "revocation_propagation_seconds_count", channel="ocsp_all_responders")
            assert count is not None and count >= CERTS

            # --- PostgreSQL stopped for 20 s while the load runs ---
            load = OCSPLoad([ocsp_get_url(url, c, dep.issuer) for c in certs[::10] for url in urls])
            load.start()
            time.sleep(1)
            before = Counter(load.answers)
            pg.stop()
            try:
                time.sleep(2)
                resp = admin.post(f"/v1/certificates/{certs[0].serial_number:x}/revoke", json={"reason": "superseded"})
                assert resp.status_code == 503, resp.text
                assert resp.headers["content-type"].startswith("application/problem+json")
                for url in urls:
                    health = httpx.get(url.replace("/ocsp", "/healthz"), timeout=5)
                    assert health.status_code == 503 and "unreachable" in health.text, health.text
                # What a responder does not hold it cannot vouch for: tryLater, not unauthorized.
                with httpx.Client(timeout=5) as client:
                    unknown = ocsp_get_url_for_serial(urls[0], dep.issuer, 0x5EED_0000_0000_0001)
                    assert ocsp_answer(client, unknown) == (200, "TRY_LATER")
                time.sleep(18)
            finally:
                pg.start()
            during = load.answers - before
            assert during[(200, "good")] + during[(200, "revoked")] > 100, during
            assert not [k for k in during if k[0] >= 500], during

            # --- and everything recovers on its own ---
            spare = admin.post(
                "/v1/certificates", json={"subject": "CN=after-outage", "dns": ["after-outage.internal"]}
            )
            if spare.status_code != 201:
                spare = wait_for(
                    "the API to issue again",
                    lambda: (
                        (
                            r := admin.post(
                                "/v1/certificates",
                                json={"subject": "CN=after-outage", "dns": ["after-outage.internal"]},
                            )
                        ).status_code
                        == 201
                        and r
                    ),
                )
            late = x509.load_pem_x509_certificate(spare.json()["certificate"].encode())
            resp = admin.post(f"/v1/certificates/{late.serial_number:x}/revoke", json={"reason": "keyCompromise"})
            assert resp.status_code == 201, resp.text
            with httpx.Client(timeout=5) as client:
                for url in urls:
                    wait_for(
                        f"{url} to answer revoked after the outage",
                        lambda url=url: ocsp_answer(client, ocsp_get_url(url, late, dep.issuer)) == (200, "revoked"),
                    )
            # The publisher and the tracker recovered too: the timeline is complete.
            path = f"/v1/certificates/{late.serial_number:x}/propagation"
            seen: dict[str, Any] = {}

            def late_timeline() -> dict[str, Any] | None:
                assert admin is not None
                seen.update(admin.get(path).json())
                return seen if seen.get("ocsp_all_responders") and seen.get("crl") else None

            try:
                timeline = wait_for("the late revocation's timeline to complete", late_timeline)
            except AssertionError:
                raise AssertionError(f"late timeline incomplete: {seen}") from None
            assert timeline["crl"]["number"] > max(t["crl"]["number"] for t in timelines)
            load.stop_event.set()
            load.join(10)
            assert not [k for k in load.answers if k[0] >= 500], load.answers
            for proc in dep.procs:
                assert proc.proc is not None and proc.proc.poll() is None, f"{proc.name} exited:\n{proc.log_text()}"
        finally:
            if admin is not None:
                admin.close()
            if prober is not None:
                prober.terminate()
                prober.wait(10)
            dep.stop_all()
