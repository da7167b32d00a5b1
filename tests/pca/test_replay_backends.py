"""``pca replay`` (docs/runbooks.md, runbook 6) on each backend: a database restored from a backup older than the
last revocations gets them back from the ``pca events`` archive, ``pca audit verify`` passes on the replayed log,
and a tampered archive is refused with nothing appended.

SQLite is backed up with its online backup API and restored by copying the file back; PostgreSQL with
``pg_dump`` and ``pg_restore`` into an emptied database, as the runbook says.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import sqlite3
import subprocess
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from cryptography import x509

from pca.config import load_config
from revocation.eventlog import canonical_payload, row_hash
from tests.pca.test_ca_revocation_e2e import pca
from tests.support.crl import crl_number, listed
from tests.support.openssl_ca import openssl
from tests.support.postgres import create_database, drop_database
from tests.support.processes import ServerProcess, init_ca
from tests.support.scaled import wait_for


@dataclass
class Backend:
    """A CA directory on one backend, and how its database is backed up and restored."""

    config: Path
    backup: Callable[[Path], None]
    restore: Callable[[Path], None]


def sqlite_backend(config: Path) -> Backend:
    db = load_config(config).database

    def backup(to: Path) -> None:
        with contextlib.closing(sqlite3.connect(db)) as src, contextlib.closing(sqlite3.connect(to)) as dst:
            src.backup(dst)

    def restore(source: Path) -> None:
        shutil.copyfile(source, db)
        for suffix in ("-wal", "-shm"):
            db.with_name(db.name + suffix).unlink(missing_ok=True)

    return Backend(config, backup, restore)


def postgres_backend(config: Path, server_dsn: str, dsn: str) -> Backend:
    name = dsn.rsplit("/", 1)[1]

    def backup(to: Path) -> None:
        subprocess.run(["pg_dump", "--format=custom", "--file", str(to), dsn], check=True, timeout=120)

    async def empty() -> None:
        admin = await asyncpg.connect(server_dsn)
        try:
            await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
            await admin.execute(f'CREATE DATABASE "{name}"')
        finally:
            await admin.close()

    def restore(source: Path) -> None:
        asyncio.run(empty())
        subprocess.run(["pg_restore", "--no-owner", "--exit-on-error", "-d", dsn, str(source)], check=True, timeout=120)

    return Backend(config, backup, restore)


def checkpoint_every_event(config: Path) -> Path:
    """The publisher signs a checkpoint of the log's head after every event (1,000 by default)."""
    text = config.read_text()
    assert "checkpoint_every_events = 1000" in text
    config.write_text(text.replace("checkpoint_every_events = 1000", "checkpoint_every_events = 1"))
    return config


@pytest.fixture(params=["sqlite", "postgres"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    server_dsn: str | None = None if request.param == "sqlite" else request.getfixturevalue("postgres_dsn")
    if server_dsn is None:
        yield sqlite_backend(checkpoint_every_event(await asyncio.to_thread(init_ca, tmp_path / "ca")))
        return
    dsn = await create_database(server_dsn)
    try:
        config = await asyncio.to_thread(init_ca, tmp_path / "ca", "--database-url", dsn)
        yield postgres_backend(checkpoint_every_event(config), server_dsn, dsn)
    finally:
        await drop_database(server_dsn, dsn)


def issue(config: Path, cn: str, out: Path) -> str:
    done = pca("issue", "--config", config, "--subject", f"CN={cn}", "--dns", f"{cn}.internal",
               "--out", out / f"{cn}.pem", "--key-out", out / f"{cn}.key")  # fmt: skip
    return next(line for line in done.stdout.splitlines() if re.fullmatch(r"[0-9a-f]+", line))


def tampered(archive: Path, out: Path, seq: int, change: Callable[[dict[str, Any]], object]) -> Path:
    """``archive`` with event ``seq`` changed by ``change`` (its recorded hash left as it was)."""
    lines = []
    for line in archive.read_text().splitlines():
        event = json.loads(line)
        if event["seq"] == seq:
            change(event)
        lines.append(json.dumps(event))
    out.write_text("\n".join(lines) + "\n")
    return out


def reason(event: dict[str, Any], value: str) -> dict[str, Any]:
    event["payload"]["reason"] = value
    return event


def rehash(event: dict[str, Any]) -> None:
    """Give ``event`` the hash of its (changed) content, as a forger who knows the chain's scheme would."""
    fields = ("stream", "version", "type")
    event["hash"] = row_hash(
        event["prev_hash"], event["seq"], *(event[f] for f in fields), canonical_payload(event["payload"]),
        event["actor"], event["request_id"], event["recorded_at"],
    )  # fmt: skip


def forged_tail(archive: Path, out: Path, seq: int) -> Path:
    """``archive`` with revocation ``seq`` made milder and every event from it on hashed and linked again."""
    events = [json.loads(line) for line in archive.read_text().splitlines()]
    previous = None
    for event in events:
        if event["seq"] == seq:
            reason(event, "superseded")
        if event["seq"] >= seq:
            if previous is not None:
                event["prev_hash"] = previous["hash"]
            rehash(event)
        previous = event
    out.write_text("".join(json.dumps(e) + "\n" for e in events))
    return out


def crl_lists(public_url: str, wanted: dict[int, x509.ReasonFlags], above: int = 0) -> int:
    """The number of the issuing CA's full CRL if it is above ``above`` and lists ``wanted`` with those reasons,
    else 0."""
    crl = x509.load_der_x509_crl(httpx.get(f"{public_url}/crl/issuing-ca.crl", timeout=10).content)
    ok = {s: r for s, r in listed(crl).items() if s in wanted} == wanted and crl_number(crl) > above
    return crl_number(crl) if ok else 0


def ocsp_status(d: Path, cert: Path, url: str) -> str | None:
    out = openssl("ocsp", "-issuer", d / "issuing-ca.pem", "-cert", cert, "-url", url,
                  "-CAfile", d / "ca-chain.pem", "-no_nonce")  # fmt: skip
    match = re.search(r": (good|revoked|unknown)", out)
    return match.group(1) if match and "Response verify OK" in out else None


def test_a_restored_database_gets_its_later_revocations_back_from_the_archive(backend: Backend, tmp_path: Path) -> None:
    conf, d = backend.config, backend.config.parent
    srv = ServerProcess(conf)
    srv.start()
    try:
        early, late = issue(conf, "svc1", tmp_path), issue(conf, "svc2", tmp_path)
        backend.backup(tmp_path / "backup")
        # After the backup: two revocations and one more certificate, which the backup lacks.
        pca("revoke", "--config", conf, early, "--reason", "keyCompromise", "--invalidity-date", "2026-01-02T03:04:05Z")
        pca("revoke", "--config", conf, late, "--reason", "superseded")
        issue(conf, "svc3", tmp_path)
        before = {s: json.loads(pca("status", "--config", conf, s, "--json").stdout) for s in (early, late)}
        wanted = {int(early, 16): x509.ReasonFlags.key_compromise, int(late, 16): x509.ReasonFlags.superseded}
        # Published before the restore: the CRL numbers in the restored database are behind those served.
        published = wait_for("the full CRL to list both revocations", lambda: crl_lists(srv.public_url, wanted))
        archive = tmp_path / "events.jsonl"
        archive.write_text(pca("events", "--config", conf, "--after", "0", "--limit", "1000").stdout)
        head = int(json.loads(archive.read_text().splitlines()[-1])["seq"])
        latest = d / "crl" / "checkpoints" / "latest.json"

        def checkpointed() -> bool:
            return latest.exists() and json.loads(latest.read_text())["checkpoint"]["seq"] == head

        wait_for("a signed checkpoint of the archive's last event", checkpointed)
        checkpoint = tmp_path / "checkpoint-before-restore.json"
        shutil.copyfile(latest, checkpoint)
    finally:
        srv.stop()
    backend.restore(tmp_path / "backup")
    dry_run = pca("replay", "--config", conf, "--from", archive, "--dry-run").stdout
    restored_head = int(dry_run.rsplit("the log ends at ", 1)[1])
    assert f"would replay {head - restored_head} events" in dry_run and 0 < restored_head < head

    # Tampered archives, each refused with nothing appended: a revocation it would replay made milder (its
    # recorded hash kept, then recomputed so that only the next event's link gives it away), and an event the
    # restored log holds.
    first_revocation = next(
        json.loads(line)["seq"] for line in archive.read_text().splitlines() if '"reason":"keyCompromise"' in line
    )
    milder = tampered(archive, tmp_path / "milder.jsonl", first_revocation, lambda e: reason(e, "superseded"))
    out = pca("replay", "--config", conf, "--from", milder, ok=False)
    assert out.returncode == 1 and f"seq {first_revocation} of {milder} does not match its hash" in out.stderr
    rehashed = tampered(
        archive, tmp_path / "rehashed.jsonl", first_revocation, lambda e: rehash(reason(e, "superseded"))
    )
    out = pca("replay", "--config", conf, "--from", rehashed, ok=False)
    assert out.returncode == 1 and f"seq {first_revocation + 1} of {rehashed} does not follow" in out.stderr
    held = tampered(archive, tmp_path / "held.jsonl", restored_head, lambda e: e.update(actor="cli:mallory"))
    out = pca("replay", "--config", conf, "--from", held, ok=False)
    assert out.returncode == 1 and f"seq {restored_head} of {held} does not match its hash" in out.stderr
    assert "Traceback" not in out.stderr
    assert (
        f"would replay {head - restored_head} events"
        in pca("replay", "--config", conf, "--from", archive, "--dry-run").stdout
    )  # nothing was appended

    # A forger who rewrites every event from that revocation on and computes their hashes and links again
    # makes an archive intact by its own hashes; the signed checkpoint gives it away.
    forged = forged_tail(archive, tmp_path / "forged.jsonl", first_revocation)
    assert "would replay" in pca("replay", "--config", conf, "--from", forged, "--dry-run").stdout
    out = pca("replay", "--config", conf, "--from", forged, "--checkpoint", checkpoint, ok=False)
    assert out.returncode == 1 and f"seq {head} of {forged} is not the checkpointed one" in out.stderr, out.stderr
    short = tmp_path / "short.jsonl"
    short.write_text("".join(archive.read_text().splitlines(keepends=True)[:-1]))
    out = pca("replay", "--config", conf, "--from", short, "--checkpoint", checkpoint, ok=False)
    assert out.returncode == 1 and f"before the checkpoint's seq {head}" in out.stderr, out.stderr

    replayed = pca("replay", "--config", conf, "--from", archive, "--checkpoint", checkpoint).stdout
    assert f"archive anchored: seq {head} has the hash checkpointed at" in replayed, replayed
    assert f"replayed {head - restored_head} events" in replayed and f"to {head}, as in the archive" in replayed
    assert "audit OK" in pca("audit", "verify", "--local", "--config", conf).stdout

    srv = ServerProcess(conf)
    srv.start()
    try:
        for serial in (early, late):
            after = json.loads(pca("status", "--config", conf, serial, "--json").stdout)
            assert after == before[serial], f"{serial}: {after} after the replay, {before[serial]} before"
        url = f"{srv.public_url}/ocsp"
        wait_for("OCSP to say revoked again", lambda: ocsp_status(d, tmp_path / "svc1.pem", url) == "revoked")
        wait_for("a newer full CRL listing both", lambda: crl_lists(srv.public_url, wanted, above=published))
    finally:
        srv.stop()
