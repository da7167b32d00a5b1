"""Operator mistakes are caught: each one fails at once with one line naming the file, setting or value."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import typing
from pathlib import Path
from typing import Any

import pytest

from pca.config import Config, config_schema, load_config
from publishers.crlsync.settings import UsageError, read_toml
from revocation.errors import ConfigError
from tests.support.processes import init_ca


def _pca(*args: str | Path, check: bool = False) -> subprocess.CompletedProcess[str]:
    """``pca`` as an operator runs it: a process of its own, its output as text."""
    return subprocess.run(
        [sys.executable, "-m", "pca.cli", *map(str, args)], capture_output=True, text=True, timeout=120, check=check
    )


def _one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 1, done
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pca: error: "), done.stderr
    return lines[0]


@pytest.fixture(scope="module")
def initialised(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return init_ca(tmp_path_factory.mktemp("ca"))


# --- configuration keys -------------------------------------------------------------------------------


def test_misspelt_and_misplaced_keys_are_refused_naming_the_closest_valid_one(initialised: Path) -> None:
    config = initialised.parent / "typos.toml"
    text = initialised.read_text()
    config.write_text(
        "shard = 4\n"
        + text.replace("[crl]\n", "[crl]\nvalidty_seconds = 7200\nlease_seconds = 5\n").replace(
            '[crl.store]\ntype = "directory"', '[crl.stor]\ntype = "s3"\nbucket = "crls"'
        )
    )
    line = _one_line_error(_pca("rebuild", "--config", config))
    assert f"configuration {config}:" in line
    assert "unknown key shard (did you mean crl.shards?)" in line
    assert "unknown key crl.validty_seconds (did you mean crl.validity_seconds?)" in line
    assert "unknown key crl.lease_seconds (did you mean scale.lease_seconds?)" in line
    # The S3 settings would have been ignored, and CRLs written to the local directory.
    assert "unknown table [crl.stor] (did you mean [crl.store]?)" in line


def test_an_unknown_key_is_reported_before_the_values_it_would_explain(tmp_path: Path) -> None:
    config = tmp_path / "pca.toml"
    config.write_text("[crl]\nshard = 4\ninterval_seconds = 100000\n")  # above the default validity
    with pytest.raises(ConfigError, match=r"unknown key crl\.shard \(did you mean crl\.shards\?\)"):
        load_config(config, env={})


def _tables(cls: type[Any], prefix: str) -> dict[str, set[str]]:
    """The tables a configuration dataclass stands for: its fields, and each dataclass field a sub-table."""
    out: dict[str, set[str]] = {prefix: set()}
    for name, hint in typing.get_type_hints(cls).items():
        out[prefix].add(name)
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            out.update(_tables(hint, f"{prefix}.{name}"))
    return out


def test_every_field_of_the_configuration_dataclasses_is_a_known_key() -> None:
    """A setting added to a configuration dataclass (``[ocsp]``, ``[crl]``, ``[crl.store]``, ``[scale]``, and
    any table added as one) but not read by the loader would be refused in every file: caught here."""
    schema = config_schema()
    tables = [
        _tables(hint, name)
        for name, hint in typing.get_type_hints(Config).items()
        if isinstance(hint, type) and dataclasses.is_dataclass(hint)
    ]
    assert {"ocsp", "crl", "crl.store", "scale"} <= {name for found in tables for name in found}
    for found in tables:
        for table, keys in found.items():
            assert keys <= schema.get(table, frozenset()), f"[{table}] does not read {sorted(keys - schema[table])}"


def test_crl_sync_names_the_closest_setting(tmp_path: Path) -> None:
    config = tmp_path / "sync.toml"
    config.write_text('urls = ["http://a/x.crl"]\nca-bundle = "b"\n')
    with pytest.raises(UsageError, match=r"unknown setting 'ca-bundle' \(did you mean ca_bundle\?\)"):
        read_toml(config)
