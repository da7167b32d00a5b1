"""Who holds a lease, and whether that process is known to be dead.

A lease holder is named ``host:pid:start@machine``: ``start`` is the process's start time
(field 22 of ``/proc/PID/stat``, clock ticks since boot) and ``machine`` a short digest of the
kernel's boot id and the pid namespace. Two holders with the same ``machine`` see the same
process table, so one can tell whether the other is still running: its pid is gone, or a zombie,
or now belongs to a process that started at another time (the pid was reused). Such a holder
is dead for certain, and its lease may be taken over at once instead of waiting it out.

Anything else (another host, another container, another boot, a name without the suffix, a
system without ``/proc``) is never judged dead here: its lease is waited out.

A responder not given an id is named the same way, and the registry marks one judged dead here
``ended`` (``revocation.coordination.registered_responder``): it is gone at once, not after
``scale.responder_gone_seconds`` of silence.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import socket
from pathlib import Path

from revocation.digits import ascii_digits

_PROC = Path("/proc")


@dataclasses.dataclass(frozen=True)
class Holder:
    host: str
    pid: int
    start: str  # the process's start time as /proc/PID/stat says it
    machine: str  # which process table the pid belongs to


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _stat(pid: int) -> tuple[str, str] | None:
    """(state, start time) of a running process from ``/proc/PID/stat``; None if there is none."""
    text = _read(_PROC / str(pid) / "stat")
    if text is None:
        return None
    # "pid (comm) state ...": comm may hold spaces and parentheses, so split after the last ')'.
    fields = text[text.rfind(")") + 2 :].split()
    if len(fields) < 20:
        return None
    return fields[0], fields[19]


@functools.cache
def this_machine() -> str | None:
    """A digest of the boot id and the pid namespace, or None where ``/proc`` does not say them."""
    boot = _read(_PROC / "sys" / "kernel" / "random" / "boot_id")
    try:
        namespace = os.readlink(_PROC / "self" / "ns" / "pid")
    except OSError:
        return None
    if not boot:
        return None
    return hashlib.sha256(f"{boot.strip()}/{namespace}".encode()).hexdigest()[:12]


def lease_holder(pid: int | None = None) -> str:
    """This process's name as a lease holder (``host:pid:start@machine``; ``host:pid`` without ``/proc``)."""
    pid = os.getpid() if pid is None else pid
    base = f"{socket.gethostname()}:{pid}"
    machine = this_machine()
    stat = _stat(pid)
    if machine is None or stat is None:
        return base
    return f"{base}:{stat[1]}@{machine}"


def parse_holder(holder: str) -> Holder | None:
    """The parts of a name made by ``lease_holder``; None for any other name."""
    name, at, machine = holder.rpartition("@")
    host, _, rest = name.partition(":")
    pid, colon, start = rest.partition(":")
    if not (at and colon and machine and host and ascii_digits(pid) and ascii_digits(start)):
        return None
    return Holder(host, int(pid), start, machine)


def _running(pid: int, start: str) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, under another user: /proc still tells its start time
    stat = _stat(pid)
    if stat is None:  # it ended between the two looks
        return False
    state, started = stat
    # A zombie (Z) or dying (X) process holds nothing any more; another start time is another process.
    return state not in ("Z", "X") and started == start


def holder_is_dead(holder: str) -> bool:
    """True only when ``holder`` shares this process table and its process is certainly not running."""
    parsed = parse_holder(holder)
    machine = this_machine()
    if parsed is None or machine is None or parsed.machine != machine:
        return False
    return not _running(parsed.pid, parsed.start)
