"""The shipped Prometheus rules pass promtool's checks and unit tests; the Grafana dashboards are
dashboards Grafana can import. (That every name they read is exported: test_live_metrics.py.)"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.monitoring import (
    DASHBOARDS,
    DEPLOY,
    RULES,
    dashboard_exprs,
    dashboard_panels,
    load_dashboards,
    metric_names,
    rules,
)

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (Debian package prometheus)")


@needs_promtool
def test_the_rules_pass_promtool_check() -> None:
    done = subprocess.run([str(PROMTOOL), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


@needs_promtool
def test_the_rules_pass_their_promtool_unit_tests() -> None:
    tests = sorted((DEPLOY / "prometheus" / "tests").glob("*.yml"))
    assert tests
    done = subprocess.run(
        [str(PROMTOOL), "test", "rules", *map(str, tests)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_the_issue_asks_for_is_there() -> None:
    alerts = {rule["alert"] for rule in rules() if "alert" in rule}
    for wanted in (
        "PcaPropagationSLOBurnFast",
        "PcaPropagationSLOBurnSlow",
        "PcaOCSPResponsesNearNextUpdate",
        "PcaCRLStale",
        "PcaOCSPSignerExpiring",
        "PcaResponderDown",
        "PcaResponderLagging",
        "PcaCRLPublicationRefused",
        "PcaSigningErrors",
    ):
        assert wanted in alerts
    for rule in rules():
        if "alert" in rule:
            assert rule["labels"]["severity"] in ("page", "ticket"), rule["alert"]
            assert rule["annotations"]["summary"], rule["alert"]


def test_metric_names_are_read_from_promql() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (channel, le) (rate(revocation_propagation_seconds_bucket{job=~"$job"}'
        "[$__rate_interval]))) > 14.4 * 1e-2 and on (job) pca:crl_age_seconds offset 5m unless up == bool 0"
    )
    assert metric_names(expr) == {"revocation_propagation_seconds_bucket", "pca:crl_age_seconds", "up"}
    assert metric_names('sum(rate(x_total{a="b(c)"}[5m])) by (issuer) / ignoring(kind) y') == {"x_total", "y"}


def test_three_dashboards_grafana_can_import() -> None:
    dashboards = load_dashboards()
    assert sorted(dashboards) == ["pca-debug.json", "pca-executive.json", "pca-oncall.json"]
    uids = set()
    for name, board in dashboards.items():
        assert board["title"].startswith("pca"), name
        assert isinstance(board["schemaVersion"], int) and board["schemaVersion"] >= 36, name
        assert board["uid"] not in uids and len(board["uid"]) <= 40, name
        uids.add(board["uid"])
        variables = {v["name"]: v for v in board["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource"
        assert variables["datasource"]["query"] == "prometheus"
        ids = [p["id"] for p in dashboard_panels(board)]
        assert len(ids) == len(set(ids)), f"{name}: panel ids repeat"
        for panel in dashboard_panels(board):
            assert panel["type"] in ("row", "timeseries", "stat", "gauge", "table", "bargauge", "text"), panel
            grid = panel["gridPos"]
            assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24 and grid["h"] > 0, (name, panel["title"])
            if panel["type"] in ("row", "text"):
                continue
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, (name, panel["title"])
            assert panel["targets"], (name, panel["title"])
            for target in panel["targets"]:
                assert target["refId"] and target["expr"].strip(), (name, panel["title"])
        assert dashboard_exprs(board), name
    assert len(DASHBOARDS) == 3


def test_the_example_scrape_configuration_loads_the_rules(tmp_path: Path) -> None:
    if PROMTOOL is None:
        pytest.skip("promtool not installed (Debian package prometheus)")
    config = DEPLOY / "prometheus" / "prometheus.yml"
    # promtool resolves rule_files relative to the configuration, and checks the CA file exists.
    (tmp_path / "ca-chain.pem").write_text("")
    text = config.read_text().replace("/etc/pca/ca-chain.pem", str(tmp_path / "ca-chain.pem"))
    text = text.replace("/etc/prometheus/pca-rules.yml", str(RULES))
    (tmp_path / "prometheus.yml").write_text(text)
    done = subprocess.run(
        [str(PROMTOOL), "check", "config", str(tmp_path / "prometheus.yml")], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
