"""Helper processes that end with the process they serve, even when it is killed outright.

A signing pool's workers or granian's processes left behind by a ``pca serve`` that was sent
SIGKILL (or met the OOM killer) would hold ports, files and memory. On Linux a process can ask
the kernel to kill it when its parent ends (``PR_SET_PDEATHSIG``); elsewhere this does nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import signal
import threading

_PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int | None = None) -> None:
    """SIGKILL this process when its parent ends; at once if ``parent`` (its expected parent)
    has already ended, since the kernel only watches the parent it has now."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if parent is not None and os.getppid() != parent:
        os._exit(1)


def exit_with(pid: int) -> None:
    """End this process when process ``pid`` (not necessarily its parent) ends.

    For a signing pool's workers, whose parent is multiprocessing's forkserver: it outlives the
    server as long as any worker runs, and the workers would wait on their job queue forever. A
    daemon thread waits on a pidfd of ``pid`` (Linux 5.3+) and ends the process when it
    becomes readable; where pidfds are missing, nothing is watched.
    """
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        os._exit(1)
    except (OSError, AttributeError):
        return

    def watch() -> None:
        select.select([fd], [], [])
        os._exit(1)

    threading.Thread(target=watch, name=f"exit-with-{pid}", daemon=True).start()
