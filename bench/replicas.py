"""Replicas benchmark (issue #16): what one and two replicas of core, and one and two proxies, serve on this machine;
what the per-org locks cost under many clients of one org; how many PostgreSQL connections each replica holds.

    .venv/bin/python bench/replicas.py              (or: make bench-replicas)
    .venv/bin/python bench/replicas.py --quick      (seconds of load; the suite's smoke test; numbers not meaningful)

Set-up, bench/bank_lines.py's own: a throwaway PostgreSQL and Redis under /tmp, migrated; `--orgs` orgs ("Bench
Org" and "Seed Org 1".."N-1"; at least the most clients of a lock step, and one more for the bystander) of
`--lines` lines each through `apgms.seed.seed_bank_lines`, each with a finance user; then as real processes as
shipped: auth, two core replicas (`core-1`, `core-2`) and four proxies: `proxy-1` and `proxy-1b` in front of
core-1 alone, `proxy-2` and `proxy-2b` in front of both cores (UPSTREAM_CORE_URLS, which the proxy balances round
robin). Each service's DATABASE_URL carries `application_name` (`auth`, `core-1`, `core-2`) so `pg_stat_activity`
tells their connections apart. Processes a topology does not use stay up, idle but for the proxies' health checks.

Topologies: 1 proxy + 1 core (the reference), 1 proxy + 2 cores, 2 proxies + 1 core, 2 proxies + 2 cores (the
client sends request i to proxy i mod 2, as a load balancer in front of them would).

Throughput: `GET /bank-lines?limit=50` (the first page) and `POST /bank-lines` (a fresh Idempotency-Key each),
request i as org i mod `--orgs`, so the per-org lock does not cap them. The load is bank_lines': open model
(request i sent at start + i/rate, latency from that scheduled time). The search: `--start-rate`, then up LADDER,
`--search-duration` s a step, until a step's p95 reaches the runbook's 500 ms or one request fails (at most
`--search-cap`), every topology at a rate before any at the next, and a failing step run once more. Then a
confirmation run at the highest passing rate for `--duration` s (a rung lower each time one fails, at most
CONFIRM_TRIES), during which the machine's CPU (/proc/stat) and each replica's PostgreSQL connections are sampled:
the rate that held is the figure. The ratio base is the 1 proxy + 1 core figure of the same run.

Per-org locks: closed model, C clients each sending one request after another for `--lock-duration` s (through
proxy-2, so one org's requests run in both core replicas), at each C of `--concurrency`: every client as ONE org,
against client k as org k; `POST /bank-lines`, then the first page. Answered/s, p50/p95, the backends waiting on
each advisory lock class (`pg_locks`, sampled every SAMPLE_S), and meanwhile another org's page reads at
`--bystander-rate` (what one org's queue costs the others). Every audited request (a page read too) appends to the
org's audit chain under the org's chain lock; a money write takes the org's BAS money lock before that; both are
held to the commit, so one org's requests are serialised.

Connections: per application_name at rest (after start), at the peak of each sampled run, and at the end, against
`max_connections` and DB_POOL_MAX_SIZE.

Exit status: 0, or 2 when a workload had no rate that held (CONFIRM_TRIES confirmation runs, none within the SLO).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import itertools
import os
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import ExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
import asyncpg  # noqa: E402
import uvloop  # noqa: E402

from apgms.devservers import find_redis_server, free_port, read_pid_file  # noqa: E402
from apgms.seed import ensure_seed_orgs  # noqa: E402
from bench.bank_lines import (  # noqa: E402
    FINANCE_EMAIL,
    PAGE_LIMIT,
    PASSWORD,
    SEARCH_LADDER,
    SLO_P95_MS,
    Client,
    Request,
    Run,
    Search,
    Tally,
    console,
    fmt,
    new_line_body,
    open_load,
    process_cpu_s,
    rates,
    seed,
    send,
    service,
    settle,
    throwaway_servers,
    wait_http,
    warm_up,
)
from services.auth import store  # noqa: E402
from services.auth.passwords import hash_password  # noqa: E402
from services.core.store.cycles import MONEY_LOCK_CLASS  # noqa: E402
from services.core.store.orgs import ORG_DELETION_LOCK_CLASS  # noqa: E402
from shared.audit import AUDIT_LOCK_CLASS  # noqa: E402
from shared.config import DB_POOL_MAX_SIZE, new_master_key  # noqa: E402

SAMPLE_S = 0.05
# Confirmation runs: at the search's highest passing rate, then a rung lower each time one fails, at most this many.
CONFIRM_TRIES = 3
# bank_lines' ladder with steps between its coarse ones where this machine's limits fall.
LADDER = tuple(sorted({*SEARCH_LADDER, 350.0, 450.0, 550.0, 700.0}))
REPORT_WIDTH = 240
# A request answering within this (SETTLED_FACTOR x it, bank_lines.settle) means the previous step has drained.
SETTLED_MS = 20.0
# Each org's user logs in straight at auth from an address of its own (127.0.0.10 onwards): auth allows 30 logins
# a minute per address (shared.ratelimit.LOGIN_PER_ADDRESS_LIMIT), and through the proxy every login would be the
# proxy's.
LOGIN_ADDRESS_BASE = 10
LOCK_NAMES = {AUDIT_LOCK_CLASS: "audit chain", MONEY_LOCK_CLASS: "money", ORG_DELETION_LOCK_CLASS: "org deletion"}
CORES = ("core-1", "core-2")
APPS = ("auth", *CORES)
QUICK = {
    "orgs": 4,
    "lines": PAGE_LIMIT,
    "start_rate": 10.0,
    "search_cap": 10.0,
    "search_duration": 0.5,
    "duration": 0.5,
    "concurrency": [2],
    "lock_duration": 0.5,
    "topologies": [1, 4],
    "settle": False,
}


@dataclass(frozen=True)
class Topology:
    """Which proxies the client sends to, and which cores stand behind them."""

    name: str
    proxies: tuple[str, ...]
    cores: tuple[str, ...]


TOPOLOGIES = (
    Topology("1 proxy + 1 core", ("proxy-1",), ("core-1",)),
    Topology("1 proxy + 2 cores", ("proxy-2",), CORES),
    Topology("2 proxies + 1 core", ("proxy-1", "proxy-1b"), ("core-1",)),
    Topology("2 proxies + 2 cores", ("proxy-2", "proxy-2b"), CORES),
)
LOCK_TOPOLOGY = TOPOLOGIES[1]
PROXY_UPSTREAMS = {"proxy-1": ("core-1",), "proxy-1b": ("core-1",), "proxy-2": CORES, "proxy-2b": CORES}


@dataclass(frozen=True)
class Spread(Request):
    """A workload whose request i goes to `urls[i % len(urls)]`: the load split over several proxies."""

    urls: tuple[str, ...] = ()

    def target(self, i: int) -> str:
        return self.urls[i % len(self.urls)]


@dataclass(frozen=True)
class Process:
    url: str
    pid: int


# --- sampling PostgreSQL and the machine ---------------------------------------------------------------------------

# Open connections, and those busy (running a statement or in a transaction), by process.
_CONNECTIONS = """
SELECT application_name, count(*), count(*) FILTER (WHERE state <> 'idle') FROM pg_stat_activity
WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() GROUP BY application_name
"""
# Two-key advisory locks (objsubid 2) waited for, by their first key: the lock's class.
_WAITING = """
SELECT classid::bigint, count(*) FROM pg_locks
WHERE locktype = 'advisory' AND objsubid = 2 AND NOT granted GROUP BY classid
"""


def cpu_jiffies() -> tuple[int, int]:
    """The machine's busy and total CPU time so far (/proc/stat, every core), in clock ticks."""
    values = [int(part) for part in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    idle = values[3] + values[4]  # idle, iowait
    return sum(values) - idle, sum(values)


def children(parent: int) -> list[int]:
    """The processes whose parent is `parent` (PostgreSQL's backends, of its postmaster)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == parent:
                found.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    return found


@dataclass(frozen=True)
class Ours:
    """This benchmark's processes: the services and proxies, this client, and PostgreSQL with its backends; the
    machine is shared, so the CPU they use is told apart from everyone's."""

    pids: tuple[int, ...]
    postmaster: int

    def cpu_s(self) -> tuple[dict[int, float], dict[int, float]]:
        """CPU seconds so far by process: of the services, proxies and this client; and of PostgreSQL's."""
        ours = {pid: process_cpu_s(pid) for pid in (*self.pids, os.getpid())}
        return ours, {pid: process_cpu_s(pid) for pid in (self.postmaster, *children(self.postmaster))}


def spent(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds spent between two readings by the processes alive at the second (a backend that ended meanwhile
    is missed: the pools keep theirs for a minute idle, so few do during a run)."""
    return sum(seconds - before.get(pid, 0.0) for pid, seconds in after.items())


@dataclass
class Window:
    """What was sampled during one run: peak connections per application_name, backends waiting on each advisory
    lock class (summed over samples), and the machine's CPU busy share."""

    peak_connections: dict[str, int] = field(default_factory=dict)  # open
    peak_busy: dict[str, int] = field(default_factory=dict)  # running a statement or in a transaction
    waiting_sums: dict[str, int] = field(default_factory=dict)
    samples: int = 0
    cpu_busy: float = float("nan")  # of the machine's capacity, by anyone
    ours_busy: float = float("nan")  # of the machine's capacity, by this benchmark's processes
    postgres_cpu_s: float = float("nan")  # CPU seconds PostgreSQL's processes spent
    load_average: float = float("nan")  # the one-minute load average at the end

    def cpu_text(self) -> str:
        return f"{100 * self.cpu_busy:.0f}% / {100 * self.ours_busy:.0f}%"

    def mean_waiting(self, lock: str) -> float:
        return self.waiting_sums.get(lock, 0) / self.samples if self.samples else float("nan")


async def connections(conn: asyncpg.Connection) -> dict[str, tuple[int, int]]:
    """Open and busy connections by application_name."""
    return {str(name): (int(count), int(busy)) for name, count, busy in await conn.fetch(_CONNECTIONS)}


@asynccontextmanager
async def sampled(conn: asyncpg.Connection, ours: Ours) -> AsyncIterator[Window]:
    """A Window filled every SAMPLE_S from `conn` (a connection of the bench's own, not counted) while the body
    runs."""
    window = Window()
    (services_before, postgres_before), started = ours.cpu_s(), time.perf_counter()

    async def sample() -> None:
        while True:
            for name, (count, busy) in (await connections(conn)).items():
                window.peak_connections[name] = max(window.peak_connections.get(name, 0), count)
                window.peak_busy[name] = max(window.peak_busy.get(name, 0), busy)
            for classid, count in await conn.fetch(_WAITING):
                lock = LOCK_NAMES.get(int(classid), f"class {classid:#x}")
                window.waiting_sums[lock] = window.waiting_sums.get(lock, 0) + int(count)
            window.samples += 1
            await asyncio.sleep(SAMPLE_S)

    busy_before, total_before = cpu_jiffies()
    task = asyncio.create_task(sample())
    try:
        yield window
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        busy, total = cpu_jiffies()
        window.cpu_busy = (busy - busy_before) / max(1, total - total_before)
        capacity_s = (time.perf_counter() - started) * (os.cpu_count() or 1)
        services, postgres = ours.cpu_s()
        window.postgres_cpu_s = spent(postgres_before, postgres)
        window.ours_busy = (spent(services_before, services) + window.postgres_cpu_s) / capacity_s
        window.load_average = os.getloadavg()[0]


# --- seed and log in -----------------------------------------------------------------------------------------------


def email_of(number: int) -> str:
    """The finance user of org `number` (0: "Bench Org", whose user bank_lines.seed creates)."""
    return FINANCE_EMAIL if number == 0 else FINANCE_EMAIL.replace("@", f"+{number}@")


async def seed_orgs(dsn: str, kek: str, orgs: int, lines: int) -> float:
    """`orgs` orgs of `lines` lines each (bank_lines.seed), a finance user in each; the seconds it took."""
    started = time.perf_counter()
    seeded = await seed(dsn, kek, lines, orgs - 1, lines)
    password_hash = hash_password(PASSWORD)  # one hash for all: argon2id costs ~60 ms each
    conn = await asyncpg.connect(dsn)
    try:
        for number, org in enumerate(await ensure_seed_orgs(conn, seeded.small_orgs), start=1):
            await store.create_user(conn, org.org_id, email_of(number), password_hash, "finance")
    finally:
        await conn.close()
    return time.perf_counter() - started


async def login_all(auth_url: str, orgs: int) -> list[str]:
    """An access token for each org's finance user, org by org (argon2id uses a core; in parallel would not be
    faster here)."""
    tokens = []
    for number in range(orgs):
        connector = aiohttp.TCPConnector(local_addr=(f"127.0.0.{LOGIN_ADDRESS_BASE + number}", 0))
        async with (
            aiohttp.ClientSession(connector=connector) as http,
            http.post(f"{auth_url}/auth/login", json={"email": email_of(number), "password": PASSWORD}) as answer,
        ):
            body = await answer.json()
            if answer.status != 200:
                raise SystemExit(f"login of {email_of(number)} failed: {answer.status} {body}")
            tokens.append(str(body["access_token"]))
    return tokens


# --- workloads and load --------------------------------------------------------------------------------------------


def bearer(tokens: list[str], org_of: Callable[[int], int]) -> Callable[[int], dict[str, str]]:
    return lambda i: {"authorization": f"Bearer {tokens[org_of(i) % len(tokens)]}"}


def workloads(proxy_urls: list[str], tokens: list[str]) -> tuple[Spread, Spread]:
    """The page read and the write, request i as org i mod len(tokens), to proxy i mod len(proxy_urls)."""
    by_org = bearer(tokens, lambda i: i)
    pages = tuple(f"{url}/bank-lines?limit={PAGE_LIMIT}" for url in proxy_urls)
    posts = tuple(f"{url}/bank-lines" for url in proxy_urls)
    read = Spread("GET first page", "GET", pages[0], 200, by_org, urls=pages)
    write = Spread(
        "POST /bank-lines",
        "POST",
        posts[0],
        201,
        lambda i: {**by_org(i), "idempotency-key": str(uuid.uuid4())},
        new_line_body,
        urls=posts,
    )
    return read, write


def same_org_requests(proxy_url: str, tokens: list[str], clients: int, one_org: bool) -> tuple[Request, Request]:
    """`POST /bank-lines` and the first page for `closed_load`'s request numbers (client c sends c, c + clients,
    ...): all as org 0, or client c as org c. Both take the org's audit chain lock to their commit; the write takes
    the org's money lock before it."""
    org_of: Callable[[int], int] = (lambda i: 0) if one_org else (lambda i: i % clients)
    headers = bearer(tokens, org_of)
    write = Request(
        "POST /bank-lines",
        "POST",
        f"{proxy_url}/bank-lines",
        201,
        lambda i: {**headers(i), "idempotency-key": str(uuid.uuid4())},
        new_line_body,
    )
    return write, Request("GET first page", "GET", f"{proxy_url}/bank-lines?limit={PAGE_LIMIT}", 200, headers)


async def closed_load(client: Client, request: Request, clients: int, duration_s: float) -> Run:
    """`clients` tasks each sending request after request (client c: numbers c, c + clients, ...) for `duration_s`;
    the Run's rate is the answered rate achieved, latency each request's own."""
    tally = Tally(request.expected)
    deadline = time.perf_counter() + duration_s
    sent = 0

    async def one_client(c: int) -> None:
        nonlocal sent
        for n in itertools.count():
            if time.perf_counter() >= deadline:
                return
            i = c + clients * n
            sent += 1
            started = time.perf_counter()
            tally.add(await send(client, request, i), started)

    started = time.perf_counter()
    await asyncio.gather(*(one_client(c) for c in range(clients)))
    elapsed = time.perf_counter() - started
    return tally.run(len(tally.latencies_ms) / elapsed, sent)


# --- the run -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Found:
    """One workload on one topology: the search, the highest rate that then held for the confirmation run's
    duration (None: none of CONFIRM_TRIES did), and the last confirmation run with what was sampled during it."""

    topology: Topology
    workload: str
    one_at_a_time_ms: float
    search: Search
    held: float | None
    confirmed: Run | None
    window: Window | None


@dataclass(frozen=True)
class LockRun:
    """One closed-model step: the writes, what was sampled meanwhile, and the bystander's page reads."""

    writes: Run
    window: Window
    bystander: Run


@dataclass(frozen=True)
class LockStep:
    workload: str
    clients: int
    one_org: LockRun
    own_orgs: LockRun


@dataclass
class Results:
    orgs: int = 0
    seed_s: float = 0.0
    max_connections: int = 0
    at_rest: dict[str, tuple[int, int]] = field(default_factory=dict)
    after: dict[str, tuple[int, int]] = field(default_factory=dict)
    found: list[Found] = field(default_factory=list)
    locks: list[LockStep] = field(default_factory=list)


async def recover(args: argparse.Namespace, client: Client, request: Request, baseline_ms: float) -> None:
    """Before a measured run: core back in rotation and drained (bank_lines.settle); not in quick mode."""
    if args.settle:
        await settle(client, request, baseline_ms)


async def step(args: argparse.Namespace, client: Client, request: Request, rate: float, baseline_ms: float) -> Run:
    """One search step at `rate`; a failing one is run once more and counts only if it fails again: on a shared
    machine one stall of a second fails a step's p95 (the queue it leaves takes the rest of the step to drain)."""
    run = await open_load(client, request, rate, args.search_duration)
    if not run.within_slo:
        await recover(args, client, request, baseline_ms)
        run = await open_load(client, request, rate, args.search_duration)
    await recover(args, client, request, baseline_ms)
    return run


@dataclass
class Contender:
    """One topology in an interleaved search: its client, its request, and how far it got."""

    topology: Topology
    client: Client
    request: Request
    baseline_ms: float = float("nan")
    highest: float | None = None
    failing: Run | None = None
    steps: list[Run] = field(default_factory=list)

    def take(self, run: Run) -> bool:
        """Record a step; whether it passed."""
        self.steps.append(run)
        if run.within_slo:
            self.highest = run.rate if self.highest is None else max(self.highest, run.rate)
        elif self.failing is None or run.rate < self.failing.rate:
            self.failing = run
        return run.within_slo


async def interleaved(
    args: argparse.Namespace,
    contenders: list[Contender],
    sampler: asyncpg.Connection,
    ours: Ours,
    advance: Callable[[str], None],
) -> list[Found]:
    """For each topology, the highest rate of `--start-rate` and LADDER above it (at most
    `--search-cap`) whose p95 is under the SLO with no errors: up the ladder until a step fails twice (`step`), or,
    when the start rate fails, down until one passes. Every topology runs a rate before any runs the next, in turn,
    so that what else the shared machine does falls on all of them alike, not on whichever ran at the time. Then
    each one's confirmation run at its highest rate, in turn, with the machine and PostgreSQL sampled."""
    for contender in contenders:
        await recover(args, contender.client, contender.request, SETTLED_MS)
        contender.baseline_ms = await warm_up(contender.client, contender.request)
    for rate in (args.start_rate, *(r for r in LADDER if args.start_rate < r <= args.search_cap)):
        running = [c for c in contenders if c.failing is None]
        if not running:
            break
        for contender in running:
            advance(f"{contender.request.name} at {rate:g}/s: {contender.topology.name}")
            contender.take(await step(args, contender.client, contender.request, rate, contender.baseline_ms))
    for contender in (c for c in contenders if c.highest is None):
        for rate in sorted((r for r in LADDER if r < args.start_rate), reverse=True):
            advance(f"{contender.request.name} at {rate:g}/s: {contender.topology.name}")
            if contender.take(await step(args, contender.client, contender.request, rate, contender.baseline_ms)):
                break
    found = []
    for contender in contenders:
        confirmed: Run | None = None
        sampled_during: Window | None = None
        held = None
        rates = [r for r in sorted({*LADDER, args.start_rate}, reverse=True) if r <= (contender.highest or 0)]
        for rate in rates[:CONFIRM_TRIES]:
            advance(f"{contender.request.name}: {contender.topology.name} at {rate:g}/s for {args.duration:g} s")
            await recover(args, contender.client, contender.request, contender.baseline_ms)
            async with sampled(sampler, ours) as window:
                confirmed = await open_load(contender.client, contender.request, rate, args.duration)
            sampled_during = window
            if confirmed.within_slo:
                held = rate
                break
        search = Search(contender.highest, contender.failing, tuple(contender.steps))
        found.append(
            Found(
                contender.topology,
                contender.request.name,
                contender.baseline_ms,
                search,
                held,
                confirmed,
                sampled_during,
            )
        )
        console.log(describe(found[-1]))
    return found


async def drive(
    args: argparse.Namespace, processes: dict[str, Process], dsn: str, ours: Ours, results: Results
) -> None:
    sampler = await asyncpg.connect(dsn, server_settings={"application_name": "bench-sampler"})
    try:
        results.max_connections = int(await sampler.fetchval("SHOW max_connections"))
        results.at_rest = await connections(sampler)
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=console) as progress:
            chosen = [TOPOLOGIES[number - 1] for number in args.topologies]
            for kind in (0, 1):
                tokens = await login_all(processes["auth"].url, args.orgs)  # fresh: a token lives 15 minutes
                contenders = [
                    Contender(
                        topology,
                        Client({name: processes[name].pid for name in (*topology.cores, *topology.proxies)}),
                        workloads([processes[name].url for name in topology.proxies], tokens)[kind],
                    )
                    for topology in chosen
                ]
                task = progress.add_task(contenders[0].request.name, total=None)

                def advance(description: str, task: TaskID = task) -> None:
                    progress.update(task, description=description, advance=1)

                try:
                    results.found += await interleaved(args, contenders, sampler, ours, advance)
                finally:
                    for contender in contenders:
                        await contender.client.close()
            task = progress.add_task("per-org locks", total=4 * len(args.concurrency))
            tokens = await login_all(processes["auth"].url, results.orgs)
            proxy_url = processes[LOCK_TOPOLOGY.proxies[0]].url
            client = Client({name: processes[name].pid for name in LOCK_TOPOLOGY.cores})
            # The last org is never a client's here: its page reads show what the others' queue costs everyone else.
            bystander = Request(
                "bystander page",
                "GET",
                f"{proxy_url}/bank-lines?limit={PAGE_LIMIT}",
                200,
                bearer(tokens, lambda i: len(tokens) - 1),
            )
            try:
                for kind, clients in itertools.product((0, 1), args.concurrency):
                    runs: dict[bool, LockRun] = {}
                    for one_org in (True, False):
                        same = same_org_requests(proxy_url, tokens, clients, one_org)[kind]
                        to = "one org" if one_org else "own orgs"
                        progress.update(task, description=f"{same.name}: {clients} clients, {to}")
                        await recover(args, client, same, SETTLED_MS)
                        async with sampled(sampler, ours) as window:
                            run, reads = await asyncio.gather(
                                closed_load(client, same, clients, args.lock_duration),
                                open_load(client, bystander, args.bystander_rate, args.lock_duration),
                            )
                        runs[one_org] = LockRun(run, window, reads)
                        progress.advance(task)
                    step = LockStep(same.name, clients, runs[True], runs[False])
                    results.locks.append(step)
                    console.log(
                        f"{same.name}, {clients} clients: one org {step.one_org.writes.rate:.0f}/s "
                        f"p95 {fmt(step.one_org.writes.p95)} ms, own orgs {step.own_orgs.writes.rate:.0f}/s "
                        f"p95 {fmt(step.own_orgs.writes.p95)} ms"
                    )
            finally:
                await client.close()
        results.after = await connections(sampler)
    finally:
        await sampler.close()


def describe(found: Found) -> str:
    highest, held, confirmed = found.search.highest_ok, found.held, found.confirmed
    tail = (
        f", then p95 {fmt(confirmed.p95)} ms at {confirmed.rate:g}/s for {confirmed.sent:,} requests"
        if confirmed
        else ""
    )
    return (
        f"{found.topology.name}, {found.workload}: search passed {'-' if highest is None else f'{highest:g}'}/s, "
        f"held {'-' if held is None else f'{held:g}'}/s{tail}"
    )


# --- report --------------------------------------------------------------------------------------------------------


def cpu_ms(run: Run | None, names: tuple[str, ...]) -> str:
    """CPU ms per request of each named process, joined with +."""
    if run is None:
        return "-"
    spent = dict(run.cpu_ms)
    return " + ".join(f"{spent.get(name, float('nan')):.2f}" for name in names)


def failing_text(found: Search, cap: float) -> str:
    failing = found.first_failing
    if failing is None:
        return f"none up to {cap:g}"
    problems = failing.errors + failing.timeouts
    statuses = f" {dict(failing.statuses)}" if failing.statuses else ""
    return f"{failing.rate:g}: p95 {fmt(failing.p95)} ms" + (f", {problems} failed{statuses}" if problems else "")


def throughput_table(args: argparse.Namespace, results: Results) -> tuple[Table, int]:
    """The throughput table, and how many workloads had no rate that held."""
    table = Table(
        title=f"highest offered rate held for {args.duration:g} s with p95 < {SLO_P95_MS:.0f} ms and no errors, "
        f"requests spread over {args.orgs} orgs (search: steps of {args.search_duration:g} s from "
        f"{args.start_rate:g}/s up the ladder, a failing step run twice, cap {args.search_cap:g}/s; then "
        f"{args.duration:g} s at its highest passing rate, a rung lower each time that fails, {CONFIRM_TRIES} tries)"
    )
    for column in (
        "topology",
        "workload",
        "alone ms",
        "search passed /s",
        "first failing step",
        "held /s",
        "vs 1+1",
        "held: p50 / p95 ms",
        "CPU all / ours",
        "load avg",
        "CPU ms/req cores",
        "proxies",
        "client",
        "PostgreSQL",
        "PG conns open / busy",
    ):
        text = column in ("topology", "workload")
        table.add_column(column, justify="left" if text else "right", no_wrap=text)
    reference = {found.workload: found.held for found in results.found if found.topology == TOPOLOGIES[0]}
    unheld = 0
    for found in results.found:
        highest, held = found.search.highest_ok, found.held
        base = reference.get(found.workload)
        confirmed, window = found.confirmed, found.window
        unheld += held is None
        failed = f" ({confirmed.errors + confirmed.timeouts} failed)" if confirmed and not confirmed.clean else ""
        at = f" at {confirmed.rate:g}/s" if confirmed and held is None else ""
        table.add_row(
            found.topology.name,
            found.workload,
            fmt(found.one_at_a_time_ms),
            "< start rate" if highest is None else f"{highest:g}",
            failing_text(found.search, args.search_cap),
            "-" if held is None else f"{held:g}",
            f"{held / base:.2f}x" if held and base else "-",
            f"{fmt(confirmed.p50)} / {fmt(confirmed.p95)}{failed}{at}" if confirmed else "-",
            window.cpu_text() if window else "-",
            f"{window.load_average:.1f}" if window else "-",
            cpu_ms(confirmed, found.topology.cores),
            cpu_ms(confirmed, found.topology.proxies),
            cpu_ms(confirmed, ("client",)),
            f"{1000 * window.postgres_cpu_s / confirmed.sent:.2f}" if window and confirmed else "-",
            conns_text(window, found.topology.cores) if window else "-",
        )
    return table, unheld


def lock_table(args: argparse.Namespace, results: Results) -> Table:
    table = Table(
        title=f"closed model: N clients, each sending one request after another for {args.lock_duration:g} s through "
        f"{LOCK_TOPOLOGY.proxies[0]} to {' and '.join(LOCK_TOPOLOGY.cores)}: all as one org, or client k as org k. "
        "Waiting: mean backends queued on the audit chain / money advisory locks. Bystander: another org's page "
        f"reads at {args.bystander_rate:g}/s meanwhile"
    )
    for column in (
        "workload",
        "clients",
        "as",
        "answered/s",
        "p50 / p95 ms",
        "waiting",
        "failed",
        "bystander p95 ms",
        "bystander failed",
        "CPU all / ours",
        "PG conns open / busy",
    ):
        text = column in ("workload", "as")
        table.add_column(column, justify="left" if text else "right", no_wrap=text)
    for step in results.locks:
        for name, run in (("one org", step.one_org), ("own orgs", step.own_orgs)):
            done, window, reads = run.writes, run.window, run.bystander
            table.add_row(
                step.workload,
                str(step.clients),
                name,
                f"{done.rate:,.0f}",
                f"{fmt(done.p50)} / {fmt(done.p95)}",
                f"{window.mean_waiting('audit chain'):.1f} / {window.mean_waiting('money'):.1f}",
                str(done.errors + done.timeouts) + (f" {dict(done.statuses)}" if done.statuses else ""),
                fmt(reads.p95),
                str(reads.errors + reads.timeouts) + (f" {dict(reads.statuses)}" if reads.statuses else ""),
                window.cpu_text(),
                conns_text(window, LOCK_TOPOLOGY.cores),
            )
    return table


def conns_text(window: Window, apps: tuple[str, ...]) -> str:
    """Each process's peak open / busy connections, processes joined with +."""
    return " + ".join(f"{window.peak_connections.get(app, 0)}/{window.peak_busy.get(app, 0)}" for app in apps)


def connections_table(results: Results) -> Table:
    table = Table(
        title="PostgreSQL connections per process (pg_stat_activity by application_name): open / busy (running a "
        "statement or in a transaction)"
    )
    for column in ("process", "at rest (after start)", "peak under load", "at the end", "pool maximum"):
        table.add_column(column, justify="left" if column == "process" else "right")
    windows = [found.window for found in results.found if found.window] + [
        run.window for step in results.locks for run in (step.one_org, step.own_orgs)
    ]
    for app in APPS:
        peak_open = max((window.peak_connections.get(app, 0) for window in windows), default=0)
        peak_busy = max((window.peak_busy.get(app, 0) for window in windows), default=0)
        at_rest, after = results.at_rest.get(app, (0, 0)), results.after.get(app, (0, 0))
        table.add_row(
            app,
            f"{at_rest[0]} / {at_rest[1]}",
            f"{peak_open} / {peak_busy}",
            f"{after[0]} / {after[1]}",
            str(DB_POOL_MAX_SIZE),
        )
    return table


def report(args: argparse.Namespace, results: Results) -> int:
    wide = Console(width=max(Console().width, REPORT_WIDTH))
    wide.print(
        f"seeded {results.orgs} orgs x {args.lines:,} lines in {results.seed_s:.1f} s; "
        f"PostgreSQL max_connections {results.max_connections}, DB_POOL_MAX_SIZE {DB_POOL_MAX_SIZE} per process; "
        f"{os.cpu_count()} CPUs; CPU all / ours: the machine's capacity used by anyone / by this benchmark's "
        "processes (PostgreSQL's included)"
    )
    table, unheld = throughput_table(args, results)
    wide.print(table)
    wide.print(lock_table(args, results))
    for workload in dict.fromkeys(step.workload for step in results.locks):
        best = max(
            (step for step in results.locks if step.workload == workload), key=lambda step: step.one_org.writes.rate
        )
        wide.print(
            f"one org's ceiling here, {workload}: {best.one_org.writes.rate:,.0f}/s at {best.clients} clients, i.e. "
            f"{1000 / best.one_org.writes.rate:.2f} ms a request; own orgs at the same clients: "
            f"{best.own_orgs.writes.rate:,.0f}/s"
        )
    wide.print(connections_table(results))
    wide.print(f"workloads with no rate held: {unheld}")
    return 2 if unheld else 0


def concurrency(text: str) -> list[int]:
    return [int(value) for value in rates(text)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--orgs", type=int, default=32, help="orgs, each with a finance user")
    parser.add_argument("--lines", type=int, default=2_000, help="bank lines in each org")
    parser.add_argument("--start-rate", type=float, default=50.0, help="the first rate of each search, req/s")
    parser.add_argument("--search-cap", type=float, default=1000.0, help="the highest rate the search tries")
    parser.add_argument("--search-duration", type=float, default=5.0, help="seconds per search step")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of the confirmation run")
    parser.add_argument("--concurrency", type=concurrency, default=[1, 2, 4, 8, 16, 32], help="clients per lock step")
    parser.add_argument("--lock-duration", type=float, default=4.0, help="seconds per lock step")
    parser.add_argument("--bystander-rate", type=float, default=10.0, help="another org's page reads during them")
    parser.add_argument(
        "--topologies",
        type=concurrency,
        default=list(range(1, len(TOPOLOGIES) + 1)),
        help="which, by number: " + ", ".join(f"{n} {t.name}" for n, t in enumerate(TOPOLOGIES, start=1)),
    )
    parser.add_argument("--quick", action="store_true", help=f"small and short: {QUICK}")
    args = parser.parse_args()
    args.settle = True  # wait for the services to drain before each run (bank_lines.settle); not in quick mode
    if args.quick:
        for name, value in QUICK.items():
            setattr(args, name, value)
    if not set(args.topologies) <= set(range(1, len(TOPOLOGIES) + 1)) or 1 not in args.topologies:
        parser.error("--topologies must include 1 (the reference) and name no other than 1-4")
    if args.orgs < 1 or args.lines < PAGE_LIMIT:
        parser.error(f"--orgs must be at least 1 and --lines at least {PAGE_LIMIT}")

    kek = base64.b64encode(os.urandom(32)).decode()
    results = Results()
    with ExitStack() as stack:
        postgres, redis = stack.enter_context(throwaway_servers(with_redis=find_redis_server() is not None))
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="apgms-bench-replicas-cwd-")))
        # One org more than any step writes to: the bystander's.
        results.orgs = orgs = max(args.orgs, max(args.concurrency)) + 1
        results.seed_s = asyncio.run(seed_orgs(postgres.dsn, kek, orgs, args.lines))
        console.log(f"seeded {orgs} orgs in {results.seed_s:.1f} s; starting auth, {len(CORES)} cores, proxies")
        common = {
            "APGMS_ENV": "test",
            "HOST": "127.0.0.1",
            "SHUTDOWN_DELAY_S": "0",
            **({"REDIS_URL": redis.url} if redis else {}),
        }
        processes: dict[str, Process] = {}

        def start(name: str, module: str, env: dict[str, str]) -> None:
            port = free_port()
            (workdir / name).mkdir()
            popen = stack.enter_context(service(module, {**env, "PORT": str(port)}, workdir / name))
            processes[name] = Process(f"http://127.0.0.1:{port}", popen.pid)

        def database(app: str) -> str:
            return f"{postgres.dsn}?application_name={app}"

        start(
            "auth", "services.auth", {**common, "DATABASE_URL": database("auth"), "APGMS_MASTER_KEY": new_master_key()}
        )
        auth_url = processes["auth"].url
        for core in CORES:
            start(
                core,
                "services.core",
                {**common, "DATABASE_URL": database(core), "AUTH_URL": auth_url, "APGMS_KEK": kek},
            )
        for proxy, cores in PROXY_UPSTREAMS.items():
            start(
                proxy,
                "proxy",
                {
                    "APGMS_ENV": "test",
                    "HOST": "127.0.0.1",
                    "SHUTDOWN_DELAY_S": "0",
                    "UPSTREAM_AUTH_URLS": auth_url,
                    "UPSTREAM_CORE_URLS": ",".join(processes[core].url for core in cores),
                    "UPSTREAM_COMPLIANCE_URLS": f"http://127.0.0.1:{free_port()}",
                    "UPSTREAM_REGULATOR_URLS": f"http://127.0.0.1:{free_port()}",
                },
            )
        for name, process in processes.items():
            wait_http(f"{process.url}/{'health' if name.startswith('proxy') else 'ready'}", lambda s: s == 200, name)
        for name in PROXY_UPSTREAMS:
            # In rotation once core's 401 (no token) comes back through the proxy.
            wait_http(f"{processes[name].url}/bank-lines", lambda status: status == 401, f"core through {name}")
        console.log("every process is ready")
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            postmaster = read_pid_file(postgres.data_dir / "postmaster.pid")
            assert postmaster is not None
            ours = Ours(tuple(process.pid for process in processes.values()), postmaster)
            runner.run(drive(args, processes, postgres.dsn, ours, results))
    return report(args, results)


if __name__ == "__main__":
    sys.exit(main())
