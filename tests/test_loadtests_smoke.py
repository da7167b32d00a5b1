"""The load-test harness works: every scenario runs at smoke sizes and prints a figure.

Runs ``python -m loadtests.run_all --smoke`` once (about two minutes on 2 cores), and the tests of
single scenarios read that run. Needs the Debian packages ``wrk`` and ``nginx`` (and ``openssl`` and
PostgreSQL, which the other tests need too); without them, the scenarios that need neither run on
their own.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = (
    "ocsp_serve",
    "presign",
    "crl_build",
    "revocations",
    "propagation",
    "scaled_propagation",
    "memory",
    "import_rate",
    "record_latency",
    "crl_follow",
    "enforcement",
    "ocsp_fuzz",
    "crash",
    "scale",
)


class SmokeRun(NamedTuple):
    stdout: str
    report: str  # the benchmarks.md it wrote
    out_dir: Path  # where it wrote it, with benchmarks.json and the scale plots
    docs_changed: list[str]  # committed reports and plots in docs/ that the run changed (it must not)

    def result(self, name: str) -> str:
        """The figure scenario ``name`` printed (its ``RESULT name: ...`` line, after the colon)."""
        line = re.search(rf"^RESULT {name}: (.+)$", self.stdout, re.M)
        assert line is not None, f"no figure for {name}:\n{self.stdout}"
        return line.group(1)


def _run_smoke(out_dir: Path, *only: str) -> SmokeRun:
    """``python -m loadtests.run_all --smoke`` (``--only`` the scenarios named, if any) into ``out_dir``;
    it must succeed."""
    cmd = [sys.executable, "-m", "loadtests.run_all", "--smoke"]
    cmd += ["--only", *only] if only else []
    cmd += ["--out-dir", str(out_dir)]
    before = _committed_docs()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr[-6000:]}"
    after = _committed_docs()
    changed = sorted(name for name in before.keys() | after.keys() if before.get(name) != after.get(name))
    return SmokeRun(proc.stdout, (out_dir / "benchmarks.md").read_text(), out_dir, changed)


def _committed_docs() -> dict[str, bytes]:
    docs = ROOT / "docs"
    files = [*docs.glob("benchmarks*.md"), *docs.glob("benchmarks*.json"), *docs.glob("*.png")]
    return {p.name: p.read_bytes() for p in files}


@pytest.fixture(scope="module")
def every_scenario(tmp_path_factory: pytest.TempPathFactory) -> SmokeRun | None:
    """One smoke run of every scenario, shared by this module's tests; None without wrk or nginx."""
    if shutil.which("wrk") is None or shutil.which("nginx") is None:
        return None
    return _run_smoke(tmp_path_factory.mktemp("smoke"))


@pytest.fixture
def smoke_run(every_scenario: SmokeRun | None, tmp_path: Path) -> Callable[..., SmokeRun]:
    """The shared run of every scenario, or, on a machine without wrk and nginx, a run of just the scenarios
    named (those that need neither)."""

    def run(*only: str) -> SmokeRun:
        return every_scenario if every_scenario is not None else _run_smoke(tmp_path, *only)

    return run


def needs(*tools: str) -> None:
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"the load tests need {' and '.join(missing)} (Debian: apt-get install -y {' '.join(missing)})")


def test_every_scenario_runs_at_smoke_sizes(smoke_run: Callable[..., SmokeRun]) -> None:
    needs("wrk", "nginx")
    run = smoke_run()
    for name in SCENARIOS:
        figure = run.result(name)
        assert re.search(r"\d", figure), f"{name}: {figure}"
    headings = ("## Goals", "## OCSP serving", "## Pre-signing", "## CRL building", "## Responder memory")
    imports = ("## Importing an openssl ca database", "## Recording an issued certificate")
    for heading in (*headings, "## Propagation in the scaled shape", *imports, "## OCSP responder fuzzing"):
        assert heading in run.report
    assert "## Cost as the work grows" in run.report
    # A smoke run never touches the committed report, its JSON or its plots.
    assert run.docs_changed == []


def test_the_import_scenarios_run_at_smoke_sizes(smoke_run: Callable[..., SmokeRun]) -> None:
    # They need neither wrk nor nginx: run them on their own too, so a machine without those still proves them.
    run = smoke_run("import_rate", "record_latency")
    assert re.fullmatch(r"1,000 certificates: [\d,]+/s, peak RSS [\d.]+ MB", run.result("import_rate"))
    assert re.fullmatch(r"p50 \d+ ms, p99 \d+ ms, max \d+ ms, all: True", run.result("record_latency"))
    assert "## Importing an openssl ca database" in run.report and "## Recording an issued certificate" in run.report


def test_the_ocsp_fuzzer_runs_at_smoke_sizes(smoke_run: Callable[..., SmokeRun]) -> None:
    # A few thousand inputs in-process and a few hundred to uvicorn and granian: no failures, servers up.
    run = smoke_run("ocsp_fuzz")
    line = re.fullmatch(r"3,000 inputs in-process at [\d,]+/s, 0 failures; (.+)", run.result("ocsp_fuzz"))
    assert line is not None, run.stdout
    assert line.group(1).count("300 inputs, 0 failures, up after: True") == 2
    assert "## OCSP responder fuzzing (issue 13)" in run.report


def test_the_crash_scenario_runs_at_smoke_sizes(smoke_run: Callable[..., SmokeRun]) -> None:
    """One kill -9 in each shape (embedded on SQLite, scaled on PostgreSQL) during a small revocation burst:
    nothing acknowledged is lost. It needs neither wrk nor nginx."""
    run = smoke_run("crash")
    shapes = run.result("crash").split("; ")
    assert len(shapes) == 2, shapes
    for name, text in zip(("embedded", "scaled"), shapes, strict=True):
        counts = r"(\d+) acknowledged, OCSP (\d+)/(\d+), CRL (\d+)/(\d+)"
        got = re.fullmatch(rf"{name}: 1 kills, {counts}, restart to revoked max [\d.]+ s", text)
        # Every acknowledged revocation is revoked in OCSP and listed in the CRL.
        assert got is not None and len(set(got.groups())) == 1 and int(got.group(1)) > 0, text
    assert "## Crash consistency: kill -9 during a revocation burst (issue 13)" in run.report


def test_the_scale_scenario_runs_at_smoke_sizes(smoke_run: Callable[..., SmokeRun]) -> None:
    """Two tiny sets, built, pre-signed, published and served: a table and a log-log PNG per measure, in the
    smoke run's directory; docs/ keeps its plots."""
    needs("wrk")
    plots = ("ocsp", "presign", "crl", "startup")
    run = smoke_run("scale")
    sizes = run.result("scale").split("; ")
    assert [s.split(":")[0] for s in sizes] == ["300", "1,000"], sizes
    for text in sizes:
        assert re.fullmatch(r"[\d,]+: pre-sign [\d.]+ s, publish [\d.]+ s, start-up [\d.]+ s, [\d,]+ req/s", text)
    result = json.loads((run.out_dir / "benchmarks.json").read_text())["results"]["scale"]
    for row in result["results"]:
        # every certificate pre-signed and served, the revoked ones listed in the CRL, right answers
        assert row["serve"]["cached_responses"] >= row["certificates"]
        assert row["crl"]["entries"] == (row["certificates"] - 1) // 100
        assert row["serve"]["errors"] == 0 and row["serve"]["wrong_answers"] == 0
    assert "## Cost as the work grows" in run.report and "### What dominates at the top end" in run.report
    for p in plots:
        assert f"(benchmarks-scale-{p}.png)" in run.report
        assert (run.out_dir / f"benchmarks-scale-{p}.png").read_bytes().startswith(b"\x89PNG")
    assert run.docs_changed == []
