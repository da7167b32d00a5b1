"""The audit anchor end to end: ``pca serve`` publishes signed checkpoints beside its CRLs, ``pca audit
verify --checkpoint URL`` checks one over HTTP, and the publisher's CRL worker refuses a full CRL made from
a projection that an intruder edited behind pca's back."""

from __future__ import annotations

import contextlib
import json
import re
import sqlite3
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509

from tests.pca.test_e2e import assert_clean_log, ca_dir, issue, pca, poll, revoke
from tests.support.processes import ServerProcess, init_ca

pytestmark = pytest.mark.e2e

WAIT_SECONDS = 30.0  # generous: a loaded machine


def served_checkpoint(url: str, seq: int) -> dict[str, object] | None:
    resp = httpx.get(url, timeout=10)
    if resp.status_code != 200:
        return None
    doc: dict[str, object] = resp.json()
    checkpoint = doc["checkpoint"]
    assert isinstance(checkpoint, dict)
    return doc if int(checkpoint["seq"]) >= seq else None


def last_event(config_path: Path) -> dict[str, Any]:
    lines = pca("events", "--config", config_path, "--after", "0", "--limit", "1000").stdout.splitlines()
    event: dict[str, Any] = json.loads(lines[-1])
    return event


def crl_lists(srv: ServerProcess, serial: int) -> bool:
    resp = httpx.get(f"{srv.public_url}/crl/issuing-ca.crl", timeout=10)
    crl = x509.load_der_x509_crl(resp.content)
    return crl.get_revoked_certificate_by_serial_number(serial) is not None


def refusals(srv: ServerProcess) -> float:
    metrics = httpx.get(f"{srv.admin_url}/metrics", timeout=10).text
    pattern = r'crl_publishes_total\{issuer="issuing-ca",kind="full",result="projection_disagrees"\} (\S+)'
    found = re.search(pattern, metrics)
    return float(found.group(1)) if found else 0.0


def test_checkpoints_are_served_beside_the_crls_and_an_edited_projection_stops_the_full_crl(tmp_path: Path) -> None:
    config_path = init_ca(tmp_path / "ca")
    text = config_path.read_text()
    config_path.write_text(text.replace("checkpoint_every_events = 1000", "checkpoint_every_events = 1"))
    srv = ServerProcess(config_path)
    srv.start()
    try:
        certs = [issue(srv, f"svc{i}") for i in range(2)]
        revoke(srv, certs[0], "keyCompromise")
        head = last_event(config_path)["seq"]
        url = f"{srv.public_url}/crl/checkpoints/latest.json"
        doc = poll(lambda: served_checkpoint(url, head), WAIT_SECONDS, interval=0.2)
        assert doc is not None, f"no checkpoint of seq {head} served at {url}"
        assert httpx.get(f"{srv.public_url}/crl/checkpoints/{head:012d}.json", timeout=10).status_code == 200

        ok = pca("audit", "verify", "--config", config_path, "--checkpoint", url)
        assert "audit OK" in ok.stdout
        assert "projection matches a replay of the log (3 certificates compared)" in ok.stdout
        assert "checkpoint seq " in ok.stdout and "the log holds it" in ok.stdout

        assert poll(lambda: crl_lists(srv, certs[0].serial), WAIT_SECONDS, interval=0.2)
        with contextlib.closing(sqlite3.connect(ca_dir(srv) / "pca.db")) as conn:
            conn.execute(
                "UPDATE certificates SET status = 'good', revoked_at = NULL, reason = NULL WHERE serial = ?",
                (certs[0].serial_hex,),
            )
            conn.commit()
        failed = pca("audit", "verify", "--config", config_path, check=False)
        assert failed.returncode == 1
        assert f"certificate issuing-ca/{certs[0].serial_hex}: the projection has status good" in failed.stderr

        # The next revocation's full CRL (made in the publisher's CRL worker) would drop the first one: refused.
        revoke(srv, certs[1], "superseded")
        assert poll(lambda: refusals(srv) >= 1, WAIT_SECONDS, interval=0.2), "the full CRL was not refused"
        assert crl_lists(srv, certs[0].serial)  # the CRL served still lists it
        assert "revoked by seq" in srv.log_path.read_text()

        pca("rebuild", "--config", config_path)
        assert "audit OK" in pca("audit", "verify", "--config", config_path, "--checkpoint", url).stdout

        # Someone deletes the last event and rewinds the head: the chain still verifies, the checkpoint does not.
        last = last_event(config_path)
        assert poll(lambda: served_checkpoint(url, last["seq"]), WAIT_SECONDS, interval=0.2)
        with contextlib.closing(sqlite3.connect(ca_dir(srv) / "pca.db")) as conn:
            conn.execute("DELETE FROM events WHERE seq = ?", (last["seq"],))
            conn.execute("UPDATE log_head SET seq = ?, hash = ? WHERE id = 1", (last["seq"] - 1, last["prev_hash"]))
            conn.commit()
        rewound = pca("audit", "verify", "--config", config_path, "--checkpoint", url, check=False)
        assert rewound.returncode == 1
        assert f"event log broken at seq {last['seq']}:" in rewound.stderr
        assert f"the log ends at seq {last['seq'] - 1}" in rewound.stderr

        # The publisher notices too: it signs no checkpoint of the rewound log and says so in /healthz.
        def alarm() -> bool:
            return "audit checkpoints stopped" in httpx.get(f"{srv.admin_url}/healthz", timeout=10).text

        assert poll(alarm, WAIT_SECONDS, interval=0.2), httpx.get(f"{srv.admin_url}/healthz", timeout=10).text
    finally:
        srv.stop()
    assert_clean_log(srv)
