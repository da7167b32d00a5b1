"""``pca init`` when the configuration it has just written does not load."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def run_pca(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pca.cli", *args], capture_output=True, text=True, timeout=60, env=env, check=False
    )


def test_init_with_an_unusable_database_url_reports_the_configuration_error(tmp_path: Path) -> None:
    target = tmp_path / "ca"
    env = {**os.environ, "PCA_DATABASE_URL": "mysql://db/x"}

    done = run_pca("init", "--dir", str(target), env=env)

    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert "UnboundLocalError" not in done.stderr
    assert done.stderr.startswith("pca: error: database.url 'mysql://db/x' must be a postgresql:// URL")
    assert done.stdout == ""
    # Nothing was recorded, so the same command may be run again once the URL is fixed.
    assert not (target / "pca.toml").exists()
    assert not (target / "keys").exists()
