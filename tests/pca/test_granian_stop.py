"""``pca serve --server granian`` stopped while granian is still starting leaves no process behind.

granian's main process, stopped while it starts its workers, exits and leaves them holding the
public port; ``pca serve`` stopped before its own signal handlers were installed died without
stopping granian at all. Either way the next ``pca serve`` could not bind.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tests.support.processes import ServerProcess, descendants, init_ca

pytestmark = pytest.mark.e2e


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat").read_text() if Path(f"/proc/{pid}/stat").exists() else ""
    return " Z " not in stat  # a zombie has exited


@pytest.mark.parametrize("after_granian", [0.0, 0.3, 0.8], ids=["at-once", "starting", "workers"])
def test_a_stop_while_granian_starts_leaves_no_granian_process(tmp_path: Path, after_granian: float) -> None:
    server = ServerProcess(init_ca(tmp_path / "ca"), "--server", "granian", "--workers", "2")
    server.start(ready=False)
    assert server.proc is not None
    seen: set[int] = set()
    deadline = time.monotonic() + 30
    while not seen and time.monotonic() < deadline:  # until granian's main process is there
        seen = {pid for pid in descendants(server.proc.pid) if b"granian" in _cmdline(pid)}
        time.sleep(0.02)
    assert seen, f"granian never started:\n{server.log_path.read_text()}"
    time.sleep(after_granian)
    seen |= {pid for pid in descendants(server.proc.pid) if b"granian" in _cmdline(pid)}
    server.proc.send_signal(signal.SIGTERM)
    server.proc.wait(timeout=30)
    deadline = time.monotonic() + 5
    while (left := [pid for pid in seen if _alive(pid)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    log = server.log_path.read_text()
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, f"granian processes left running after pca serve stopped: {left}\n{log}"
    assert "Traceback" not in log, log


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""
