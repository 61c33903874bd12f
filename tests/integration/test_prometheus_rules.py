"""deploy/prometheus/ checked with Prometheus's own promtool (Debian's `prometheus` package, installed by
`python -m apgms.devservers` when missing): both configs, the rule files, and the rule unit tests. The coverage of
those unit tests is read from the files, not kept by hand: every alert of the rule files must have a case where it
fires (with its labels and annotations) and a case where it stays quiet."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections import defaultdict
from pathlib import Path

import yaml
from promql_sources import (
    ALERTS_DOC,
    CREDENTIALS_FILE,
    PROMETHEUS_CONFIGS,
    PROMETHEUS_DIR,
    RULE_FILES,
    RULE_TEST_FILES,
    alert_rules,
    doc_anchors,
    prometheus_binaries,
    rules,
)

PROMTOOL_TIMEOUT_S = 60
# level:metric:operations (https://prometheus.io/docs/practices/rules/).
RECORDED_NAME = re.compile(r"^[a-z_]+:[a-z0-9_]+:[a-z0-9_]+$")
SEVERITIES = frozenset({"page", "ticket"})


def run_promtool(*args: str, cwd: Path = PROMETHEUS_DIR) -> tuple[int, str]:
    """promtool's exit code and its output (stdout and stderr)."""
    binaries = prometheus_binaries()
    result = subprocess.run(
        [str(binaries.promtool), *args], cwd=cwd, capture_output=True, text=True, timeout=PROMTOOL_TIMEOUT_S
    )
    return result.returncode, result.stdout + result.stderr


def promtool(*args: str, cwd: Path = PROMETHEUS_DIR) -> str:
    code, output = run_promtool(*args, cwd=cwd)
    assert code == 0, f"promtool {' '.join(args)} failed:\n{output}"
    return output


def test_both_configs_pass_promtool_check_config(tmp_path: Path) -> None:
    # promtool checks that the credential file exists: the copy points at one of ours, nothing else changes.
    copy = tmp_path / "prometheus"
    shutil.copytree(PROMETHEUS_DIR, copy)
    token = tmp_path / "scrape-token"
    token.write_text("test-scrape-credential\n")
    for config in PROMETHEUS_CONFIGS:
        text = config.read_text()
        assert CREDENTIALS_FILE in text, f"{config.name} does not scrape with the credential"
        (copy / config.name).write_text(text.replace(CREDENTIALS_FILE, str(token)))
        output = promtool("check", "config", config.name, cwd=copy)
        assert "SUCCESS: 2 rule files found" in output, output
    # The real path is what compose provides; without it promtool refuses the file, so the check above is real.
    if not Path(CREDENTIALS_FILE).exists():
        code, output = run_promtool("check", "config", "prometheus.yml")
        assert code != 0 and CREDENTIALS_FILE in output


def test_rule_files_pass_promtool_check_rules() -> None:
    assert [path.name for path in RULE_FILES] == ["apgms-alerts.yml", "apgms-recording.yml"]
    output = promtool("check", "rules", *(str(path) for path in RULE_FILES))
    assert output.count("SUCCESS") == len(RULE_FILES), output


def test_promtool_unit_tests_pass() -> None:
    assert RULE_TEST_FILES, "no promtool unit tests in deploy/prometheus/tests"
    output = promtool("test", "rules", *(str(path.relative_to(PROMETHEUS_DIR)) for path in RULE_TEST_FILES))
    assert "FAILED" not in output, output


def test_promtool_fails_a_rule_test_whose_alert_is_broken(tmp_path: Path) -> None:
    """The unit tests can fail: with the audit_failed alert's threshold raised, its firing case fails."""
    copy = tmp_path / "prometheus"
    shutil.copytree(PROMETHEUS_DIR, copy)
    alerts = copy / "rules" / "apgms-alerts.yml"
    broken = 'sum by (job, service) (increase(security_events_total{event="audit_failed"}[5m])) > 5'
    text = alerts.read_text()
    assert broken.replace("> 5", "> 0") in text
    alerts.write_text(text.replace(broken.replace("> 5", "> 0"), broken))
    code, output = run_promtool("test", "rules", "tests/apgms-alerts_test.yml", cwd=copy)
    assert code != 0
    assert "alertname: ApgmsAuditFailed" in output


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    firing: dict[str, list[dict[str, object]]] = defaultdict(list)
    quiet: set[str] = set()
    for path in RULE_TEST_FILES:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                if check.get("exp_alerts"):
                    firing[check["alertname"]] += check["exp_alerts"]
                else:
                    quiet.add(check["alertname"])
    alerts = alert_rules()
    names = {rule.name for rule in alerts}
    assert len(names) == len(alerts), "two alerts share a name"
    assert names - set(firing) == set(), "alerts without a firing case"
    assert names - quiet == set(), "alerts without a quiet case"
    assert set(firing) | quiet <= names, "tests of alerts that do not exist"
    by_name = {rule.name: rule for rule in alerts}
    for name, expected in firing.items():
        for alert in expected:
            labels, annotations = alert.get("exp_labels", {}), alert.get("exp_annotations", {})
            assert isinstance(labels, dict) and isinstance(annotations, dict)
            assert labels.get("severity") == by_name[name].labels["severity"], name
            assert set(annotations) == {"summary", "description", "runbook_url"}, name


def test_every_alert_is_labelled_annotated_and_documented() -> None:
    anchors = doc_anchors(ALERTS_DOC)
    doc = ALERTS_DOC.read_text()
    for rule in alert_rules():
        assert rule.labels.get("severity") in SEVERITIES, rule.name
        assert set(rule.annotations) >= {"summary", "description", "runbook_url"}, rule.name
        path, _, anchor = rule.annotations["runbook_url"].partition("#")
        assert path == "docs/ops/alerts.md", rule.name
        assert anchor == rule.name.lower() and anchor in anchors, f"{rule.name}: no heading #{anchor} in alerts.md"
        assert " ".join(rule.expr.split()) in " ".join(doc.split()), f"alerts.md does not show {rule.name}'s query"


def test_recording_rules_follow_the_naming_convention_and_are_documented() -> None:
    doc = (PROMETHEUS_DIR.parents[1] / "docs" / "ops" / "promql.md").read_text()
    recorded = [rule for rule in rules() if rule.kind == "record"]
    assert {
        "job:apgms_requests:rate5m",
        "job:apgms_requests_5xx:ratio_rate5m",
        "route:apgms_request_duration_seconds:p95_5m",
        "job:apgms_slo_requests_5xx:ratio_rate5m",
        "job:apgms_slo_requests_5xx:ratio_rate30m",
        "job:apgms_slo_requests_5xx:ratio_rate1h",
        "job:apgms_slo_requests_5xx:ratio_rate6h",
    } <= {rule.name for rule in recorded}
    for rule in recorded:
        assert RECORDED_NAME.match(rule.name), rule.name
        assert f"`{rule.name}`" in doc, f"docs/ops/promql.md does not describe {rule.name}"
