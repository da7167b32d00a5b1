"""File keys encrypted with a passphrase named by reference, and a responder that holds no key at all."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from pca.config import Config, load_config
from pca.runtime import open_runtime
from pca.serve import check_keys
from revocation.clock import SystemClock
from revocation.errors import KeyBackendError
from tests.support.processes import init_ca
from tests.support.signing_backends import (
    ask_responder,
    clean_env,
    exercise,
    files_containing,
    have_openssl,
    responder_alone,
    run_pca,
)

PASSPHRASE = "correct horse 4417 battery"
ENV = "PCA_TEST_KEY_PASSPHRASE"

pytestmark = pytest.mark.skipif(not have_openssl(), reason="needs the openssl command")


async def init_encrypted_ca(directory: Path, *flags: str) -> Config:
    return load_config(await asyncio.to_thread(init_ca, directory, *flags))


async def check(cfg: Config) -> None:
    rt = open_runtime(cfg, SystemClock())
    try:
        await check_keys(rt)
    finally:
        rt.close()


async def test_encrypted_file_keys_sign_everything_with_the_passphrase_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV, PASSPHRASE)
    cfg = await init_encrypted_ca(tmp_path / "ca", "--key-passphrase-env", ENV)
    done = await exercise(cfg, tmp_path / "work")

    assert all(r.backend == "file" and r.passphrase_env == ENV for r in done.key_refs)
    key_files = sorted((cfg.data_dir / "keys").iterdir())
    # root, issuing CA, the first and the rotated OCSP signer of each, the audit checkpoint signer
    assert len(key_files) == 7
    for path in key_files:
        assert path.read_bytes().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----"), path
        assert path.stat().st_mode & 0o777 == 0o600
    assert files_containing(cfg.data_dir, PASSPHRASE.encode()) == []


async def test_a_passphrase_file_works_the_same(tmp_path: Path) -> None:
    secret = tmp_path / "passphrase"
    secret.write_text(PASSPHRASE + "\n")
    cfg = await init_encrypted_ca(tmp_path / "ca", "--key-passphrase-file", str(secret))
    await check(cfg)
    assert files_containing(cfg.data_dir, PASSPHRASE.encode()) == []


async def test_without_the_passphrase_start_stops_naming_key_variable_and_certificate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV, PASSPHRASE)
    cfg = await init_encrypted_ca(tmp_path / "ca", "--key-passphrase-env", ENV)

    monkeypatch.delenv(ENV)
    with pytest.raises(KeyBackendError) as missing:
        await check(cfg)
    message = str(missing.value)
    assert str(cfg.data_dir / "keys" / "root-ca.key") in message
    assert f"environment variable {ENV} is not set" in message
    assert "CN=PCA Root CA" in message

    monkeypatch.setenv(ENV, "not the passphrase 0031")
    with pytest.raises(KeyBackendError) as wrong:
        await check(cfg)
    message = str(wrong.value)
    assert "root-ca.key" in message and ENV in message and "CN=PCA Root CA" in message
    assert PASSPHRASE not in message and "not the passphrase 0031" not in message


async def test_a_responder_starts_and_answers_with_no_key_file_and_no_passphrase(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV, PASSPHRASE)
    cfg = await init_encrypted_ca(tmp_path / "ca", "--key-passphrase-env", ENV)
    done = await exercise(cfg, tmp_path / "work")
    shutil.rmtree(cfg.data_dir / "keys")
    with responder_alone(cfg.path, clean_env(ENV)) as url:
        assert f"{done.good}: good" in ask_responder(url, cfg, done.good)
        assert f"{done.revoked}: revoked" in ask_responder(url, cfg, done.revoked)
    # The signing roles cannot start like this, and say why.
    failed = run_pca("serve", "--roles", "presigner", "--config", str(cfg.path), env=clean_env(ENV))
    assert failed.returncode == 1
    assert "cannot read key file" in failed.stderr and "root-ca.key" in failed.stderr


@pytest.mark.parametrize(
    ("flags", "complaint"),
    [
        (["--pkcs11-module", "/x.so"], "--pkcs11-module do not apply to --key-backend file"),
        (["--key-backend", "kms", "--key-passphrase-env", "X"], "--key-passphrase-env do not apply"),
        (["--key-passphrase-env", "X", "--key-passphrase-file", "/y"], "not both"),
        (
            ["--key-passphrase-env", "PCA_TEST_UNSET_VARIABLE"],
            "environment variable PCA_TEST_UNSET_VARIABLE is not set",
        ),
    ],
)
def test_init_refuses_inconsistent_key_flags_and_leaves_nothing(
    tmp_path: Path, flags: list[str], complaint: str
) -> None:
    result = run_pca("init", "--dir", str(tmp_path / "ca"), *flags, env=clean_env("PCA_TEST_UNSET_VARIABLE"))
    assert result.returncode == 1
    assert complaint in result.stderr, result.stderr
    assert not (tmp_path / "ca" / "pca.toml").exists()
