"""What every money write does before its audit record: re-evaluate the org's current BAS cycle.

    evaluation = await reevaluate(conn, org_id, actor, now=now, threshold=shortfall_threshold(request))

`reevaluate` runs in the writer's transaction (a bank-line POST, an import, a deposit), after its money rows and
before its own `audit.append`: it inserts the current cycle's row if no write has needed it yet, locks it (so the
org's money writes queue there and each one's figures include the previous one's commit), computes the obligations
from the cycle's lines and the designated balances, records READY or BLOCKED (a LODGED cycle is never touched),
and when the total shortfall (PAYGW's plus GST's) exceeds the threshold raises a HIGH SUSPICIOUS_TAX_GAP, unless
the org has one open, with its own `alert.raise` audit record by the writer. Reads never call it: no GET writes.

The current cycle is the quarter containing `now`'s date in Australia (`services.core.bas.business_date`); lines
dated in another quarter change no cycle's status here.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

import asyncpg
from starlette.requests import Request

from services.core import bas
from services.core.config import CoreSettings
from services.core.obligations import Obligations, evaluate
from services.core.store import alerts, cycles
from shared import audit
from shared.money import format_total

__all__ = ["ALERT_ACTION", "Evaluation", "current_cycle", "reevaluate", "shortfall_threshold"]

ALERT_ACTION = "alert.raise"


@dataclass(frozen=True)
class Evaluation:
    """What `reevaluate` found and did."""

    cycle_id: uuid.UUID
    cycle: bas.Cycle
    obligations: Obligations
    status: str  # what the row says now: READY, BLOCKED, or LODGED (left alone)
    status_changed: bool
    alert: alerts.Alert | None  # the SUSPICIOUS_TAX_GAP this write raised, if it raised one


def current_cycle(now: datetime) -> bas.Cycle:
    return bas.cycle_for(bas.business_date(now))


def shortfall_threshold(request: Request) -> Decimal:
    """The service's SHORTFALL_ALERT_THRESHOLD."""
    settings = request.app.state.runtime.settings
    if not isinstance(settings, CoreSettings):
        raise RuntimeError("core's settings are CoreSettings")
    return settings.shortfall_alert_threshold


async def compute(conn: asyncpg.Connection, org_id: uuid.UUID, cycle: bas.Cycle) -> Obligations:
    """The live obligations of the org's `cycle` (reads only)."""
    sums = await cycles.line_sums(conn, org_id, cycle.period_start, cycle.period_end)
    return evaluate(sums, await cycles.designated_balances(conn, org_id))


async def reevaluate(
    conn: asyncpg.Connection, org_id: uuid.UUID, actor: str, *, now: datetime, threshold: Decimal
) -> Evaluation:
    cycle = current_cycle(now)
    row_id = await cycles.ensure_cycle(conn, org_id, cycle)
    row = await cycles.lock_cycle(conn, org_id, row_id)
    obligations = await compute(conn, org_id, cycle)
    changed = False
    status = row.status
    if row.status != "LODGED":
        changed = await cycles.set_status(conn, row_id, obligations.status)
        status = obligations.status
    alert = None
    if obligations.total_shortfall > threshold:
        alert = await _raise_gap(conn, org_id, actor, row_id, cycle, obligations, threshold)
    return Evaluation(
        cycle_id=row_id, cycle=cycle, obligations=obligations, status=status, status_changed=changed, alert=alert
    )


async def _raise_gap(
    conn: asyncpg.Connection,
    org_id: uuid.UUID,
    actor: str,
    row_id: uuid.UUID,
    cycle: bas.Cycle,
    obligations: Obligations,
    threshold: Decimal,
) -> alerts.Alert | None:
    detail = {
        "cycle_id": str(row_id),
        "period_start": cycle.period_start.isoformat(),
        "total_shortfall": format_total(obligations.total_shortfall),
        "threshold": format_total(threshold),
        **{f"{t.tax.lower()}_shortfall": format_total(t.shortfall) for t in obligations.taxes},
    }
    alert = await alerts.raise_alert(
        conn,
        org_id=org_id,
        type=alerts.SUSPICIOUS_TAX_GAP,
        severity="HIGH",
        message="; ".join(obligations.blockers),
        detail=detail,
        actor=actor,
    )
    if alert is not None:
        await audit.append(
            conn,
            org_id=org_id,
            actor=actor,
            action=ALERT_ACTION,
            target=f"alert:{alert.id}",
            detail={"id": str(alert.id), "type": alert.type, "severity": alert.severity, **detail},
        )
    return alert
