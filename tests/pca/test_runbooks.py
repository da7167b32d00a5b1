"""docs/runbooks.md cannot rot: every runbook's ``sh`` blocks run end to end, in order, against a real
``pca serve`` in a temporary directory, with the placeholders the document lists set (``$D``, ``$PUBLIC``,
``$ADMIN``, ``$SERIAL``, ``$CERT``, ``$ARCHIVE``, ``$BACKUP``, ``stop_pca``/``start_pca``).

Each runbook gets a fresh CA and server. Where a runbook is about a fault, the test makes the fault first (a
projection edited behind pca's back, a database restored from an older backup), as it would happen, and the
runbook's commands must then find and fix it; the output is checked for what the document says it shows.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sqlite3
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509

from pca.config import load_config
from tests.support.processes import init_ca
from tests.support.scaled import wait_for

DOC = Path(__file__).resolve().parents[2] / "docs" / "runbooks.md"

# What each runbook's output must show (what the document says it shows).
EXPECT = {
    "1": ["revoked (keyCompromise)", ": revoked", "Reason: keyCompromise", "CRL number", "SLO 5s: met"],
    "2": [
        "revoked (cACompromise)",
        "created issuing CA issuing-b",
        "svc1-b.pem: OK",
        "CA Compromise",
        "certificate revoked",
        '"replaced"',
        '"issuing-ca": "the CA certificate of issuer issuing-ca',
        "replaced by issuer issuing-b",
        "certificates of issuing-ca (cACompromise)",
        "skipped CA        0",
        "Reason: cACompromise",
    ],
    "3": ["OCSP signer of issuing-ca rotated", "Response verify OK", '"lag_events": 0'],
    "4": ["200", "ocsp_presigner_lag_events", "true"],
    "5": [
        "the CRL would drop them",
        'result="projection_disagrees"} 1.0',
        "the projection has status good",
        "rebuilt the certificate-status projection",
        "audit OK",
    ],
    "6": ["event log broken at seq", "but the log ends at seq", "would replay", "replayed", "audit OK", "revoked"],
}

PREAMBLE = r"""
set -euo pipefail
start_pca() {
    pca serve --config "$D/pca.toml" >> "$D/serve.log" 2>&1 &
    echo $! > "$D/serve.pid"
    for _ in $(seq 300); do
        if curl -sf -o /dev/null "$PUBLIC/crl/issuing-ca.crl" && curl -sf -o /dev/null "$PUBLIC/healthz" &&
            curl -sf -o /dev/null --cacert "$D/ca-chain.pem" "$ADMIN/healthz"; then
            return 0
        fi
        sleep 0.1
    done
    echo "pca serve did not start" >&2; return 1
}
stop_pca() {
    local pid; pid=$(cat "$D/serve.pid")
    kill "$pid"
    # (the server was started by another shell: once it exits it may linger as a zombie until reaped)
    while kill -0 "$pid" 2>/dev/null && ! grep -q ') Z' "/proc/$pid/stat" 2>/dev/null; do sleep 0.1; done
}
"""


def runbooks() -> dict[str, tuple[str, str]]:
    """number -> (title, the runbook's sh blocks joined), in the document's order."""
    out = {}
    for section in re.split(r"^## ", DOC.read_text(), flags=re.M)[1:]:
        title = section.splitlines()[0]
        blocks = re.findall(r"^```sh\n(.*?)^```", section, flags=re.M | re.S)
        number = title.split(".", 1)[0]
        if blocks:
            out[number] = (title, "\n".join(blocks))
    return out


def test_every_runbook_has_commands_and_is_checked() -> None:
    found = runbooks()
    assert sorted(found) == sorted(EXPECT), f"runbooks {sorted(found)}, checked {sorted(EXPECT)}"
    for _title, script in found.values():
        assert "pca " in script


class Setting:
    """A CA directory, the placeholders' values, and ``bash`` with them."""

    def __init__(self, tmp_path: Path) -> None:
        config = init_ca(tmp_path / "D", tls=True)
        text = config.read_text()
        config.write_text(text.replace("checkpoint_every_events = 1000", "checkpoint_every_events = 1"))
        self.d = config.parent
        cfg = load_config(config)
        self.env = {
            **os.environ,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            "D": str(self.d),
            "PUBLIC": cfg.public_url,
            "ADMIN": cfg.admin_url,
            "CERT": str(self.d / "svc1.pem"),
            "ARCHIVE": str(tmp_path / "events.jsonl"),
            "BACKUP": str(tmp_path / "backup.db"),
        }

    def bash(self, script: str) -> str:
        done = subprocess.run(
            ["bash", "-c", PREAMBLE + "set -x\n" + script],
            capture_output=True,
            text=True,
            timeout=600,
            env=self.env,
        )
        output = done.stdout + done.stderr
        assert done.returncode == 0, f"exit {done.returncode}:\n{output}\n--- serve.log:\n{self.serve_log()}"
        return output

    def pca(self, *args: str) -> str:
        """``pca ARGS``' standard output."""
        done = subprocess.run(["pca", *args], capture_output=True, text=True, timeout=120, env=self.env)
        assert done.returncode == 0, f"pca {' '.join(args)}:\n{done.stdout}{done.stderr}"
        return done.stdout

    def serve_log(self) -> str:
        path = self.d / "serve.log"
        return path.read_text()[-5000:] if path.exists() else ""

    def stop(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            pid = int((self.d / "serve.pid").read_text())
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and alive(pid):
                time.sleep(0.1)
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def alive(pid: int) -> bool:
    try:
        return ") Z" not in Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False


@contextlib.contextmanager
def setting(tmp_path: Path) -> Iterator[Setting]:
    s = Setting(tmp_path)
    try:
        s.bash("start_pca")
        serial = s.pca("issue", "--config", f"{s.d}/pca.toml", "--subject", "CN=svc1", "--dns", "svc1.internal",
                       "--out", s.env["CERT"], "--key-out", f"{s.d}/svc1.key")  # fmt: skip
        s.env["SERIAL"] = next(line for line in serial.splitlines() if re.fullmatch(r"[0-9a-f]+", line))
        yield s
    finally:
        s.stop()


def admin_get(s: Setting, path: str) -> httpx.Response:
    return httpx.get(s.env["ADMIN"] + path, timeout=10, verify=ssl.create_default_context(cafile=s.d / "ca-chain.pem"))


def refused_crls(s: Setting) -> bool:
    return 'result="projection_disagrees"} 1' in admin_get(s, "/metrics").text


def crl_refused(s: Setting) -> None:
    """The status projection edited behind pca's back (a revocation undone): the next full CRL is refused."""
    conf = f"{s.d}/pca.toml"
    s.pca("revoke", "--config", conf, s.env["SERIAL"], "--reason", "keyCompromise")
    url, serial = f"{s.env['PUBLIC']}/crl/issuing-ca.crl", int(s.env["SERIAL"], 16)
    wait_for("the full CRL to list the revocation", lambda: x509.load_der_x509_crl(httpx.get(url, timeout=10).content)
             .get_revoked_certificate_by_serial_number(serial) is not None)  # fmt: skip
    with contextlib.closing(sqlite3.connect(s.d / "pca.db")) as conn:
        conn.execute(
            "UPDATE certificates SET status = 'good', revoked_at = NULL, reason = NULL WHERE serial = ?",
            (s.env["SERIAL"],),
        )
        conn.commit()
    other = s.pca("issue", "--config", conf, "--subject", "CN=svc2", "--dns", "svc2.internal",
                  "--out", f"{s.d}/svc2.pem", "--key-out", f"{s.d}/svc2.key").splitlines()  # fmt: skip
    s.pca("revoke", "--config", conf, next(x for x in other if re.fullmatch(r"[0-9a-f]+", x)), "--reason", "superseded")
    wait_for("the storer to refuse a full CRL", lambda: refused_crls(s))
    # What the runbook reads first: the public listener's /healthz, whose workers learn of pca serve's
    # roles from a report refreshed a few times a second.
    wait_for("the public /healthz to name the refusal", lambda: "problem" in public_publisher(s))


def public_publisher(s: Setting) -> dict[str, object]:
    part: dict[str, object] = httpx.get(s.env["PUBLIC"] + "/healthz", timeout=10).json().get("publisher", {})
    return part


def restored_from_old_backup(s: Setting) -> None:
    """A backup taken, then more events (revocations among them) archived by a SIEM follower and checkpointed."""
    conf = f"{s.d}/pca.toml"
    with (
        contextlib.closing(sqlite3.connect(s.d / "pca.db")) as src,
        contextlib.closing(sqlite3.connect(s.env["BACKUP"])) as dst,
    ):
        src.backup(dst)
    with open(s.env["ARCHIVE"], "w") as archive:
        follower = subprocess.Popen(
            ["pca", "events", "--config", conf, "--follow", "--format", "json", "--poll", "0.2"],
            stdout=archive,
            stderr=subprocess.DEVNULL,
            env=s.env,
        )
        try:
            s.pca("revoke", "--config", conf, s.env["SERIAL"], "--reason", "keyCompromise")
            head = json.loads(s.pca("events", "--config", conf, "--after", "0", "--limit", "1000").splitlines()[-1])
        finally:
            wait_for(
                "the archive to hold the head", lambda: f'"seq":{head["seq"]},' in Path(s.env["ARCHIVE"]).read_text()
            )
            follower.send_signal(signal.SIGINT)
            follower.wait(timeout=30)

    def checkpointed() -> bool:
        latest = s.d / "crl" / "checkpoints" / "latest.json"
        return latest.exists() and json.loads(latest.read_text())["checkpoint"]["seq"] == head["seq"]

    wait_for("a checkpoint of the head", checkpointed)


FAULTS: dict[str, Callable[[Setting], None]] = {"5": crl_refused, "6": restored_from_old_backup}


@pytest.mark.parametrize("number", sorted(EXPECT))
def test_runbook_runs_end_to_end(tmp_path: Path, number: str) -> None:
    title, script = runbooks()[number]
    with setting(tmp_path) as s:
        if number in FAULTS:
            FAULTS[number](s)
        output = s.bash(script)
        for expected in EXPECT[number]:
            assert expected in output, f"runbook {title!r}: {expected!r} not in its output:\n{output}"
        assert "Traceback" not in output and "Traceback" not in s.serve_log()
