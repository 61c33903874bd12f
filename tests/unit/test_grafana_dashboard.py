"""deploy/grafana/: the provisioned datasource points at compose's Prometheus, the dashboard provider at the mounted
dashboards, and the dashboard has the panels issue #15 asks for, each with PromQL that a real Prometheus evaluates
(tests/e2e/test_promql_evaluated.py evaluates `promql_sources.all_expressions()`, which reads the dashboard)."""

from __future__ import annotations

import re
from typing import Any

import yaml
from promql_sources import (
    DASHBOARD_FILES,
    GRAFANA_DIR,
    all_expressions,
    dashboard_expressions,
    dashboards,
    panels,
    recorded_names,
)

DATASOURCE_UID = "apgms-prometheus"
RECORDED = re.compile(r"\b[a-z_]+:[a-z0-9_]+:[a-z0-9_]+\b")


def datasource() -> dict[str, Any]:
    config = yaml.safe_load((GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml").read_text())
    [only] = config["datasources"]
    assert isinstance(only, dict)
    return only


def test_the_datasource_is_compose_prometheus_and_the_provider_reads_the_mounted_dashboards() -> None:
    source = datasource()
    assert (source["type"], source["uid"], source["url"]) == ("prometheus", DATASOURCE_UID, "http://prometheus:9090")
    assert source["isDefault"] is True
    provider_config = yaml.safe_load((GRAFANA_DIR / "provisioning" / "dashboards" / "apgms.yml").read_text())
    [provider] = provider_config["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"


def test_every_panel_queries_the_provisioned_datasource_with_plain_promql() -> None:
    assert [path.name for path in DASHBOARD_FILES] == ["apgms.json"]
    for path, dashboard in dashboards():
        assert dashboard["uid"] and dashboard["title"], path
        ids = [panel["id"] for panel in panels(dashboard)]
        assert len(ids) == len(set(ids)), f"{path.name}: panel ids repeat"
        for panel in panels(dashboard):
            if panel["type"] == "row":
                continue
            assert panel["datasource"]["uid"] == DATASOURCE_UID, panel["title"]
            assert panel["targets"], f"{panel['title']} has no query"
            refs = [target["refId"] for target in panel["targets"]]
            assert len(refs) == len(set(refs)), panel["title"]
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == DATASOURCE_UID, panel["title"]
                assert target["expr"].strip(), panel["title"]
                # Grafana variables ($__rate_interval, $service) are not PromQL: Prometheus could not evaluate them.
                assert "$" not in target["expr"], panel["title"]


def test_every_dashboard_expression_is_evaluated_and_reads_recorded_series_that_exist() -> None:
    evaluated = {expression.expr for expression in all_expressions()}
    recorded = recorded_names()
    for expression in dashboard_expressions():
        assert expression.expr in evaluated, expression.source
        for name in RECORDED.findall(expression.expr):
            assert name in recorded, f"{expression.source}: {name} is not recorded by deploy/prometheus/rules"


def expressions_of(dashboard: dict[str, Any], title_word: str) -> tuple[dict[str, Any], list[str]]:
    [panel] = [panel for panel in panels(dashboard) if title_word in panel["title"].lower()]
    return panel, [target["expr"] for target in panel["targets"]]


def threshold_line(panel: dict[str, Any]) -> list[float]:
    defaults = panel["fieldConfig"]["defaults"]
    assert defaults["custom"]["thresholdsStyle"]["mode"] == "line", panel["title"]
    return [step["value"] for step in defaults["thresholds"]["steps"] if step["value"] is not None]


def test_the_dashboard_has_the_issues_panels() -> None:
    [(_, dashboard)] = dashboards()
    _, requests = expressions_of(dashboard, "requests per second")
    assert requests == ["job:apgms_requests:rate5m"]
    _, errors = expressions_of(dashboard, "5xx ratio")
    assert errors == ["job:apgms_requests_5xx:ratio_rate5m"]
    p95, latency = expressions_of(dashboard, "at the proxy (slo 500 ms)")
    assert latency == ['route:apgms_request_duration_seconds:p95_5m{service="api-gateway"}']
    assert threshold_line(p95) == [0.5]
    assert p95["fieldConfig"]["defaults"]["unit"] == "s"
    burn, burn_rates = expressions_of(dashboard, "burn rate")
    assert burn_rates == [
        f"job:apgms_slo_requests_5xx:ratio_rate{window} / 0.005" for window in ("5m", "30m", "1h", "6h")
    ]
    assert threshold_line(burn) == [6, 14.4]
    _, upstreams = expressions_of(dashboard, "upstream health")
    assert any("apgms_proxy_upstream_up" in expr for expr in upstreams)
    _, security = expressions_of(dashboard, "security events")
    assert security and all("security_events_total" in expr for expr in security)
    _, audit = expressions_of(dashboard, "audit failures")
    assert audit and all('event=~"audit_failed|audit_chain_broken"' in expr for expr in audit)
