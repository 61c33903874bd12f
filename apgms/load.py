"""`apgms smoke load`: the runbook's k6 smoke in Python, an open-model load on a running stack.

    apgms smoke load --base-url URL [--rate 10] [--duration 60s] [--token TOKEN]

Sends `--rate` iterations a second for `--duration`, each one `GET /health`, `GET /ready` and, with a token,
`GET /bank-lines?limit=50`, on a fixed schedule whatever the answers' latency (apgms/load_rules.py). A request
passes its check when it answers 200 within its deadline (and, for /bank-lines, with a JSON body holding `items`).
Prints a summary table per endpoint, a latency histogram and the thresholds (p95 < 500 ms, checks > 99%); exit 0
when both pass, 1 naming the one that failed. An unreachable URL is one line and exit 1, not a traceback. The same
checks and thresholds are in deploy/k6/smoke.js for people who have k6.
"""

from __future__ import annotations

import asyncio
import time
from array import array
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Annotated
from urllib.parse import urlsplit

import aiohttp
import orjson
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from apgms.common import console
from apgms.http_fetch import TRANSPORT_ERRORS, FetchError, deadline, read_bounded, transport_failure
from apgms.load_rules import (
    DEFAULT_CHECKS_RATE,
    DEFAULT_DEADLINE_S,
    DEFAULT_DURATION_S,
    DEFAULT_P95_MS,
    DEFAULT_RATE,
    LatencySummary,
    LoadPlan,
    ThresholdResult,
    Thresholds,
    bar,
    histogram,
    parse_duration,
    plan_load,
    send_offsets,
    summarize,
    verdict,
)

__all__ = ["DEFAULT_BASE_URL", "LoadResult", "Target", "load", "run_load", "targets_for"]

DEFAULT_BASE_URL = "http://localhost:3000"
# A page of 50 bank lines is a few tens of KB; a health document a few hundred bytes.
MAX_ANSWER_BYTES = 1024 * 1024
# Connections open at once: an open model needs one per request in flight (rate x latency), and a server slower
# than this allows still sees its latency, since each request counts from when it was due.
MAX_CONNECTIONS = 512
# Distinct failure reasons kept per endpoint (status codes, timeouts, transport errors: a handful in practice).
MAX_REASONS = 20
# The first iteration is due this long after the schedule is set, so the first sends are not late already.
START_LEAD_S = 0.05
HISTOGRAM_WIDTH = 40


@dataclass(frozen=True)
class Target:
    """One endpoint of each iteration; `needs_items`: the check also wants a JSON body with an `items` list."""

    name: str
    path: str
    needs_items: bool = False


def targets_for(token: str | None) -> tuple[Target, ...]:
    base = (Target("/health", "/health"), Target("/ready", "/ready"))
    if token:
        return (*base, Target("/bank-lines", "/bank-lines?limit=50", needs_items=True))
    return base


@dataclass
class EndpointRecord:
    """What one endpoint's requests gave: their latencies (8 bytes each), checks passed and failure reasons."""

    latencies_ms: array[float] = field(default_factory=lambda: array("d"))
    passed: int = 0
    reasons: Counter[str] = field(default_factory=Counter)

    def add(self, latency_ms: float, reason: str | None) -> None:
        self.latencies_ms.append(latency_ms)
        if reason is None:
            self.passed += 1
        elif reason in self.reasons or len(self.reasons) < MAX_REASONS:
            self.reasons[reason] += 1
        else:
            self.reasons["other"] += 1


@dataclass(frozen=True)
class LoadResult:
    plan: LoadPlan
    targets: tuple[Target, ...]
    records: tuple[EndpointRecord, ...]
    elapsed_s: float
    first_transport_error: str | None

    def summaries(self) -> list[LatencySummary]:
        return [summarize(record.latencies_ms, record.passed) for record in self.records]

    def overall(self) -> LatencySummary:
        every: list[float] = []
        for record in self.records:
            every.extend(record.latencies_ms)
        return summarize(every, sum(record.passed for record in self.records))


def check_reason(target: Target, status: int, body: bytes) -> str | None:
    """Why an answer fails its check, None when it passes."""
    if status != 200:
        return f"status {status}"
    if target.needs_items:
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError:
            return "body is not JSON"
        if not isinstance(document, dict) or not isinstance(document.get("items"), list):
            return "no items in the body"
    return None


class _Runner:
    """One run: sends each iteration when due, records every answer; nothing waits for an earlier answer."""

    def __init__(self, http: aiohttp.ClientSession, base_url: str, token: str | None, deadline_s: float) -> None:
        self.http = http
        self.base_url = base_url.rstrip("/")
        self.headers = {"accept": "application/json"}
        if token:
            self.headers["authorization"] = f"Bearer {token}"
        self.deadline_s = deadline_s
        self.first_transport_error: str | None = None

    async def one(self, target: Target, due: float, record: EndpointRecord) -> None:
        loop = asyncio.get_running_loop()
        url = f"{self.base_url}{target.path}"
        reason: str | None
        try:
            async with asyncio.timeout_at(due + self.deadline_s):
                async with self.http.get(url, headers=self.headers, timeout=deadline(self.deadline_s)) as response:
                    body = await read_bounded(response, MAX_ANSWER_BYTES, url)
                    status = response.status
            reason = check_reason(target, status, body)
            latency_s = loop.time() - due
        except TimeoutError:
            reason, latency_s = f"no answer within {self.deadline_s:g} s", self.deadline_s
        except FetchError as error:
            reason, latency_s = "answer too large", loop.time() - due
            self.first_transport_error = self.first_transport_error or str(error)
        except TRANSPORT_ERRORS as error:
            reason, latency_s = type(error).__name__, loop.time() - due
            self.first_transport_error = self.first_transport_error or str(transport_failure(url, error))
        record.add(latency_s * 1000, reason)


async def run_load(
    base_url: str,
    plan: LoadPlan,
    targets: Sequence[Target],
    *,
    token: str | None = None,
    deadline_s: float = DEFAULT_DEADLINE_S,
    on_sent: Callable[[int], None] = lambda _: None,
    on_done: Callable[[], None] = lambda: None,
) -> LoadResult:
    """Send the plan's iterations on schedule and wait for the last answer (each has a deadline, so this ends by
    the duration plus the deadline); `on_sent(k)` after the k-th iteration went out, `on_done()` per answer."""
    records = tuple(EndpointRecord() for _ in targets)
    connector = aiohttp.TCPConnector(limit=MAX_CONNECTIONS)
    started = time.monotonic()
    async with aiohttp.ClientSession(connector=connector, raise_for_status=False) as http:
        runner = _Runner(http, base_url, token, deadline_s)
        loop = asyncio.get_running_loop()
        start = loop.time() + START_LEAD_S
        in_flight: set[asyncio.Task[None]] = set()

        def finished(task: asyncio.Task[None]) -> None:
            in_flight.discard(task)
            on_done()

        for k, offset in enumerate(send_offsets(plan)):
            due = start + offset
            wait_s = due - loop.time()
            if wait_s > 0:
                await asyncio.sleep(wait_s)
            for target, record in zip(targets, records, strict=True):
                task = asyncio.create_task(runner.one(target, due, record))
                in_flight.add(task)
                task.add_done_callback(finished)
            on_sent(k + 1)
        if in_flight:
            await asyncio.wait(in_flight)
    return LoadResult(
        plan=plan,
        targets=tuple(targets),
        records=records,
        elapsed_s=time.monotonic() - started,
        first_transport_error=runner.first_transport_error,
    )


async def reachable(base_url: str, deadline_s: float) -> str | None:
    """None when `GET /health` gives any HTTP answer; otherwise the sentence saying why not."""
    url = f"{base_url.rstrip('/')}/health"
    try:
        async with aiohttp.ClientSession() as http, http.get(url, timeout=deadline(deadline_s)) as response:
            await read_bounded(response, MAX_ANSWER_BYTES, url)
    except FetchError as error:
        return str(error)
    except TRANSPORT_ERRORS as error:
        return str(transport_failure(url, error))
    return None


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def summary_table(result: LoadResult) -> Table:
    plan = result.plan
    table = Table(
        title=f"Load smoke: {plan.rate:g} iterations/s for {plan.duration_s:g} s, {plan.requests:,} requests "
        f"in {result.elapsed_s:.1f} s",
        title_justify="left",
    )
    table.add_column("Endpoint", no_wrap=True)
    for column in ("Requests", "OK %", "p50 ms", "p95 ms", "p99 ms", "Max ms"):
        table.add_column(column, justify="right", no_wrap=True)
    rows = [(target.name, summary) for target, summary in zip(result.targets, result.summaries(), strict=True)]
    rows.append(("all", result.overall()))
    for name, summary in rows:
        table.add_row(
            name,
            f"{summary.count:,}",
            f"{summary.ok_ratio * 100:.1f}",
            _ms(summary.p50_ms),
            _ms(summary.p95_ms),
            _ms(summary.p99_ms),
            _ms(summary.max_ms),
            end_section=name == rows[-2][0],
        )
    return table


def failures_table(result: LoadResult) -> Table | None:
    rows = [
        (target.name, reason, count)
        for target, record in zip(result.targets, result.records, strict=True)
        for reason, count in record.reasons.most_common()
    ]
    if not rows:
        return None
    table = Table(title="Failed checks", title_justify="left")
    table.add_column("Endpoint", no_wrap=True)
    table.add_column("Reason")
    table.add_column("Count", justify="right")
    for name, reason, count in rows:
        table.add_row(name, reason, f"{count:,}")
    return table


def histogram_table(result: LoadResult) -> Table:
    every: list[float] = []
    for record in result.records:
        every.extend(record.latencies_ms)
    bins = histogram(every)
    most = max(entry.count for entry in bins)
    table = Table(title="Latency histogram (all requests)", title_justify="left")
    table.add_column("Latency", no_wrap=True, justify="right")
    table.add_column("Count", justify="right")
    table.add_column("", no_wrap=True)
    for entry in bins:
        table.add_row(entry.label, f"{entry.count:,}", f"[cyan]{bar(entry.count, most, HISTOGRAM_WIDTH)}[/]")
    return table


def thresholds_table(results: Sequence[ThresholdResult]) -> Table:
    table = Table(title="Thresholds", title_justify="left")
    table.add_column("Threshold", no_wrap=True)
    table.add_column("Observed", no_wrap=True)
    table.add_column("Result", no_wrap=True)
    for entry in results:
        table.add_row(entry.name, entry.observed, "[green]pass[/]" if entry.passed else "[red]FAIL[/]")
    return table


def _run_with_progress(
    base_url: str, plan: LoadPlan, targets: Sequence[Target], token: str | None, deadline_s: float
) -> LoadResult:
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as progress:
        sent = progress.add_task("iterations sent", total=plan.iterations)
        answered = progress.add_task("answers", total=plan.requests)
        return asyncio.run(
            run_load(
                base_url,
                plan,
                targets,
                token=token,
                deadline_s=deadline_s,
                on_sent=lambda k: progress.update(sent, completed=k),
                on_done=lambda: progress.advance(answered),
            )
        )


def load(
    base_url: Annotated[str, typer.Option(help="The stack's public URL (the proxy)")] = DEFAULT_BASE_URL,
    rate: Annotated[
        float, typer.Option(help="Iterations a second; each sends one request to every endpoint at once")
    ] = DEFAULT_RATE,
    duration: Annotated[str, typer.Option(help="How long to send, e.g. 60s, 2m, 1m30s")] = f"{DEFAULT_DURATION_S:g}s",
    token: Annotated[
        str | None,
        typer.Option(envvar="APGMS_TOKEN", help="A user's access token: adds GET /bank-lines (or set APGMS_TOKEN)"),
    ] = None,
    p95_ms: Annotated[float, typer.Option("--p95-ms", min=1, help="The p95 latency threshold")] = DEFAULT_P95_MS,
    checks: Annotated[
        float, typer.Option(min=0, max=1, help="The share of checks that must pass (strictly more than this)")
    ] = DEFAULT_CHECKS_RATE,
    timeout: Annotated[
        float, typer.Option(min=0.1, max=120, help="Seconds a request may take from when it was due")
    ] = DEFAULT_DEADLINE_S,
) -> None:
    """The runbook's k6 smoke: an open-model load on /health, /ready and (with a token) /bank-lines; a summary
    table, a latency histogram and the thresholds p95 < 500 ms and checks > 99%; exit 1 when one fails."""
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise typer.BadParameter(
            f"{base_url!r} is not an http(s) URL, e.g. {DEFAULT_BASE_URL}", param_hint="--base-url"
        )
    targets = targets_for(token)
    try:
        plan = plan_load(rate, parse_duration(duration), len(targets))
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--rate/--duration") from None
    thresholds = Thresholds(p95_ms=p95_ms, checks_rate=checks)
    unreachable = asyncio.run(reachable(base_url, timeout))
    if unreachable is not None:
        console.print(f"[fail] {unreachable}", markup=False, soft_wrap=True)
        console.print(
            f"[fail] threshold {thresholds.checks_name} failed: no request can be answered",
            markup=False,
            soft_wrap=True,
        )
        raise typer.Exit(1)
    console.print(
        f"Sending {plan.iterations:,} iterations ({plan.requests:,} requests: "
        f"{', '.join(target.name for target in targets)}) to {base_url} at {plan.rate:g}/s",
        soft_wrap=True,
        markup=False,
    )
    result = _run_with_progress(base_url, plan, targets, token, timeout)
    results = verdict(result.overall(), thresholds)
    console.print(summary_table(result))
    failures = failures_table(result)
    if failures is not None:
        console.print(failures)
    console.print(histogram_table(result))
    console.print(thresholds_table(results))
    if result.first_transport_error:
        console.print(f"first transport error: {result.first_transport_error}", markup=False, soft_wrap=True)
    failed = [entry for entry in results if not entry.passed]
    for entry in failed:
        console.print(f"[fail] threshold {entry.name} failed: {entry.observed}", markup=False, soft_wrap=True)
    if failed:
        raise typer.Exit(1)
    console.print("[ok] every threshold passed", markup=False)
