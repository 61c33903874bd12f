"""Prometheus metrics shared by every service, and the middleware that records them with one access line.

Route labels are templates in the runbook's form (`/alerts/:id/resolve`), and `unmatched` for requests no route
matched, so label cardinality is bounded by the route table, never by clients.
"""

from __future__ import annotations

import bisect
import re
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString
from starlette.requests import Request
from starlette.responses import Response

from shared.context import request_state, watch_response
from shared.log import get_logger, write_access_line
from shared.types import ASGIApp, Receive, Scope, Send

__all__ = [
    "JOB_DURATION",
    "JOB_DURATION_BUCKETS_S",
    "KNOWN_METHODS",
    "LATENCY_BUCKETS_S",
    "PROBE_ROUTES",
    "REQUESTS",
    "REQUEST_DURATION",
    "SECURITY_EVENTS",
    "SECURITY_EVENTS_TOTAL",
    "UNMATCHED_ROUTE",
    "MetricsMiddleware",
    "RequestCounter",
    "RequestHistogram",
    "metrics_endpoint",
    "metrics_text",
    "record_security_event",
    "route_label",
    "route_template",
    "timed_job",
]

UNMATCHED_ROUTE = "unmatched"
PROBE_ROUTES = frozenset({"/health", "/ready", "/metrics"})
# Any other verb is counted as OTHER, so a client cannot grow the label set (Traefik's EXTENSION_METHOD).
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0)
# Jobs (a report, an evidence pack, a snapshot, a checkpoint) call other services and sign: longer than a request.
JOB_DURATION_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

SECURITY_EVENTS = (
    "anomaly.auth",
    "audit_chain_broken",
    "audit_failed",
    "auth.failure",
    "auth.lockout",
    "cors.reject",
    "mfa.denied",
    "rate_limited",
    "readiness.fail",
    "token.invalid",
)


class RequestCounter:
    """A labelled counter for the request path, exposed exactly as prometheus_client's `Counter` is (`_total`
    and `_created` series).

    prometheus_client's `labels(...).inc()` is five Python calls and a lock; this is one call and a dict update.
    Only the event loop's thread may call `inc` (all our request handling runs there); a scrape reads a copy."""

    def __init__(
        self, name: str, documentation: str, labelnames: Sequence[str], registry: CollectorRegistry = REGISTRY
    ) -> None:
        self.name = name.removesuffix("_total")
        self.documentation = documentation
        self.labelnames = list(labelnames)
        self.values: dict[tuple[str, ...], float] = {}
        self.created: dict[tuple[str, ...], float] = {}
        registry.register(self)

    def inc(self, labels: tuple[str, ...], amount: float = 1.0) -> None:
        value = self.values.get(labels)
        if value is None:
            self.created[labels] = time.time()
            value = 0.0
        self.values[labels] = value + amount

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for labels, value in list(self.values.items()):
            family.add_metric(labels, value, created=self.created[labels])
        yield family


class RequestHistogram:
    """A labelled histogram for the request path, exposed exactly as prometheus_client's `Histogram` is
    (cumulative `_bucket`s up to `+Inf`, `_count`, `_sum`, `_created`); `observe` is one call, see
    `RequestCounter`."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        buckets: Sequence[float],
        registry: CollectorRegistry = REGISTRY,
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = list(labelnames)
        self.bounds = [*buckets, float("inf")]
        self.les = [floatToGoString(bound) for bound in self.bounds]  # type: ignore[no-untyped-call]
        # Per label set: one count per bucket (not cumulative), then the sum.
        self.series: dict[tuple[str, ...], list[float]] = {}
        self.created: dict[tuple[str, ...], float] = {}
        registry.register(self)

    def observe(self, labels: tuple[str, ...], value: float) -> None:
        series = self.series.get(labels)
        if series is None:
            self.created[labels] = time.time()  # first: `collect` reads it for every series it finds
            series = self.series[labels] = [0.0] * (len(self.bounds) + 1)
        series[bisect.bisect_left(self.bounds, value)] += 1  # the first bucket whose bound is >= value
        series[-1] += value

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for labels, series in list(self.series.items()):
            counts, cumulative = list(series), 0.0
            buckets = []
            for le, count in zip(self.les, counts, strict=False):
                cumulative += count
                buckets.append((le, cumulative))
            family.add_metric(labels, buckets, counts[-1])
            family.samples.append(
                Sample(f"{self.name}_created", dict(zip(self.labelnames, labels, strict=True)), self.created[labels])
            )
        yield family


REQUESTS = RequestCounter(
    "apgms_api_requests_total",
    "HTTP requests served, by route template and exact status.",
    ["method", "route", "status"],
)
REQUEST_DURATION = RequestHistogram(
    "apgms_api_request_duration_seconds",
    "Time from request start to the end of the response body.",
    ["method", "route"],
    buckets=LATENCY_BUCKETS_S,
)
JOB_DURATION = Histogram(
    "apgms_job_duration_seconds",
    "Time a unit of background or on-demand work took, by job name, whether it succeeded or failed.",
    ["job"],
    buckets=JOB_DURATION_BUCKETS_S,
)
SECURITY_EVENTS_TOTAL = Counter("security_events_total", "Security-relevant events, by closed event name.", ["event"])
for _event in SECURITY_EVENTS:
    SECURITY_EVENTS_TOTAL.labels(event=_event)

log = get_logger(__name__)


_PATH_PARAM = re.compile(r"\{([^}:]+)(?::[^}]*)?\}")


def route_template(path_format: str) -> str:
    """Starlette's `/alerts/{id:int}/resolve` written the runbook's way: `/alerts/:id/resolve`."""
    return _PATH_PARAM.sub(r":\1", path_format)


def route_label(scope: Scope) -> str:
    """The matched route's template; a handler that routes by itself (the proxy) sets the request state's
    `route_label`."""
    override = request_state(scope).route_label
    if override is not None:
        return override
    route = scope.get("route")
    path = getattr(route, "path", None)
    if not isinstance(path, str):
        return UNMATCHED_ROUTE
    return route_template(scope.get("root_path", "") + path)


@contextmanager
def timed_job(job: str) -> Iterator[None]:
    """Observe the time the `with` block takes in `apgms_job_duration_seconds{job}`, also when it raises (a job
    that fails slowly, waiting on a service, is what the histogram must show). `job` is a fixed name from code
    ("report", "evidence_pack", "snapshot", "checkpoint"), never from a request."""
    started = time.perf_counter()
    try:
        yield
    finally:
        JOB_DURATION.labels(job=job).observe(time.perf_counter() - started)


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
            elapsed = (exchange.finished or time.perf_counter()) - started
            method = scope["method"] if scope["method"] in KNOWN_METHODS else "OTHER"
            route = route_label(scope)
            REQUESTS.inc((method, route, str(status)))
            REQUEST_DURATION.observe((method, route), elapsed)
            state = request_state(scope)
            context = state.context
            # Probes and scrapes arrive every few hundred ms from the proxy and Prometheus; their successes would
            # drown the access log, so they are debug lines. Their failures stay info.
            level = "debug" if route in PROBE_ROUTES and status < 400 else "info"
            write_access_line(
                level,
                method,
                route,
                scope["path"],
                status,
                round(elapsed * 1000, 2),
                context.client if context else None,
                state.log_fields,
            )


def metrics_text(registry: CollectorRegistry = REGISTRY) -> bytes:
    return generate_latest(registry)


async def metrics_endpoint(_: Request) -> Response:
    return Response(metrics_text(), media_type=CONTENT_TYPE_LATEST)
