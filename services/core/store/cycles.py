"""BAS cycles' SQL, and the two sums their obligations are computed from (the cycle's bank lines, the designated
accounts' balances). Every function takes a connection; the caller owns the transaction.

A cycle row's id derives from its org and period (`services.core.bas.cycle_id`), so reads name it without writing:
`get_cycle` answers None for a cycle no write has needed yet, and `ensure_cycle` (a write's first step) inserts it
with ON CONFLICT DO NOTHING. `lock_cycle` takes the row FOR UPDATE: money writes and the lodgement of one org queue
on it, so each computes its figures after the previous one committed (READ COMMITTED: the statement after the wait
sees that commit). A LODGED row never changes (the trigger of migration 0004); `set_status` leaves it alone.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal

import asyncpg

from services.core.bas import Cycle, cycle_id
from services.core.designated import account_ids
from services.core.obligations import Obligations, Status, TaxAmounts
from services.core.store import accounts

__all__ = [
    "CycleRow",
    "Lodged",
    "designated_balances",
    "ensure_cycle",
    "get_cycle",
    "line_sums",
    "list_cycles",
    "lock_cycle",
    "lodge_cycle",
    "set_status",
]

CYCLE_COLUMNS = (
    "id, org_id, period_start, period_end, due_date, status, paygw_required, gst_required, paygw_secured, "
    "gst_secured, lodged_at, lodged_by, created_at, lodgement_gateway, lodgement_reference, lodgement_payload"
)


@dataclass(frozen=True)
class CycleRow:
    id: uuid.UUID
    org_id: uuid.UUID
    period_start: date
    period_end: date
    due_date: date
    status: str  # OPEN, READY, BLOCKED, LODGED
    # Frozen when lodged; None before.
    paygw_required: Decimal | None
    gst_required: Decimal | None
    paygw_secured: Decimal | None
    gst_secured: Decimal | None
    lodged_at: datetime | None
    lodged_by: str | None
    created_at: datetime
    lodgement_gateway: str | None
    lodgement_reference: str | None
    lodgement_payload: str | None

    @property
    def cycle(self) -> Cycle:
        return Cycle(period_start=self.period_start, period_end=self.period_end, due_date=self.due_date)


@dataclass(frozen=True)
class Lodged:
    """What a lodgement freezes into the cycle row: the figures, who and when, and the adapter's receipt."""

    obligations: Obligations
    at: datetime
    by: str
    gateway: str
    reference: str
    payload: str


async def ensure_cycle(conn: asyncpg.Connection, org_id: uuid.UUID, cycle: Cycle) -> uuid.UUID:
    """Insert the org's row for `cycle` unless it exists (OPEN); its id."""
    row_id = cycle_id(org_id, cycle.period_start)
    await conn.execute(
        "INSERT INTO core.bas_cycles (id, org_id, period_start, period_end, due_date) VALUES ($1, $2, $3, $4, $5) "
        "ON CONFLICT DO NOTHING",
        row_id,
        org_id,
        cycle.period_start,
        cycle.period_end,
        cycle.due_date,
    )
    return row_id


async def get_cycle(conn: asyncpg.Connection, org_id: uuid.UUID, row_id: uuid.UUID) -> CycleRow | None:
    record = await conn.fetchrow(
        f"SELECT {CYCLE_COLUMNS} FROM core.bas_cycles WHERE id = $1 AND org_id = $2", row_id, org_id
    )
    return None if record is None else CycleRow(**dict(record))


async def lock_cycle(conn: asyncpg.Connection, org_id: uuid.UUID, row_id: uuid.UUID) -> CycleRow:
    """The org's cycle row `row_id` (which `ensure_cycle` wrote), locked until the transaction ends."""
    record = await conn.fetchrow(
        f"SELECT {CYCLE_COLUMNS} FROM core.bas_cycles WHERE id = $1 AND org_id = $2 FOR UPDATE", row_id, org_id
    )
    if record is None:
        raise LookupError(f"BAS cycle {row_id} does not exist; ensure_cycle first")
    return CycleRow(**dict(record))


async def list_cycles(conn: asyncpg.Connection, org_id: uuid.UUID, limit: int) -> list[CycleRow]:
    """The org's cycle rows, newest period first (at most `limit`)."""
    records = await conn.fetch(
        f"SELECT {CYCLE_COLUMNS} FROM core.bas_cycles WHERE org_id = $1 ORDER BY period_start DESC LIMIT $2",
        org_id,
        limit,
    )
    return [CycleRow(**dict(r)) for r in records]


async def set_status(conn: asyncpg.Connection, row_id: uuid.UUID, status: Status) -> bool:
    """Record what a money write found (READY or BLOCKED) unless the row is LODGED or already says so; whether the
    row changed."""
    result: str = await conn.execute(
        "UPDATE core.bas_cycles SET status = $2 WHERE id = $1 AND status <> 'LODGED' AND status <> $2",
        row_id,
        status,
    )
    return result == "UPDATE 1"


async def lodge_cycle(conn: asyncpg.Connection, row_id: uuid.UUID, lodged: Lodged) -> CycleRow:
    """Freeze the figures and the receipt into the row and mark it LODGED (after which the trigger refuses any
    change). The row must not be LODGED already (`LookupError` otherwise)."""
    figures = lodged.obligations
    record = await conn.fetchrow(
        f"UPDATE core.bas_cycles SET status = 'LODGED', paygw_required = $2, gst_required = $3, paygw_secured = $4, "
        f"gst_secured = $5, lodged_at = $6, lodged_by = $7, lodgement_gateway = $8, lodgement_reference = $9, "
        f"lodgement_payload = $10 WHERE id = $1 AND status <> 'LODGED' RETURNING {CYCLE_COLUMNS}",
        row_id,
        figures.paygw.required,
        figures.gst.required,
        figures.paygw.secured,
        figures.gst.secured,
        lodged.at,
        lodged.by,
        lodged.gateway,
        lodged.reference,
        lodged.payload,
    )
    if record is None:
        raise LookupError(f"BAS cycle {row_id} is missing or already lodged")
    return CycleRow(**dict(record))


async def line_sums(conn: asyncpg.Connection, org_id: uuid.UUID, start: date, end: date) -> TaxAmounts:
    """The sums of `paygw_amount` and `gst_amount` of the org's lines dated `start`..`end` (inclusive): a range
    of the page index (org_id, date), the components from the heap. PII is never read."""
    record = await conn.fetchrow(
        "SELECT coalesce(sum(paygw_amount), 0.00) AS paygw, coalesce(sum(gst_amount), 0.00) AS gst "
        "FROM core.bank_lines WHERE org_id = $1 AND date >= $2 AND date <= $3",
        org_id,
        start,
        end,
    )
    assert record is not None
    return TaxAmounts(paygw=Decimal(record["paygw"]), gst=Decimal(record["gst"]))


async def designated_balances(conn: asyncpg.Connection, org_id: uuid.UUID) -> TaxAmounts:
    """The balances of the org's PAYGW and GST designated accounts (`store.accounts.balances`: the sums of their
    transfers, 0.00 for an account with none or not created yet)."""
    ids = account_ids(org_id)
    found = await accounts.balances(conn, org_id, [ids["PAYGW"], ids["GST"]])
    return TaxAmounts(paygw=found[ids["PAYGW"]], gst=found[ids["GST"]])
