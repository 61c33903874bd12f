"""`/federate` selectors, exposition parsing and rendering, over real `prometheus_client` output."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Generator

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from proxy.federation import (
    COMPILED_REGEXES,
    MAX_CLASS_ESCAPES,
    MAX_MATCHERS,
    BudgetExceeded,
    Matcher,
    Selector,
    SelectorError,
    Source,
    _compile,
    parse_exposition,
    parse_selector,
    parse_selector_steps,
    relabel,
    render,
    run_in_slices,
    run_to_end,
)
from proxy.scrape import ExpositionCache, parse_match_steps


@pytest.mark.parametrize(
    ("text", "matchers"),
    [
        ("up", [("__name__", "=", "up")]),
        ("  up  ", [("__name__", "=", "up")]),
        ("job:rate5m", [("__name__", "=", "job:rate5m")]),
        ('{__name__="x"}', [("__name__", "=", "x")]),
        (
            'name{a="1",b!="2",c=~"x.*",d!~"y"}',
            [("__name__", "=", "name"), ("a", "=", "1"), ("b", "!=", "2"), ("c", "=~", "x.*"), ("d", "!~", "y")],
        ),
        (
            'name { a = "1" , b != "2" }',
            [("__name__", "=", "name"), ("a", "=", "1"), ("b", "!=", "2")],
        ),
        ('name{a="1",}', [("__name__", "=", "name"), ("a", "=", "1")]),
        (r'name{a="say \"hi\"\\"}', [("__name__", "=", "name"), ("a", "=", 'say "hi"\\')]),
        (r"name{a='it\'s'}", [("__name__", "=", "name"), ("a", "=", "it's")]),
        (r"name{a=~`\d+\.x`}", [("__name__", "=", "name"), ("a", "=~", r"\d+\.x")]),
        ('{job=~"api.+"}', [("job", "=~", "api.+")]),
        ('{a!=""}', [("a", "!=", "")]),
    ],
)
def test_parse_selector_reads_prometheus_instant_vector_selectors(text: str, matchers: list[tuple]) -> None:
    assert parse_selector(text) == Selector(tuple(Matcher(*m) for m in matchers))


@pytest.mark.parametrize(
    "text",
    [
        "",
        "{}",
        "  {  }  ",
        '{a=~".*"}',
        '{a=""}',
        '{a!~".+"}',
        'name{a="1}',
        "name{a='1}",
        "name{a=`1}",
        'name{a="1\\',
        'name{a=~"("}',
        '{a=~"[z-a]"}',
        'name{a="1"} junk',
        'name{a="1"}}',
        'name{a="1"',
        "name{",
        "name junk",
        "9name",
        'name{1a="x"}',
        'name{a=="x"}',
        'name{a~"x"}',
        "name{a=x}",
    ],
)
def test_parse_selector_refuses_malformed_or_empty_matching_selectors(text: str) -> None:
    with pytest.raises(SelectorError):
        parse_selector(text)


def test_parse_selector_requires_commas_between_matchers() -> None:
    # Prometheus: `unexpected identifier "b" in label matching, expected "," or "}"`.
    with pytest.raises(SelectorError):
        parse_selector('name{a="1" b="2"}')


def test_selector_semantics_treat_a_missing_label_as_empty() -> None:
    selector = parse_selector('http_requests_total{code!="500",path=~"/a.*",missing=""}')
    assert selector.matches("http_requests_total", {"code": "200", "path": "/alerts"})
    assert not selector.matches("http_requests_total", {"code": "500", "path": "/alerts"})
    assert not selector.matches("http_requests_total", {"code": "200", "path": "/bas"})
    assert not selector.matches("http_requests_total", {"code": "200", "path": "/alerts", "missing": "x"})
    assert not selector.matches("other_total", {"code": "200", "path": "/alerts"})
    # Regexes are anchored at both ends, as in Prometheus.
    assert not parse_selector('{path=~"/a"}').matches("x", {"path": "/alerts"})


def exposition(service_label: str | None = None) -> str:
    registry = CollectorRegistry()
    requests = Counter("app_requests", "Requests.", ["route"], registry=registry)
    requests.labels(route="/alerts").inc(3)
    requests.labels(route='/odd "quoted" \\ path\nline').inc()
    latency = Histogram("app_latency_seconds", "Latency.", ["route"], buckets=(0.1, 1.0), registry=registry)
    latency.labels(route="/alerts").observe(0.05)
    latency.labels(route="/bas").observe(2.0)
    depth = Gauge("app_queue_depth", "Depth.", ["service"] if service_label else [], registry=registry)
    (depth.labels(service=service_label) if service_label else depth).set(7)
    return generate_latest(registry).decode()


def test_parse_exposition_reads_families_kinds_and_samples() -> None:
    families = {family.name: family for family in parse_exposition(exposition())}
    # Text format 0.0.4 as prometheus_client writes it: `_total` and `_created` are families of their own.
    assert {name: family.kind for name, family in families.items()} == {
        "app_requests_total": "counter",
        "app_requests_created": "gauge",
        "app_latency_seconds": "histogram",
        "app_latency_seconds_created": "gauge",
        "app_queue_depth": "gauge",
    }
    totals = {s.labels: s.value for s in families["app_requests_total"].samples}
    assert totals[(("route", "/alerts"),)] == "3.0"
    assert totals[(("route", '/odd "quoted" \\ path\nline'),)] == "1.0"
    buckets = [s for s in families["app_latency_seconds"].samples if s.name == "app_latency_seconds_bucket"]
    assert {"route": "/bas", "le": "+Inf"} in [dict(s.labels) for s in buckets]
    assert [s.value for s in families["app_queue_depth"].samples] == ["7.0"]


def federated(text: str) -> dict[str, list]:
    """The federated output re-parsed by prometheus_client: family name -> samples."""
    return {family.name: list(family.samples) for family in text_string_to_metric_families(text)}


def test_render_returns_only_selected_series_with_service_and_instance() -> None:
    sources = [({"service": "core", "instance": "127.0.0.1:3002"}, parse_exposition(exposition()))]
    selectors = [parse_selector('app_requests_total{route="/alerts"}'), parse_selector("app_queue_depth")]
    text = render(sources, selectors)
    families = federated(text)
    assert set(families) == {"app_requests", "app_queue_depth"}
    (request_sample,) = families["app_requests"]
    assert request_sample.name == "app_requests_total"
    assert request_sample.labels == {"route": "/alerts", "service": "core", "instance": "127.0.0.1:3002"}
    assert request_sample.value == 3.0
    (depth,) = families["app_queue_depth"]
    assert depth.labels == {"service": "core", "instance": "127.0.0.1:3002"}
    assert depth.value == 7.0
    assert "app_latency" not in text


def test_render_keeps_an_existing_service_label_as_exported_service() -> None:
    sources = [({"service": "core", "instance": "h:1"}, parse_exposition(exposition(service_label="worker")))]
    (sample,) = federated(render(sources, [parse_selector("app_queue_depth")]))["app_queue_depth"]
    assert sample.labels == {"exported_service": "worker", "service": "core", "instance": "h:1"}


def test_relabel_renames_clashing_labels_only() -> None:
    added = {"service": "core", "instance": "h:1"}
    assert relabel([("instance", "x"), ("route", "/a")], added) == [
        ("exported_instance", "x"),
        ("route", "/a"),
        ("service", "core"),
        ("instance", "h:1"),
    ]


def test_render_groups_each_family_under_one_type_line_across_sources() -> None:
    sources = [
        ({"service": "core", "instance": "h:1"}, parse_exposition(exposition())),
        ({"service": "core", "instance": "h:2"}, parse_exposition(exposition())),
        ({"service": "auth", "instance": "h:3"}, parse_exposition(exposition())),
    ]
    text = render(sources, [parse_selector('{__name__=~"app_.*"}')])
    lines = text.splitlines()
    type_lines = [line for line in lines if line.startswith("# TYPE")]
    assert sorted(type_lines) == [
        "# TYPE app_latency_seconds histogram",
        "# TYPE app_latency_seconds_created gauge",
        "# TYPE app_queue_depth gauge",
        "# TYPE app_requests_created gauge",
        "# TYPE app_requests_total counter",
    ]
    # Every sample line sits in one contiguous run under its family's TYPE line.
    family_of_line: list[str] = []
    current = ""
    for line in lines:
        if line.startswith("# TYPE"):
            current = line.split()[2]
            continue
        assert line.startswith(current), (current, line)
        family_of_line.append(current)
    runs = [name for i, name in enumerate(family_of_line) if i == 0 or family_of_line[i - 1] != name]
    assert len(runs) == len(set(runs)) == 5

    families = federated(text)
    latency = families["app_latency_seconds"]
    instances = {s.labels["instance"] for s in latency}
    assert instances == {"h:1", "h:2", "h:3"}
    infinite = [s for s in latency if s.name.endswith("_bucket") and s.labels["le"] == "+Inf"]
    assert len(infinite) == 6  # two routes on three instances
    quoted = [s for s in families["app_requests"] if s.labels["route"].startswith("/odd")]
    assert {s.labels["route"] for s in quoted} == {'/odd "quoted" \\ path\nline'}


def test_several_selectors_are_a_union_without_duplicates() -> None:
    sources = [({"service": "core", "instance": "h:1"}, parse_exposition(exposition()))]
    selectors = [parse_selector("app_queue_depth"), parse_selector('{__name__="app_queue_depth"}')]
    assert len(federated(render(sources, selectors))["app_queue_depth"]) == 1


def test_render_of_nothing_selected_is_empty() -> None:
    sources = [({"service": "core", "instance": "h:1"}, parse_exposition(exposition()))]
    assert render(sources, [parse_selector("no_such_metric")]) == ""


def test_catastrophic_backtracking_patterns_match_in_linear_time() -> None:
    """Python's `re` takes minutes on this (ReDoS on an unauthenticated endpoint); RE2 answers at once."""
    selector = parse_selector('{__name__=~"(.*.*)*X"}')
    assert selector.matches("apgms_api_request_duration_seconds_bucket_" + "y" * 40, {}) is False
    assert selector.matches("aaaX", {}) is True


@pytest.mark.parametrize("pattern", [r"(a)\\1", "a" * 600, "(?P<x>a)(?P=x)"])
def test_regexes_re2_cannot_run_safely_are_refused(pattern: str) -> None:
    with pytest.raises(SelectorError):
        parse_selector(f'{{job=~"{pattern}"}}')


# --- bounded work (issue #9, finding 1) --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "selector",
    [
        '{__name__=~"app_.*",route!="/alerts"}',
        '{route=~"/a.*|/bas"}',
        '{route="",__name__=~".+"}',
        '{missing!~"x",__name__="app_queue_depth"}',
        'app_latency_seconds_bucket{le=~"[01]\\\\..*",route="/bas"}',
    ],
)
def test_the_index_selects_exactly_what_a_scan_of_every_sample_would(selector: str) -> None:
    families = parse_exposition(exposition())
    parsed = parse_selector(selector)
    source = Source.of({"service": "core", "instance": "h:1"}, families)
    chosen = run_to_end(source.selected(parsed))
    scanned = {
        position
        for position, (_, sample) in enumerate(source.samples)
        if parsed.matches(sample.name, dict(sample.labels))
    }
    assert chosen == scanned and scanned


def test_more_than_the_caps_is_refused() -> None:
    twenty = ",".join(f'l{i}="x"' for i in range(19))
    parse_selector(f"name{{{twenty}}}")
    with pytest.raises(SelectorError, match="more than 20 matchers"):
        parse_selector(f'name{{{twenty},l19="x"}}')


async def test_work_past_its_budget_stops_and_the_loop_is_yielded_between_slices() -> None:
    turns = 0

    async def other_task() -> None:
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)

    def endless() -> Generator[None, None, str]:
        while True:
            time.sleep(0.0005)
            yield

    other = asyncio.create_task(other_task())
    try:
        with pytest.raises(BudgetExceeded):
            await run_in_slices(endless(), slice_s=0.002, budget_s=0.05)
    finally:
        other.cancel()
    assert turns >= 10, "the other task ran between the slices"


async def test_concurrent_federations_share_one_fetch() -> None:
    fetches = 0
    release = asyncio.Event()

    async def fetch() -> list[Source]:
        nonlocal fetches
        fetches += 1
        await release.wait()
        return []

    cache = ExpositionCache(fetch, ttl_s=60)
    waiting = [asyncio.create_task(cache.get()) for _ in range(10)]
    await asyncio.sleep(0)
    release.set()
    assert await asyncio.gather(*waiting) == [[]] * 10
    await cache.get()
    assert fetches == 1


# --- bounded compiling (the review of the finding 1 fix) ----------------------------------------------------------

UNICODE_CLASS = r"(?i)[\\pL\\pN\\pP\\pS]"  # as written inside a selector's double quotes


def test_a_regex_past_re2s_memory_is_refused_within_milliseconds() -> None:
    """At RE2's default 8 MiB `{300}` compiled for 255 ms and kept 2.7 MB; at 128 KiB it fails in about 1.5 ms."""
    started = time.perf_counter()
    with pytest.raises(SelectorError, match="pattern too large"):
        parse_selector(f'{{l0=~"{UNICODE_CLASS}{{300}}"}}')
    assert time.perf_counter() - started < 0.1


@pytest.mark.parametrize(
    "pattern",
    [".+", "(?i)[a-z0-9_]{1,100}", r"\\pL+", r"(?i)\\pL\\pN", "|".join(f"api_{i}_total" for i in range(20))],
)
def test_ordinary_regexes_still_compile_within_the_memory_bound(pattern: str) -> None:
    selector = parse_selector(f'{{l0=~"{pattern}"}}')
    assert selector.matchers[0].regex is not None


def test_more_unicode_classes_than_the_cap_are_refused_before_parsing() -> None:
    greek = r"\\p{Greek}"  # a small class: the cap, not the memory, refuses the second
    parse_selector(f'{{l0=~"(?i){greek * MAX_CLASS_ESCAPES}"}}')
    with pytest.raises(SelectorError, match="Unicode classes"):
        parse_selector(f'{{l0=~"(?i){greek * (MAX_CLASS_ESCAPES + 1)}"}}')


def test_each_regex_compiled_is_a_step_and_the_cache_is_small() -> None:
    steps = parse_selector_steps('name{a="1",b=~"x.*",c!~"y",d="2"}')
    yields = 0
    with pytest.raises(StopIteration):
        while True:
            next(steps)
            yields += 1
    assert yields == 2, "the loop can run after each compile"
    assert _compile.cache_info().maxsize == COMPILED_REGEXES <= 64


async def test_compiling_counts_against_the_budget() -> None:
    """Compile-only work stops at the budget: 20 slow matchers a selector cannot hold the loop past it."""
    raw = [
        "{" + ",".join(f'l{i}=~"{UNICODE_CLASS}{{4}}|s{s}m{i}"' for i in range(MAX_MATCHERS)) + "}" for s in range(10)
    ]
    with pytest.raises(BudgetExceeded):
        await run_in_slices(parse_match_steps(raw), slice_s=0.002, budget_s=0.01)
