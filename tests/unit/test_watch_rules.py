"""The shipped monitoring files: promtool checks the rules and runs their unit tests, and the
Grafana dashboard is importable (templated datasource and instance, a panel per signal).

promtool comes with the Debian ``prometheus`` package (scripts/system-packages.sh installs it in
``make test`` where missing); the test fails, not skips, without it, so a clean clone that skipped
the install does not pass quietly.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

MONITORING = Path(__file__).resolve().parents[2] / "monitoring"
RULES = MONITORING / "prometheus" / "celerydiag-rules.yml"
RULE_TESTS = MONITORING / "prometheus" / "celerydiag-rules.test.yml"
DASHBOARD = MONITORING / "grafana" / "celerydiag-watch.json"
ALERTS = {"CeleryStateVisibilityP99OverBudget", "CeleryBrokerBlocked", "CeleryBacklogGrowing",
          "CeleryBackendWriteLatencyHigh", "CeleryTargetDown", "CelerydiagWatchStalled"}


def promtool() -> str:
    found = shutil.which("promtool")
    assert found, "promtool missing: run `make system-packages` (Debian package prometheus)"
    return found


def test_promtool_check_rules_accepts_the_rules_file() -> None:
    done = subprocess.run([promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_promtool_unit_tests_of_every_alert_pass() -> None:
    done = subprocess.run([promtool(), "test", "rules", RULE_TESTS.name], cwd=RULE_TESTS.parent,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_has_a_unit_test_a_runbook_naming_celerydiag_and_a_severity() -> None:
    yaml = pytest.importorskip("yaml")
    rules = [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    alerts = {r["alert"]: r for r in rules if "alert" in r}
    assert set(alerts) == ALERTS
    for name, rule in alerts.items():
        assert "celerydiag doctor" in rule["annotations"]["runbook"], name
        assert rule["labels"]["severity"] in ("warning", "critical"), name
    tested = {t["alertname"] for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]
              for t in case.get("alert_rule_test", [])}
    assert tested == ALERTS
    for rule in rules:  # recording rules follow level:metric:operations
        if "record" in rule:
            assert re.fullmatch(r"celerydiag:[a-z_]+:[a-z0-9_]+", rule["record"]), rule["record"]


def test_dashboard_is_importable_with_instance_and_datasource_variables_and_a_panel_per_signal() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] and dash["title"] and "id" not in dash  # importable: Grafana assigns the id
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["instance"]["type"] == "query" and variables["instance"]["multi"]
    exprs = " ".join(t["expr"] for p in dash["panels"] for t in p["targets"])
    for metric in ("celerydiag_state_visibility_seconds", "celerydiag_dispatch_latency_seconds",
                   "celerydiag_backend_write_seconds", "celerydiag_backend_writes_per_second",
                   "celerydiag_broker_backlog_messages", "celerydiag_broker_blocked", "celerydiag_rtt_seconds",
                   "celerydiag_target_up", "celerydiag_errors_total", "celerydiag_canary_runs_total"):
        assert metric in exprs, metric
    for panel in dash["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            assert 'instance=~"$instance"' in target["expr"], (panel["title"], target["expr"])
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
