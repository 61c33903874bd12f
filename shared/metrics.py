"""Prometheus metrics shared by every service, and the middleware that records them with one access line.

Route labels are templates in the runbook's form (`/alerts/:id/resolve`), and `unmatched` for requests no route
matched, so label cardinality is bounded by the route table, never by clients.
"""

from __future__ import annotations

import re
import time
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from starlette.requests import Request
from starlette.responses import Response

from shared.context import request_context, watch_response
from shared.log import get_logger
from shared.types import ASGIApp, Receive, Scope, Send

UNMATCHED_ROUTE = "unmatched"
PROBE_ROUTES = frozenset({"/health", "/ready", "/metrics"})
# Any other verb is counted as OTHER, so a client cannot grow the label set (Traefik's EXTENSION_METHOD).
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0)

SECURITY_EVENTS = (
    "anomaly.auth",
    "audit_failed",
    "auth.failure",
    "auth.lockout",
    "cors.reject",
    "mfa.denied",
    "rate_limited",
    "readiness.fail",
    "token.invalid",
)

REQUESTS = Counter(
    "apgms_api_requests_total",
    "HTTP requests served, by route template and exact status.",
    ["method", "route", "status"],
)
REQUEST_DURATION = Histogram(
    "apgms_api_request_duration_seconds",
    "Time from request start to the end of the response body.",
    ["method", "route"],
    buckets=LATENCY_BUCKETS_S,
)
SECURITY_EVENTS_TOTAL = Counter("security_events_total", "Security-relevant events, by closed event name.", ["event"])
for _event in SECURITY_EVENTS:
    SECURITY_EVENTS_TOTAL.labels(event=_event)

log = get_logger(__name__)


class Children:
    """`metric.labels(*values)`, remembered. prometheus_client's lookup takes a lock and costs about 2 us per
    call, which the hot paths pay several times per request; every label set here is bounded (route templates,
    services, status codes), so the cache is too."""

    def __init__(self, metric: Any) -> None:
        self.metric = metric
        self.cache: dict[tuple[str, ...], Any] = {}

    def __call__(self, *values: str) -> Any:
        child = self.cache.get(values)
        if child is None:
            child = self.cache[values] = self.metric.labels(*values)
        return child


_PATH_PARAM = re.compile(r"\{([^}:]+)(?::[^}]*)?\}")


def route_template(path_format: str) -> str:
    """Starlette's `/alerts/{id:int}/resolve` written the runbook's way: `/alerts/:id/resolve`."""
    return _PATH_PARAM.sub(r":\1", path_format)


def route_label(scope: Scope) -> str:
    """The matched route's template; a handler that routes by itself (the proxy) sets `state["route_label"]`."""
    override = scope.get("state", {}).get("route_label")
    if override is not None:
        return str(override)
    route = scope.get("route")
    path = getattr(route, "path", None)
    if not isinstance(path, str):
        return UNMATCHED_ROUTE
    return route_template(scope.get("root_path", "") + path)


def record_security_event(event: str, **fields: Any) -> None:
    """Count one security event and write its `security_event` log line; `event` must be in SECURITY_EVENTS."""
    if event not in SECURITY_EVENTS:
        raise ValueError(f"unknown security event {event!r}")
    SECURITY_EVENTS_TOTAL.labels(event=event).inc()
    log.warning("security_event", **{"security.event": event}, **fields)


class MetricsMiddleware:
    """Counts and times every HTTP request and writes its access log line."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.requests = Children(REQUESTS)
        self.durations = Children(REQUEST_DURATION)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        exchange, send = watch_response(scope, send)
        try:
            await self.app(scope, receive, send)
        finally:
            status = exchange.status or 500
            elapsed = time.perf_counter() - started
            method = scope["method"] if scope["method"] in KNOWN_METHODS else "OTHER"
            route = route_label(scope)
            self.requests(method, route, str(status)).inc()
            self.durations(method, route).observe(elapsed)
            state = scope.get("state", {})
            context = request_context(scope) if "context" in state else None
            # Probes and scrapes arrive every few hundred ms from the proxy and Prometheus; their successes would
            # drown the access log, so they are debug lines. Their failures stay info.
            write = log.debug if route in PROBE_ROUTES and status < 400 else log.info
            write(
                "request",
                method=method,
                route=route,
                path=scope["path"],
                status=status,
                duration_ms=round(elapsed * 1000, 2),
                client=context.client if context else None,
                **state.get("log_fields", {}),
            )


def metrics_text(registry: CollectorRegistry = REGISTRY) -> bytes:
    return generate_latest(registry)


async def metrics_endpoint(_: Request) -> Response:
    return Response(metrics_text(), media_type=CONTENT_TYPE_LATEST)
