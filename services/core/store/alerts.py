"""Alerts' SQL. Alerts are raised by writes only (a bank-line write or import, a deposit, a refused withdrawal),
in the writer's transaction, and an org has at most one open SUSPICIOUS_TAX_GAP however many writers race: the
partial unique index `alerts_one_open_tax_gap` decides, and `raise_alert` answers None when one is already open.
Likewise one open BAS_AMENDMENT_NEEDED per lodged cycle (`alerts_one_open_amendment`, on its detail's cycle_id).

Reads (`page_alerts`, newest first by (created_at, id) over `alerts_page_idx`) and `resolve_alert` are scoped to
the caller's org: another org's alert is indistinguishable from one that does not exist. `resolve_alert` is a
conditional UPDATE, so of two racing resolutions exactly one wins and the other sees the alert already resolved.
"""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import orjson

from shared.contracts.core import SEVERITIES, Severity

__all__ = [
    "BAS_AMENDMENT_NEEDED",
    "DESIGNATED_WITHDRAWAL_ATTEMPT",
    "SEVERITIES",
    "SUSPICIOUS_TAX_GAP",
    "Alert",
    "AlertCounts",
    "AlertFilters",
    "AlertKey",
    "Resolution",
    "Severity",
    "count_alerts",
    "get_alert",
    "page_alerts",
    "raise_alert",
    "resolve_alert",
]

SUSPICIOUS_TAX_GAP = "SUSPICIOUS_TAX_GAP"
DESIGNATED_WITHDRAWAL_ATTEMPT = "DESIGNATED_WITHDRAWAL_ATTEMPT"
BAS_AMENDMENT_NEEDED = "BAS_AMENDMENT_NEEDED"
# The types an org has at most one open of (per cycle for amendments), and the partial unique index's conflict
# target that says so (core/0004 and core/0009).
ONE_OPEN: dict[str, str] = {
    SUSPICIOUS_TAX_GAP: f"(org_id) WHERE type = '{SUSPICIOUS_TAX_GAP}' AND resolved_at IS NULL",
    BAS_AMENDMENT_NEEDED: (
        f"(org_id, (detail ->> 'cycle_id')) WHERE type = '{BAS_AMENDMENT_NEEDED}' AND resolved_at IS NULL"
    ),
}

# `detail` crosses as text both ways, so the pool's jsonb codec and a bare connection (CLI, tests) behave alike.
ALERT_COLUMNS = (
    "id, org_id, type, severity, message, detail::text AS detail, created_at, created_by, resolved_at, "
    "resolved_by, resolution_note"
)


@dataclass(frozen=True)
class Alert:
    id: uuid.UUID
    org_id: uuid.UUID
    type: str
    severity: str
    message: str
    # Ids and amounts only, never plaintext PII (alerts are shown to regulators).
    detail: dict[str, Any]
    created_at: datetime
    created_by: str
    resolved_at: datetime | None
    resolved_by: str | None
    resolution_note: str | None


@dataclass(frozen=True, slots=True)
class AlertKey:
    """An alert's place in the newest-first order: (created_at, id), both descending."""

    created_at: datetime
    id: uuid.UUID


@dataclass(frozen=True, slots=True)
class AlertFilters:
    """`resolved`: None for every alert, False for open ones only, True for resolved ones only."""

    resolved: bool | None = None
    severity: Severity | None = None


@dataclass(frozen=True, slots=True)
class AlertCounts:
    open_by_severity: dict[Severity, int]  # open alerts of each severity, every one of SEVERITIES present
    resolved_since: int  # alerts (any severity) resolved at or after the instant asked for

    @property
    def open_total(self) -> int:
        return sum(self.open_by_severity.values())


class Resolution(enum.Enum):
    RESOLVED = "resolved"
    ALREADY_RESOLVED = "already_resolved"
    NOT_FOUND = "not_found"


def _alert(record: asyncpg.Record) -> Alert:
    return Alert(**{**dict(record), "detail": orjson.loads(record["detail"])})


async def raise_alert(
    conn: asyncpg.Connection,
    *,
    org_id: uuid.UUID,
    type: str,
    severity: Severity,
    message: str,
    detail: dict[str, Any],
    actor: str,
) -> Alert | None:
    """Insert an open alert in the caller's transaction; None for a SUSPICIOUS_TAX_GAP when the org already has one
    open, or a BAS_AMENDMENT_NEEDED when its cycle has one (the caller then raises nothing)."""
    conflict = f"ON CONFLICT {ONE_OPEN[type]} DO NOTHING " if type in ONE_OPEN else ""
    record = await conn.fetchrow(
        f"INSERT INTO core.alerts (id, org_id, type, severity, message, detail, created_by) "
        f"VALUES ($1, $2, $3, $4, $5, $6::text::jsonb, $7) "
        f"{conflict}RETURNING {ALERT_COLUMNS}",
        uuid.uuid4(),
        org_id,
        type,
        severity,
        message,
        orjson.dumps(detail).decode(),
        actor,
    )
    return None if record is None else _alert(record)


async def page_alerts(
    conn: asyncpg.Connection, org_id: uuid.UUID, filters: AlertFilters, after: AlertKey | None, limit: int
) -> list[Alert]:
    """At most `limit` of the org's alerts within `filters`, newest first, starting after `after`."""
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise ValueError(f"a page limit is a positive int, not {limit!r}")
    args: list[object] = [org_id]
    where = ["org_id = $1"]
    if after is not None:
        args += [after.created_at, after.id]
        # A row comparison over the index's (created_at DESC, id DESC) columns: one range condition.
        where.append(f"(created_at, id) < (${len(args) - 1}, ${len(args)})")
    if filters.resolved is not None:
        where.append("resolved_at IS NOT NULL" if filters.resolved else "resolved_at IS NULL")
    if filters.severity is not None:
        args.append(filters.severity)
        where.append(f"severity = ${len(args)}")
    records = await conn.fetch(
        f"SELECT {ALERT_COLUMNS} FROM core.alerts WHERE {' AND '.join(where)} "
        f"ORDER BY created_at DESC, id DESC LIMIT {limit}",
        *args,
    )
    return [_alert(record) for record in records]


# One count per severity (the names come from SEVERITIES, never from a caller).
_OPEN_COUNTS = ", ".join(
    f"count(*) FILTER (WHERE resolved_at IS NULL AND severity = '{severity}') AS open_{severity.lower()}"
    for severity in SEVERITIES
)


async def count_alerts(conn: asyncpg.Connection, org_id: uuid.UUID, *, resolved_since: datetime) -> AlertCounts:
    """How many of the org's alerts are open, per severity, and how many were resolved since `resolved_since`
    (one pass over the org's alerts, for the compliance report's summary and monitoring snapshots)."""
    record = await conn.fetchrow(
        f"SELECT {_OPEN_COUNTS}, count(*) FILTER (WHERE resolved_at >= $2) AS resolved_since "
        "FROM core.alerts WHERE org_id = $1",
        org_id,
        resolved_since,
    )
    assert record is not None
    return AlertCounts(
        open_by_severity={severity: int(record[f"open_{severity.lower()}"]) for severity in SEVERITIES},
        resolved_since=int(record["resolved_since"]),
    )


async def get_alert(conn: asyncpg.Connection, org_id: uuid.UUID, alert_id: uuid.UUID) -> Alert | None:
    """The org's alert `alert_id`; None when there is none, or it is another org's."""
    record = await conn.fetchrow(
        f"SELECT {ALERT_COLUMNS} FROM core.alerts WHERE id = $1 AND org_id = $2", alert_id, org_id
    )
    return None if record is None else _alert(record)


async def resolve_alert(
    conn: asyncpg.Connection, org_id: uuid.UUID, alert_id: uuid.UUID, *, actor: str, note: str
) -> tuple[Resolution, Alert | None]:
    """Resolve the org's open alert `alert_id` in the caller's transaction: (RESOLVED, the row) for the one
    resolution that wins, (ALREADY_RESOLVED, the row) once it is resolved, (NOT_FOUND, None) otherwise."""
    record = await conn.fetchrow(
        f"UPDATE core.alerts SET resolved_at = now(), resolved_by = $3, resolution_note = $4 "
        f"WHERE id = $1 AND org_id = $2 AND resolved_at IS NULL RETURNING {ALERT_COLUMNS}",
        alert_id,
        org_id,
        actor,
        note,
    )
    if record is not None:
        return Resolution.RESOLVED, _alert(record)
    existing = await get_alert(conn, org_id, alert_id)
    return (Resolution.NOT_FOUND, None) if existing is None else (Resolution.ALREADY_RESOLVED, existing)
