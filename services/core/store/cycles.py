"""BAS cycles' SQL, and the two sums their obligations are computed from (the quarters' running totals of bank
lines, the designated accounts' balances). Every function takes a connection; the caller owns the transaction.

`core.cycle_totals` (migration 0009) keeps per org and quarter how many lines are dated in it and their PAYGW and
GST sums: every writer of lines calls `add_to_totals` in the transaction that writes them, and `ledger` reads the
org's quarters (a few rows a year, never its lines) with the required amounts frozen into its LODGED cycles, which
`services.core.obligations.allocate` shares the balances over. `lock_org_money` is the org's money lock: every
money write's re-evaluation and every lodgement takes it first, so each sees the previous one's commit.

A cycle row's id derives from its org and period (`services.core.bas.cycle_id`), so reads name it without writing:
`get_cycle` answers None for a cycle no write has needed yet, and `ensure_cycle` (a write's first step) inserts it
with ON CONFLICT DO NOTHING. `lock_cycle` takes the row FOR UPDATE: money writes and the lodgement of one org queue
on it, so each computes its figures after the previous one committed (READ COMMITTED: the statement after the wait
sees that commit). A LODGED row never changes (the trigger of migration 0004); `set_status` leaves it alone.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal

import asyncpg

from services.core.bas import Cycle, cycle_id
from services.core.designated import account_ids
from services.core.obligations import LedgerCycle, Obligations, QuarterTotals, Status, TaxAmounts
from services.core.store import accounts

__all__ = [
    "MONEY_LOCK_CLASS",
    "CycleRow",
    "Lodged",
    "add_to_totals",
    "designated_balances",
    "ensure_cycle",
    "get_cycle",
    "ledger",
    "line_sums",
    "list_cycles",
    "lock_cycle",
    "lock_org_money",
    "lodge_cycle",
    "set_status",
    "set_statuses",
]

# The advisory lock class of an org's money lock ('BASM'; 0008's deletion lock is 'ORGD').
MONEY_LOCK_CLASS = 0x42_41_53_4D

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


async def lock_org_money(conn: asyncpg.Connection, org_id: uuid.UUID) -> None:
    """Hold the org's money lock until the transaction ends (a re-evaluation, a lodgement)."""
    await conn.execute("SELECT pg_advisory_xact_lock($1, hashtext($2::uuid::text))", MONEY_LOCK_CLASS, org_id)


async def add_to_totals(conn: asyncpg.Connection, org_id: uuid.UUID, deltas: Mapping[date, QuarterTotals]) -> None:
    """Add what a write's lines add to each quarter they are dated in (`obligations.totals_by_quarter`) to the
    org's running totals: one upsert row per quarter, in period order (so two writers lock them in one order)."""
    if not deltas:
        return
    starts = sorted(deltas)
    await conn.execute(
        "INSERT INTO core.cycle_totals (org_id, period_start, lines, paygw, gst) "
        "SELECT $1, s, n, p, g FROM unnest($2::date[], $3::bigint[], $4::numeric[], $5::numeric[]) AS d(s, n, p, g) "
        "ORDER BY s "
        "ON CONFLICT (org_id, period_start) DO UPDATE SET lines = cycle_totals.lines + EXCLUDED.lines, "
        "paygw = cycle_totals.paygw + EXCLUDED.paygw, gst = cycle_totals.gst + EXCLUDED.gst",
        org_id,
        starts,
        [deltas[s].lines for s in starts],
        [deltas[s].sums.paygw for s in starts],
        [deltas[s].sums.gst for s in starts],
    )


async def line_sums(conn: asyncpg.Connection, org_id: uuid.UUID, period_start: date) -> QuarterTotals:
    """The running totals of the org's lines dated in the quarter starting `period_start` (zeros for none): one
    row of `core.cycle_totals`. PII is never read."""
    record = await conn.fetchrow(
        "SELECT lines, paygw, gst FROM core.cycle_totals WHERE org_id = $1 AND period_start = $2",
        org_id,
        period_start,
    )
    if record is None:
        return QuarterTotals(0, TaxAmounts(Decimal("0.00"), Decimal("0.00")))
    return QuarterTotals(record["lines"], TaxAmounts(paygw=record["paygw"], gst=record["gst"]))


async def ledger(conn: asyncpg.Connection, org_id: uuid.UUID) -> list[LedgerCycle]:
    """Every quarter of the org that has lines or a LODGED cycle, oldest first: its running totals, and the
    required amounts frozen into it once lodged."""
    records = await conn.fetch(
        "SELECT period_start, coalesce(t.lines, 0) AS lines, coalesce(t.paygw, 0.00) AS paygw, "
        "coalesce(t.gst, 0.00) AS gst, c.paygw_required, c.gst_required "
        "FROM (SELECT period_start, lines, paygw, gst FROM core.cycle_totals WHERE org_id = $1) t "
        "FULL JOIN (SELECT period_start, paygw_required, gst_required FROM core.bas_cycles "
        "           WHERE org_id = $1 AND status = 'LODGED') c USING (period_start) "
        "ORDER BY period_start",
        org_id,
    )
    return [
        LedgerCycle(
            period_start=r["period_start"],
            totals=QuarterTotals(r["lines"], TaxAmounts(paygw=Decimal(r["paygw"]), gst=Decimal(r["gst"]))),
            lodged_required=None
            if r["paygw_required"] is None
            else TaxAmounts(paygw=r["paygw_required"], gst=r["gst_required"]),
        )
        for r in records
    ]


async def set_statuses(conn: asyncpg.Connection, org_id: uuid.UUID, statuses: Mapping[date, Status]) -> int:
    """Record READY or BLOCKED on the org's existing, unlodged cycle rows of the quarters named; how many rows
    changed (a row already saying so, a LODGED one and a quarter without a row are left alone)."""
    starts = sorted(statuses)
    result: str = await conn.execute(
        "UPDATE core.bas_cycles c SET status = u.status FROM unnest($2::date[], $3::text[]) AS u(s, status) "
        "WHERE c.org_id = $1 AND c.period_start = u.s AND c.status <> 'LODGED' AND c.status <> u.status",
        org_id,
        starts,
        [statuses[s] for s in starts],
    )
    return int(result.split()[-1])


async def designated_balances(conn: asyncpg.Connection, org_id: uuid.UUID) -> TaxAmounts:
    """The balances of the org's PAYGW and GST designated accounts (`store.accounts.balances`: the sums of their
    transfers, 0.00 for an account with none or not created yet)."""
    ids = account_ids(org_id)
    found = await accounts.balances(conn, org_id, [ids["PAYGW"], ids["GST"]])
    return TaxAmounts(paygw=found[ids["PAYGW"]], gst=found[ids["GST"]])
