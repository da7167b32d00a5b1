"""Starting and stopping granian, the public listener's server in processes of its own.

granian's main process starts its workers; stopped (SIGTERM, Ctrl-C) while it is still starting
them, it exits and leaves them running, holding the public port. So ``pca serve`` becomes the
subreaper of its descendants (Linux) and, once granian's main process has exited, stops every
granian process left among them.

``pca serve`` killed outright (SIGKILL, the OOM killer) can stop nothing: so granian's main process
is started through ``python -m pca.granian_proc`` (``main``), which asks the kernel to kill it
when its parent dies, and each worker asks the same of the main process (``die_with_granian``).
A ``pca serve`` restarted after a crash then finds the public port free.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import runpy
import signal
import subprocess
import sys
import time
from pathlib import Path

from revocation.digits import ascii_digits
from revocation.lifetime import die_with_parent

log = logging.getLogger("pca.serve")

_PR_SET_CHILD_SUBREAPER = 36
MAIN_ENV = "PCA_GRANIAN_MAIN"  # the pid of granian's main process, for its workers
_PROC = Path("/proc")


def become_subreaper() -> None:
    """Orphaned descendants (granian's workers) become this process's children, not init's."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def die_with_granian() -> None:
    """In a granian worker: end with granian's main process, even when that one is killed outright."""
    main_pid = os.environ.get(MAIN_ENV, "")
    if ascii_digits(main_pid):
        die_with_parent(int(main_pid))


def main() -> None:
    """``python -m pca.granian_proc PARENT ARGS...``: granian's command line, ended with ``PARENT``."""
    parent = int(sys.argv[1])
    die_with_parent(parent)
    os.environ[MAIN_ENV] = str(os.getpid())
    sys.argv = ["granian", *sys.argv[2:]]
    runpy.run_module("granian", run_name="__main__", alter_sys=True)


def _granian_children(parent: int) -> list[int]:
    """Processes whose parent is ``parent`` and whose command line runs granian (from /proc)."""
    found = []
    for entry in _PROC.iterdir():
        if not ascii_digits(entry.name):
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if int(stat[stat.rfind(")") + 2 :].split()[1]) == parent and b"granian" in cmdline:
            found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(ChildProcessError):
        return os.waitpid(pid, os.WNOHANG) == (0, 0)  # our child (we are its subreaper): reap it
    return True


def stop_granian(proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """Stop granian's main process, then any of its workers it left behind."""
    workers = _granian_children(proc.pid)
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    left = [pid for pid in {*workers, *_granian_children(os.getpid())} if _alive(pid)]
    if not left:
        return
    log.info("stopping %d granian worker(s) its main process left behind", len(left))
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 1.0)):
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while (left := [pid for pid in left if _alive(pid)]) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not left:
            return


if __name__ == "__main__":
    main()
