"""Route labels in the runbook's form, and the closed set of security events."""

from __future__ import annotations

import re

import pytest
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest
from starlette.routing import Route

from shared.log import capture_logs
from shared.metrics import (
    SECURITY_EVENTS,
    UNMATCHED_ROUTE,
    RequestCounter,
    RequestHistogram,
    record_security_event,
    route_label,
    route_template,
)


@pytest.mark.parametrize(
    ("path_format", "expected"),
    [
        ("/alerts/{id}/resolve", "/alerts/:id/resolve"),
        ("/x/{id:int}", "/x/:id"),
        ("/orgs/{org_id}/files/{name:path}", "/orgs/:org_id/files/:name"),
        ("/v1/bas/{period:str}/lodge", "/v1/bas/:period/lodge"),
        ("/health", "/health"),
    ],
)
def test_route_template_uses_the_runbook_form(path_format: str, expected: str) -> None:
    assert route_template(path_format) == expected


def test_route_label_is_the_matched_template() -> None:
    route = Route("/alerts/{id:int}/resolve", lambda _: None)
    assert route_label({"type": "http", "route": route}) == "/alerts/:id/resolve"
    assert route_label({"type": "http", "route": route, "root_path": "/core"}) == "/core/alerts/:id/resolve"


def test_route_label_is_unmatched_without_a_route() -> None:
    assert route_label({"type": "http", "path": "/random/123"}) == UNMATCHED_ROUTE == "unmatched"


def security_events(event: str) -> float:
    return REGISTRY.get_sample_value("security_events_total", {"event": event}) or 0.0


@pytest.mark.parametrize("event", ["mfa.denied", "auth.failure", "rate_limited"])
def test_record_security_event_counts_and_logs(event: str) -> None:
    before = security_events(event)
    with capture_logs() as logs:
        record_security_event(event, org_id="org-1", principal="user-9")
    assert security_events(event) == before + 1
    assert logs == [
        {
            "event": "security_event",
            "security.event": event,
            "org_id": "org-1",
            "principal": "user-9",
            "log_level": "warning",
        }
    ]


def test_unknown_security_event_is_rejected_and_not_counted() -> None:
    with capture_logs() as logs, pytest.raises(ValueError, match=r"made\.up"):
        record_security_event("made.up", org_id="org-1")
    assert REGISTRY.get_sample_value("security_events_total", {"event": "made.up"}) is None
    assert logs == []


def test_every_security_event_series_exists_from_start() -> None:
    for event in SECURITY_EVENTS:
        assert REGISTRY.get_sample_value("security_events_total", {"event": event}) is not None
    assert {
        "anomaly.auth",
        "audit_chain_broken",
        "audit_failed",
        "auth.failure",
        "mfa.denied",
        "rate_limited",
        "cors.reject",
    } <= set(SECURITY_EVENTS)


def test_request_metrics_are_exposed_exactly_as_prometheus_clients_own() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    counter = RequestCounter("x_requests_total", "Requests.", ["method", "status"], registry=ours)
    histogram = RequestHistogram("x_seconds", "Time.", ["method"], buckets=(0.01, 0.1, 1.0), registry=ours)
    reference_counter = Counter("x_requests_total", "Requests.", ["method", "status"], registry=theirs)
    reference_histogram = Histogram("x_seconds", "Time.", ["method"], buckets=(0.01, 0.1, 1.0), registry=theirs)
    for method, status, seconds in [("GET", "200", 0.01), ("GET", "200", 0.5), ("POST", "503", 7.0), ("GET", "404", 0)]:
        counter.inc((method, status))
        reference_counter.labels(method, status).inc()
        histogram.observe((method,), seconds)
        reference_histogram.labels(method).observe(seconds)
    created = re.compile(rb"(_created\{[^}]*\}) \S+")
    assert created.sub(rb"\1 T", generate_latest(ours)) == created.sub(rb"\1 T", generate_latest(theirs))
    assert ours.get_sample_value("x_seconds_bucket", {"method": "GET", "le": "0.01"}) == 2.0  # a bound is inclusive
