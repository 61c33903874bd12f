"""Every selector in docs/ops/promql.md names series that exist: auth, core and the proxy as real processes, a
page of bank lines read through the proxy, then the proxy's `/federate` (the scrape docs/proxy.md configures) read
and each `promql` block's selectors checked against it.

A selector passes when some federated series has its metric name and satisfies all its equality matchers (so
`service="core", route="/bank-lines", method="GET"` must be one real series, not three labels seen apart); a regex
or negative matcher needs only its label on the metric (`status=~"5.."` selects nothing on a healthy stack). Labels
named in `by (...)` must be on one of the expression's metrics. `up` is Prometheus's own and is skipped; a recorded
series (`job:...`, `route:...`: a name with a colon) exists in Prometheus, not in `/federate`, so it must instead be
recorded by a rule of deploy/prometheus/rules/ (tests/e2e/test_promql_evaluated.py evaluates it there)."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import aiohttp
import pytest
from auth_support import Org, call
from core_support import role_tokens, start_core
from promql_sources import promql_blocks, recorded_names
from test_proxy import start_proxy

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
PROMQL_DOC = ROOT / "docs" / "ops" / "promql.md"
FEDERATE_MATCH = '{__name__=~"apgms_.*|security_events_total|process_.*"}'  # docs/proxy.md's scrape job
PROMETHEUS_OWN = frozenset({"up"})
KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset", "on", "ignoring", "group_left", "group_right"})
SELECTOR = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(?:\{([^}]*)\})?")
RANGE = re.compile(r"\[[^\]]*\]")
MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"([^"]*)"')
GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? \S+")
FEDERATION_WAIT_S = 10.0

Series = tuple[str, dict[str, str]]


def selectors(expression: str) -> list[tuple[str, list[tuple[str, str, str]]]]:
    """(metric, matchers) of each vector selector in `expression`: the identifiers left once groupings and ranges
    are removed that are neither a function call nor a keyword."""
    bare = RANGE.sub(" ", GROUPING.sub(" ", expression))
    found = []
    for match in SELECTOR.finditer(bare):
        name, body = match.group(1), match.group(2)
        if name in KEYWORDS or bare[match.end() :].lstrip().startswith("("):
            continue
        found.append((name, MATCHER.findall(body or "")))
    return found


def parse_exposition(text: str) -> list[Series]:
    series = []
    for line in text.splitlines():
        match = SAMPLE.match(line)
        if match is None or line.startswith("#"):
            continue
        labels = dict((name, value) for name, _, value in MATCHER.findall(match.group(2) or ""))
        series.append((match.group(1), labels))
    return series


def check(expression: str, federated: list[Series], recorded: frozenset[str] = frozenset()) -> list[str]:
    problems = []
    names_in_expression = []
    for name, matchers in selectors(expression):
        if name in PROMETHEUS_OWN:
            continue
        if ":" in name:
            if name not in recorded:
                problems.append(f"{name} is not recorded by any rule of deploy/prometheus/rules")
            continue
        names_in_expression.append(name)
        candidates = [labels for metric, labels in federated if metric == name]
        if not candidates:
            problems.append(f"no series named {name}")
            continue
        equal = [(label, value) for label, op, value in matchers if op == "="]
        if not any(all(labels.get(label) == value for label, value in equal) for labels in candidates):
            problems.append(f"no {name} series with {dict(equal)}")
        for label, op, _ in matchers:
            if op != "=" and not any(label in labels for labels in candidates):
                problems.append(f"{name} has no label {label}")
    for group in GROUPING.findall(expression):
        for label in (part.strip() for part in group.split(",") if part.strip()):
            if not any(label in labels for metric, labels in federated if metric in names_in_expression):
                problems.append(f"no label {label} on {names_in_expression}")
    return problems


def test_selectors_are_read_from_the_document() -> None:
    blocks = promql_blocks(PROMQL_DOC.read_text())
    assert len(blocks) >= 10
    first = selectors(blocks[0])
    assert first == [
        (
            "apgms_api_request_duration_seconds_bucket",
            [("service", "=", "core"), ("route", "=", "/bank-lines"), ("method", "=", "GET")],
        )
    ]
    assert check(blocks[0], [("apgms_api_request_duration_seconds_bucket", {"service": "core"})]) == [
        "no apgms_api_request_duration_seconds_bucket series with "
        "{'service': 'core', 'route': '/bank-lines', 'method': 'GET'}",
        "no label le on ['apgms_api_request_duration_seconds_bucket']",
    ]
    recorded = frozenset(recorded_names())
    assert check('route:apgms_request_duration_seconds:p95_5m{route="/bank-lines"} > 0.5', [], recorded) == []
    assert check("job:apgms_requests:rate_typo5m", [], recorded) == [
        "job:apgms_requests:rate_typo5m is not recorded by any rule of deploy/prometheus/rules"
    ]


async def test_every_promql_selector_matches_a_federated_series(start_service, database_url: str, org: Org) -> None:
    stack = start_core(start_service, database_url)
    proxy = start_proxy(start_service, {"auth": [stack.auth.url], "core": [stack.core.url]})
    blocks = promql_blocks(PROMQL_DOC.read_text())
    recorded = frozenset(recorded_names())
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http:
        token = (await role_tokens(http, stack, org))["finance"]
        status, page, _ = await call(http, "GET", f"{proxy.url}/bank-lines", token=token, params={"limit": "5"})
        assert status == 200, page
        problems: list[str] = []
        deadline = asyncio.get_running_loop().time() + FEDERATION_WAIT_S
        while True:  # the proxy fetches the services' expositions at most once a second
            async with http.get(f"{proxy.url}/federate", params={"match[]": FEDERATE_MATCH}) as response:
                assert response.status == 200
                federated = parse_exposition(await response.text())
            problems = [f"{block}: {problem}" for block in blocks for problem in check(block, federated, recorded)]
            if not problems or asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.5)
    assert not problems, "\n".join(problems)
