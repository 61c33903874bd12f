"""compliance.metric_samples: readings of each service's request counters, taken every METRICS_SAMPLE_INTERVAL_S by
the sampler (`services.compliance.snapshots`) and kept SAMPLE_RETENTION, so a snapshot compares its fresh reading
with one from about five minutes before. Shared by every replica: two replicas sampling at once add two rows (their
times differ), which only gives a snapshot more to choose from."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg

__all__ = [
    "DELETE_BATCH_ROWS",
    "SAMPLE_RETENTION",
    "MetricSample",
    "baselines",
    "delete_expired_samples",
    "insert_samples",
]

# Five minutes of window, and as much again for a sampler that was late or a service that was down for a while.
SAMPLE_RETENTION = timedelta(minutes=15)
DELETE_BATCH_ROWS = 1000


@dataclass(frozen=True, slots=True)
class MetricSample:
    source: str
    taken_at: datetime
    requests: int
    errors_5xx: int


async def insert_samples(conn: asyncpg.Connection, samples: Sequence[MetricSample]) -> None:
    """One row per sample; a sample already stored for the same source and instant is kept as it was."""
    if not samples:
        return
    await conn.execute(
        "INSERT INTO compliance.metric_samples (source, taken_at, requests, errors_5xx) "
        "SELECT * FROM unnest($1::text[], $2::timestamptz[], $3::bigint[], $4::bigint[]) "
        "ON CONFLICT (source, taken_at) DO NOTHING",
        [s.source for s in samples],
        [s.taken_at for s in samples],
        [s.requests for s in samples],
        [s.errors_5xx for s in samples],
    )


async def delete_expired_samples(conn: asyncpg.Connection, older_than: datetime, limit: int = DELETE_BATCH_ROWS) -> int:
    """Delete at most `limit` samples taken before `older_than`, skipping rows another replica is deleting; how
    many were deleted."""
    status = await conn.execute(
        "DELETE FROM compliance.metric_samples WHERE ctid IN ("
        "SELECT ctid FROM compliance.metric_samples WHERE taken_at < $1 LIMIT $2 FOR UPDATE SKIP LOCKED)",
        older_than,
        limit,
    )
    return int(status.split()[-1])


async def baselines(
    conn: asyncpg.Connection, sources: Sequence[str], before: datetime, window: timedelta
) -> dict[str, MetricSample]:
    """Per source, the sample to compare a reading taken at `before` with: the newest one at least `window` old,
    or, when none is that old, the oldest one there is (the longest window available). Sources without a sample
    taken before `before` are absent."""
    rows = await conn.fetch(
        "SELECT DISTINCT ON (source) source, taken_at, requests, errors_5xx FROM compliance.metric_samples "
        "WHERE source = ANY($1::text[]) AND taken_at < $2 "
        "ORDER BY source, taken_at <= $3 DESC, "
        "CASE WHEN taken_at <= $3 THEN taken_at END DESC, taken_at ASC",
        list(sources),
        before,
        before - window,
    )
    return {
        row["source"]: MetricSample(row["source"], row["taken_at"], int(row["requests"]), int(row["errors_5xx"]))
        for row in rows
    }
