"""The lock files agree with ``pyproject.toml``: whoever edits a dependency or its range without
running ``./scripts/lock`` again is told here, offline.

``requirements/test.lock`` covers the runtime dependencies, the ``test`` extra and the build backend
(``requirements/build.in``); ``requirements/runtime.lock`` the runtime dependencies and the build
backend, at the versions of the test lock (``scripts/lock``). Every dependency named there is pinned
in its lock at a version its range admits, every pin carries hashes (``scripts/venv.sh`` installs
with ``--require-hashes``), and a lock names as pyproject's no package that pyproject no longer names.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
FROM_PYPROJECT = "pca-revocation (pyproject.toml)"  # how uv's "# via" comments name a direct dependency
FIX = "run ./scripts/lock"


@dataclasses.dataclass(frozen=True)
class Pin:
    name: str
    version: Version
    marker: str
    hashes: int
    via: frozenset[str]


def _requirements(lock: str) -> list[Requirement]:
    """What pyproject.toml (and requirements/build.in) ask of ``lock``, as ``scripts/lock`` compiles it."""
    names = [*PYPROJECT["project"]["dependencies"]]
    if lock == "test.lock":
        names += PYPROJECT["project"]["optional-dependencies"]["test"]
    build = (ROOT / "requirements" / "build.in").read_text().splitlines()
    names += [line for line in build if line.strip() and not line.startswith("#")]
    return [Requirement(name) for name in names]


def _pins(lock: str) -> list[Pin]:
    """The entries of a lock written by ``uv pip compile --generate-hashes``: a pin, its hashes on
    continuation lines, then the ``# via`` comment (on one line or one name a line)."""
    pins: list[Pin] = []
    entry: list[str] = []
    via: list[str] = []

    def close() -> None:
        if entry:
            spec, _, marker = " ".join(t for t in entry if not t.startswith("--hash=")).partition(";")
            name, equals, version = spec.strip().partition("==")
            assert equals, f"requirements/{lock}: {spec.strip()!r} is not pinned with =="
            hashes = sum(t.startswith("--hash=sha256:") for t in entry)
            pins.append(Pin(canonicalize_name(name), Version(version), marker.strip(), hashes, frozenset(via)))
        entry.clear()
        via.clear()

    continued = False
    for line in (ROOT / "requirements" / lock).read_text().splitlines():
        text = line.strip()
        if continued:
            entry.extend(text.rstrip("\\").split())
        elif text.startswith("#"):
            comment = re.sub(r"^#\s*(via\s*)?", "", text)
            if entry and comment:
                via.append(comment)
        elif text:
            close()
            entry.extend(text.rstrip("\\").split())
        continued = text.endswith("\\")
    close()
    return pins


LOCKS = ("runtime.lock", "test.lock")


def test_the_locks_are_found() -> None:
    # The checks below would pass vacuously on locks this parser could not read.
    for lock in LOCKS:
        pins = {p.name: p for p in _pins(lock)}
        assert {"cryptography", "starlette", "setuptools"} <= pins.keys()
        assert pins["cryptography"].hashes >= 2 and FROM_PYPROJECT in pins["cryptography"].via
    assert {"pytest", "hypothesis"} <= {p.name for p in _pins("test.lock")}


@pytest.mark.parametrize("lock", LOCKS)
def test_every_dependency_is_pinned_within_its_range(lock: str) -> None:
    pins = _pins(lock)
    wrong = []
    for req in _requirements(lock):
        found = [p for p in pins if p.name == canonicalize_name(req.name)]
        if not found:
            wrong.append(f"{req} is not in the lock")
        for pin in found:
            if not req.specifier.contains(pin.version, prereleases=True):
                wrong.append(f"{req.name} is pinned at {pin.version}, outside pyproject's {req}")
    assert not wrong, f"requirements/{lock} disagrees with pyproject.toml ({FIX}): {wrong}"


@pytest.mark.parametrize("lock", LOCKS)
def test_every_pin_has_hashes(lock: str) -> None:
    bare = [f"{p.name}=={p.version}" for p in _pins(lock) if not p.hashes]
    assert not bare, f"requirements/{lock} pins without --hash (pip --require-hashes refuses them; {FIX}): {bare}"


@pytest.mark.parametrize("lock", LOCKS)
def test_no_dependency_pyproject_dropped_is_left_in_the_lock(lock: str) -> None:
    named = {canonicalize_name(req.name) for req in _requirements(lock)}
    left = sorted(p.name for p in _pins(lock) if FROM_PYPROJECT in p.via and p.name not in named)
    assert not left, f"requirements/{lock} still installs what pyproject.toml no longer names ({FIX}): {left}"


def test_the_runtime_lock_has_the_versions_of_the_test_lock() -> None:
    """One .venv serves ./scripts/start and ./scripts/test: the runtime set is the test set less the tools."""
    test: dict[str, set[Version]] = {}
    for pin in _pins("test.lock"):
        test.setdefault(pin.name, set()).add(pin.version)  # markers may differ: the runtime set is smaller
    differ = [
        f"{p.name} {p.version} (test.lock: {sorted(map(str, test.get(p.name, ()))) or 'absent'})"
        for p in _pins("runtime.lock")
        if p.version not in test.get(p.name, set())
    ]
    assert not differ, f"requirements/runtime.lock and test.lock pin differently ({FIX}): {differ}"
