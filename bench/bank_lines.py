"""Bank-lines benchmark: `GET /bank-lines?limit=50` through the proxy at fixed offered rates, with a bare request
measured at the same rates as the reference.

    .venv/bin/python bench/bank_lines.py            (or: make bench-bank-lines)
    .venv/bin/python bench/bank_lines.py --lines 20000 --duration 3      (quick mode, the suite's smoke test)

Set-up: a throwaway PostgreSQL and Redis under /tmp, migrated; one org ("Bench Org", with a finance user) seeded
with `--lines` lines and `--small-orgs` orgs ("Seed Org 1".."10") with `--small-lines` each, through
`apgms.seed.seed_bank_lines` (the code behind `apgms seed --bank-lines`: generated, sealed, COPY), timed; then auth,
core and the proxy as real processes (`python -m services.auth`, `services.core`, `proxy`) as shipped (access logs
at info, to /dev/null), and a finance login through the proxy.

Load: open model. Request i is sent at start + i/rate whether or not earlier ones returned (aiohttp, no
connection limit, spread over `SOURCE_ADDRESSES` loopback addresses so the proxy's per-address in-flight cap,
meant for one client, does not turn many users into 429s), and its latency is taken from that scheduled time to
the end of the body, so queueing in the client, the proxy or core is never hidden. A request not answered within
`REQUEST_TIMEOUT_S` is a timeout; any status but the expected one an error.

Workloads: the first page; a page 10,000 lines deep (cursors walked first, then that cursor's page requested
over and over); a filtered page (a quarter a year back, `min_amount=100.00`); each at `--rates`, then a short
search for the highest rate whose p95 stays under the runbook's 500 ms with no errors (up the ladder from the
lowest rate until one fails, at most `--search-cap`). `POST /bank-lines` at `--post-rate` with a fresh
Idempotency-Key each. References at the same rates: core's `GET /health` directly, and the proxy's own `/health`.
Core's RSS is sampled through the run (and its VmHWM read at the end) against 250 MB. The cost of opening one
page's PII (50 payees + 50 descriptions: two `PiiCipher.decrypt_many` calls, as the handler makes) is timed
in-process over `--decrypt-pages` iterations.

Exit status: 0 when every target is met, 1 when one is missed, 2 when a fixed-rate run had errors or timeouts.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
import asyncpg  # noqa: E402
import uvloop  # noqa: E402

from apgms.bank_line_seed import LineGenerator  # noqa: E402
from apgms.devservers import LocalPostgres, find_redis_server, free_port  # noqa: E402
from apgms.localredis import LocalRedis  # noqa: E402
from apgms.seed import SeedOrgRef, ensure_seed_orgs, seed_bank_lines  # noqa: E402
from services.auth import store  # noqa: E402
from services.auth.passwords import hash_password  # noqa: E402
from services.core.store import BANK_LINES_TABLE  # noqa: E402
from shared.config import new_master_key  # noqa: E402
from shared.kek import kek_provider_from_env  # noqa: E402
from shared.migrations import migrate  # noqa: E402
from shared.pii import PiiCipher  # noqa: E402

PASSWORD = "bench-password-long-enough"  # noqa: S105 (a throwaway bench user)
FINANCE_EMAIL = "finance@bench.apgms.example"
BIG_ORG_NAME = "Bench Org"
PAGE_LIMIT = 50
DEEP_LINES = 10_000
WALK_LIMIT = 200  # the deep cursor is walked 200 lines a page (a cursor is bound to the filters, not the limit)
FILTER_MIN_AMOUNT = "100.00"
SLO_P95_MS = 500.0  # the runbook's SLO for the route
TARGET_P95_MS = 50.0  # issue #11's target on this machine, at TARGET_RATE through the proxy
TARGET_RATE = 100
TARGET_RSS_MB = 250.0
SEARCH_LADDER = (5, 10, 25, 50, 75, 100, 150, 200, 250, 300, 400, 500, 600, 800, 1000, 1500, 2000)
REQUEST_TIMEOUT_S = 10.0
SOURCE_ADDRESSES = 8  # 127.0.0.1 .. 127.0.0.8
SERVICE_START_TIMEOUT_S = 60.0
RSS_SAMPLE_S = 0.1
PAUSE_BETWEEN_RUNS_S = 1.0
SETTLED_FACTOR = 3.0
SETTLE_MAX_S = 30.0
WARM_UP_REQUESTS = 20
CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")
CPU_COLUMNS = ("core", "api-gateway", "client")
console = Console(width=max(Console().width, 140))


# --- results ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """One open-model run: `ok` latencies (ms, from the scheduled send) and what went wrong."""

    rate: float
    sent: int
    latencies_ms: tuple[float, ...]
    errors: int
    timeouts: int
    statuses: tuple[tuple[int, int], ...]  # unexpected status -> count
    cpu_ms: tuple[tuple[str, float], ...] = ()  # process -> CPU ms (user + system) per request sent

    def quantile(self, q: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)
        return ordered[min(int(q * len(ordered)), len(ordered) - 1)]

    @property
    def p50(self) -> float:
        return self.quantile(0.50)

    @property
    def p95(self) -> float:
        return self.quantile(0.95)

    @property
    def p99(self) -> float:
        return self.quantile(0.99)

    @property
    def clean(self) -> bool:
        return self.errors == 0 and self.timeouts == 0

    @property
    def within_slo(self) -> bool:
        return self.clean and self.p95 < SLO_P95_MS


@dataclass(frozen=True)
class Request:
    """What one workload sends: a fresh (method, url, headers, json body) per request."""

    name: str
    method: str
    url: str
    expected: int
    headers: Callable[[int], dict[str, str]]
    body: Callable[[int], dict[str, Any] | None] = lambda i: None

    def target(self, i: int) -> str:
        """The URL request i goes to: `url` here; bench/replicas.py spreads requests over several proxies."""
        return self.url


@dataclass(frozen=True)
class Search:
    highest_ok: float | None
    first_failing: Run | None
    steps: tuple[Run, ...]


@dataclass
class RssSampler:
    """Peak VmRSS of a process, sampled in a thread."""

    pid: int
    peak_kb: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(RSS_SAMPLE_S):
            self.peak_kb = max(self.peak_kb, status_kb(self.pid, "VmRSS"))


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS_PER_S  # utime, stime


def status_kb(pid: int, name: str) -> int:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    match = re.search(rf"^{name}:\s+(\d+) kB", text, re.M)
    return int(match.group(1)) if match else 0


# --- servers and processes -------------------------------------------------------------------------------------


@contextmanager
def throwaway_servers(with_redis: bool) -> Iterator[tuple[LocalPostgres, LocalRedis | None]]:
    base = Path(tempfile.mkdtemp(prefix="apgms-bench-lines-", dir="/tmp"))
    base.chmod(0o755)  # PostgreSQL runs as `postgres` when we are root
    postgres = LocalPostgres(base / "pg")
    redis = LocalRedis(base / "redis") if with_redis else None
    try:
        postgres.start()
        if redis is not None:
            (base / "redis").mkdir()
            redis.start()
        yield postgres, redis
    finally:
        if redis is not None:
            redis.stop()
        postgres.stop()
        shutil.rmtree(base, ignore_errors=True)


def wait_http(url: str, accept: Callable[[int], bool], what: str) -> None:
    deadline = time.monotonic() + SERVICE_START_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:  # noqa: S310 (loopback)
                if accept(response.status):
                    return
        except urllib.error.HTTPError as error:
            if accept(error.code):
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"{what} did not answer {url} within {SERVICE_START_TIMEOUT_S:.0f} s")


@contextmanager
def service(module: str, env: dict[str, str], workdir: Path) -> Iterator[subprocess.Popen[bytes]]:
    popen = subprocess.Popen(
        [sys.executable, "-m", module],
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        cwd=workdir,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        yield popen
    finally:
        popen.send_signal(signal.SIGTERM)
        try:
            popen.wait(timeout=20)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait()


# --- seed ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Seeded:
    org: SeedOrgRef
    lines: int
    seconds: float
    small_orgs: int
    small_lines: int
    small_seconds: float


async def seed(dsn: str, kek: str, lines: int, small_orgs: int, small_lines: int) -> Seeded:
    await migrate(dsn)
    conn = await asyncpg.connect(dsn)
    try:
        org_id = await store.create_org(conn, BIG_ORG_NAME)
        await store.create_user(conn, org_id, FINANCE_EMAIL, hash_password(PASSWORD), "finance")
        smalls = await ensure_seed_orgs(conn, small_orgs) if small_orgs else []
    finally:
        await conn.close()
    org = SeedOrgRef(org_id, BIG_ORG_NAME)
    provider = kek_provider_from_env({"APGMS_KEK": kek})
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        task = progress.add_task(f"seeding {BIG_ORG_NAME}", total=lines)
        started = time.perf_counter()
        await seed_bank_lines(
            dsn, provider, [org], lines, progress=lambda o, done, total: progress.update(task, completed=done)
        )
        seconds = time.perf_counter() - started
        task = progress.add_task(f"seeding {small_orgs} small orgs", total=small_orgs * small_lines)
        small_started = time.perf_counter()
        done_before: dict[uuid.UUID, int] = {}

        def small_progress(o: SeedOrgRef, done: int, total: int) -> None:
            done_before[o.org_id] = done
            progress.update(task, completed=sum(done_before.values()))

        await seed_bank_lines(dsn, provider, smalls, small_lines, progress=small_progress)
        small_seconds = time.perf_counter() - small_started
    return Seeded(org, lines, seconds, len(smalls), small_lines, small_seconds)


async def decrypt_cost_us(dsn: str, kek: str, org_id: uuid.UUID, pages: int) -> float:
    """Microseconds to open one page's PII (two decrypt_many of PAGE_LIMIT values each, the key cached), as
    `services.core.bank_lines` does per page."""
    async with asyncpg.create_pool(dsn, min_size=1, max_size=1) as pool:
        cipher = PiiCipher(pool, kek_provider_from_env({"APGMS_KEK": kek}))
        batch = LineGenerator(99, org_id, 0, date.today()).batch(PAGE_LIMIT)
        row_ids: list[str | None] = [str(line_id) for line_id in batch.ids]
        payees = await cipher.encrypt_many(org_id, BANK_LINES_TABLE, "payee", batch.payees, row_ids=row_ids)
        descriptions = await cipher.encrypt_many(
            org_id, BANK_LINES_TABLE, "description", batch.descriptions, row_ids=row_ids
        )
        assert await cipher.decrypt_many(org_id, BANK_LINES_TABLE, "payee", payees, row_ids=row_ids) == list(
            batch.payees
        )
        started = time.perf_counter()
        for _ in range(pages):
            await cipher.decrypt_many(org_id, BANK_LINES_TABLE, "payee", payees, row_ids=row_ids)
            await cipher.decrypt_many(org_id, BANK_LINES_TABLE, "description", descriptions, row_ids=row_ids)
        return 1e6 * (time.perf_counter() - started) / pages


# --- load ------------------------------------------------------------------------------------------------------


class Client:
    """One aiohttp session per loopback source address, used in turn; `watched` are the processes whose CPU time
    each run reports (besides this one's, as "client")."""

    def __init__(self, watched: dict[str, int]) -> None:
        self.watched = watched
        self.sessions = [
            aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, local_addr=(f"127.0.0.{n}", 0)),
                timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S),
            )
            for n in range(1, SOURCE_ADDRESSES + 1)
        ]

    def session(self, i: int) -> aiohttp.ClientSession:
        return self.sessions[i % len(self.sessions)]

    async def close(self) -> None:
        for session in self.sessions:
            await session.close()


TIMED_OUT = -1  # what `send` answers for a request not answered within REQUEST_TIMEOUT_S
FAILED = 0  # ... and for one whose connection failed


async def send(client: Client, request: Request, i: int) -> int:
    """Send request i and read its whole body: its status, or TIMED_OUT / FAILED when none came."""
    try:
        async with client.session(i).request(
            request.method, request.target(i), headers=request.headers(i), json=request.body(i)
        ) as response:
            await response.read()
            return response.status
    except TimeoutError:
        return TIMED_OUT
    except aiohttp.ClientError:
        return FAILED


@dataclass
class Tally:
    """What the requests of one run came back with: latencies (ms, from each one's start) of the expected status,
    and the rest counted."""

    expected: int
    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0
    timeouts: int = 0
    statuses: dict[int, int] = field(default_factory=dict)

    def add(self, status: int, started: float) -> None:
        """Count one answer; `started` is its scheduled (or actual) start on the perf_counter clock."""
        if status == TIMED_OUT:
            self.timeouts += 1
        elif status == FAILED:
            self.errors += 1
        elif status == self.expected:
            self.latencies_ms.append(1000 * (time.perf_counter() - started))
        else:
            self.errors += 1
            self.statuses[status] = self.statuses.get(status, 0) + 1

    def run(self, rate: float, sent: int, cpu_ms: tuple[tuple[str, float], ...] = ()) -> Run:
        return Run(
            rate,
            sent,
            tuple(self.latencies_ms),
            self.errors,
            self.timeouts,
            tuple(sorted(self.statuses.items())),
            cpu_ms,
        )


async def open_load(client: Client, request: Request, rate: float, duration_s: float) -> Run:
    """Send `rate * duration_s` requests on schedule; latency from each one's scheduled time (perf_counter: uvloop's
    clock has millisecond resolution)."""
    count = max(1, int(rate * duration_s))
    tally = Tally(request.expected)

    async def one(i: int, scheduled: float) -> None:
        tally.add(await send(client, request, i), scheduled)

    cpu_before = {name: process_cpu_s(pid) for name, pid in client.watched.items()}
    client_cpu_before = time.process_time()
    start = time.perf_counter() + 0.05
    tasks = []
    for i in range(count):
        scheduled = start + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, scheduled)))
    await asyncio.gather(*tasks)
    cpu = {name: process_cpu_s(pid) - cpu_before[name] for name, pid in client.watched.items()}
    cpu["client"] = time.process_time() - client_cpu_before
    per_request = tuple((name, 1000 * seconds / count) for name, seconds in cpu.items())
    return tally.run(rate, count, per_request)


async def warm_up(client: Client, request: Request) -> float:
    """WARM_UP_REQUESTS requests one at a time, each checked; the median latency of the second half (ms): the
    workload's cost with no queue."""
    latencies = []
    for i in range(WARM_UP_REQUESTS):
        started = time.perf_counter()
        async with client.session(i).request(
            request.method, request.target(i), headers=request.headers(i), json=request.body(i)
        ) as response:
            body = await response.read()
            if response.status != request.expected:
                raise SystemExit(f"{request.name}: {response.status} {body[:300]!r}")
        latencies.append(1000 * (time.perf_counter() - started))
    return statistics.median(latencies[WARM_UP_REQUESTS // 2 :])


async def settle(client: Client, request: Request, baseline_ms: float) -> None:
    """Until one request at a time gets its expected answer within SETTLED_FACTOR of its unloaded latency (at most
    SETTLE_MAX_S): after an overloaded run, requests the proxy gave up on may still be running in core, or the proxy
    may have taken core out of rotation (its /ready too slow twice: a quick 503 is not settled), and the next step
    must not inherit either."""
    deadline = time.perf_counter() + SETTLE_MAX_S
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        async with client.session(0).request(
            request.method, request.target(-1), headers=request.headers(-1), json=request.body(-1)
        ) as response:
            await response.read()
        quick = 1000 * (time.perf_counter() - started) <= SETTLED_FACTOR * baseline_ms
        if response.status == request.expected and quick:
            return
        await asyncio.sleep(PAUSE_BETWEEN_RUNS_S)


async def search(
    client: Client, request: Request, measured: dict[float, Run], cap: float, duration_s: float, baseline_ms: float
) -> Search:
    """The highest rate whose p95 is under the SLO with no errors: from the fixed rates' runs, then ladder steps
    between the last passing fixed rate and the first failing one (or above the highest, up to `cap`), ascending,
    until one fails."""
    ordered = sorted(measured)
    failing = next((rate for rate in ordered if not measured[rate].within_slo), None)
    passing = [rate for rate in ordered if failing is None or rate < failing]
    highest = passing[-1] if passing else None
    steps: list[Run] = []
    above = (step for step in SEARCH_LADDER if step > (highest or 0))
    for rate in (step for step in above if (step < failing if failing is not None else step <= cap)):
        await asyncio.sleep(PAUSE_BETWEEN_RUNS_S)
        await settle(client, request, baseline_ms)
        run = await open_load(client, request, rate, duration_s)
        steps.append(run)
        if not run.within_slo:
            return Search(highest, run, tuple(steps))
        highest = rate
    if failing is not None:
        return Search(highest, measured[failing], tuple(steps))
    return Search(highest, None, tuple(steps))


# --- the run ---------------------------------------------------------------------------------------------------


@dataclass
class Results:
    fixed: dict[str, dict[float, Run]] = field(default_factory=dict)
    searches: dict[str, Search] = field(default_factory=dict)
    post: Run | None = None
    one_at_a_time_ms: dict[str, float] = field(default_factory=dict)
    filtered_items: int = 0
    filters: str = ""
    deep_cursor_walk_s: float = 0.0


def quarter_a_year_back(today: date) -> tuple[date, date]:
    day = today - timedelta(days=365)
    first = date(day.year, 3 * ((day.month - 1) // 3) + 1, 1)
    after = date(first.year + (first.month + 3 > 12), (first.month + 2) % 12 + 1, 1)
    return first, after - timedelta(days=1)


def new_line_body(i: int) -> dict[str, Any]:
    """The body of the i-th `POST /bank-lines`: a purchase dated today, its amount varying with i."""
    return {
        "date": date.today().isoformat(),
        "amount": f"-{1 + i % 900}.{i % 100:02d}",
        "payee": "Bench Supplies Pty Ltd",
        "description": f"Bench purchase {i}",
        "gst_amount": "0.00",
    }


async def login(proxy_url: str) -> str:
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{proxy_url}/auth/login", json={"email": FINANCE_EMAIL, "password": PASSWORD}) as response,
    ):
        body = await response.json()
        if response.status != 200:
            raise SystemExit(f"login failed: {response.status} {body}")
        return str(body["access_token"])


async def deep_cursor(proxy_url: str, token: str) -> tuple[str, float]:
    """The cursor after the first DEEP_LINES lines, walked WALK_LIMIT lines a page."""
    started = time.perf_counter()
    cursor: str | None = None
    seen = 0
    async with aiohttp.ClientSession(headers={"authorization": f"Bearer {token}"}) as http:
        while seen < DEEP_LINES:
            params = {"limit": str(min(WALK_LIMIT, DEEP_LINES - seen)), **({"cursor": cursor} if cursor else {})}
            async with http.get(f"{proxy_url}/bank-lines", params=params) as response:
                page = await response.json()
                if response.status != 200 or page["next_cursor"] is None:
                    raise SystemExit(f"walking to line {DEEP_LINES:,}: {response.status} after {seen:,} lines")
            seen += len(page["items"])
            cursor = page["next_cursor"]
    assert cursor is not None
    return cursor, time.perf_counter() - started


async def count_items(url: str, token: str) -> int:
    async with aiohttp.ClientSession() as http, http.get(url, headers={"authorization": f"Bearer {token}"}) as resp:
        page = await resp.json()
        assert all(item["payee"] for item in page["items"]), "payees were not decrypted"
        return len(page["items"])


async def drive(
    args: argparse.Namespace, proxy_url: str, core_url: str, watched: dict[str, int], results: Results
) -> None:
    token = await login(proxy_url)
    auth = {"authorization": f"Bearer {token}"}
    lines_url = f"{proxy_url}/bank-lines?limit={PAGE_LIMIT}"
    cursor, results.deep_cursor_walk_s = await deep_cursor(proxy_url, token)
    first, last = quarter_a_year_back(date.today())
    filtered_url = f"{lines_url}&from={first}&to={last}&min_amount={FILTER_MIN_AMOUNT}"
    results.filtered_items = await count_items(filtered_url, token)
    results.filters = f"from={first}&to={last}&min_amount={FILTER_MIN_AMOUNT}"
    assert await count_items(lines_url, token) == PAGE_LIMIT
    workloads = [
        Request("core /health direct (reference)", "GET", f"{core_url}/health", 200, lambda i: {}),
        Request("proxy /health (reference)", "GET", f"{proxy_url}/health", 200, lambda i: {}),
        Request("first page", "GET", lines_url, 200, lambda i: auth),
        Request(f"page {DEEP_LINES:,} lines deep", "GET", f"{lines_url}&cursor={cursor}", 200, lambda i: auth),
        Request("filtered page", "GET", filtered_url, 200, lambda i: auth),
    ]
    post = Request(
        "POST /bank-lines",
        "POST",
        f"{proxy_url}/bank-lines",
        201,
        lambda i: {**auth, "idempotency-key": str(uuid.uuid4())},
        new_line_body,
    )
    client = Client(watched)
    try:
        for request in workloads:
            results.one_at_a_time_ms[request.name] = await warm_up(client, request)
            runs: dict[float, Run] = {}
            for rate in args.rates:
                await asyncio.sleep(PAUSE_BETWEEN_RUNS_S)
                with console.status(f"{request.name} at {rate:g} req/s"):
                    runs[rate] = await open_load(client, request, rate, args.duration)
                console.log(describe(request.name, runs[rate]))
            results.fixed[request.name] = runs
            if request.url.startswith(lines_url):
                with console.status(f"{request.name}: highest rate under {SLO_P95_MS:.0f} ms p95"):
                    results.searches[request.name] = await search(
                        client,
                        request,
                        runs,
                        args.search_cap,
                        args.search_duration,
                        results.one_at_a_time_ms[request.name],
                    )
                    await settle(client, request, results.one_at_a_time_ms[request.name])  # before the next workload
        results.one_at_a_time_ms[post.name] = await warm_up(client, post)
        await asyncio.sleep(PAUSE_BETWEEN_RUNS_S)
        with console.status(f"POST /bank-lines at {args.post_rate:g} req/s"):
            results.post = await open_load(client, post, args.post_rate, args.duration)
        console.log(describe(post.name, results.post))
        with console.status(f"{post.name}: highest rate under {SLO_P95_MS:.0f} ms p95"):
            results.searches[post.name] = await search(
                client,
                post,
                {args.post_rate: results.post},
                args.search_cap,
                args.search_duration,
                results.one_at_a_time_ms[post.name],
            )
    finally:
        await client.close()


def describe(name: str, run: Run) -> str:
    return (
        f"{name} at {run.rate:g}/s: p50 {run.p50:.1f} p95 {run.p95:.1f} p99 {run.p99:.1f} ms, "
        f"{run.errors} errors, {run.timeouts} timeouts"
    )


# --- report ----------------------------------------------------------------------------------------------------


def fmt(value: float) -> str:
    return "-" if value != value else f"{value:,.1f}"  # NaN: nothing answered


def report(args: argparse.Namespace, seeded: Seeded, results: Results, rss: dict[str, float], decrypt_us: float) -> int:
    seed_table = Table(title="seed (apgms.seed.seed_bank_lines: generate, seal, COPY)")
    for column in ("orgs", "lines each", "seconds", "rows/s"):
        seed_table.add_column(column, justify="right")
    seed_table.add_row("1", f"{seeded.lines:,}", f"{seeded.seconds:.1f}", f"{seeded.lines / seeded.seconds:,.0f}")
    if seeded.small_orgs:
        total = seeded.small_orgs * seeded.small_lines
        seed_table.add_row(
            str(seeded.small_orgs),
            f"{seeded.small_lines:,}",
            f"{seeded.small_seconds:.1f}",
            f"{total / seeded.small_seconds:,.0f}",
        )
    console.print(seed_table)

    names = list(results.fixed)
    reference = results.fixed[names[0]]
    table = Table(
        title=f"GET /bank-lines?limit={PAGE_LIMIT} through the proxy, open-model load, {args.duration:g} s per rate"
    )
    for column in (
        "workload",
        "req/s",
        "sent",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "p50 vs core /health",
        "CPU ms/req core/proxy/client",
        "errors",
        "timeouts",
    ):
        table.add_column(column, justify="left" if column == "workload" else "right")
    for name in [*names, "POST /bank-lines"]:
        post = {args.post_rate: results.post} if results.post else {}
        runs: dict[float, Run] = results.fixed.get(name) or post
        for rate, run in runs.items():
            ref = reference.get(rate)
            ratio = f"{run.p50 / ref.p50:.1f}x" if ref and ref.p50 > 0 and run is not ref else "-"
            table.add_row(
                name,
                f"{rate:g}",
                f"{run.sent:,}",
                fmt(run.p50),
                fmt(run.p95),
                fmt(run.p99),
                ratio,
                " / ".join(f"{dict(run.cpu_ms).get(name, float('nan')):.2f}" for name in CPU_COLUMNS),
                str(run.errors) + (f" {dict(run.statuses)}" if run.statuses else ""),
                str(run.timeouts),
            )
    console.print(table)

    search_table = Table(
        title=f"highest offered rate with p95 < {SLO_P95_MS:.0f} ms and no errors (cap {args.search_cap:g}/s)"
    )
    columns = ("workload", "p50 one at a time ms", "highest ok req/s", "first failing", "its p95 ms", "its errors")
    for column in (*columns, "steps"):
        search_table.add_column(column, justify="left" if column == "workload" else "right")
    for name, found in results.searches.items():
        failing = found.first_failing
        search_table.add_row(
            name,
            fmt(results.one_at_a_time_ms.get(name, float("nan"))),
            "< lowest step" if found.highest_ok is None else f"{found.highest_ok:g}",
            f"{failing.rate:g}" if failing else f"none up to {args.search_cap:g}",
            fmt(failing.p95) if failing else "-",
            f"{failing.errors + failing.timeouts}{f' {dict(failing.statuses)}' if failing.statuses else ''}"
            if failing
            else "-",
            ", ".join(f"{run.rate:g}" for run in found.steps) or "-",
        )
    console.print(search_table)

    first_page = results.fixed[names[2]]
    page_p50 = min(run.p50 for run in first_page.values())
    other = Table(title="memory and PII")
    other.add_column("measure")
    other.add_column("result", justify="right")
    other.add_column("reference / note")
    other.add_row(
        "core RSS peak (VmHWM)",
        f"{rss['hwm']:.0f} MB",
        f"target < {TARGET_RSS_MB:.0f} MB; sampled VmRSS peak {rss['sampled']:.0f} MB, "
        f"{rss['idle']:.0f} MB idle after start",
    )
    other.add_row(
        f"decrypt one page's PII ({PAGE_LIMIT} payees + {PAGE_LIMIT} descriptions)",
        f"{decrypt_us:,.0f} us",
        f"{decrypt_us / (2 * PAGE_LIMIT):.1f} us a value; {decrypt_us / 10 / page_p50:.1f}% of the first page's "
        f"best p50 ({page_p50:.1f} ms); in-process, {args.decrypt_pages:,} pages",
    )
    other.add_row("filtered page", f"{results.filtered_items} items", f"limit {PAGE_LIMIT}, {results.filters}")
    other.add_row(f"walk to line {DEEP_LINES:,}", f"{results.deep_cursor_walk_s:.1f} s", f"{WALK_LIMIT} lines a page")
    console.print(other)

    missed = False
    for name in names[2:]:
        at_target = results.fixed[name].get(TARGET_RATE)
        if at_target is None:
            console.print(
                f"[yellow]NOT MEASURED[/] {name}: p95 < {TARGET_P95_MS:.0f} ms at {TARGET_RATE} req/s (not in --rates)"
            )
            continue
        passed = at_target.clean and at_target.p95 < TARGET_P95_MS
        missed |= not passed
        console.print(
            f"[{'green' if passed else 'red'}]{'PASS' if passed else 'MISS'}[/] {name}: p95 {fmt(at_target.p95)} ms "
            f"< {TARGET_P95_MS:.0f} ms at {TARGET_RATE} req/s through the proxy"
        )
    passed = rss["hwm"] < TARGET_RSS_MB
    missed |= not passed
    console.print(
        f"[{'green' if passed else 'red'}]{'PASS' if passed else 'MISS'}[/] core RSS {rss['hwm']:.0f} MB "
        f"< {TARGET_RSS_MB:.0f} MB"
    )
    fixed_runs = [run for runs in results.fixed.values() for run in runs.values()]
    fixed_runs += [results.post] if results.post else []
    errors = sum(run.errors for run in fixed_runs)
    timeouts = sum(run.timeouts for run in fixed_runs)
    console.print(f"fixed-rate runs: {errors} errors, {timeouts} timeouts")
    if errors or timeouts:
        return 2
    return 1 if missed else 0


def rates(text: str) -> list[float]:
    values = [float(part) for part in text.split(",") if part.strip()]
    if not values or any(value <= 0 for value in values):
        raise argparse.ArgumentTypeError("a comma-separated list of positive rates")
    return values


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=1_000_000, help="lines in the benchmarked org")
    parser.add_argument("--small-orgs", type=int, default=10)
    parser.add_argument("--small-lines", type=int, default=1_000, help="lines in each small org")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of load per fixed rate")
    parser.add_argument("--rates", type=rates, default=[50.0, 100.0, 200.0], help="offered rates, req/s")
    parser.add_argument(
        "--search-duration", type=float, default=None, help="seconds per search step (default: min(duration, 5))"
    )
    parser.add_argument("--search-cap", type=float, default=1000.0, help="the highest rate the search tries")
    parser.add_argument("--post-rate", type=float, default=50.0)
    parser.add_argument("--decrypt-pages", type=int, default=2_000)
    args = parser.parse_args()
    if args.lines < DEEP_LINES + PAGE_LIMIT:
        parser.error(f"--lines must be at least {DEEP_LINES + PAGE_LIMIT:,} (the deep page)")
    args.search_duration = args.search_duration or min(args.duration, 5.0)

    kek = base64.b64encode(os.urandom(32)).decode()
    results = Results()
    with ExitStack() as stack:
        postgres, redis = stack.enter_context(throwaway_servers(with_redis=find_redis_server() is not None))
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="apgms-bench-lines-cwd-")))
        seeded = asyncio.run(seed(postgres.dsn, kek, args.lines, args.small_orgs, args.small_lines))
        console.log(
            f"seeded {seeded.lines:,} lines in {seeded.seconds:.1f} s ({seeded.lines / seeded.seconds:,.0f} rows/s)"
        )
        with console.status("timing PII decryption in-process"):
            decrypt_us = asyncio.run(decrypt_cost_us(postgres.dsn, kek, seeded.org.org_id, args.decrypt_pages))
        auth_port, core_port, proxy_port = free_port(), free_port(), free_port()
        common = {
            "APGMS_ENV": "test",
            "HOST": "127.0.0.1",
            "DATABASE_URL": postgres.dsn,
            "SHUTDOWN_DELAY_S": "0",
            **({"REDIS_URL": redis.url} if redis else {}),
        }
        (workdir / "auth").mkdir()
        (workdir / "core").mkdir()
        (workdir / "proxy").mkdir()
        auth_env = {**common, "PORT": str(auth_port), "APGMS_MASTER_KEY": new_master_key()}
        stack.enter_context(service("services.auth", auth_env, workdir / "auth"))
        auth_url = f"http://127.0.0.1:{auth_port}"
        core_env = {**common, "PORT": str(core_port), "AUTH_URL": auth_url, "APGMS_KEK": kek}
        core = stack.enter_context(service("services.core", core_env, workdir / "core"))
        core_url = f"http://127.0.0.1:{core_port}"
        proxy_env = {
            "APGMS_ENV": "test",
            "HOST": "127.0.0.1",
            "PORT": str(proxy_port),
            "SHUTDOWN_DELAY_S": "0",
            "UPSTREAM_AUTH_URLS": auth_url,
            "UPSTREAM_CORE_URLS": core_url,
            "UPSTREAM_COMPLIANCE_URLS": f"http://127.0.0.1:{free_port()}",
            "UPSTREAM_REGULATOR_URLS": f"http://127.0.0.1:{free_port()}",
        }
        proxy = stack.enter_context(service("proxy", proxy_env, workdir / "proxy"))
        proxy_url = f"http://127.0.0.1:{proxy_port}"
        for url, what in (
            (f"{auth_url}/ready", "auth"),
            (f"{core_url}/ready", "core"),
            (f"{proxy_url}/health", "proxy"),
        ):
            wait_http(url, lambda status: status == 200, what)
        # In rotation at the proxy once core's 401 (no token) comes back through it.
        wait_http(f"{proxy_url}/bank-lines", lambda status: status == 401, "core through the proxy")
        sampler = RssSampler(core.pid)
        idle_mb = status_kb(core.pid, "VmRSS") / 1024
        sampler.start()
        try:
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                runner.run(drive(args, proxy_url, core_url, {"core": core.pid, "api-gateway": proxy.pid}, results))
        finally:
            sampler.stop()
        rss = {"idle": idle_mb, "sampled": sampler.peak_kb / 1024, "hwm": status_kb(core.pid, "VmHWM") / 1024}
    return report(args, seeded, results, rss, decrypt_us)


if __name__ == "__main__":
    sys.exit(main())
