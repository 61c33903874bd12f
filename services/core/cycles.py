"""`GET /org/obligations/current`, `GET /bas/preview` and `POST /bas/lodge`: the org's current BAS cycle.

The current cycle is the quarter containing today in Australia (`services.core.bas`). The GETs compute its figures
live (`services.core.evaluation.compute`: the cycle's bank lines, the designated balances) and write nothing but
their audit record (`org.obligations.read`, `bas.preview`): a cycle row no write has needed yet is named by its
derived id and shown as it would be. A LODGED cycle shows the figures frozen into its row.

`POST /bas/lodge` (finance, admin; step-up; idempotent) inserts the cycle row if needed, locks it, computes the
figures again in that transaction and lodges only a READY cycle (409 `bas_cycle_blocked` with the blockers, 409
`bas_cycle_lodged` once lodged). The lodgement goes through the outbound adapter (`services.core.lodgement`), whose
receipt and payload are frozen into the row with the figures, then `bas.lodge` is audited. A cycle may be lodged
before its period ends once it is READY (the product records what was set aside; see docs/decisions.md).
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, date, datetime

import asyncpg
from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response

from services.core import bas
from services.core.deps import core_deps
from services.core.evaluation import compute, current_cycle
from services.core.lodgement import LODGE_TIMEOUT_S, LodgementRequest
from services.core.obligations import Obligations, TaxAmounts, TaxObligation, evaluate
from services.core.store import cycles
from services.core.store.cycles import CycleRow
from shared import audit
from shared.authz import guard
from shared.errors import ApiError
from shared.idempotency import idempotent
from shared.money import format_total
from shared.openapi import documented
from shared.roles import ROLES, Role
from shared.tokens import Principal

__all__ = [
    "LODGED",
    "LODGERS",
    "PREVIEWERS",
    "CurrentCycle",
    "CycleView",
    "TaxView",
    "current_obligations",
    "lodge",
    "preview",
    "read_current_cycle",
]

PREVIEWERS: tuple[Role, ...] = ("admin", "finance")
LODGERS: tuple[Role, ...] = ("admin", "finance")
JSON = "application/json"
LODGED = "LODGED"


class TaxView(BaseModel):
    required: str
    secured: str
    shortfall: str
    status: str

    @classmethod
    def of(cls, tax: TaxObligation) -> TaxView:
        return cls(
            required=format_total(tax.required),
            secured=format_total(tax.secured),
            shortfall=format_total(tax.shortfall),
            status=tax.status,
        )


class CycleView(BaseModel):
    id: uuid.UUID
    period_start: date
    period_end: date
    due_date: date
    status: str  # READY or BLOCKED (live), or LODGED
    lodged_at: datetime | None = None
    lodged_by: str | None = None
    lodgement_reference: str | None = None


class CurrentObligations(BaseModel):
    cycle: CycleView
    paygw: TaxView
    gst: TaxView
    next_bas_due: date


class BasPreview(BaseModel):
    cycle: CycleView
    paygw: TaxView
    gst: TaxView
    total_shortfall: str
    status: str
    blockers: list[str]


class CurrentCycle:
    """The current cycle as a read sees it: the row if one exists, else the derived one; live or frozen figures."""

    def __init__(self, org_id: uuid.UUID, cycle: bas.Cycle, row: CycleRow | None, obligations: Obligations) -> None:
        self.cycle = cycle
        self.obligations = obligations
        lodged = row is not None and row.status == LODGED
        self.view = CycleView(
            id=bas.cycle_id(org_id, cycle.period_start),
            period_start=cycle.period_start,
            period_end=cycle.period_end,
            due_date=cycle.due_date,
            status=LODGED if lodged else obligations.status,
            lodged_at=row.lodged_at if row else None,
            lodged_by=row.lodged_by if row else None,
            lodgement_reference=row.lodgement_reference if row else None,
        )

    @property
    def status(self) -> str:
        return self.view.status

    @property
    def blockers(self) -> list[str]:
        return [] if self.status == LODGED else list(self.obligations.blockers)


def _frozen(row: CycleRow) -> Obligations:
    """The figures a lodged row keeps."""
    assert row.paygw_required is not None and row.gst_required is not None
    assert row.paygw_secured is not None and row.gst_secured is not None
    return evaluate(
        TaxAmounts(paygw=row.paygw_required, gst=row.gst_required),
        TaxAmounts(paygw=row.paygw_secured, gst=row.gst_secured),
    )


async def read_current_cycle(conn: asyncpg.Connection, org_id: uuid.UUID, now: datetime) -> CurrentCycle:
    """The org's cycle current at `now` and its figures (frozen once lodged, else live), reading only."""
    cycle = current_cycle(now)
    row = await cycles.get_cycle(conn, org_id, bas.cycle_id(org_id, cycle.period_start))
    obligations = _frozen(row) if row is not None and row.status == LODGED else await compute(conn, org_id, cycle)
    return CurrentCycle(org_id, cycle, row, obligations)


async def _read_current(request: Request, principal: Principal, action: str) -> CurrentCycle:
    """The current cycle's figures, and the read's audit record (the only row a GET writes)."""
    org_id = uuid.UUID(principal.org_id)
    async with request.app.state.runtime.db.pool.acquire() as conn, conn.transaction():
        current = await read_current_cycle(conn, org_id, datetime.now(UTC))
        row_id = current.view.id
        cycle = current.cycle
        await audit.append(
            conn,
            org_id=org_id,
            actor=audit.actor_of(principal),
            action=action,
            target=f"bas_cycle:{row_id}",
            detail={
                "cycle_id": str(row_id),
                "period_start": cycle.period_start.isoformat(),
                "status": current.status,
            },
        )
    return current


@documented("The current BAS cycle's PAYGW and GST obligations", response=CurrentObligations, tags=["bas"])
@guard(roles=ROLES)
async def current_obligations(request: Request, principal: Principal) -> Response:
    current = await _read_current(request, principal, "org.obligations.read")
    body = CurrentObligations(
        cycle=current.view,
        paygw=TaxView.of(current.obligations.paygw),
        gst=TaxView.of(current.obligations.gst),
        next_bas_due=bas.next_bas_due(bas.business_date(datetime.now(UTC))),
    )
    return Response(body.model_dump_json(), media_type=JSON)


def _preview(current: CurrentCycle) -> BasPreview:
    return BasPreview(
        cycle=current.view,
        paygw=TaxView.of(current.obligations.paygw),
        gst=TaxView.of(current.obligations.gst),
        total_shortfall=format_total(current.obligations.total_shortfall),
        status=current.status,
        blockers=current.blockers,
    )


@documented("Preview the current BAS: figures, status and blockers", response=BasPreview, tags=["bas"])
@guard(roles=PREVIEWERS)
async def preview(request: Request, principal: Principal) -> Response:
    current = await _read_current(request, principal, "bas.preview")
    return Response(_preview(current).model_dump_json(), media_type=JSON)


@documented("Lodge the current BAS cycle when it is READY (step-up; idempotent)", response=BasPreview, tags=["bas"])
@guard(roles=LODGERS, step_up=True)
async def lodge(request: Request, principal: Principal) -> Response:
    org_id = uuid.UUID(principal.org_id)
    actor = audit.actor_of(principal)
    gateway = core_deps(request).lodgement
    now = datetime.now(UTC)
    cycle = current_cycle(now)
    async with request.app.state.runtime.db.pool.acquire() as conn, conn.transaction():

        async def work() -> Response:
            row_id = await cycles.ensure_cycle(conn, org_id, cycle)
            row = await cycles.lock_cycle(conn, org_id, row_id)
            if row.status == LODGED:
                raise ApiError("bas_cycle_lodged", f"The BAS for {_period(cycle)} was lodged at {row.lodged_at}")
            obligations = await compute(conn, org_id, cycle)
            if obligations.status != "READY":
                raise ApiError(
                    "bas_cycle_blocked",
                    f"The BAS for {_period(cycle)} cannot be lodged: {'; '.join(obligations.blockers)}",
                    extra={"blockers": list(obligations.blockers)},
                )
            sent = LodgementRequest(
                org_id=org_id,
                cycle_id=row_id,
                period_start=cycle.period_start,
                period_end=cycle.period_end,
                obligations=obligations,
            )
            receipt = await asyncio.wait_for(gateway.lodge(sent), LODGE_TIMEOUT_S)
            lodged = await cycles.lodge_cycle(
                conn,
                row_id,
                cycles.Lodged(
                    obligations=obligations,
                    at=now,
                    by=actor,
                    gateway=receipt.gateway,
                    reference=receipt.reference,
                    payload=receipt.payload.decode(),
                ),
            )
            await audit.append(
                conn,
                org_id=org_id,
                actor=actor,
                action="bas.lodge",
                target=f"bas_cycle:{row_id}",
                detail={
                    "cycle_id": str(row_id),
                    "period_start": cycle.period_start.isoformat(),
                    "gateway": receipt.gateway,
                    "reference": receipt.reference,
                    **{
                        f"{t.tax.lower()}_{part}": format_total(getattr(t, part))
                        for t in obligations.taxes
                        for part in ("required", "secured")
                    },
                },
            )
            body = _preview(CurrentCycle(org_id, cycle, lodged, obligations))
            return Response(body.model_dump_json(), media_type=JSON)

        return await idempotent(request, conn, work, org_id=org_id, actor=actor, body=b"")


def _period(cycle: bas.Cycle) -> str:
    return f"{cycle.period_start.isoformat()} to {cycle.period_end.isoformat()}"
