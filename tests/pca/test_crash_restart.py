"""A crashed embedded server (kill -9) that is restarted answers a new revocation at once, and its
timeline does not wait for the dead process's responders.

Issue 13, item 3: the restarted server used to wait out ``scale.lease_seconds`` (10 s) for its
own dead predecessor's pre-signer and publisher leases, so a revocation acknowledged right
after the restart was answered ``good`` for about 10 s while /healthz said ok. Everything here
is real: ``pca serve`` as a process killed with SIGKILL, the admin API over HTTP, and the
``openssl`` command as the OCSP client.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.support.monitoring import sample_values
from tests.support.processes import ServerProcess, descendants, init_ca, living
from tests.support.scaled import wait_for

pytestmark = pytest.mark.e2e

# The issue's goal: OCSP says revoked within this long of the revocation's acknowledgement,
# restart or not (scale.lease_seconds, what it used to take, is 10).
REVOKED_WITHIN = 1.0
DEADLINE = 30.0  # a bounded wait gives up after this (never reached when things work)
# Issue 16: the dead process's responders held every timeline open until scale.responder_gone_seconds (30)
# had passed since their last heartbeat. Generous for a loaded machine; it takes well under a second.
ALL_RESPONDERS_WITHIN = 10.0


def ocsp_status(srv: ServerProcess, cert: Path) -> str | None:
    """``openssl ocsp``'s verdict on ``cert`` (good, revoked), when the response verifies."""
    d = srv.config_path.parent
    result = subprocess.run(
        [
            "openssl",
            "ocsp",
            "-issuer",
            str(d / "issuing-ca.pem"),
            "-cert",
            str(cert),
            "-url",
            f"{srv.public_url}/ocsp",
            "-CAfile",
            str(d / "ca-chain.pem"),
            "-no_nonce",
            "-timeout",
            "5",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    text = result.stdout + result.stderr
    match = re.search(rf"^{re.escape(str(cert))}: (\w+)", text, re.MULTILINE)
    return match.group(1) if match and "Response verify OK" in text else None


def wait_for_status(srv: ServerProcess, cert: Path, want: str, deadline: float) -> str | None:
    """Ask over and over until OCSP says ``want`` or ``deadline`` (monotonic) passes; the last answer."""
    status = ocsp_status(srv, cert)
    while status != want and time.monotonic() < deadline:
        time.sleep(0.02)
        status = ocsp_status(srv, cert)
    return status


def issue(srv: ServerProcess, name: str) -> tuple[str, Path]:
    with srv.admin() as admin:
        resp = admin.post("/v1/certificates", json={"subject": f"CN={name}", "dns": [f"{name}.internal"]})
    assert resp.status_code == 201, resp.text
    path = srv.config_path.parent / f"{name}.pem"
    path.write_text(resp.json()["certificate"])
    return resp.json()["serial"], path


def health(srv: ServerProcess) -> tuple[int, dict[str, object]]:
    resp = httpx.get(srv.admin_url + "/healthz", timeout=5)
    return resp.status_code, resp.json()


def kill_9(srv: ServerProcess) -> None:
    """SIGKILL ``pca serve`` and wait until none of its helper processes is left running."""
    assert srv.proc is not None
    helpers = descendants(srv.proc.pid)  # granian and its workers, the signing pool and its forkserver
    srv.proc.kill()  # SIGKILL: no lease is released, and the granian workers cannot be stopped by it
    srv.proc.wait()
    # None of its helper processes outlives it: they would hold the port, memory and key handles.
    gone_by = time.monotonic() + DEADLINE
    while living(helpers) and time.monotonic() < gone_by:
        time.sleep(0.05)
    assert not living(helpers), [Path(f"/proc/{p}/cmdline").read_bytes()[-150:] for p in living(helpers)]


def restart_and_revoke(srv: ServerProcess, serial: str) -> httpx.Response:
    """Start ``pca serve`` again and revoke ``serial`` as soon as the restarted server's public listener
    (granian's workers, which went with their killed parent and left the port free) answers and its admin
    API takes the request: well within ``scale.lease_seconds`` of the kill. The API's answer."""
    srv.start(ready=False)
    assert srv.proc is not None
    deadline = time.monotonic() + DEADLINE
    while True:
        assert srv.proc.poll() is None, srv.log_path.read_text()[-3000:]
        try:
            httpx.get(srv.public_url + "/healthz", timeout=1).raise_for_status()
            with srv.admin() as admin:
                return admin.post(f"/v1/certificates/{serial}/revoke", json={"reason": "keyCompromise"})
        except httpx.HTTPError:
            assert time.monotonic() < deadline, "the restarted server's listeners never answered"
            time.sleep(0.02)


def test_after_kill_9_and_restart_a_revocation_is_answered_revoked_at_once(tmp_path: Path) -> None:
    srv = ServerProcess(init_ca(tmp_path / "ca"))
    srv.start()
    try:
        serial, cert = issue(srv, "crash")
        assert wait_for_status(srv, cert, "good", time.monotonic() + DEADLINE) == "good"
        code, before = health(srv)
        assert code == 200 and before["presigner"]["lease"] == "active", before  # type: ignore[index]
        dead_holder = before["presigner"]["holder"]  # type: ignore[index]

        kill_9(srv)
        resp = restart_and_revoke(srv, serial)
        acknowledged = time.monotonic()
        assert resp.status_code == 201, resp.text

        status = wait_for_status(srv, cert, "revoked", acknowledged + DEADLINE)
        took = time.monotonic() - acknowledged
        with srv.admin() as admin:
            timeline = admin.get(f"/v1/certificates/{serial}/propagation").json()
        print(
            f"\nrevoked in OCSP {took:.3f}s after the acknowledgement, right after a restart from kill -9 "
            f"(pre-signed {timeline['presigned']}, responders {[r['seconds'] for r in timeline['responders']]})"
        )
        assert status == "revoked", f"still {status} {DEADLINE:.0f}s after the revocation"
        assert took < REVOKED_WITHIN, f"OCSP said revoked only {took:.2f}s after the acknowledgement"

        # The new process holds both leases, taken from its dead predecessor without waiting them out.
        code, after = health(srv)
        assert code == 200, after
        for role in ("presigner", "publisher"):
            report = after[role]
            assert report["lease"] == "active" and report["holder"] != dead_holder, report  # type: ignore[index]
        log = srv.log_path.read_text()
        assert f"presigner lease taken over from {dead_holder}, a dead process on this machine" in log
    finally:
        srv.stop()


def responders_up(srv: ServerProcess) -> dict[str, float]:
    """``ocsp_responder_up`` of each responder, from the admin API's /metrics (the tracker's gauges)."""
    with srv.admin() as admin:
        text = admin.get("/metrics").raise_for_status().text
    return {labels["responder_id"]: up for labels, up in sample_values(text, "ocsp_responder_up")}


def test_after_kill_9_and_restart_the_dead_processs_responders_are_gone_at_once(tmp_path: Path) -> None:
    """Issue 16: the killed server's granian workers stay registered as responders with a fresh heartbeat.
    Their ids name their processes (``host:pid:start@machine``), which the restarted server sees are gone:
    a revocation made at once reaches "all responders" without them, and nothing blames them."""
    srv = ServerProcess(init_ca(tmp_path / "ca"))
    srv.start()
    try:
        serial, _ = issue(srv, "gone")
        dead = wait_for("the responders to heartbeat", lambda: {r for r, up in responders_up(srv).items() if up})
        kill_9(srv)
        resp = restart_and_revoke(srv, serial)
        acknowledged = time.monotonic()
        assert resp.status_code == 201, resp.text

        def complete() -> dict[str, object] | None:
            with srv.admin() as admin:
                timeline: dict[str, object] = admin.get(f"/v1/certificates/{serial}/propagation").json()
            return timeline if timeline.get("ocsp_all_responders") else None

        timeline = wait_for('the revocation to reach "all responders"', complete, timeout=DEADLINE)
        took = time.monotonic() - acknowledged
        print(f"\nall responders {took:.3f}s after the acknowledgement, right after a restart from kill -9")
        assert took < ALL_RESPONDERS_WITHIN, f"all responders reached only {took:.2f}s after the acknowledgement"
        states = {r["responder_id"]: r for r in timeline["responders"]}
        assert dead <= set(states), (dead, states)
        assert all((states[r]["state"], states[r]["counted"]) == ("gone", False) for r in dead), states
        alive = set(states) - dead
        assert alive and all(states[r]["state"] == "applied" for r in alive), states
        assert (timeline["gone_without"], timeline["pending"], timeline["slo_met"]) == ([], [], True), timeline

        # What the operator sees: the dead responders without an up series (gone, not down: an alert on
        # ocsp_responder_up == 0 must not page after a restart), a line saying why, and a timeline whose
        # verdict blames nobody.
        def gauged() -> dict[str, float] | None:
            up = responders_up(srv)
            return up if alive <= set(up) else None

        up = wait_for("the restarted tracker's gauges", gauged)
        assert not dead & set(up), up
        log = srv.log_path.read_text()
        assert all(f"responder {r} is gone: its process on this machine has ended" in log for r in dead), log[-3000:]
        cli = [sys.executable, "-m", "pca.cli", "propagation", "--config", str(srv.config_path), serial]
        shown = subprocess.run(cli, capture_output=True, text=True, timeout=DEADLINE, check=True).stdout
        assert "  SLO 5s: met\n" in shown + "\n", shown
        for r in dead:
            assert any(
                line.startswith(f"  responder {r} ") and line.endswith(": gone (not counted)")
                for line in shown.splitlines()
            ), shown
    finally:
        srv.stop()
