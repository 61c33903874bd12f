"""Request rates and 5xx ratios from the services' own request counters: pure functions over the text of their
`/metrics` and two readings, no I/O (the sampler and the snapshot handler in `services.compliance.snapshots` read).

    reading = parse_reading(text)                      # requests and 5xx answers since the process started
    used = increase(baseline, reading)                 # what happened between two readings (a restart counted)
    traffic = summarise([ServiceReading(service, Sampled(reading, at), baseline), ...])

A reading sums `apgms_api_requests_total` (shared.metrics: labels method, route, status) over every series but the
probe routes (`shared.metrics.PROBE_ROUTES`: /health, /ready, /metrics), so the proxy's health checks and the
scrapes that take these readings do not dilute the figures. A 5xx is a status from 500 to 599.

Counters only grow while a process lives; a reading lower than the one before means the process restarted and
counted from zero, so the increase is the later reading itself (what Prometheus's `increase()` assumes too: what
the old process counted after the earlier reading is lost, the figure errs low, never negative).

Nothing here is a float: the answer is hashed into evidence packs as canonical JSON. Rates are decimal strings
with RATE_PLACES places ("12.35" requests per second), ratios with RATIO_PLACES ("0.0012"), windows whole seconds.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal

from prometheus_client.parser import text_string_to_metric_families

from shared.contracts.compliance import ServiceStatus, ServiceTraffic, Traffic, TrafficTotal
from shared.metrics import PROBE_ROUTES, REQUESTS

__all__ = [
    "RATE_PLACES",
    "RATIO_PLACES",
    "REQUESTS_SERIES",
    "Reading",
    "Sampled",
    "ServiceReading",
    "error_ratio",
    "increase",
    "parse_reading",
    "per_second",
    "summarise",
    "whole_seconds",
]

REQUESTS_SERIES = f"{REQUESTS.name}_total"
RATE_PLACES = 2
RATIO_PLACES = 4
_RATE_QUANTUM = Decimal(1).scaleb(-RATE_PLACES)
_RATIO_QUANTUM = Decimal(1).scaleb(-RATIO_PLACES)
_MICROSECONDS = timedelta(microseconds=1)
_SERIES_PREFIXES = (f"{REQUESTS_SERIES}{{", f"{REQUESTS_SERIES} ")


@dataclass(frozen=True, slots=True)
class Reading:
    """A service's request count and 5xx count (probe routes left out), since its process started or over a
    window."""

    requests: int
    errors_5xx: int


@dataclass(frozen=True, slots=True)
class Sampled:
    """A reading and the moment it was taken (when the answer arrived, so after the counters were read)."""

    reading: Reading
    at: datetime


@dataclass(frozen=True, slots=True)
class ServiceReading:
    """What is known of one service for a snapshot: its reading now (None: unreachable) and the stored one to
    compare it with (None: no earlier sample)."""

    service: str
    now: Sampled | None
    baseline: Sampled | None


def _is_5xx(status: str) -> bool:
    return len(status) == 3 and status.isdigit() and status.startswith("5")


def parse_reading(text: str) -> Reading:
    """The sums of `apgms_api_requests_total` in Prometheus text exposition, probe routes left out; a
    `ValueError` for text that is not exposition. Only the counter's lines are parsed (the histograms beside it
    are most of a scrape), with prometheus_client's own parser for their label escapes."""
    lines = [line for line in text.splitlines() if line.startswith(_SERIES_PREFIXES)]
    requests = errors = 0
    for family in text_string_to_metric_families("\n".join(lines) + "\n"):
        for sample in family.samples:
            if sample.name != REQUESTS_SERIES or sample.labels.get("route") in PROBE_ROUTES:
                continue
            if not math.isfinite(sample.value) or sample.value < 0:
                raise ValueError(f"{REQUESTS_SERIES} holds {sample.value!r}, not a count")
            count = int(sample.value)
            requests += count
            if _is_5xx(sample.labels.get("status", "")):
                errors += count
    return Reading(requests=requests, errors_5xx=errors)


def increase(earlier: Reading, later: Reading) -> Reading:
    """What was counted between two readings of one service; after a restart (either count went down) the later
    reading is all that is known (the module docstring says why)."""
    if later.requests < earlier.requests or later.errors_5xx < earlier.errors_5xx:
        return later
    return Reading(later.requests - earlier.requests, later.errors_5xx - earlier.errors_5xx)


def _seconds(window: timedelta) -> Decimal:
    return Decimal(window // _MICROSECONDS).scaleb(-6)


def whole_seconds(window: timedelta) -> int:
    return int(_seconds(window).to_integral_value(ROUND_HALF_EVEN))


def per_second(count: int, window: timedelta) -> Decimal:
    """`count` over `window`, unrounded (a window of no time is a rate of zero: nothing could be measured)."""
    seconds = _seconds(window)
    return Decimal(count) / seconds if seconds > 0 else Decimal(0)


def _rate_text(rate: Decimal) -> str:
    return str(rate.quantize(_RATE_QUANTUM, ROUND_HALF_EVEN))


def error_ratio(used: Reading) -> str:
    """5xx answers over all answers, RATIO_PLACES places; "0.0000" when there were no requests."""
    if used.requests == 0:
        return str(Decimal(0).quantize(_RATIO_QUANTUM))
    return str((Decimal(used.errors_5xx) / Decimal(used.requests)).quantize(_RATIO_QUANTUM, ROUND_HALF_EVEN))


def _without_figures(service: str, status: ServiceStatus) -> ServiceTraffic:
    return ServiceTraffic(
        service=service,
        status=status,
        window_seconds=None,
        requests=None,
        errors_5xx=None,
        requests_per_second=None,
        error_ratio_5xx=None,
    )


@dataclass(frozen=True, slots=True)
class _Measured:
    entry: ServiceTraffic
    used: Reading | None = None
    rate: Decimal = Decimal(0)
    window: timedelta = timedelta(0)


def _measure(known: ServiceReading) -> _Measured:
    if known.now is None:
        return _Measured(_without_figures(known.service, "unreachable"))
    if known.baseline is None or known.baseline.at >= known.now.at:
        return _Measured(_without_figures(known.service, "no_baseline"))
    window = known.now.at - known.baseline.at
    used = increase(known.baseline.reading, known.now.reading)
    rate = per_second(used.requests, window)
    entry = ServiceTraffic(
        service=known.service,
        status="ok",
        window_seconds=whole_seconds(window),
        requests=used.requests,
        errors_5xx=used.errors_5xx,
        requests_per_second=_rate_text(rate),
        error_ratio_5xx=error_ratio(used),
    )
    return _Measured(entry, used, rate, window)


def summarise(services: Iterable[ServiceReading]) -> Traffic:
    """Each service's traffic between its baseline and its reading now (in the order given), and their total."""
    measured = [_measure(known) for known in services]
    used = [m.used for m in measured if m.used is not None]
    rate = sum((m.rate for m in measured), Decimal(0))
    window = max((m.window for m in measured), default=timedelta(0))
    total = _sum(used)
    return Traffic(
        window_seconds=whole_seconds(window),
        services=[m.entry for m in measured],
        total=TrafficTotal(
            services_ok=len(used),
            requests=total.requests,
            errors_5xx=total.errors_5xx,
            requests_per_second=_rate_text(rate),
            error_ratio_5xx=error_ratio(total),
        ),
    )


def _sum(readings: Sequence[Reading]) -> Reading:
    return Reading(sum(r.requests for r in readings), sum(r.errors_5xx for r in readings))
