"""Alerts' SQL. Alerts are raised by writes only (a bank-line write or import, a deposit, a refused withdrawal),
in the writer's transaction, and an org has at most one open SUSPICIOUS_TAX_GAP however many writers race: the
partial unique index `alerts_one_open_tax_gap` decides, and `raise_alert` answers None when one is already open.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import asyncpg
import orjson

__all__ = [
    "DESIGNATED_WITHDRAWAL_ATTEMPT",
    "SUSPICIOUS_TAX_GAP",
    "Alert",
    "Severity",
    "raise_alert",
]

Severity = Literal["LOW", "MEDIUM", "HIGH"]
SUSPICIOUS_TAX_GAP = "SUSPICIOUS_TAX_GAP"
DESIGNATED_WITHDRAWAL_ATTEMPT = "DESIGNATED_WITHDRAWAL_ATTEMPT"

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
    open (the caller then raises nothing, and says so in its audit record if it matters)."""
    record = await conn.fetchrow(
        f"INSERT INTO core.alerts (id, org_id, type, severity, message, detail, created_by) "
        f"VALUES ($1, $2, $3, $4, $5, $6::text::jsonb, $7) "
        f"ON CONFLICT (org_id) WHERE type = '{SUSPICIOUS_TAX_GAP}' AND resolved_at IS NULL DO NOTHING "
        f"RETURNING {ALERT_COLUMNS}",
        uuid.uuid4(),
        org_id,
        type,
        severity,
        message,
        orjson.dumps(detail).decode(),
        actor,
    )
    return None if record is None else _alert(record)
