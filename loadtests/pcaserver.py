"""``pca serve`` as a process for the scenarios: started, waited for, always stopped."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import httpx

from loadtests.common import Service, wait_until
from pca.config import Config


class PcaServer:
    """``pca serve --server S --workers N`` on a CA directory (all roles unless ``roles``)."""

    def __init__(self, cfg: Config, server: str = "granian", workers: int = 1, roles: str | None = None) -> None:
        """``server=""``: no --server or --workers flag, the default shape (``[public]`` of the configuration)."""
        self.cfg = cfg
        self.server = server
        self.workers = workers
        cmd = [sys.executable, "-m", "pca.cli", "serve", "--config", str(cfg.path), "--log-level", "warning"]
        cmd += ["--server", server] if server else []
        if server == "granian":
            cmd += ["--workers", str(workers)]
        if roles:
            cmd += ["--roles", roles]
        log = Path(cfg.data_dir) / f"serve-{server}-{workers}.log"
        self.service = Service(self.label, cmd, log, env={**os.environ, "PYTHONUNBUFFERED": "1"}, grace=15.0)
        self.token = cfg.token_file.read_text().strip()
        self.public = roles is None or bool({"responder", "publisher"} & set(roles.split(",")))

    @property
    def label(self) -> str:
        if not self.server:
            return "pca serve"
        if self.server == "granian":
            return f"pca serve --server granian --workers {self.workers}"
        return f"pca serve --server {self.server}"

    @property
    def public_url(self) -> str:
        host, port = self.cfg.public_listen
        return f"http://{host}:{port}"

    @property
    def admin_url(self) -> str:
        return self.cfg.admin_url.rstrip("/")

    def health(self) -> dict[str, Any]:
        r = httpx.get(self.admin_url + "/healthz", timeout=2)
        data: dict[str, Any] = r.json()
        return data

    def start(self, timeout: float = 120) -> PcaServer:
        """Start and wait until the admin API answers and the pre-signer has applied the whole log."""
        self.service.start()

        def ready() -> bool:
            self.service.check_alive()
            presigner = self.health().get("presigner")
            if presigner is not None and presigner.get("lag_events") != 0:
                return False
            # The public listener (granian binds it in a process of its own) answers.
            return not self.public or httpx.get(self.public_url + "/crl/issuing-ca.crl", timeout=2).status_code == 200

        try:
            wait_until(ready, timeout, f"{self.label} to start and finish pre-signing", interval=0.2)
        except BaseException:
            self.stop()
            raise
        return self

    def check_alive(self) -> None:
        self.service.check_alive()

    def stop(self) -> None:
        self.service.stop()

    def __enter__(self) -> PcaServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
