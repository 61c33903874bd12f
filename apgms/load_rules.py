"""The rules of `apgms smoke load`, without I/O: the open-model schedule, percentiles, latency histogram bins and
the thresholds' verdict (apgms/load.py sends the requests and draws the tables).

Open model: the k-th iteration is sent at `start + k / rate` whatever the answers before it did, so a slow server
cannot slow the load down and hide its latency (a closed loop, one request after the previous answer, would send
fewer requests the slower the server gets). Each iteration sends one request to every target at once, like an
iteration of deploy/k6/smoke.js (`http.batch`), and a request's latency is counted from the moment it was due, so
time spent waiting for a connection counts too.

The defaults here are the ones deploy/k6/smoke.js uses (tests/unit/test_load_schedule.py holds them equal).
"""

from __future__ import annotations

import bisect
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

__all__ = [
    "DEFAULT_CHECKS_RATE",
    "DEFAULT_DEADLINE_S",
    "DEFAULT_DURATION_S",
    "DEFAULT_P95_MS",
    "DEFAULT_RATE",
    "HISTOGRAM_EDGES_MS",
    "MAX_RATE",
    "MAX_REQUESTS",
    "HistogramBin",
    "LatencySummary",
    "LoadPlan",
    "ThresholdResult",
    "Thresholds",
    "bar",
    "histogram",
    "parse_duration",
    "percentile",
    "plan_load",
    "send_offsets",
    "summarize",
    "verdict",
]

# The runbook's smoke: 10 iterations a second for a minute, p95 under 500 ms, more than 99% of checks passing.
DEFAULT_RATE = 10.0
DEFAULT_DURATION_S = 60.0
DEFAULT_P95_MS = 500.0
DEFAULT_CHECKS_RATE = 0.99
# A request still unanswered this long after it was due is a failed check (and counts this long in the latencies).
DEFAULT_DEADLINE_S = 10.0
# Latencies are kept one float each (8 bytes): 100k requests are under a megabyte, and more is a load test, not a
# smoke.
MAX_REQUESTS = 100_000
MAX_RATE = 1_000.0
# Upper edges of the histogram's bins, in ms; the last bin holds everything from the last edge up.
HISTOGRAM_EDGES_MS: tuple[float, ...] = (10, 25, 50, 100, 250, 500, 1000, 2500, 5000)

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """Seconds of a k6-style duration: `60s`, `2m`, `1m30s`, `500ms`, or a plain number of seconds; ValueError
    with the reason otherwise (zero and negative durations too)."""
    cleaned = text.strip().lower()
    if not cleaned:
        raise ValueError("a duration is needed, e.g. 60s, 2m or 1m30s")
    try:
        seconds = float(cleaned)
    except ValueError:
        position = 0
        seconds = 0.0
        for match in _DURATION_PART.finditer(cleaned):
            if match.start() != position:
                break
            seconds += float(match.group(1)) * _UNIT_S[match.group(2)]
            position = match.end()
        if position != len(cleaned) or position == 0:
            raise ValueError(f"{text!r} is not a duration (e.g. 60s, 2m, 1m30s or 500ms)") from None
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"{text!r} is not a positive duration")
    return seconds


@dataclass(frozen=True)
class LoadPlan:
    """`iterations` iterations, one every `1 / rate` s, each sending one request to each of `targets` targets."""

    rate: float
    duration_s: float
    targets: int
    iterations: int

    @property
    def requests(self) -> int:
        return self.iterations * self.targets


def plan_load(rate: float, duration_s: float, targets: int) -> LoadPlan:
    """The plan for `rate` iterations a second over `duration_s`; ValueError when it is empty, faster than MAX_RATE
    or more than MAX_REQUESTS requests in all."""
    if not math.isfinite(rate) or rate <= 0 or rate > MAX_RATE:
        raise ValueError(f"the rate must be above 0 and at most {MAX_RATE:g} iterations a second")
    # Every iteration due before the duration ends: k / rate < duration_s (float noise aside).
    iterations = math.ceil(rate * duration_s - 1e-9)
    if iterations < 1:
        raise ValueError(f"{rate:g}/s for {duration_s:g} s is not one iteration; raise the rate or the duration")
    if iterations * targets > MAX_REQUESTS:
        raise ValueError(
            f"{rate:g}/s for {duration_s:g} s on {targets} target(s) is {iterations * targets:,} requests; a smoke "
            f"sends at most {MAX_REQUESTS:,} (lower the rate or the duration)"
        )
    return LoadPlan(rate=rate, duration_s=duration_s, targets=targets, iterations=iterations)


def send_offsets(plan: LoadPlan) -> Iterator[float]:
    """Seconds after the start at which each iteration is due: k / rate for the k-th, whatever came back before."""
    return (k / plan.rate for k in range(plan.iterations))


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) of ascending values, interpolated linearly between the two nearest ranks (as
    k6 and numpy do); ValueError for no values."""
    if not sorted_values:
        raise ValueError("no values")
    if not 0 <= q <= 100:
        raise ValueError("q must be within 0..100")
    position = (len(sorted_values) - 1) * q / 100
    lower = math.floor(position)
    upper = min(lower + 1, len(sorted_values) - 1)
    fraction = position - lower
    return sorted_values[lower] + (sorted_values[upper] - sorted_values[lower]) * fraction


@dataclass(frozen=True)
class LatencySummary:
    """One row of the summary table: requests, checks passed, and the latency percentiles in ms (None when no
    request was made)."""

    count: int
    passed: int
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    max_ms: float | None

    @property
    def ok_ratio(self) -> float:
        return self.passed / self.count if self.count else 0.0


def summarize(latencies_ms: Sequence[float], passed: int) -> LatencySummary:
    values = sorted(latencies_ms)
    if not values:
        return LatencySummary(0, passed, None, None, None, None)
    return LatencySummary(
        count=len(values),
        passed=passed,
        p50_ms=percentile(values, 50),
        p95_ms=percentile(values, 95),
        p99_ms=percentile(values, 99),
        max_ms=values[-1],
    )


@dataclass(frozen=True)
class Thresholds:
    """Pass when the p95 latency is under `p95_ms` and more than `checks_rate` of the checks passed (k6's
    `http_req_duration: ['p(95)<500']` and `checks: ['rate>0.99']`)."""

    p95_ms: float = DEFAULT_P95_MS
    checks_rate: float = DEFAULT_CHECKS_RATE

    @property
    def latency_name(self) -> str:
        return f"p(95) < {self.p95_ms:g} ms"

    @property
    def checks_name(self) -> str:
        return f"checks > {self.checks_rate * 100:g}%"


@dataclass(frozen=True)
class ThresholdResult:
    name: str
    observed: str
    passed: bool


def verdict(overall: LatencySummary, thresholds: Thresholds) -> list[ThresholdResult]:
    """Each threshold with what was observed and whether it passed; with no request made, both fail."""
    p95 = overall.p95_ms
    latency = ThresholdResult(
        name=thresholds.latency_name,
        observed="no requests" if p95 is None else f"{p95:.0f} ms",
        passed=p95 is not None and p95 < thresholds.p95_ms,
    )
    checks = ThresholdResult(
        name=thresholds.checks_name,
        observed=f"{overall.ok_ratio * 100:.2f}% ({overall.passed}/{overall.count})",
        passed=overall.count > 0 and overall.ok_ratio > thresholds.checks_rate,
    )
    return [latency, checks]


@dataclass(frozen=True)
class HistogramBin:
    """Latencies from `low_ms` (inclusive) to `high_ms` (exclusive; None: no upper bound)."""

    low_ms: float
    high_ms: float | None
    count: int

    @property
    def label(self) -> str:
        if self.high_ms is None:
            return f">= {self.low_ms:g} ms"
        return f"{self.low_ms:g}-{self.high_ms:g} ms"


def histogram(latencies_ms: Sequence[float], edges_ms: Sequence[float] = HISTOGRAM_EDGES_MS) -> list[HistogramBin]:
    """How many latencies fall in each bin between ascending `edges_ms` (one more bin than edges)."""
    counts = [0] * (len(edges_ms) + 1)
    for value in latencies_ms:
        counts[bisect.bisect_right(edges_ms, value)] += 1
    lows = [0.0, *edges_ms]
    highs: list[float | None] = [*edges_ms, None]
    return [HistogramBin(low, high, count) for low, high, count in zip(lows, highs, counts, strict=True)]


def bar(count: int, most: int, width: int) -> str:
    """A bar of `width` cells at most, proportional to count / most; any count above zero shows at least one cell."""
    if count <= 0 or most <= 0:
        return ""
    return "█" * max(1, round(width * count / most))
