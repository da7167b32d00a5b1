"""``pca events --follow --format json`` against a real ``pca serve`` (admin API over TLS): what a SIEM or a log
shipper gets. Every event once, in order, as one JSON object a line; through a server restart; a clean stop
on SIGINT that says where to resume; a quiet exit when the reader goes away; a refusal that is not retried."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO, Any

from revocation.admin.tokens import add_token
from tests.support.processes import ServerProcess, init_ca, running_server


def pca(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "pca", *map(str, args)], capture_output=True, text=True, timeout=120, env=env
    )
    assert done.returncode == 0, f"pca {' '.join(map(str, args))}:\n{done.stdout}{done.stderr}"
    return done


def follow(config: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "pca", "events", "--config", str(config), "--follow", "--format", "json",
         "--poll", "0.2", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip


def stop(proc: subprocess.Popen[str] | subprocess.Popen[bytes]) -> None:
    proc.kill()
    proc.wait()
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


def lines_of(stream: IO[str]) -> queue.Queue[str]:
    """Each line of ``stream`` as it comes, read in a thread (so a test waits with a timeout)."""
    out: queue.Queue[str] = queue.Queue()

    def read() -> None:
        for line in stream:
            out.put(line)

    threading.Thread(target=read, daemon=True).start()
    return out


def events_until(
    lines: queue.Queue[str], wanted: str, serial: str | None = None, timeout: float = 60
) -> list[dict[str, Any]]:
    """Events read from ``lines`` up to and including the first of type ``wanted`` (of ``serial`` if given)."""
    got = []
    while True:
        event = json.loads(lines.get(timeout=timeout))  # stdout holds nothing but JSON objects
        got.append(event)
        if event["type"] == wanted and serial in (None, event["payload"].get("serial")):
            return got


def test_follow_streams_every_event_once_through_a_restart_and_stops_cleanly_on_sigint(tmp_path: Path) -> None:
    srv = ServerProcess(init_ca(tmp_path / "ca", tls=True))
    srv.start()
    proc = follow(srv.config_path)
    try:
        out, err = lines_of(proc.stdout), lines_of(proc.stderr)  # type: ignore[arg-type]
        seen = events_until(out, "ResponderCertRotated")  # pca init's events, the signers among them
        issued = pca("issue", "--config", srv.config_path, "--subject", "CN=siem", "--dns", "siem.internal",
                     "--out", tmp_path / "siem.pem", "--key-out", tmp_path / "siem.key")  # fmt: skip
        serial = issued.stdout.splitlines()[0]
        seen += events_until(out, "CertificateIssued", serial)

        srv.stop()  # the follower keeps retrying, on stderr only
        assert "retrying" in err.get(timeout=60)
        srv.start()
        pca("revoke", "--config", srv.config_path, serial, "--reason", "keyCompromise")
        revoked = events_until(out, "CertificateRevoked", serial)
        seen += revoked
        assert revoked[-1]["actor"] == "admin" and revoked[-1]["hash"]

        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
        rest = "".join(err.get(timeout=5) for _ in range(err.qsize()))
        last = int(revoked[-1]["seq"])
        assert f"resume with --after {last}" in rest and "Traceback" not in rest
    finally:
        stop(proc)
        srv.stop()
    seqs = [int(e["seq"]) for e in seen]
    assert seqs == list(range(1, len(seqs) + 1))  # every event once, in order, nothing lost over the restart

    srv.start()
    try:
        resumed = pca("events", "--config", srv.config_path, "--after", str(last - 1))
    finally:
        srv.stop()
    assert [json.loads(line)["seq"] for line in resumed.stdout.splitlines()] == [last]


def test_follow_exits_quietly_when_its_reader_goes_away_and_refuses_a_role_that_may_not_read_the_log(
    tmp_path: Path,
) -> None:
    with running_server(tmp_path / "ca", tls=True) as srv:
        auditor = add_token(srv.config.tokens_db, "siem", "auditor")
        revoker = add_token(srv.config.tokens_db, "ops", "revoker")
        env = {**os.environ, "PCA_TOKEN": auditor}
        proc = subprocess.Popen(
            [sys.executable, "-m", "pca", "events", "--config", str(srv.config_path), "--follow", "--poll", "0.2"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        try:
            assert proc.stdout is not None and proc.stderr is not None
            first = json.loads(proc.stdout.readline())
            assert first["seq"] == 1  # an auditor's token reads the log
            # The reader goes away (| head -1, a shipper restarting) while the log is idle: the follower
            # leaves then, not at the next event.
            proc.stdout.close()
            assert proc.wait(timeout=60) == 0
            assert b"Traceback" not in proc.stderr.read()
        finally:
            stop(proc)

        refused = subprocess.run(
            [sys.executable, "-m", "pca", "events", "--config", str(srv.config_path), "--follow"],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "PCA_TOKEN": revoker},
        )
        assert refused.returncode == 1 and refused.stdout == ""
        assert "role 'revoker' may not read the event log" in refused.stderr

        # A server whose certificate the CA bundle did not issue is no passing fault: no retrying for ever.
        other = init_ca(tmp_path / "other", tls=True).parent / "ca-chain.pem"
        untrusted = subprocess.run(
            [sys.executable, "-m", "pca", "events", "--config", str(srv.config_path), "--follow", "--ca-file", other],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert untrusted.returncode == 1 and untrusted.stdout == ""
        assert "CERTIFICATE_VERIFY_FAILED" in untrusted.stderr and "--ca-file" in untrusted.stderr
