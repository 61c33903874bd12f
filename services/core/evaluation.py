"""What every money write does before its audit record: re-evaluate the org's BAS cycles.

    evaluation = await reevaluate(conn, org_id, actor, now=now, threshold=shortfall_threshold(request),
                                  written=totals_by_quarter(lines))

`reevaluate` runs in the writer's transaction (a bank-line POST, an import, a deposit), after its money rows and
before its own `audit.append`:
1. it takes the org's money lock (`store.cycles.lock_org_money`; lodgements take it too), so the org's money writes
   and lodgements queue there and each one's figures include the previous one's commit;
2. it adds what the write's lines add to their quarters' running totals (`written`; a deposit writes none);
3. it shares the designated balances out over the org's cycles (`obligations.allocate`: lodged cycles' frozen
   required amounts first, then unlodged cycles oldest first) and records READY or BLOCKED on the current cycle's
   row (inserted if no write has needed it yet) and on every other unlodged row (a LODGED row is never touched);
4. for each LODGED quarter the write's lines are dated in, it raises one MEDIUM BAS_AMENDMENT_NEEDED alert (one
   open per cycle): what was lodged no longer matches the lines, and only an amended BAS can say so;
5. when the total shortfall of the UNLODGED cycles (PAYGW's plus GST's, every quarter with lines not yet lodged)
   exceeds the threshold, it raises a HIGH SUSPICIOUS_TAX_GAP unless the org has one open. A lodged cycle never
   counts towards it: its figures are frozen, and money set aside for it is spoken for first.
Each alert raised gets its own `alert.raise` audit record by the writer. Reads never call it: no GET writes.

The current cycle is the quarter containing `now`'s date in Australia (`services.core.bas.business_date`). The cycle
to lodge next (`cycle_to_lodge_next`: what `GET /bas/preview` shows and `POST /bas/payment-plans` defaults to) is the
oldest ended, unlodged quarter with lines (`obligations.awaiting_lodgement`), else the current cycle.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal

import asyncpg
from starlette.requests import Request

from services.core import bas
from services.core.config import CoreSettings
from services.core.obligations import (
    Allocation,
    LedgerCycle,
    Obligations,
    QuarterTotals,
    allocate,
    awaiting_lodgement,
)
from services.core.store import alerts, cycles
from shared import audit
from shared.money import format_total

__all__ = [
    "ALERT_ACTION",
    "Evaluation",
    "allocation",
    "compute",
    "current_cycle",
    "cycle_to_lodge_next",
    "reevaluate",
    "shortfall_threshold",
]

ALERT_ACTION = "alert.raise"


@dataclass(frozen=True)
class Evaluation:
    """What `reevaluate` found and did."""

    cycle_id: uuid.UUID
    cycle: bas.Cycle
    obligations: Obligations
    status: str  # what the row says now: READY, BLOCKED, or LODGED (left alone)
    status_changed: bool  # whether the current cycle's row changed
    alert: alerts.Alert | None  # the SUSPICIOUS_TAX_GAP this write raised, if it raised one
    allocation: Allocation
    amendments: tuple[alerts.Alert, ...] = ()  # the BAS_AMENDMENT_NEEDED alerts this write raised


def current_cycle(now: datetime) -> bas.Cycle:
    return bas.cycle_for(bas.business_date(now))


def cycle_to_lodge_next(ledger: Iterable[LedgerCycle], now: datetime) -> bas.Cycle:
    """The oldest unlodged quarter of `ledger` that has lines and has ended before `now`'s date in Australia, else
    the current cycle (one that has ended is lodgeable once READY; the current one is not yet)."""
    waiting = awaiting_lodgement(ledger, bas.business_date(now))
    return bas.cycle_for(waiting[0]) if waiting else current_cycle(now)


def shortfall_threshold(request: Request) -> Decimal:
    """The service's SHORTFALL_ALERT_THRESHOLD."""
    settings = request.app.state.runtime.settings
    if not isinstance(settings, CoreSettings):
        raise RuntimeError("core's settings are CoreSettings")
    return settings.shortfall_alert_threshold


async def allocation(conn: asyncpg.Connection, org_id: uuid.UUID) -> Allocation:
    """The org's cycles' obligations with its balances shared out oldest first (reads only: a few rows a year of
    running totals and lodged cycles, the designated balances)."""
    return allocate(await cycles.designated_balances(conn, org_id), await cycles.ledger(conn, org_id))


async def compute(conn: asyncpg.Connection, org_id: uuid.UUID, cycle: bas.Cycle) -> Obligations:
    """The live obligations of the org's `cycle`, with what the allocation leaves it (reads only)."""
    return (await allocation(conn, org_id)).of(cycle.period_start)


async def reevaluate(
    conn: asyncpg.Connection,
    org_id: uuid.UUID,
    actor: str,
    *,
    now: datetime,
    threshold: Decimal,
    written: Mapping[date, QuarterTotals] | None = None,
) -> Evaluation:
    await cycles.lock_org_money(conn, org_id)
    if written:
        await cycles.add_to_totals(conn, org_id, written)
    cycle = current_cycle(now)
    row_id = await cycles.ensure_cycle(conn, org_id, cycle)
    row = await cycles.lock_cycle(conn, org_id, row_id)
    shared_out = await allocation(conn, org_id)
    obligations = shared_out.of(cycle.period_start)
    statuses = {start: o.status for start, o in shared_out.unlodged.items()}
    statuses[cycle.period_start] = obligations.status
    await cycles.set_statuses(conn, org_id, statuses)
    status = row.status if row.status == "LODGED" else obligations.status
    changed = row.status != status
    amendments = []
    for start in sorted(written or ()):
        if start in shared_out.lodged:
            raised = await _raise_amendment(conn, org_id, actor, bas.cycle_for(start))
            if raised is not None:
                amendments.append(raised)
    alert = None
    if shared_out.unlodged_shortfall > threshold:
        alert = await _raise_gap(conn, org_id, actor, row_id, cycle, shared_out, threshold)
    return Evaluation(
        cycle_id=row_id,
        cycle=cycle,
        obligations=obligations,
        status=status,
        status_changed=changed,
        alert=alert,
        allocation=shared_out,
        amendments=tuple(amendments),
    )


async def _audit_alert(conn: asyncpg.Connection, org_id: uuid.UUID, actor: str, alert: alerts.Alert) -> None:
    await audit.append(
        conn,
        org_id=org_id,
        actor=actor,
        action=ALERT_ACTION,
        target=f"alert:{alert.id}",
        detail={"id": str(alert.id), "type": alert.type, "severity": alert.severity, **alert.detail},
    )


async def _raise_amendment(
    conn: asyncpg.Connection, org_id: uuid.UUID, actor: str, cycle: bas.Cycle
) -> alerts.Alert | None:
    """One open BAS_AMENDMENT_NEEDED for a lodged cycle a line was written into (None when one is open)."""
    row_id = bas.cycle_id(org_id, cycle.period_start)
    alert = await alerts.raise_alert(
        conn,
        org_id=org_id,
        type=alerts.BAS_AMENDMENT_NEEDED,
        severity="MEDIUM",
        message=(
            f"Bank lines were recorded for {cycle.period_start.isoformat()} to {cycle.period_end.isoformat()} after "
            "its BAS was lodged; lodge an amended BAS with the ATO"
        ),
        detail={
            "cycle_id": str(row_id),
            "period_start": cycle.period_start.isoformat(),
            "period_end": cycle.period_end.isoformat(),
        },
        actor=actor,
    )
    if alert is not None:
        await _audit_alert(conn, org_id, actor, alert)
    return alert


async def _raise_gap(
    conn: asyncpg.Connection,
    org_id: uuid.UUID,
    actor: str,
    row_id: uuid.UUID,
    cycle: bas.Cycle,
    shared_out: Allocation,
    threshold: Decimal,
) -> alerts.Alert | None:
    short = {start: o for start, o in shared_out.unlodged.items() if o.total_shortfall > 0}
    detail = {
        "cycle_id": str(row_id),
        "period_start": cycle.period_start.isoformat(),
        "total_shortfall": format_total(shared_out.unlodged_shortfall),
        "threshold": format_total(threshold),
        **{
            f"{tax.lower()}_shortfall": format_total(
                sum((getattr(o, tax.lower()).shortfall for o in short.values()), Decimal("0.00"))
            )
            for tax in ("PAYGW", "GST")
        },
        "periods_short": [start.isoformat() for start in sorted(short)],
    }
    message = "; ".join(
        f"{start.isoformat()} to {bas.cycle_for(start).period_end.isoformat()}: {', '.join(o.blockers)}"
        for start, o in sorted(short.items())
    )
    alert = await alerts.raise_alert(
        conn,
        org_id=org_id,
        type=alerts.SUSPICIOUS_TAX_GAP,
        severity="HIGH",
        message=message,
        detail=detail,
        actor=actor,
    )
    if alert is not None:
        await _audit_alert(conn, org_id, actor, alert)
    return alert
