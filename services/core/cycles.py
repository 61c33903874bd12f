"""`GET /org/obligations/current`, `GET /bas/preview` and `POST /bas/lodge`: the org's BAS cycles.

Secured amounts are the designated balances shared out over the org's cycles (`services.core.obligations.allocate`:
lodged cycles' frozen required amounts first, then unlodged cycles oldest first), from the quarters' running totals
(`core.cycle_totals`), never a scan of lines.

`GET /org/obligations/current` (any role) shows the quarter containing today in Australia, with what the allocation
leaves it. `GET /bas/preview` (finance, admin) shows the cycle to lodge next: the oldest unlodged quarter that has
lines and has ENDED (`obligations.awaiting_lodgement`), with `lodgeable` true when it is READY; when no such quarter
exists it shows the current quarter's live figures with `lodgeable` false and the reason (its period is open). It
also lists the lodged cycles whose lines no longer sum to what was lodged (`amendments`: lines were written into
them later; each also raised a BAS_AMENDMENT_NEEDED alert). Both GETs write nothing but their audit record
(`org.obligations.read`, `bas.preview`): a cycle row no write has needed yet is named by its derived id. A LODGED
cycle shows the figures frozen into its row.

`POST /bas/lodge` (finance, admin; step-up; idempotent) takes an optional body `{"period_start": "YYYY-MM-DD"}` (a
quarter's first day), defaulting to the cycle the preview shows. Under the org's money lock (the one every money
write takes) it refuses, in this order: a quarter that has not ended (409 `bas_period_open`; also when nothing is
waiting and no quarter was named), a LODGED one (409 `bas_cycle_lodged`), one with an older unlodged quarter that
has lines (409 `bas_earlier_cycle_unlodged`, naming it: BASs are lodged in order, and the older one's money is
allocated first), and one that is not READY (409 `bas_cycle_blocked` with the blockers). An ended quarter without
lines may be named (a nil BAS). The lodgement goes through the outbound adapter (`services.core.lodgement`), whose
receipt and payload are frozen into the row with the figures, then `bas.lodge` is audited.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, date, datetime, timedelta

import asyncpg
from pydantic import BaseModel, ConfigDict, field_validator
from starlette.requests import Request
from starlette.responses import Response

from services.core import bas
from services.core.deps import core_deps
from services.core.evaluation import compute, current_cycle, cycle_to_lodge_next
from services.core.lodgement import LODGE_TIMEOUT_S, LodgementRequest
from services.core.models import IsoDate
from services.core.obligations import (
    LedgerCycle,
    Obligations,
    TaxAmounts,
    TaxObligation,
    allocate,
    amended,
    awaiting_lodgement,
    evaluate,
    required_of,
)
from services.core.store import cycles
from services.core.store.cycles import CycleRow
from services.core.store.orgs import hold_org
from shared import audit
from shared.authz import guard
from shared.contracts.core import TaxView, parse_iso_date
from shared.errors import ApiError
from shared.idempotency import idempotent
from shared.money import format_total
from shared.negotiation import JSON_MEDIA_TYPE
from shared.openapi import documented
from shared.roles import ROLES, Role
from shared.tokens import Principal
from shared.validation import parse_body

__all__ = [
    "LODGED",
    "LODGERS",
    "PREVIEWERS",
    "CurrentCycle",
    "CycleView",
    "LodgeRequest",
    "current_obligations",
    "lodge",
    "preview",
    "read_current_cycle",
    "tax_view",
]

PREVIEWERS: tuple[Role, ...] = ("admin", "finance")
LODGERS: tuple[Role, ...] = ("admin", "finance")
LODGED = "LODGED"


def tax_view(tax: TaxObligation) -> TaxView:
    return TaxView(
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


class AmendmentView(BaseModel):
    """A lodged cycle whose lines now require other amounts than were lodged."""

    cycle_id: uuid.UUID
    period_start: IsoDate
    period_end: IsoDate
    paygw_lodged: str
    paygw_now: str
    gst_lodged: str
    gst_now: str


class BasPreview(BaseModel):
    cycle: CycleView
    paygw: TaxView
    gst: TaxView
    total_shortfall: str
    status: str
    blockers: list[str]
    # Whether `POST /bas/lodge` would lodge this cycle now, and if not, why (its period is open, or its blockers).
    lodgeable: bool = False
    reason: str | None = None
    amendments: list[AmendmentView] = []


class LodgeRequest(BaseModel):
    """`POST /bas/lodge`'s optional body: the first day of the quarter to lodge."""

    model_config = ConfigDict(extra="forbid")

    period_start: date | None = None

    @field_validator("period_start", mode="plain")
    @classmethod
    def _quarter_start(cls, value: object) -> date | None:
        if value is None:
            return None
        try:
            day = parse_iso_date(value)
        except TypeError as exc:
            raise ValueError(str(exc)) from None
        if day != bas.quarter_start(day):
            raise ValueError("a period_start is the first day of a quarter (Jan, Apr, Jul or Oct 1)")
        return day


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
        paygw=tax_view(current.obligations.paygw),
        gst=tax_view(current.obligations.gst),
        next_bas_due=bas.next_bas_due(bas.business_date(datetime.now(UTC))),
    )
    return Response(body.model_dump_json(), media_type=JSON_MEDIA_TYPE)


def _preview(
    current: CurrentCycle, *, lodgeable: bool, reason: str | None, amendments: list[AmendmentView]
) -> BasPreview:
    return BasPreview(
        cycle=current.view,
        paygw=tax_view(current.obligations.paygw),
        gst=tax_view(current.obligations.gst),
        total_shortfall=format_total(current.obligations.total_shortfall),
        status=current.status,
        blockers=current.blockers,
        lodgeable=lodgeable,
        reason=reason,
        amendments=amendments,
    )


def _amendment(org_id: uuid.UUID, cycle: LedgerCycle) -> AmendmentView:
    assert cycle.lodged_required is not None
    now = required_of(cycle.totals.sums)
    return AmendmentView(
        cycle_id=bas.cycle_id(org_id, cycle.period_start),
        period_start=cycle.period_start,
        period_end=bas.cycle_for(cycle.period_start).period_end,
        paygw_lodged=format_total(cycle.lodged_required.paygw),
        paygw_now=format_total(now.paygw),
        gst_lodged=format_total(cycle.lodged_required.gst),
        gst_now=format_total(now.gst),
    )


def _open_reason(cycle: bas.Cycle) -> str:
    return (
        f"The BAS for {_period(cycle)} can be lodged once its period has ended, from "
        f"{(cycle.period_end + timedelta(days=1)).isoformat()}"
    )


async def _read_preview(conn: asyncpg.Connection, org_id: uuid.UUID, now: datetime) -> BasPreview:
    """The cycle to lodge next (or the current one, not yet lodgeable) and the lodged cycles needing amendment."""
    today = bas.business_date(now)
    ledger = await cycles.ledger(conn, org_id)
    shared_out = allocate(await cycles.designated_balances(conn, org_id), ledger)
    cycle = cycle_to_lodge_next(ledger, now)
    row = await cycles.get_cycle(conn, org_id, bas.cycle_id(org_id, cycle.period_start))
    lodged = row is not None and row.status == LODGED
    obligations = _frozen(row) if row is not None and lodged else shared_out.of(cycle.period_start)
    current = CurrentCycle(org_id, cycle, row, obligations)
    if cycle.period_end >= today:  # nothing ended is waiting: the current quarter, still open
        lodgeable, reason = False, _open_reason(cycle)
    elif obligations.status != "READY":
        lodgeable, reason = False, f"The BAS for {_period(cycle)} cannot be lodged: {'; '.join(obligations.blockers)}"
    else:
        lodgeable, reason = True, None
    amendments = [_amendment(org_id, c) for c in amended(ledger)]
    return _preview(current, lodgeable=lodgeable, reason=reason, amendments=amendments)


@documented(
    "Preview the next BAS to lodge (the oldest ended, unlodged quarter with lines, else the current one, not yet "
    "lodgeable): figures, status, blockers, and lodged cycles needing amendment",
    response=BasPreview,
    tags=["bas"],
)
@guard(roles=PREVIEWERS)
async def preview(request: Request, principal: Principal) -> Response:
    org_id = uuid.UUID(principal.org_id)
    async with request.app.state.runtime.db.pool.acquire() as conn, conn.transaction():
        shown = await _read_preview(conn, org_id, datetime.now(UTC))
        await audit.append(
            conn,
            org_id=org_id,
            actor=audit.actor_of(principal),
            action="bas.preview",
            target=f"bas_cycle:{shown.cycle.id}",
            detail={
                "cycle_id": str(shown.cycle.id),
                "period_start": shown.cycle.period_start.isoformat(),
                "status": shown.status,
                "lodgeable": shown.lodgeable,
            },
        )
    return Response(shown.model_dump_json(), media_type=JSON_MEDIA_TYPE)


async def _lodge_choice(request: Request) -> LodgeRequest:
    """The optional body: none (no Content-Length or 0, and no Transfer-Encoding) is the default cycle."""
    headers = request.headers
    if headers.get("content-length", "0") == "0" and "transfer-encoding" not in headers:
        return LodgeRequest()
    return await parse_body(request, LodgeRequest)


def _target(choice: LodgeRequest, waiting: list[date], now: datetime) -> bas.Cycle:
    """The cycle a lodgement names or defaults to; 409 bas_period_open when it has not ended."""
    today = bas.business_date(now)
    if choice.period_start is not None:
        cycle = bas.cycle_for(choice.period_start)
    elif waiting:
        cycle = bas.cycle_for(waiting[0])
    else:
        raise ApiError("bas_period_open", f"No ended BAS cycle is waiting. {_open_reason(current_cycle(now))}")
    if cycle.period_end >= today:
        raise ApiError("bas_period_open", _open_reason(cycle))
    return cycle


@documented(
    "Lodge a BAS cycle (body {period_start}, default the preview's) once its period has ended, older ones are "
    "lodged and it is READY (step-up; idempotent)",
    request=LodgeRequest,
    response=BasPreview,
    tags=["bas"],
)
@guard(roles=LODGERS, step_up=True)
async def lodge(request: Request, principal: Principal) -> Response:
    choice = await _lodge_choice(request)
    org_id = uuid.UUID(principal.org_id)
    actor = audit.actor_of(principal)
    gateway = core_deps(request).lodgement
    now = datetime.now(UTC)
    async with request.app.state.runtime.db.pool.acquire() as conn, conn.transaction():
        await hold_org(conn, org_id)

        async def work() -> Response:
            await cycles.lock_org_money(conn, org_id)
            ledger = await cycles.ledger(conn, org_id)
            waiting = awaiting_lodgement(ledger, bas.business_date(now))
            cycle = _target(choice, waiting, now)
            row_id = await cycles.ensure_cycle(conn, org_id, cycle)
            row = await cycles.lock_cycle(conn, org_id, row_id)
            if row.status == LODGED:
                raise ApiError("bas_cycle_lodged", f"The BAS for {_period(cycle)} was lodged at {row.lodged_at}")
            if older := [start for start in waiting if start < cycle.period_start]:
                first = bas.cycle_for(older[0])
                raise ApiError(
                    "bas_earlier_cycle_unlodged",
                    f"Lodge the BAS for {_period(first)} before {_period(cycle)}",
                    extra={"period_start": first.period_start.isoformat()},
                )
            obligations = allocate(await cycles.designated_balances(conn, org_id), ledger).of(cycle.period_start)
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
            body = _preview(
                CurrentCycle(org_id, cycle, lodged, obligations), lodgeable=False, reason=None, amendments=[]
            )
            return Response(body.model_dump_json(), media_type=JSON_MEDIA_TYPE)

        fingerprint: object = b"" if choice.period_start is None else choice
        return await idempotent(request, conn, work, org_id=org_id, actor=actor, body=fingerprint)


def _period(cycle: bas.Cycle) -> str:
    return f"{cycle.period_start.isoformat()} to {cycle.period_end.isoformat()}"
