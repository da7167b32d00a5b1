"""What every ``pca`` command shares: how a failure is reported, and who a local command acts as."""

from __future__ import annotations

import getpass
import os
import sys
import uuid
from typing import NoReturn

from revocation.authority import Actor


def fail(message: str, code: int = 1) -> NoReturn:
    print(f"pca: error: {message}", file=sys.stderr)
    raise SystemExit(code)


def cli_actor(what: str) -> Actor:
    """The actor of a local command's events: ``cli:<user>`` (the uid where the system has no name for
    it, as in a container), with a fresh request id ``<what>-<hex>``."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return Actor(f"cli:{user}", f"{what}-{uuid.uuid4().hex[:16]}")
