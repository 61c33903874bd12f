"""Monitoring snapshots: the org's state at one moment, with the request rates of the last five minutes.

    POST /monitoring/snapshots     any role; Idempotency-Key optional; no body, or `{}`
    GET  /monitoring/snapshots     any role: the org's snapshots, newest first, paged

A snapshot (`SnapshotBody`) holds the org's open alerts (in all, per severity, open HIGH), the designated totals
and the current BAS period's status, blockers and next due date (from core's report inputs, `core_client`), and
the traffic of every service in `ComplianceSettings.metric_sources` (`services.compliance.traffic`): a fresh
reading of each one's `/metrics` compared with the stored sample of it that is at least SNAPSHOT_WINDOW old (or the
oldest there is, when none is). No float anywhere: evidence packs hash snapshots as canonical JSON, so rates and
ratios are decimal strings with fixed places and windows whole seconds. Core unreachable is a 502 (504 when it does
not answer in time) before anything is stored; an unreachable service is only `unreachable` in the traffic.

The snapshot's row and its `snapshot.create` audit record are written in one transaction, the record last; every
read of another service happens before a pool connection is taken. Taking one is timed as
`apgms_job_duration_seconds{job="snapshot"}`.

The samples come from a background sampler (`schedule_sampling`): every METRICS_SAMPLE_INTERVAL_S it reads every
source's `/metrics`, stores one row per reachable service (`store.samples`) and deletes samples older than
SAMPLE_RETENTION, a batch per run. A service that cannot be read is skipped; the sampler says so once when it stops
answering and once when it is back, not every run. A failed run is logged and the next one runs as usual.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import asyncpg
from pydantic import BaseModel, ConfigDict
from starlette.requests import Request
from starlette.responses import Response

from services.compliance import core_client
from services.compliance.bodies import optional_object
from services.compliance.config import ComplianceSettings
from services.compliance.deps import compliance_deps
from services.compliance.store import samples
from services.compliance.store.snapshots import SnapshotRow, insert_snapshot, page_snapshots
from services.compliance.traffic import Reading, Sampled, ServiceReading, parse_reading, summarise
from shared import audit
from shared.app import Runtime
from shared.authz import guard
from shared.contracts.compliance import (
    SnapshotAlerts,
    SnapshotBas,
    SnapshotBody,
    SnapshotPage,
    SnapshotView,
    Traffic,
)
from shared.contracts.core import ReportInputs
from shared.db import Database
from shared.idempotency import idempotent
from shared.log import get_logger
from shared.metrics import timed_job
from shared.negotiation import JSON_MEDIA_TYPE
from shared.openapi import documented
from shared.pagination import PageQuery, decode_cursor, encode_cursor, page_of
from shared.roles import ROLES
from shared.tokens import Principal
from shared.validation import parse_query

__all__ = [
    "MAX_BODY_BYTES",
    "MAX_METRICS_BYTES",
    "METRICS_READ_TIMEOUT_S",
    "SAMPLER_TASK",
    "SNAPSHOT_JOB",
    "SNAPSHOT_WINDOW",
    "MetricsReader",
    "NewSnapshot",
    "Scrape",
    "create_snapshot",
    "list_snapshots",
    "run_sampler",
    "sample_once",
    "schedule_sampling",
    "snapshot_body",
    "snapshot_page",
    "snapshot_view",
]

SNAPSHOT_JOB = "snapshot"
SNAPSHOT_WINDOW = timedelta(minutes=5)
SAMPLER_TASK = "metric-sampler"
# A scrape of our own services is a few KB (tens with every route's histogram) and answers in milliseconds; past
# these it is not one to wait for, hold in memory or parse (parsing 1 MiB of exposition is a few hundred ms of CPU,
# done in a worker thread so the event loop goes on serving meanwhile).
METRICS_READ_TIMEOUT_S = 2.0
MAX_METRICS_BYTES = 1024 * 1024
METRICS_CHUNK_BYTES = 64 * 1024
METRICS_CONNECTIONS = 8
SAMPLER_ACQUIRE_TIMEOUT_S = 5.0
# The body is nothing or `{}`; a few KiB is room for any spelling of that.
MAX_BODY_BYTES = 4 * 1024

log = get_logger(__name__)


# --- reading the services' counters -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Scrape:
    """One read of a service's /metrics: its reading and when it arrived, or why there is none."""

    service: str
    sampled: Sampled | None
    error: str | None = None


class MetricsUnreadable(Exception):
    """A /metrics answer that is not a readable exposition: a non-200 status, too large, not UTF-8 or not parsed."""


class MetricsReader:
    """Reads services' /metrics over a session of its own: at most METRICS_CONNECTIONS connections, each read done
    within METRICS_READ_TIMEOUT_S and MAX_METRICS_BYTES (a longer or larger answer: that service is unreachable),
    each answer parsed in a worker thread, off the event loop. Used as `async with MetricsReader() as reader`."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> MetricsReader:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=METRICS_CONNECTIONS),
            timeout=aiohttp.ClientTimeout(total=METRICS_READ_TIMEOUT_S),
        )
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def read(self, service: str, base_url: str) -> Scrape:
        if self._session is None:
            raise RuntimeError("a MetricsReader reads inside `async with`")
        try:
            text = await self._fetch(self._session, f"{base_url}/metrics")
            reading = await asyncio.to_thread(parse_reading, text)
        except (aiohttp.ClientError, TimeoutError, OSError, MetricsUnreadable, ValueError) as exc:
            return Scrape(service, None, str(exc) or type(exc).__name__)
        return Scrape(service, Sampled(reading, datetime.now(UTC)))

    async def read_all(self, sources: Mapping[str, str]) -> list[Scrape]:
        """Every source read at once, in the order of `sources`."""
        return list(await asyncio.gather(*(self.read(service, url) for service, url in sources.items())))

    @staticmethod
    async def _fetch(session: aiohttp.ClientSession, url: str) -> str:
        async with session.get(url, headers={"accept": "text/plain"}) as response:
            if response.status != 200:
                raise MetricsUnreadable(f"answered {response.status}")
            if (response.content_length or 0) > MAX_METRICS_BYTES:
                raise MetricsUnreadable(f"more than {MAX_METRICS_BYTES} bytes")
            body = bytearray()
            async for chunk in response.content.iter_chunked(METRICS_CHUNK_BYTES):
                body += chunk
                if len(body) > MAX_METRICS_BYTES:
                    raise MetricsUnreadable(f"more than {MAX_METRICS_BYTES} bytes")
        try:
            return body.decode()
        except UnicodeDecodeError:
            raise MetricsUnreadable("not UTF-8") from None


# --- the sampler --------------------------------------------------------------------------------------------


class Reachability:
    """Which sources answered last time, so that a source going down or coming back is logged once."""

    def __init__(self) -> None:
        self.down: set[str] = set()

    def note(self, scrapes: list[Scrape]) -> None:
        for scrape in scrapes:
            if scrape.sampled is None and scrape.service not in self.down:
                self.down.add(scrape.service)
                log.info("metrics_source_unreachable", source=scrape.service, error=scrape.error)
            elif scrape.sampled is not None and scrape.service in self.down:
                self.down.discard(scrape.service)
                log.info("metrics_source_reachable", source=scrape.service)


async def sample_once(db: Database, sources: Mapping[str, str], reader: MetricsReader) -> list[Scrape]:
    """Read every source, store a sample of each that answered, and delete a batch of expired samples."""
    scrapes = await reader.read_all(sources)
    rows = [
        samples.MetricSample(scrape.service, sampled.at, sampled.reading.requests, sampled.reading.errors_5xx)
        for scrape in scrapes
        if (sampled := scrape.sampled) is not None
    ]
    async with db.pool.acquire(timeout=SAMPLER_ACQUIRE_TIMEOUT_S) as conn:
        await samples.insert_samples(conn, rows)
        await samples.delete_expired_samples(conn, datetime.now(UTC) - samples.SAMPLE_RETENTION)
    return scrapes


async def run_sampler(db: Database, settings: ComplianceSettings) -> None:
    """Forever: every `settings.sample_interval_s`, `sample_once`. The first run waits an interval too (the
    service's own /metrics is among the sources and is not served before start-up ends)."""
    reachability = Reachability()
    async with MetricsReader() as reader:
        while True:
            await asyncio.sleep(settings.sample_interval_s)
            try:
                reachability.note(await sample_once(db, settings.metric_sources, reader))
            except Exception as exc:  # one failed run must not end the sampling; the next one may well succeed
                log.warning("metric_sampling_failed", error=type(exc).__name__, reason=str(exc))


def schedule_sampling(runtime: Runtime, settings: ComplianceSettings) -> None:
    """Run the sampler from start-up to shutdown (`Runtime.run_in_background`)."""

    def sampler(rt: Runtime) -> Coroutine[Any, Any, None]:
        assert rt.db is not None
        return run_sampler(rt.db, settings)

    runtime.run_in_background(SAMPLER_TASK, sampler)


# --- the snapshot -------------------------------------------------------------------------------------------


class NewSnapshot(BaseModel):
    """The body of POST /monitoring/snapshots: nothing, or `{}` (no fields yet; unknown ones are refused)."""

    model_config = ConfigDict(extra="forbid")


def snapshot_view(row: SnapshotRow) -> SnapshotView:
    return SnapshotView(
        id=row.id, taken_at=row.taken_at, taken_by=row.taken_by, body=SnapshotBody.model_validate(row.body)
    )


def snapshot_body(inputs: ReportInputs, traffic: Traffic) -> SnapshotBody:
    alerts = inputs.alerts
    obligations = inputs.obligations
    return SnapshotBody(
        alerts=SnapshotAlerts(
            open_total=alerts.open_total, open_by_severity=alerts.open_by_severity, open_high=alerts.open_high_count
        ),
        designated_totals=inputs.designated_totals,
        bas=SnapshotBas(
            cycle_id=obligations.cycle_id,
            period=obligations.period,
            status=obligations.status,
            blockers=obligations.blockers,
            total_shortfall=obligations.total_shortfall,
            next_bas_due=obligations.next_bas_due,
        ),
        traffic=traffic,
    )


async def _traffic(conn: asyncpg.Connection, scrapes: list[Scrape], since: datetime) -> Traffic:
    """Each scrape against its service's baseline sample (taken before `since`, when the scrapes began, so never
    after the reading it is compared with)."""
    found = await samples.baselines(conn, [scrape.service for scrape in scrapes], since, SNAPSHOT_WINDOW)
    return summarise(
        [
            ServiceReading(
                service=scrape.service,
                now=scrape.sampled,
                baseline=None
                if (sample := found.get(scrape.service)) is None
                else Sampled(Reading(sample.requests, sample.errors_5xx), sample.taken_at),
            )
            for scrape in scrapes
        ]
    )


@documented(
    "Take a monitoring snapshot of the org: alert counts, designated totals, BAS status and the services' request "
    "rates and 5xx ratios of the last five minutes (idempotent with Idempotency-Key)",
    request=NewSnapshot,
    response=SnapshotView,
    status=201,
    tags=["monitoring"],
)
@guard(roles=ROLES)
async def create_snapshot(request: Request, principal: Principal) -> Response:
    body = await optional_object(request, NewSnapshot, MAX_BODY_BYTES)
    org_id = uuid.UUID(principal.org_id)
    actor = audit.actor_of(principal)
    sources = compliance_deps(request).settings.metric_sources
    pool = request.app.state.runtime.db.pool
    with timed_job(SNAPSHOT_JOB):
        inputs = await core_client.report_inputs(request, org_id)
        since = datetime.now(UTC)
        async with MetricsReader() as reader:
            scrapes = await reader.read_all(sources)
        async with pool.acquire() as conn:
            traffic = await _traffic(conn, scrapes, since)
            view = SnapshotView(
                id=uuid.uuid4(), taken_at=datetime.now(UTC), taken_by=actor, body=snapshot_body(inputs, traffic)
            )
            async with conn.transaction():

                async def create() -> Response:
                    row = SnapshotRow(
                        id=view.id,
                        org_id=org_id,
                        taken_at=view.taken_at,
                        taken_by=actor,
                        body=view.body.model_dump(mode="json"),
                    )
                    await insert_snapshot(conn, row)
                    await audit.append(
                        conn,
                        org_id=org_id,
                        actor=actor,
                        action="snapshot.create",
                        target=f"snapshot:{view.id}",
                        detail={"id": str(view.id)},
                    )
                    return Response(view.model_dump_json(), status_code=201, media_type=JSON_MEDIA_TYPE)

                return await idempotent(request, conn, create, org_id=org_id, actor=actor, body=body)


@documented("List the org's monitoring snapshots, newest first", response=SnapshotPage, tags=["monitoring"])
@guard(roles=ROLES)
async def list_snapshots(request: Request, principal: Principal) -> Response:
    body = await snapshot_page(request, uuid.UUID(principal.org_id), parse_query(request.query_params, PageQuery))
    return Response(body.model_dump_json(), media_type=JSON_MEDIA_TYPE)


async def snapshot_page(request: Request, org_id: uuid.UUID, query: PageQuery) -> SnapshotPage:
    """One page of the org's snapshots, newest first (the listing here and compliance's internal one)."""
    after = decode_cursor(query.cursor) if query.cursor is not None else None
    async with request.app.state.runtime.db.pool.acquire() as conn:
        rows = await page_snapshots(conn, org_id, after, query.limit + 1)
    page, next_cursor = page_of(rows, query.limit, lambda snapshot: encode_cursor(snapshot.taken_at, snapshot.id))
    return SnapshotPage(items=[snapshot_view(row) for row in page], next_cursor=next_cursor)
