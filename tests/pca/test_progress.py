"""Feedback on long work: ``pca rebuild``, ``pca import`` and ``pca replay`` draw a progress bar on a terminal (a
pseudo-terminal here, as a person's shell gives them) and write plain lines into a pipe (a log, CI)."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import pty
import re
import select
import shutil
import sqlite3
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from pca.cli.progress import Working
from pca.config import load_config
from pca.runtime import connect_runtime
from revocation.clock import SystemClock
from tests.pca.test_cli_import import config, import_index, legacy  # noqa: F401  (fixtures)
from tests.support.events import issued, new
from tests.support.external import EXTERNAL
from tests.support.processes import init_ca

CERTIFICATES = 3000  # three pages of the SQLite rebuild


def pca_argv(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "pca.cli", *map(str, args)]


def on_a_terminal(argv: list[str]) -> tuple[int, str, str]:
    """Run ``argv`` with stderr on a pseudo-terminal; returns (status, stdout, what the terminal showed)."""
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # 24 rows, 100 columns
    try:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=terminal, stdin=subprocess.DEVNULL)
    finally:
        os.close(terminal)
    shown = bytearray()
    deadline = time.monotonic() + 120
    while True:
        if not select.select([controller], [], [], max(0.0, deadline - time.monotonic()))[0]:
            proc.kill()
            pytest.fail(f"{argv} still running after 120 s; the terminal showed {bytes(shown)!r}")
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # EIO: every process holding the terminal has exited
            break
        if not chunk:
            break
        shown += chunk
    os.close(controller)
    assert proc.stdout is not None
    out = proc.stdout.read().decode()
    proc.stdout.close()
    return proc.wait(timeout=120), out, shown.decode()


@pytest.fixture
def big_log(tmp_path: Path) -> tuple[Path, int]:
    """A CA whose log holds CERTIFICATES issuances besides what pca init recorded; returns (config, events)."""
    path = init_ca(tmp_path / "pca")

    async def fill() -> int:
        rt = await connect_runtime(load_config(path), SystemClock())
        try:
            await rt.log.append([new(issued(serial, "issuing-ca")) for serial in range(1, CERTIFICATES + 1)])
            return await rt.log.head()
        finally:
            await rt.aclose()

    return path, asyncio.run(fill())


@pytest.fixture
def restored(tmp_path: Path) -> tuple[Path, Path, int]:
    """A CA whose database was restored from a backup taken before CERTIFICATES issuances, and the archive of
    its log as ``pca events --format json`` wrote it before the restore; returns (config, archive, events lost)."""
    config_path = init_ca(tmp_path / "pca")
    db, backup, archive = load_config(config_path).database, tmp_path / "backup.db", tmp_path / "events.jsonl"
    with contextlib.closing(sqlite3.connect(db)) as src, contextlib.closing(sqlite3.connect(backup)) as dst:
        src.backup(dst)

    async def fill_and_archive() -> None:
        rt = await connect_runtime(load_config(config_path), SystemClock())
        try:
            await rt.log.append([new(issued(serial, "issuing-ca")) for serial in range(1, CERTIFICATES + 1)])
            with archive.open("w") as out:
                after = 0
                while rows := await rt.log.read(after, 1000):
                    out.writelines(json.dumps(r.to_json(), sort_keys=True, separators=(",", ":")) + "\n" for r in rows)
                    after = rows[-1].seq
        finally:
            await rt.aclose()

    asyncio.run(fill_and_archive())
    shutil.copyfile(backup, db)
    for suffix in ("-wal", "-shm"):
        db.with_name(db.name + suffix).unlink(missing_ok=True)
    return config_path, archive, CERTIFICATES


def test_replay_into_a_pipe_writes_a_plain_line_per_step(restored: tuple[Path, Path, int]) -> None:
    config_path, archive, events = restored
    argv = pca_argv("replay", "--config", config_path, "--from", archive)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"replayed {events} events from {archive}")
    assert "\r" not in done.stderr and "\x1b" not in done.stderr
    lines = done.stderr.splitlines()
    shown = [re.fullmatch(rf"replay: ([\d,]+)/{events:,} events \((\d+)%\); [\d,]+/s, \d:\d\d:\d\d", x) for x in lines]
    assert all(shown), lines
    assert [int(m.group(2)) for m in shown if m] == [33, 66, 100], lines  # a page of 1,000 events at a time


def test_replay_on_a_terminal_draws_a_bar(restored: tuple[Path, Path, int]) -> None:
    config_path, archive, events = restored
    status, out, shown = on_a_terminal(pca_argv("replay", "--config", config_path, "--from", archive))
    assert status == 0, shown
    assert out.startswith(f"replayed {events} events from {archive}")
    assert "\r" in shown and f"{events}/{events}" in shown and "100%|" in shown, shown
    assert "replay: " in shown and "events/s" in shown, shown


def test_rebuild_into_a_pipe_writes_a_plain_line_per_step(big_log: tuple[Path, int]) -> None:
    config_path, events = big_log
    done = subprocess.run(pca_argv("rebuild", "--config", config_path), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"rebuilt the certificate-status projection from {events} events\n"
    lines = done.stderr.splitlines()
    assert "\r" not in done.stderr and "\x1b" not in done.stderr  # nothing a log file would garble
    shown = [re.fullmatch(rf"rebuild: ([\d,]+)/{events:,} events \((\d+)%\); [\d,]+/s, \d:\d\d:\d\d", x) for x in lines]
    assert all(shown), lines
    percents = [int(m.group(2)) for m in shown if m]
    assert len(percents) >= 3 and percents == sorted(percents) and percents[-1] == 100, lines


def test_rebuild_on_a_terminal_draws_a_bar(big_log: tuple[Path, int]) -> None:
    config_path, events = big_log
    status, out, shown = on_a_terminal(pca_argv("rebuild", "--config", config_path))
    assert status == 0, shown
    assert out == f"rebuilt the certificate-status projection from {events} events\n"
    assert "\r" in shown and f"{events}/{events}" in shown and "100%|" in shown, shown
    assert "rebuild: " in shown and "events/s" in shown, shown


def test_audit_verify_on_a_terminal_says_what_it_is_doing(big_log: tuple[Path, int]) -> None:
    config_path, events = big_log
    status, out, shown = on_a_terminal(pca_argv("audit", "verify", "--local", "--config", config_path))
    assert status == 0, shown
    assert out.startswith(f"audit OK: {events} events, hash chain intact\n")  # stdout: the result alone
    assert "audit verify: walking the hash chain, 00:0" in shown, shown
    assert f"audit verify: replaying {events:,} events and comparing the projection, 00:0" in shown, shown
    assert shown.endswith("\r"), shown  # the line is cleared: nothing of it stays above the prompt
    piped = subprocess.run(pca_argv("audit", "verify", "--local", "--config", config_path), capture_output=True,
                           text=True, timeout=120)  # fmt: skip
    assert (piped.returncode, piped.stderr) == (0, "")  # a short wait writes nothing into a pipe


def test_import_into_a_pipe_and_on_a_terminal(config: Path, legacy: Path, tmp_path: Path) -> None:  # noqa: F811
    piped = import_index(config, legacy, "--batch-size", "1", "--workers", "0")
    assert piped.returncode == 0, piped.stderr
    assert "\r" not in piped.stderr and "\x1b" not in piped.stderr
    steps = re.findall(r"^import: (\d)/4 certificates \((\d+)%\); (\d) imported", piped.stderr, re.M)
    assert [s[1] for s in steps] == ["25", "50", "75", "100"], piped.stderr

    again = pca_argv("import", "--config", config, "--issuer", EXTERNAL, "--openssl-index", legacy / "index.txt",
                     "--certs-dir", legacy / "newcerts", "--workers", "0")  # fmt: skip
    status, out, shown = on_a_terminal(again)
    assert status == 0, shown
    assert "already present   4" in out
    assert "\r" in shown and "4/4" in shown and "100%|" in shown and "4 already present" in shown, shown


def test_a_wait_with_no_position_says_it_is_still_working(tmp_path: Path) -> None:
    """``pca audit verify`` waits for a replay with no position to show: a line now and then into a pipe."""
    read_end, write_end = os.pipe()
    with os.fdopen(read_end) as reader, os.fdopen(write_end, "w") as writer:
        with Working("audit verify", out=writer, every_s=0.05) as working:
            working.phase("replaying 10 events")
            time.sleep(1.0)  # twenty intervals: at least one line, however loaded the machine
        writer.close()
        lines = reader.read().splitlines()
    assert lines and all(
        re.fullmatch(r"audit verify: replaying 10 events; still working, 0:00:0\d", line) for line in lines
    ), lines


async def test_rebuild_on_postgresql_reports_each_page(tmp_path: Path, postgres_database: str) -> None:
    config_path = await asyncio.to_thread(init_ca, tmp_path / "pca", "--database-url", postgres_database)
    rt = await connect_runtime(load_config(config_path), SystemClock())
    try:
        await rt.log.append([new(issued(serial, "issuing-ca")) for serial in range(1, 12_001)])  # 3 pages
        events = await rt.log.head()
    finally:
        await rt.aclose()
    argv = pca_argv("rebuild", "--config", config_path)
    done = await asyncio.to_thread(subprocess.run, argv, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"rebuilt the certificate-status projection from {events} events\n"
    percents = re.findall(rf"^rebuild: [\d,]+/{events:,} events \((\d+)%\)", done.stderr, re.M)
    assert [int(p) for p in percents] == [41, 83, 100], done.stderr


def test_init_and_migrate_on_a_terminal_say_what_they_wait_for(tmp_path: Path) -> None:
    status, out, shown = on_a_terminal(pca_argv("init", "--dir", tmp_path / "pca", "--no-admin-tls"))
    assert status == 0, shown
    assert "init: creating the CA keys (file), certificates and OCSP signers, 00:0" in shown, shown
    assert out.startswith(f"initialised {tmp_path / 'pca'}\n")
    config_path = tmp_path / "pca" / "pca.toml"
    status, out, shown = on_a_terminal(pca_argv("migrate", "--config", config_path))
    assert status == 0, shown
    assert "migrate: applying schema migrations to /" in shown, shown  # the path is cut at the terminal's width
    assert out == f"schema of {tmp_path / 'pca' / 'pca.db'} is up to date\n"
