"""``pca import`` from a real ``openssl ca`` directory, and what ``pca serve`` answers about it afterwards."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import getpass
import json
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from cryptography import x509

from pca.config import load_config
from pca.runtime import connect_runtime
from revocation.clock import SystemClock
from revocation.importing.openssl_index import newcerts_filename
from tests.support.external import EXTERNAL, add_external_issuer, give_signer
from tests.support.openssl_index_ca import issue, make_ca, revoke
from tests.support.processes import ServerProcess, init_ca
from tests.support.scaled import ocsp_answer, ocsp_get_url_for_serial, wait_for

VALID, COMPROMISED, HELD, LATER = 0xFF, 0x100, 0x101, 0x102


def pca(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pca.cli", *map(str, args)], capture_output=True, text=True, timeout=120
    )


@pytest.fixture
def legacy(tmp_path: Path) -> Path:
    """An openssl ca: a valid, a compromised (compromise time 2026-01-01), a held and a not yet revoked one."""
    d = tmp_path / "legacy"
    make_ca(d, "Legacy CA")
    for cn in ("valid", "compromised", "held", "later"):
        issue(d, cn)
    revoke(d, d / "newcerts" / newcerts_filename(COMPROMISED), "-crl_compromise", "20260101000000Z")
    revoke(d, d / "newcerts" / newcerts_filename(HELD), "-crl_hold", "holdInstructionReject")
    return d


@pytest.fixture
def config(tmp_path: Path, legacy: Path) -> Path:
    """A pca CA with the openssl CA recorded as an external issuer, and an OCSP signer for it."""
    path = init_ca(tmp_path / "pca")

    async def add() -> None:
        rt = await connect_runtime(load_config(path), SystemClock())
        try:
            await add_external_issuer(rt.log, legacy / "ca.pem")
            await give_signer(rt.log, legacy / "ca.pem", legacy / "ca.key", tmp_path / "pca" / "keys")
        finally:
            await rt.aclose()

    asyncio.run(add())
    return path


def import_index(config: Path, legacy: Path, *extra: str | Path) -> subprocess.CompletedProcess[str]:
    index = extra[0] if extra and str(extra[0]).endswith(".txt") else legacy / "index.txt"
    rest = extra[1:] if extra and str(extra[0]).endswith(".txt") else extra
    return pca("import", "--config", config, "--issuer", EXTERNAL, "--openssl-index", index,
               "--certs-dir", legacy / "newcerts", *rest)  # fmt: skip


def test_import_then_again_is_a_no_op(config: Path, legacy: Path) -> None:
    first = import_index(config, legacy, "--json")
    assert first.returncode == 0, first.stderr
    summary = json.loads(first.stdout)
    assert (summary["imported"], summary["already_present"], summary["revocations_recorded"]) == (4, 0, 2)
    assert summary["refused"] == 0 and summary["request_id"].startswith("import-")

    again = import_index(config, legacy, "--workers", "0")
    assert again.returncode == 0, again.stderr
    assert re.search(r"imported\s+0\n\s+already present\s+4\n", again.stdout), again.stdout
    assert "import:" in again.stderr or again.stderr == ""  # stderr is no terminal: no progress bar codes
    assert "\x1b[K" not in again.stderr

    with contextlib.closing(sqlite3.connect(load_config(config).database)) as conn:
        audit = conn.execute("SELECT actor, request_id FROM events WHERE type LIKE 'Certificate%' AND seq > 4")
        assert set(audit.fetchall()) == {(f"cli:{getpass.getuser()}", summary["request_id"])}


def test_clear_errors(config: Path, legacy: Path, tmp_path: Path) -> None:
    unknown = pca("import", "--config", config, "--issuer", "nope", "--certs", legacy / "newcerts")
    assert unknown.returncode == 1 and "unknown issuer 'nope' (known: root-ca, issuing-ca, legacy-ca)" in unknown.stderr
    missing = import_index(config, legacy, tmp_path / "absent.txt")
    assert missing.returncode == 1 and "absent.txt does not exist" in missing.stderr

    broken = tmp_path / "index.txt"
    lines = (legacy / "index.txt").read_text().splitlines()
    broken.write_text("\n".join([lines[0], "R\tgarbage", *lines[1:]]) + "\n")
    stopped = import_index(config, legacy, broken, "--workers", "0")
    assert stopped.returncode == 1
    assert f"stopped at {broken}:2: expected 6 tab-separated fields, found 2" in stopped.stderr
    assert re.search(r"imported\s+1\n", stopped.stdout), stopped.stdout

    went_on = import_index(config, legacy, broken, "--on-error", "continue")
    assert went_on.returncode == 1
    assert f"pca: refused {broken}:2: expected 6 tab-separated fields" in went_on.stderr
    assert re.search(r"imported\s+3\n\s+already present\s+1\n", went_on.stdout), went_on.stdout


def test_a_recorder_token_can_be_created(config: Path) -> None:
    made = pca("token", "create", "--config", config, "--name", "issuing-core", "--role", "recorder")
    assert made.returncode == 0, made.stderr
    assert made.stdout.startswith("pca_")


def _openssl_ocsp(srv: ServerProcess, legacy: Path, serial: int) -> str:
    done = subprocess.run(
        ["openssl", "ocsp", "-issuer", legacy / "ca.pem", "-cert", legacy / "newcerts" / newcerts_filename(serial),
         "-url", f"{srv.public_url}/ocsp", "-CAfile", legacy / "ca.pem", "-no_nonce"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    return done.stdout + done.stderr


@pytest.mark.e2e
def test_imported_statuses_are_served_and_a_recorded_certificate_becomes_good(config: Path, legacy: Path) -> None:
    assert import_index(config, legacy).returncode == 0
    srv = ServerProcess(config)
    srv.start()
    try:
        compromised = wait_for("the compromised certificate served", lambda: _served(srv, legacy, COMPROMISED))
        assert "Response verify OK" in compromised
        assert "Reason: keyCompromise" in compromised
        revoked_at = re.search(r"Revocation Time: (.+)", compromised)
        index_line = (legacy / "index.txt").read_text().splitlines()[1]
        stamp = index_line.split("\t")[2].split(",")[0]
        expected = datetime.datetime.strptime(stamp, "%y%m%d%H%M%SZ").strftime("%b %e %H:%M:%S %Y GMT")
        assert revoked_at is not None and revoked_at.group(1).strip() == expected
        assert "Reason: certificateHold" in _served(srv, legacy, HELD)

        # The issuing core records what it issues next; until then its serial is unauthorized.
        issuer_cert = load_pem(legacy / "ca.pem")
        url = ocsp_get_url_for_serial(f"{srv.public_url}/ocsp", issuer_cert, 0x103)
        with httpx.Client(timeout=10) as client:
            assert ocsp_answer(client, url) == (200, "UNAUTHORIZED")
            issue(legacy, "next")
            token = pca("token", "create", "--config", config, "--name", "core", "--role", "recorder").stdout.strip()
            pem = (legacy / "newcerts" / newcerts_filename(0x103)).read_text()
            resp = client.post(
                f"{srv.admin_url}/v1/certificates/import",
                json={"issuer": EXTERNAL, "certificate": pem},
                headers={"authorization": f"Bearer {token}"},
            )
            assert resp.status_code == 201, resp.text
            wait_for("the recorded certificate served good", lambda: ocsp_answer(client, url) == (200, "good"))
    finally:
        srv.stop()


def _served(srv: ServerProcess, legacy: Path, serial: int) -> str | None:
    text = _openssl_ocsp(srv, legacy, serial)
    return text if "Response verify OK" in text and ": revoked" in text else None


def load_pem(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())
