"""Whether ``pca serve`` can open its listeners, asked before anything starts."""

from __future__ import annotations

import errno
import socket

from pca.config import Config
from revocation.errors import ConfigError


def check_listeners(cfg: Config, roles: tuple[str, ...]) -> None:
    """Bind each listener ``serve`` will open, and let go, before anything starts: a port in use, or one
    this user may not bind, is a ConfigError naming the listener and its setting (uvicorn would exit from
    inside its server, granian in a process of its own, each with a message of its own)."""
    wanted = [("admin", cfg.admin_listen)] if "api" in roles else []
    if {"responder", "publisher"} & set(roles) or "api" not in roles:  # as serve() decides below
        wanted.append(("public", cfg.public_listen))
    if len(wanted) == 2 and cfg.admin_listen == cfg.public_listen:
        raise ConfigError(
            "admin.listen and public.listen are both {}:{}: give each its own port".format(*cfg.public_listen)
        )
    for name, (host, port) in wanted:
        try:
            for family, kind, proto, _, address in socket.getaddrinfo(
                host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            ):
                with socket.socket(family, kind, proto) as sock:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do
                    if family == socket.AF_INET6:
                        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                    sock.bind(address)
        except OSError as exc:
            reason = (exc.strerror or str(exc)).lower()
            if exc.errno == errno.EACCES and port < 1024:
                reason += " (ports below 1024 need root or CAP_NET_BIND_SERVICE)"
            raise ConfigError(f"{name} listener {host}:{port} ({name}.listen or --{name}-listen): {reason}") from None
