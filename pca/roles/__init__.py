"""The roles a process can run: each start function registers its tasks, apps and health in a Runtime."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from pca.roles.publisher import start_crl_server, start_publisher
from pca.roles.responder import start_presigner, start_responder
from pca.runtime import Runtime

ROLES: dict[str, Callable[[Runtime], Awaitable[None]]] = {
    "presigner": start_presigner,
    "responder": start_responder,
    "publisher": start_publisher,
    "crlserver": start_crl_server,
}


async def start_role(name: str, runtime: Runtime) -> None:
    start = ROLES.get(name)
    if start is None:
        raise ValueError(f"unknown role {name!r}; roles are {', '.join(ROLES)}")
    await start(runtime)
