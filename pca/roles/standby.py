"""Saying so when a role stands by because another ``pca serve`` holds its lease.

A second ``pca serve`` on the same data directory or database (by mistake, or as a standby)
otherwise looks just like the first one in its log: it says once, naming the holder, that
it waits.
"""

from __future__ import annotations

import asyncio
import logging

from pca.runtime import Runtime
from revocation.coordination.holders import parse_holder
from revocation.coordination.leases import LeaseKeeper
from revocation.digits import ascii_digits

log = logging.getLogger("pca.lease")


def describe_holder(holder: str) -> str:
    """A lease holder's name (``host:pid:start@machine``, or ``host:pid``) as "pid N on host H"."""
    parsed = parse_holder(holder)
    if parsed is not None:
        return f"pid {parsed.pid} on host {parsed.host}"
    host, _, pid = holder.rpartition(":")
    return f"pid {pid} on host {host}" if host and ascii_digits(pid) else holder


async def report_standby(rt: Runtime, keeper: LeaseKeeper, what: str) -> None:
    """Log at WARNING, once per holder, while another live process holds the lease ``keeper`` waits for."""
    cfg = rt.config
    where = cfg.database_label if cfg.database_url else str(cfg.data_dir)
    told: str | None = None
    while True:
        if keeper.active:
            told = None
        else:
            try:
                held = await rt.coord.lease(keeper.name)
            except Exception:  # noqa: BLE001 - a message must never stop the server; the keeper reports the failure
                held = None
            if held is not None and held.holder not in (keeper.holder, told) and held.expires_at > rt.clock.time():
                holder = describe_holder(held.holder)
                log.warning("another pca serve (%s) holds the %s lease for %s; standing by", holder, what, where)
                told = held.holder
        await asyncio.sleep(keeper.renew_every)
