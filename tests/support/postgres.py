"""PostgreSQL for the tests: the throwaway cluster of ``loadtests.pgcluster`` (the load tests use it
too) and a fresh database per test on it."""

from __future__ import annotations

from loadtests.pgcluster import PostgresCluster, postgres_cluster

__all__ = ["PostgresCluster", "create_database", "drop_database", "postgres_cluster"]


async def create_database(server_dsn: str) -> str:
    """Create a fresh, empty database ``t_<random>`` on the cluster at ``server_dsn``; returns its DSN."""
    import secrets

    import asyncpg

    name = f"t_{secrets.token_hex(6)}"
    admin = await asyncpg.connect(server_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return server_dsn.rsplit("/", 1)[0] + "/" + name


async def drop_database(server_dsn: str, dsn: str) -> None:
    import asyncpg

    name = dsn.rsplit("/", 1)[1]
    admin = await asyncpg.connect(server_dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()
