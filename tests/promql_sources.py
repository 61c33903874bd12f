"""Where the project's PromQL lives, read for the tests: the rule files of deploy/prometheus/, the Grafana dashboards
of deploy/grafana/ and the `promql` blocks of docs/ops/promql.md. The rule tests (promtool), the dashboard test and
the evaluation on a real Prometheus all read the expressions from here, so none of them keeps its own list."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from apgms.devservers import DevServerError, PrometheusBinaries, ensure_prometheus

ROOT = Path(__file__).resolve().parents[1]
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
RULE_FILES = sorted((PROMETHEUS_DIR / "rules").glob("*.yml"))
RULE_TEST_FILES = sorted((PROMETHEUS_DIR / "tests").glob("*.yml"))
PROMETHEUS_CONFIGS = [PROMETHEUS_DIR / "prometheus.yml", PROMETHEUS_DIR / "global.yml"]
GRAFANA_DIR = ROOT / "deploy" / "grafana"
DASHBOARD_FILES = sorted((GRAFANA_DIR / "dashboards").glob("*.json"))
PROMQL_DOC = ROOT / "docs" / "ops" / "promql.md"
ALERTS_DOC = ROOT / "docs" / "ops" / "alerts.md"
# Where compose puts the scrape credential (deploy/prometheus/*.yml); tests point it at a file of their own.
CREDENTIALS_FILE = "/run/secrets/metrics_bearer_token"


@dataclass(frozen=True)
class Rule:
    """One recording or alerting rule as its file states it."""

    file: str
    group: str
    kind: str  # "record" or "alert"
    name: str
    expr: str
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Expression:
    """A PromQL expression and where it was found (for the failure message)."""

    source: str
    expr: str


def prometheus_binaries() -> PrometheusBinaries:
    try:
        return ensure_prometheus()
    except DevServerError as error:
        pytest.fail(f"These tests need prometheus and promtool: {error}")


def rules() -> list[Rule]:
    found = []
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                kind = "alert" if "alert" in rule else "record"
                found.append(
                    Rule(
                        file=path.name,
                        group=group["name"],
                        kind=kind,
                        name=rule[kind],
                        expr=rule["expr"],
                        labels=rule.get("labels", {}),
                        annotations=rule.get("annotations", {}),
                    )
                )
    return found


def alert_rules() -> list[Rule]:
    return [rule for rule in rules() if rule.kind == "alert"]


def recorded_names() -> set[str]:
    return {rule.name for rule in rules() if rule.kind == "record"}


def promql_blocks(text: str) -> list[str]:
    """The `promql` fenced blocks of a Markdown text, each on one line."""
    return [" ".join(block.split()) for block in re.findall(r"```promql\n(.*?)```", text, re.S)]


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel of a dashboard, those inside rows included."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panels(panel)


def dashboards() -> list[tuple[Path, dict[str, Any]]]:
    return [(path, json.loads(path.read_text())) for path in DASHBOARD_FILES]


def dashboard_expressions() -> list[Expression]:
    return [
        Expression(f"{path.name}: {panel['title']}", target["expr"])
        for path, dashboard in dashboards()
        for panel in panels(dashboard)
        for target in panel.get("targets", [])
    ]


def all_expressions() -> list[Expression]:
    """Every PromQL expression the project ships: rules, dashboards, docs/ops/promql.md."""
    found = [Expression(f"{rule.file}: {rule.name}", rule.expr) for rule in rules()]
    found += dashboard_expressions()
    found += [
        Expression(f"promql.md block {n}", block) for n, block in enumerate(promql_blocks(PROMQL_DOC.read_text()))
    ]
    return found


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading: lower case, punctuation other than `-` and `_` dropped, spaces
    turned into `-`."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def doc_anchors(path: Path) -> set[str]:
    return {github_anchor(line.lstrip("#")) for line in path.read_text().splitlines() if line.startswith("#")}
