"""Setting up the scaled shape: the database URL, its secrets, ``[scale]``, and the commands on PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import pytest

from pca.cli import main as pca_main
from pca.config import load_config, redact_url
from revocation.errors import ConfigError
from tests.support.ports import free_port
from tests.support.processes import init_ca

PG_URL = "postgresql://pca@db.internal:5432/pca"


def write_config(tmp_path: Path, extra: str) -> Path:
    path = tmp_path / "pca.toml"
    path.write_text(f'[public]\nurl = "http://127.0.0.1:8080"\n{extra}')
    return path


def test_no_database_url_means_the_embedded_sqlite_file(tmp_path: Path) -> None:
    cfg = load_config(write_config(tmp_path, ""), env={})
    assert cfg.backend == "sqlite"
    assert cfg.database_label == str(tmp_path / "pca.db")


def test_database_url_in_the_file_selects_postgresql(tmp_path: Path) -> None:
    cfg = load_config(write_config(tmp_path, f'[database]\nurl = "{PG_URL}"\n'), env={})
    assert (cfg.backend, cfg.database_url) == ("postgres", PG_URL)


def test_the_environment_overrides_the_file_and_may_carry_the_password(tmp_path: Path) -> None:
    path = write_config(tmp_path, f'[database]\nurl = "{PG_URL}"\n')
    secret_url = "postgresql://pca:s3cret@db2.internal/pca"
    cfg = load_config(path, env={"PCA_DATABASE_URL": secret_url})
    assert cfg.database_url == secret_url
    assert "s3cret" not in cfg.database_label and "db2.internal" in cfg.database_label


def test_a_password_in_the_configuration_file_is_refused_without_being_repeated(tmp_path: Path) -> None:
    path = write_config(tmp_path, '[database]\nurl = "postgresql://pca:s3cret@db/pca"\n')
    with pytest.raises(ConfigError, match="must not hold a password") as err:
        load_config(path, env={})
    assert "s3cret" not in str(err.value)


@pytest.mark.parametrize("url", ["mysql://db/pca", "sqlite:///x.db", "db.internal:5432"])
def test_a_database_url_that_is_not_postgresql_is_refused(tmp_path: Path, url: str) -> None:
    with pytest.raises(ConfigError, match="postgresql://"):
        load_config(write_config(tmp_path, f'[database]\nurl = "{url}"\n'), env={})


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ("lease_seconds = 0", "scale.lease_seconds must be positive"),
        ("responder_gone_seconds = 1\nheartbeat_seconds = 1", "at least twice"),
        ('slo_seconds = "fast"', "scale.slo_seconds must be float"),
    ],
)
def test_bad_scale_settings_are_refused_naming_the_setting(tmp_path: Path, section: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(write_config(tmp_path, f"[scale]\n{section}\n"), env={})


def test_redact_url_hides_only_the_password() -> None:
    assert redact_url("postgresql://u:pw@h:5/d") == "postgresql://u:***@h:5/d"
    assert redact_url(PG_URL) == PG_URL


def test_init_migrate_and_audit_on_postgresql(
    tmp_path: Path, postgres_database: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config = init_ca(tmp_path / "ca", "--database-url", postgres_database)
    cfg = load_config(config)
    assert cfg.backend == "postgres"
    assert not (tmp_path / "ca" / "pca.db").exists()  # nothing went to SQLite
    capsys.readouterr()

    pca_main(["migrate", "--config", str(config)])
    assert "is up to date" in capsys.readouterr().out

    pca_main(["audit", "verify", "--local", "--config", str(config)])
    assert "hash chain intact" in capsys.readouterr().out

    pca_main(["rebuild", "--config", str(config)])
    assert "rebuilt the certificate-status projection" in capsys.readouterr().out


def test_init_refuses_a_database_that_already_holds_a_ca(tmp_path: Path, postgres_database: str) -> None:
    init_ca(tmp_path / "first", "--database-url", postgres_database)
    with pytest.raises(SystemExit) as exc:
        pca_main(
            [
                "init",
                "--dir",
                str(tmp_path / "second"),
                "--public-url",
                f"http://127.0.0.1:{free_port()}",
                "--database-url",
                postgres_database,
            ]
        )
    assert exc.value.code != 0
    assert not (tmp_path / "second" / "pca.toml").exists()  # the same command can be run again elsewhere
    assert not list((tmp_path / "second").glob("keys/*"))  # and no key was made for nothing


async def test_migrate_creates_the_schema_on_an_empty_database(
    tmp_path: Path, postgres_database: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(tmp_path, f'[database]\nurl = "{postgres_database}"\n')
    import asyncio

    await asyncio.to_thread(pca_main, ["migrate", "--config", str(path)])
    migrations = (
        "['log 1', 'log 2', 'projection 1', 'projection 2', 'projection 3', 'response_store 1', 'coordination 1', "
        "'coordination 2']"
    )
    assert f"applied migrations {migrations}" in capsys.readouterr().out
    conn = await asyncpg.connect(postgres_database)
    try:
        tables = {r["tablename"] for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname='public'")}
    finally:
        await conn.close()
    assert {"events", "certificates", "ocsp_responses", "leases", "responder_progress"} <= tables
