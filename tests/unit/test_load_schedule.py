"""The pure rules of `apgms smoke load` (apgms/load_rules.py): the schedule is open-model (the k-th iteration is
due at start + k / rate, and nothing in it depends on answers), percentiles interpolate like k6's, the thresholds'
verdict, the histogram's bins, durations and the request bound; and deploy/k6/smoke.js carries the same numbers."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from apgms.load import check_reason, targets_for
from apgms.load_rules import (
    DEFAULT_CHECKS_RATE,
    DEFAULT_DEADLINE_S,
    DEFAULT_DURATION_S,
    DEFAULT_P95_MS,
    DEFAULT_RATE,
    MAX_REQUESTS,
    HistogramBin,
    Thresholds,
    bar,
    histogram,
    parse_duration,
    percentile,
    plan_load,
    send_offsets,
    summarize,
    verdict,
)

K6_SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "k6" / "smoke.js"


def test_the_kth_iteration_is_due_at_k_over_rate_for_the_whole_duration() -> None:
    plan = plan_load(20, 3, targets=3)
    offsets = list(send_offsets(plan))
    assert plan.iterations == 60 and plan.requests == 180
    assert offsets == [pytest.approx(k / 20) for k in range(60)]
    # The schedule is fixed in advance: computing it twice gives the same times, and the last one is due just
    # before the duration ends whatever the answers were.
    assert list(send_offsets(plan)) == offsets
    assert offsets[-1] == pytest.approx(3 - 1 / 20)
    assert list(send_offsets(plan_load(0.5, 5, targets=2))) == [0.0, 2.0, 4.0]


def test_a_plan_is_refused_when_empty_too_fast_or_over_the_request_bound() -> None:
    with pytest.raises(ValueError, match="not one iteration"):
        plan_load(0.001, 0.000_000_1, targets=2)
    with pytest.raises(ValueError, match="at most 1000"):
        plan_load(5000, 1, targets=2)
    with pytest.raises(ValueError, match="above 0"):
        plan_load(0, 10, targets=2)
    with pytest.raises(ValueError, match="100,000"):
        plan_load(1000, 34, targets=3)
    assert plan_load(1000, 33, targets=3).requests == 99_000 <= MAX_REQUESTS


def test_durations_read_like_k6s() -> None:
    assert parse_duration("60s") == 60
    assert parse_duration("2m") == 120
    assert parse_duration("1m30s") == 90
    assert parse_duration("500ms") == 0.5
    assert parse_duration("1.5s") == 1.5
    assert parse_duration("45") == 45
    for bad in ("", "s", "10x", "1m 30s", "-5s", "0s", "0", "nan", "inf", "5s10"):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_percentiles_interpolate_between_the_nearest_ranks() -> None:
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert percentile(values, 50) == pytest.approx(50.5)
    assert percentile(values, 95) == pytest.approx(95.05)
    assert percentile(values, 99) == pytest.approx(99.01)
    assert percentile(values, 100) == 100
    assert percentile(values, 0) == 1
    assert percentile([7.0], 95) == 7
    with pytest.raises(ValueError):
        percentile([], 50)
    summary = summarize([30.0, 10.0, 20.0], passed=2)
    assert (summary.count, summary.p50_ms, summary.max_ms) == (3, 20, 30)
    assert summary.ok_ratio == pytest.approx(2 / 3)


def test_the_verdict_names_each_threshold_and_is_strict_at_the_edges() -> None:
    thresholds = Thresholds()
    fast = summarize([100.0] * 1000, passed=1000)
    assert [(r.name, r.passed) for r in verdict(fast, thresholds)] == [("p(95) < 500 ms", True), ("checks > 99%", True)]
    slow = summarize([800.0] * 100, passed=100)
    latency, checks = verdict(slow, thresholds)
    assert (latency.passed, latency.observed, checks.passed) == (False, "800 ms", True)
    # Exactly 500 ms is not under 500 ms; exactly 99% is not more than 99%.
    assert not verdict(summarize([500.0] * 10, passed=10), thresholds)[0].passed
    edge = verdict(summarize([1.0] * 100, passed=99), thresholds)[1]
    assert (edge.passed, edge.observed) == (False, "99.00% (99/100)")
    nothing = verdict(summarize([], passed=0), thresholds)
    assert [r.passed for r in nothing] == [False, False] and nothing[0].observed == "no requests"
    custom = verdict(slow, Thresholds(p95_ms=1000, checks_rate=0.5))
    assert [(r.name, r.passed) for r in custom] == [("p(95) < 1000 ms", True), ("checks > 50%", True)]


def test_histogram_bins_are_half_open_and_cover_everything() -> None:
    bins = histogram([0.0, 9.99, 10.0, 499.0, 500.0, 800.0, 5000.0, 60000.0])
    counts = {entry.label: entry.count for entry in bins}
    assert counts == {
        "0-10 ms": 2,
        "10-25 ms": 1,
        "25-50 ms": 0,
        "50-100 ms": 0,
        "100-250 ms": 0,
        "250-500 ms": 1,
        "500-1000 ms": 2,
        "1000-2500 ms": 0,
        "2500-5000 ms": 0,
        ">= 5000 ms": 2,
    }
    assert histogram([], (1.0,)) == [HistogramBin(0, 1, 0), HistogramBin(1, None, 0)]
    assert bar(10, 10, 40) == "█" * 40
    assert bar(1, 1000, 40) == "█"
    assert bar(0, 10, 40) == ""


def test_checks_want_200_and_items_from_bank_lines() -> None:
    health, _, lines = targets_for("token")
    assert [t.path for t in targets_for(None)] == ["/health", "/ready"]
    assert lines.path == "/bank-lines?limit=50"
    assert check_reason(health, 200, b"") is None
    assert check_reason(health, 503, b"{}") == "status 503"
    assert check_reason(lines, 200, b'{"items": [], "next_cursor": null}') is None
    assert check_reason(lines, 200, b'{"data": []}') == "no items in the body"
    assert check_reason(lines, 200, b"<html>") == "body is not JSON"


def test_the_k6_script_has_the_same_executor_checks_and_thresholds() -> None:
    script = K6_SCRIPT.read_text()
    assert "executor: 'constant-arrival-rate'" in script
    thresholds = dict(re.findall(r"^\s+(\w+): \['([^']+)'\],$", script, re.MULTILINE))
    p95 = re.fullmatch(r"p\(95\)<(\d+(?:\.\d+)?)", thresholds["http_req_duration"])
    checks = re.fullmatch(r"rate>(\d+(?:\.\d+)?)", thresholds["checks"])
    assert p95 is not None and float(p95.group(1)) == DEFAULT_P95_MS
    assert checks is not None and float(checks.group(1)) == DEFAULT_CHECKS_RATE
    assert re.search(r"__ENV\.RATE \|\| '(\d+)'", script).group(1) == f"{DEFAULT_RATE:g}"  # type: ignore[union-attr]
    assert parse_duration(re.search(r"__ENV\.DURATION \|\| '(\w+)'", script).group(1)) == DEFAULT_DURATION_S  # type: ignore[union-attr]
    assert parse_duration(re.search(r"const TIMEOUT = '(\w+)'", script).group(1)) == DEFAULT_DEADLINE_S  # type: ignore[union-attr]
    assert "`${BASE_URL}/bank-lines?limit=50`" in script and "'items'" in script
    assert "`${BASE_URL}/health`" in script and "`${BASE_URL}/ready`" in script
