"""``pca token`` on PostgreSQL: creations and revocations are events in the shared log there too."""

from __future__ import annotations

import asyncio
from pathlib import Path

from pca.config import load_config
from pca.runtime import connect_runtime
from revocation.admin.tokens import TokenStore
from revocation.clock import SystemClock
from tests.support.processes import init_ca
from tests.support.scaled import pca


async def test_create_and_revoke_are_recorded_in_the_postgres_log(tmp_path: Path, postgres_database: str) -> None:
    config_path = await asyncio.to_thread(init_ca, tmp_path / "pca", "--database-url", postgres_database)
    cfg = load_config(config_path)
    made = await asyncio.to_thread(pca, "token", "create", "--config", config_path, "--name", "pg-ops", "--role",
                                   "revoker", "--expires-in", "12h")  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert TokenStore.load(cfg.tokens_db).authenticate(made.stdout.strip()) is not None
    revoked = await asyncio.to_thread(pca, "token", "revoke", "--config", config_path, "--name", "pg-ops")
    assert revoked.returncode == 0, revoked.stderr
    assert TokenStore.load(cfg.tokens_db).authenticate(made.stdout.strip()) is None

    rt = await connect_runtime(cfg, SystemClock())
    try:
        events = await rt.log.read_stream("token/pg-ops")
        admin = await rt.log.read_stream("token/admin")
        verified = await rt.log.verify_chain()
    finally:
        await rt.aclose()
    assert [(e.type, e.payload["role"]) for e in events] == [("TokenCreated", "revoker"), ("TokenRevoked", "revoker")]
    assert events[0].payload["expires"] is not None and events[0].actor.startswith("cli:")
    assert [(e.type, e.actor) for e in admin] == [("TokenCreated", "system:init")]
    assert verified >= 6  # the hash chain over them holds
