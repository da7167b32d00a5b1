"""The deployment files in deploy/systemd/ and the Dockerfile: what they run exists, and they are hardened.

``systemd-analyze verify`` checks each unit as systemd would load it (the binary it names must exist:
the test points it at this checkout's ``pca``), ``systemd-analyze security --offline`` scores its
exposure, and every command line a unit or the Dockerfile runs is parsed by pca's own parser.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from pca.cli import build_parser
from pca.serve import ALL_ROLES

ROOT = Path(__file__).resolve().parent.parent
SYSTEMD = ROOT / "deploy" / "systemd"
INSTALLED_PCA = "/opt/pca/venv/bin/pca"  # where docs/deployment.md installs it
# unit -> the roles it serves (None: pca crl-sync, on a relying party's host)
UNITS: dict[str, tuple[str, ...] | None] = {
    "pca": ALL_ROLES,
    "pca-api": ("api",),
    "pca-presigner": ("presigner",),
    "pca-publisher": ("publisher",),
    "pca-responder": ("responder",),
    "pca-tracker": ("tracker",),
    "pca-crl-sync": None,
}
REQUIRED = {
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "PrivateTmp": "yes",
    "CapabilityBoundingSet": "",
    "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
    "Restart": "on-failure",
}
PRESENT = ("ReadWritePaths", "EnvironmentFile", "LimitNOFILE", "ExecStart")
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")


def service(unit: str) -> dict[str, list[str]]:
    """The [Service] section of deploy/systemd/UNIT.service: each key with every value given to it."""
    section, values = "", {}
    for line in (SYSTEMD / f"{unit}.service").read_text().splitlines():
        line = line.strip()
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
        elif line and not line.startswith("#") and section == "Service":
            key, _, value = line.partition("=")
            values.setdefault(key, []).append(value)
    return values


def pca_args(command: str) -> list[str]:
    """The arguments after the pca executable of a unit's command line (its "-" prefix and %H expanded)."""
    argv = shlex.split(command.removeprefix("-").replace("%H", "ocsp-1.example.internal"))
    assert argv[0] == INSTALLED_PCA, command
    return argv[1:]


def test_every_role_has_a_hardened_unit() -> None:
    assert {p.stem for p in SYSTEMD.glob("*.service")} == set(UNITS)
    assert {r for roles in UNITS.values() if roles for r in roles} == set(ALL_ROLES)
    for unit in UNITS:
        values = service(unit)
        for key, want in REQUIRED.items():
            assert values.get(key) == [want], (unit, key, values.get(key))
        for key in PRESENT:
            assert values.get(key), (unit, key)
        if unit != "pca-crl-sync":  # root for `nginx -s reload`, every capability dropped all the same
            assert values["User"] == ["pca"] and values["ReadWritePaths"] == ["/var/lib/pca"], unit
        assert all(path.startswith("-/etc/pca/") for path in values["EnvironmentFile"]), unit


def test_every_unit_runs_a_command_pca_accepts() -> None:
    parser = build_parser()
    for unit, roles in UNITS.items():
        values = service(unit)
        for command in values.get("ExecStartPre", []) + values["ExecStart"]:
            args = parser.parse_args(pca_args(command))  # an unknown flag or command exits here
            if roles is None:
                assert args.command == "crl-sync" and args.config == "/etc/pca/crl-sync.toml"
                continue
            assert args.command == "serve" and args.config == "/var/lib/pca/pca.toml", unit
            assert (tuple(args.roles.split(",")) if args.roles else ALL_ROLES) == roles, unit
            if unit == "pca-responder":
                assert args.server == "granian" and args.workers >= 2


def verify(directory: Path, *units: Path) -> subprocess.CompletedProcess[str]:
    assert SYSTEMD_ANALYZE is not None
    return subprocess.run(
        [SYSTEMD_ANALYZE, "verify", "--man=no", *map(str, units)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=directory,
    )


def installed_here(tmp_path: Path) -> list[Path]:
    """The units with ExecStart pointing at this checkout's pca (systemd-analyze checks the binary exists)."""
    here = Path(sys.executable).parent / "pca"
    assert here.exists(), here
    copies = []
    for unit in UNITS:
        copy = tmp_path / f"{unit}.service"
        copy.write_text((SYSTEMD / copy.name).read_text().replace(INSTALLED_PCA, str(here)))
        copies.append(copy)
    return copies


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed (Debian package systemd)")
def test_systemd_analyze_verify_accepts_every_unit(tmp_path: Path) -> None:
    units = installed_here(tmp_path)
    done = verify(tmp_path, *units)
    assert (done.returncode, done.stderr) == (0, ""), done.stderr  # a warning (an unknown key...) fails too
    # The check has teeth: a misspelt directive, or a binary that is not there, is reported.
    misspelt = tmp_path / "misspelt.service"
    misspelt.write_text(units[0].read_text().replace("ProtectSystem=", "ProtectSytem="))
    assert "Unknown key 'ProtectSytem'" in verify(tmp_path, misspelt).stderr
    absent = verify(SYSTEMD, SYSTEMD / "pca-api.service")  # names /opt/pca/venv/bin/pca, absent here
    assert absent.returncode != 0 and "is not executable" in absent.stderr


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed (Debian package systemd)")
def test_every_unit_scores_a_low_exposure(tmp_path: Path) -> None:
    for unit in installed_here(tmp_path):
        done = subprocess.run(
            [str(SYSTEMD_ANALYZE), "security", "--offline=yes", "--no-pager", str(unit)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if "offline" in done.stderr and "unrecognized" in done.stderr:
            pytest.skip("systemd-analyze security --offline needs systemd 252 or newer")
        score = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", done.stdout)
        assert score is not None, done.stdout + done.stderr
        assert float(score.group(1)) <= 2.5, (unit.name, score.group(0))  # systemd's scale: 0 safe, 10 exposed


def test_dockerfile_installs_the_lock_and_runs_pca() -> None:
    """The Dockerfile is not built here (no container daemon): it installs the lock and runs commands that exist."""
    text = (ROOT / "Dockerfile").read_text()
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "COPY requirements/runtime.lock requirements/runtime.lock" in text
    install = re.search(r"pip install (.*-r requirements/runtime\.lock)", text)
    assert install is not None and "--require-hashes" in install.group(1) and "--no-deps" in install.group(1)
    assert "pip install --no-deps --no-build-isolation ." in text  # the project, with the lock's setuptools
    copied = [src for line in re.findall(r"^COPY (?!--)(.*)$", text, re.M) for src in line.split()[:-1]]
    for source in copied:
        assert (ROOT / source).exists(), source
    packages = {p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert packages <= set(copied), packages - set(copied)
    entrypoint = re.search(r'^ENTRYPOINT \["([^"]+)"\]$', text, re.M)
    assert entrypoint is not None and entrypoint.group(1) in pyproject["project"]["scripts"]
    cmd = re.search(r"^CMD (\[.*\])$", text, re.M)
    assert cmd is not None
    args = build_parser().parse_args(json.loads(cmd.group(1)))
    assert args.command == "serve" and args.config == "/var/lib/pca/pca.toml"
