"""Payment plans' SQL. Every function takes a connection; the caller owns the transaction.

`insert_plan` lets the partial unique index `payment_plans_one_open` decide whether the cycle already has an open
plan (ON CONFLICT DO NOTHING: None), so two racing requests cannot both open one. `decide_plan` is a conditional
UPDATE of a SUBMITTED plan: of two racing decisions one wins and the other finds the plan decided. Another org's
plan is indistinguishable from one that does not exist.
"""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal

import asyncpg

from services.core.plan_rules import PlanStatus

__all__ = ["Decided", "NewPlan", "Plan", "decide_plan", "get_plan", "insert_plan", "list_plans"]

PLAN_COLUMNS = (
    "id, org_id, cycle_id, reason, weekly_amount, start_date, notes, status, requested_at, requested_by, "
    "decided_at, decided_by, decision_note"
)


@dataclass(frozen=True)
class NewPlan:
    id: uuid.UUID
    org_id: uuid.UUID
    cycle_id: uuid.UUID
    reason: str
    weekly_amount: Decimal
    start_date: date
    notes: str | None
    requested_by: str


@dataclass(frozen=True)
class Plan:
    id: uuid.UUID
    org_id: uuid.UUID
    cycle_id: uuid.UUID
    reason: str
    weekly_amount: Decimal
    start_date: date
    notes: str | None
    status: str  # PlanStatus; the table's CHECK holds it
    requested_at: datetime
    requested_by: str
    decided_at: datetime | None
    decided_by: str | None
    decision_note: str | None


class Decided(enum.Enum):
    DECIDED = "decided"
    ALREADY_DECIDED = "already_decided"
    NOT_FOUND = "not_found"


async def insert_plan(conn: asyncpg.Connection, plan: NewPlan) -> Plan | None:
    """The new SUBMITTED plan; None when its cycle already has an open (SUBMITTED or APPROVED) plan."""
    record = await conn.fetchrow(
        f"INSERT INTO core.payment_plans (id, org_id, cycle_id, reason, weekly_amount, start_date, notes, "
        f"requested_by) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) "
        f"ON CONFLICT (cycle_id) WHERE status IN ('SUBMITTED', 'APPROVED') DO NOTHING RETURNING {PLAN_COLUMNS}",
        plan.id,
        plan.org_id,
        plan.cycle_id,
        plan.reason,
        plan.weekly_amount,
        plan.start_date,
        plan.notes,
        plan.requested_by,
    )
    return None if record is None else Plan(**dict(record))


async def list_plans(conn: asyncpg.Connection, org_id: uuid.UUID, cycle_id: uuid.UUID | None, limit: int) -> list[Plan]:
    """At most `limit` of the org's plans (of one cycle when `cycle_id`), newest first."""
    args: list[object] = [org_id]
    where = "org_id = $1"
    if cycle_id is not None:
        args.append(cycle_id)
        where += f" AND cycle_id = ${len(args)}"
    args.append(limit)
    records = await conn.fetch(
        f"SELECT {PLAN_COLUMNS} FROM core.payment_plans WHERE {where} "
        f"ORDER BY requested_at DESC, id DESC LIMIT ${len(args)}",
        *args,
    )
    return [Plan(**dict(record)) for record in records]


async def get_plan(conn: asyncpg.Connection, org_id: uuid.UUID, plan_id: uuid.UUID) -> Plan | None:
    record = await conn.fetchrow(
        f"SELECT {PLAN_COLUMNS} FROM core.payment_plans WHERE id = $1 AND org_id = $2", plan_id, org_id
    )
    return None if record is None else Plan(**dict(record))


async def decide_plan(
    conn: asyncpg.Connection,
    org_id: uuid.UUID,
    plan_id: uuid.UUID,
    *,
    status: PlanStatus,
    actor: str,
    note: str | None,
) -> tuple[Decided, Plan | None]:
    """Move the org's SUBMITTED plan to `status` (APPROVED or REJECTED): (DECIDED, the row) for the decision that
    wins, (ALREADY_DECIDED, the row) once it is decided, (NOT_FOUND, None) otherwise."""
    record = await conn.fetchrow(
        f"UPDATE core.payment_plans SET status = $3, decided_at = now(), decided_by = $4, decision_note = $5 "
        f"WHERE id = $1 AND org_id = $2 AND status = 'SUBMITTED' RETURNING {PLAN_COLUMNS}",
        plan_id,
        org_id,
        status,
        actor,
        note,
    )
    if record is not None:
        return Decided.DECIDED, Plan(**dict(record))
    existing = await get_plan(conn, org_id, plan_id)
    return (Decided.NOT_FOUND, None) if existing is None else (Decided.ALREADY_DECIDED, existing)
