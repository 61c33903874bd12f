"""services.compliance.traffic: readings parsed from the exposition shared.metrics really renders (probe routes left
out, 5xx counted), increases across a restart, rates and ratios as fixed-place decimal strings, and services that
are unreachable or have no earlier sample."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import CollectorRegistry

from services.compliance.traffic import (
    Reading,
    Sampled,
    ServiceReading,
    error_ratio,
    increase,
    parse_reading,
    summarise,
)
from shared.metrics import REQUESTS, RequestCounter, RequestHistogram, metrics_text

T0 = datetime(2025, 8, 1, 3, 0, tzinfo=UTC)


def exposition(counts: dict[tuple[str, str, str], float]) -> str:
    """What a service's /metrics says after serving `counts` (method, route, status): the request counter as the
    middleware keeps it, beside a latency histogram (whose lines a reading must ignore)."""
    registry = CollectorRegistry()
    counter = RequestCounter(f"{REQUESTS.name}_total", "HTTP requests.", ["method", "route", "status"], registry)
    histogram = RequestHistogram("apgms_api_request_duration_seconds", "Time.", ["method", "route"], [0.1], registry)
    for labels, count in counts.items():
        counter.inc(labels, count)
        histogram.observe(labels[:2], 0.05)
    return metrics_text(registry).decode()


def test_a_reading_sums_every_route_but_the_probes_and_counts_5xx() -> None:
    text = exposition(
        {
            ("GET", "/bank-lines", "200"): 40,
            ("POST", "/bank-lines", "201"): 7,
            ("GET", "/alerts/:id", "404"): 3,
            ("GET", "/bank-lines", "401"): 2,
            ("POST", "/bas/lodge", "500"): 1,
            ("GET", "/org/obligations/current", "503"): 2,
            ("OTHER", "unmatched", "405"): 1,
            ("GET", "/health", "200"): 900,
            ("GET", "/ready", "503"): 5,
            ("GET", "/metrics", "200"): 60,
        }
    )
    assert "apgms_api_requests_total" in text and "apgms_api_request_duration_seconds_bucket" in text
    assert parse_reading(text) == Reading(requests=56, errors_5xx=3)


def test_label_values_with_escapes_and_an_empty_exposition_parse() -> None:
    text = exposition({("GET", 'a "quoted"\\route\nwith a newline', "502"): 4})
    assert parse_reading(text) == Reading(requests=4, errors_5xx=4)
    assert parse_reading(exposition({})) == Reading(0, 0)
    assert parse_reading("") == Reading(0, 0)


def test_text_that_is_not_exposition_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        parse_reading('apgms_api_requests_total{method="GET",route="/x",status="200"} lots\n')
    with pytest.raises(ValueError):
        parse_reading('apgms_api_requests_total{method="GET",route="/x",status="200"} NaN\n')


def test_increase_is_the_difference_and_after_a_restart_the_later_reading() -> None:
    assert increase(Reading(100, 4), Reading(160, 5)) == Reading(60, 1)
    assert increase(Reading(100, 4), Reading(100, 4)) == Reading(0, 0)
    # The process restarted and counted from zero: everything it counted since is the increase.
    assert increase(Reading(100, 4), Reading(30, 1)) == Reading(30, 1)
    # Only the 5xx count went down: a restart all the same (a live counter never decreases).
    assert increase(Reading(100, 4), Reading(150, 0)) == Reading(150, 0)


def test_ratios_have_four_places_and_no_requests_is_zero() -> None:
    assert error_ratio(Reading(3, 1)) == "0.3333"
    assert error_ratio(Reading(20000, 1)) == "0.0000"  # 0.00005 and 0.00015 round half to even
    assert error_ratio(Reading(20000, 3)) == "0.0002"
    assert error_ratio(Reading(0, 0)) == "0.0000"
    assert error_ratio(Reading(7, 7)) == "1.0000"


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_summary_of_services_ok_restarted_unreachable_and_without_baseline() -> None:
    traffic = summarise(
        [
            # 3705 requests in 300 s: 12.35/s; 5 of them 5xx.
            ServiceReading("core", Sampled(Reading(4705, 9), at(300)), Sampled(Reading(1000, 4), at(0))),
            # Restarted within the window: its 40 requests since, over its 240 s window.
            ServiceReading("auth", Sampled(Reading(40, 0), at(300)), Sampled(Reading(5000, 2), at(60))),
            ServiceReading("regulator", None, Sampled(Reading(10, 0), at(0))),
            ServiceReading("compliance", Sampled(Reading(12, 0), at(300)), None),
        ]
    )
    document = traffic.model_dump(mode="json")
    assert document == {
        "window_seconds": 300,
        "services": [
            {
                "service": "core",
                "status": "ok",
                "window_seconds": 300,
                "requests": 3705,
                "errors_5xx": 5,
                "requests_per_second": "12.35",
                "error_ratio_5xx": "0.0013",
            },
            {
                "service": "auth",
                "status": "ok",
                "window_seconds": 240,
                "requests": 40,
                "errors_5xx": 0,
                "requests_per_second": "0.17",
                "error_ratio_5xx": "0.0000",
            },
            {
                "service": "regulator",
                "status": "unreachable",
                "window_seconds": None,
                "requests": None,
                "errors_5xx": None,
                "requests_per_second": None,
                "error_ratio_5xx": None,
            },
            {
                "service": "compliance",
                "status": "no_baseline",
                "window_seconds": None,
                "requests": None,
                "errors_5xx": None,
                "requests_per_second": None,
                "error_ratio_5xx": None,
            },
        ],
        # The rates add up (12.35 + 0.1666...), the ratio is over the summed counts.
        "total": {
            "services_ok": 2,
            "requests": 3745,
            "errors_5xx": 5,
            "requests_per_second": "12.52",
            "error_ratio_5xx": "0.0013",
        },
    }


def test_a_baseline_not_older_than_the_reading_is_no_baseline_and_nothing_is_measured() -> None:
    traffic = summarise([ServiceReading("core", Sampled(Reading(10, 0), at(5)), Sampled(Reading(9, 0), at(5)))])
    assert [s.status for s in traffic.services] == ["no_baseline"]
    assert traffic.window_seconds == 0
    assert traffic.total.model_dump() == {
        "services_ok": 0,
        "requests": 0,
        "errors_5xx": 0,
        "requests_per_second": "0.00",
        "error_ratio_5xx": "0.0000",
    }


def test_sub_second_windows_are_exact_and_windows_round_to_whole_seconds() -> None:
    traffic = summarise([ServiceReading("core", Sampled(Reading(3, 0), at(1.5)), Sampled(Reading(0, 0), at(0)))])
    service = traffic.services[0]
    assert (service.requests_per_second, service.window_seconds, traffic.window_seconds) == ("2.00", 2, 2)
