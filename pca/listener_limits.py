"""How much a client may cost a listener: header sizes, timeouts, open connections.

``[limits]`` in pca.toml. Nothing here imports a server: the configuration loads it, and
``pca.listeners`` applies it to uvicorn (the admin listener, the embedded public listener) and
to granian (the public listener's worker processes).

Connection caps default to what the descriptor limit allows: ``pca serve`` raises its soft
``RLIMIT_NOFILE`` to the hard limit, keeps a reserve for the database, log files and worker
pipes, gives the admin listener a budget of its own, and leaves the rest to the public
listener, less the sockets an accept burst can hold before they are refused. A flood on the
public port therefore reaches its cap and is refused there, and never takes the descriptors
the admin listener (or SQLite) needs.
"""

from __future__ import annotations

import dataclasses
import logging
import resource
from typing import Any

from revocation.errors import ConfigError

log = logging.getLogger("pca.listeners")

# Descriptors kept for everything but client connections (database, logs, worker pipes, CRL files).
RESERVED_DESCRIPTORS = 64
# Caps chosen from the descriptor limit never go above these: idle connections still cost memory.
MAX_AUTO_PUBLIC = 10_000
MAX_AUTO_ADMIN = 1_000
# granian takes its header read timeout in milliseconds, at most 60 s.
MAX_HEADER_TIMEOUT = 60.0


@dataclasses.dataclass(frozen=True)
class LimitsConfig:
    """``[limits]``: what one client may hold on a listener before it is refused."""

    header_line_bytes: int = 8 * 1024  # request line or one header line; longer: 431
    header_bytes: int = 32 * 1024  # a request's whole head; more: 431
    header_timeout_seconds: float = 10.0  # the head must arrive this soon after its first byte: 408
    body_timeout_seconds: float = 10.0  # the body this soon after the head: 408
    idle_timeout_seconds: float = 5.0  # a connection with no request under way is closed after this
    public_connections: int = 0  # open connections per public listener process; 0: from the descriptor limit
    admin_connections: int = 0  # open connections of the admin listener; 0: from the descriptor limit


def parse_limits(section: dict[str, Any]) -> LimitsConfig:
    """``[limits]`` of pca.toml, every bad value named."""
    values: dict[str, Any] = {}
    for field in dataclasses.fields(LimitsConfig):
        default = field.default
        value = section.get(field.name, default)
        if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if type(value) is not type(default):
            raise ConfigError(f"limits.{field.name} must be {type(default).__name__}, got {value!r}")
        values[field.name] = value
    unknown = set(section) - set(values)
    if unknown:
        raise ConfigError(f"unknown keys in [limits]: {', '.join(sorted(unknown))}")
    limits = LimitsConfig(**values)
    if limits.header_line_bytes < 1024:
        raise ConfigError(f"limits.header_line_bytes must be at least 1024, got {limits.header_line_bytes}")
    if limits.header_bytes < max(16384, limits.header_line_bytes):
        raise ConfigError(
            f"limits.header_bytes must be at least 16384 and at least limits.header_line_bytes, "
            f"got {limits.header_bytes}"
        )
    for name in ("header_timeout_seconds", "body_timeout_seconds", "idle_timeout_seconds"):
        if not 0 < getattr(limits, name) <= MAX_HEADER_TIMEOUT:
            raise ConfigError(f"limits.{name} must be above 0 and at most 60, got {getattr(limits, name)}")
    for name in ("public_connections", "admin_connections"):
        if (value := getattr(limits, name)) < 0:
            raise ConfigError(f"limits.{name} must be 0 (from the open-files limit) or more, got {value}")
    return limits


def raise_descriptor_limit() -> int:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit; returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft == resource.RLIM_INFINITY or soft >= target:
        return soft if soft != resource.RLIM_INFINITY else target
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as exc:
        log.warning("cannot raise the open-files limit from %d to %d: %s", soft, target, exc)
        return soft
    return target


@dataclasses.dataclass(frozen=True)
class Budget:
    """Connection caps and accept bursts of one process's listeners."""

    descriptors: int  # the soft RLIMIT_NOFILE they were computed from
    public_connections: int
    public_backlog: int  # asyncio's backlog: connections accepted at once (the kernel queue is deeper)
    admin_connections: int
    admin_backlog: int


def _clamp(value: int, low: int, high: int) -> int:
    return max(low, min(high, value))


def connection_budget(limits: LimitsConfig, descriptors: int, *, admin: bool = True) -> Budget:
    """Split ``descriptors`` between the listeners of one process.

    An asyncio server accepts up to its backlog of sockets at once before any of them is
    refused, so each listener is charged its cap plus twice its backlog; the sum stays below
    the descriptor limit less the reserve. A configured cap above what is left is lowered,
    with a warning.
    """
    avail = max(descriptors - RESERVED_DESCRIPTORS - descriptors // 16, 64)
    admin_backlog = _clamp(avail // 64, 16, 128) if admin else 0
    admin_cap = _clamp(avail // 8, 16, MAX_AUTO_ADMIN) if admin else 0
    if admin and limits.admin_connections:
        admin_cap = _fit(limits.admin_connections, max(avail // 2, 8), "admin", descriptors)
    admin_cost = admin_cap + 2 * admin_backlog
    public_backlog = _clamp((avail - admin_cost) // 16, 16, 2048)
    room = max(avail - admin_cost - 2 * public_backlog, 8)
    public_cap = min(room, MAX_AUTO_PUBLIC)
    if limits.public_connections:
        public_cap = _fit(limits.public_connections, room, "public", descriptors)
    return Budget(descriptors, public_cap, public_backlog, admin_cap, admin_backlog)


def _fit(wanted: int, room: int, listener: str, descriptors: int) -> int:
    if wanted <= room:
        return wanted
    log.warning(
        "limits.%s_connections = %d does not fit the open-files limit %d; the %s listener takes at most %d",
        listener,
        wanted,
        descriptors,
        listener,
        room,
    )
    return room
