"""Payment plans: `GET /bas/payment-plans` and `POST /bas/payment-plans` (finance, admin; the POST idempotent), and
`POST /bas/payment-plans/{id}/approve` and `/reject` (admin with a recent step-up). Rules: `plan_rules.py`.

A plan is asked for a BLOCKED cycle: by default the cycle `GET /bas/preview` shows, the cycle to lodge next
(`services.core.evaluation.cycle_to_lodge_next`: the oldest ended, unlodged quarter with lines, else the current
quarter), or any unlodged cycle of the org the body names by `cycle_id` (one with a row, a quarter with lines, or
the current quarter; 404 otherwise; a LODGED one is 409). Whether it is blocked is the allocated shortfall the preview
and the obligations show (`services.core.obligations.allocate`: the designated balances shared out oldest first), so
a quarter whose lines an older deposit covers is not BLOCKED. It is judged under the org's money lock
(`store.cycles.lock_org_money`, which every money write and lodgement takes first) and the cycle row's lock: a
deposit or lodgement that changes the figures either committed before (and the request is 409 `cycle_not_blocked`)
or waits until the plan is recorded. The cycle's row is inserted by this POST if no write has needed it yet (ON
CONFLICT DO NOTHING); the GET writes nothing but its audit record (`payment_plans.read`, count and filter).

Reason, notes and decision notes are free text that may name people, so the audit records (`payment_plan.create`,
`payment_plan.approve`, `payment_plan.reject`) carry ids, amounts, dates, statuses and the texts' lengths, never
the texts: the audit chain outlives the org's deletion.

The listing is one bounded page (`limit`, at most 200, newest first): an org has at most one open plan per
quarter, so 200 plans are decades of history, and a cursor would cost more than it serves.
"""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Annotated, Any

import asyncpg
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    StringConstraints,
    WithJsonSchema,
)
from pydantic_core import PydanticCustomError
from starlette.requests import Request
from starlette.responses import Response

from services.core import bas, plan_rules
from services.core.evaluation import current_cycle, cycle_to_lodge_next
from services.core.models import IsoDate, non_blank
from services.core.obligations import LedgerCycle, allocate
from services.core.store import cycles
from services.core.store import plans as store
from services.core.store.orgs import hold_org
from shared import audit
from shared.authz import guard
from shared.contracts.core import parse_iso_date
from shared.errors import ApiError
from shared.idempotency import idempotent
from shared.money import Money, format_money
from shared.negotiation import JSON_MEDIA_TYPE
from shared.openapi import documented
from shared.pagination import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, QueryInt
from shared.roles import Role
from shared.tokens import Principal
from shared.validation import parse_body, parse_query, path_uuid
from shared.views import view_of

__all__ = ["DECIDERS", "REQUESTERS", "approve_plan", "create_plan", "list_plans", "reject_plan"]

REQUESTERS: tuple[Role, ...] = ("admin", "finance")
DECIDERS: tuple[Role, ...] = ("admin",)
ZERO = Decimal("0.00")


def _validate_start_date(value: Any) -> date:
    try:
        day = parse_iso_date(value)
    except (TypeError, ValueError) as exc:
        raise PydanticCustomError("date", str(exc)) from None
    error = plan_rules.start_date_error(day, bas.business_date(datetime.now(UTC)))
    if error is not None:
        raise PydanticCustomError("start_date", error)
    return day


StartDate = Annotated[
    date,
    PlainValidator(_validate_start_date),
    PlainSerializer(date.isoformat, return_type=str),
    WithJsonSchema({"type": "string", "format": "date", "examples": ["2025-08-04"]}),
]
Reason = Annotated[str, non_blank(plan_rules.REASON_MAX_CHARS)]
Notes = Annotated[str, StringConstraints(strict=True, max_length=plan_rules.NOTES_MAX_CHARS)]


def _positive(value: Decimal) -> Decimal:
    if value <= ZERO:
        raise PydanticCustomError("positive", "the weekly amount must be more than 0.00")
    return value


class NewPlan(BaseModel):
    """`POST /bas/payment-plans`: for the preview's cycle unless `cycle_id` names another of the org's cycles."""

    model_config = ConfigDict(extra="forbid")

    cycle_id: uuid.UUID | None = None
    reason: Reason
    weekly_amount: Annotated[Money, AfterValidator(_positive)]
    start_date: StartDate
    notes: Notes | None = None


class Decision(BaseModel):
    """`POST /bas/payment-plans/{id}/approve` or `/reject`: a JSON object, `{}` when there is no note."""

    model_config = ConfigDict(extra="forbid")

    note: Notes | None = None


class PlanQuery(BaseModel):
    """`GET /bas/payment-plans?cycle_id=&limit=`; unknown parameters are refused."""

    model_config = ConfigDict(extra="forbid")

    cycle_id: uuid.UUID | None = None
    limit: QueryInt = Field(default=DEFAULT_PAGE_SIZE, ge=1, le=MAX_PAGE_SIZE)


class PlanView(BaseModel):
    id: uuid.UUID
    cycle_id: uuid.UUID
    status: plan_rules.PlanStatus
    reason: str
    weekly_amount: Money
    start_date: IsoDate
    notes: str | None
    requested_at: datetime
    requested_by: str
    decided_at: datetime | None
    decided_by: str | None
    decision_note: str | None

    @classmethod
    def of(cls, plan: store.Plan) -> PlanView:
        return view_of(cls, plan)


class PlanList(BaseModel):
    items: list[PlanView]


def _named_cycle(org_id: uuid.UUID, named: uuid.UUID, ledger: list[LedgerCycle], now: datetime) -> bas.Cycle | None:
    """The quarter with lines, or the current quarter, whose derived id is `named` (None when none is)."""
    starts = [c.period_start for c in ledger] + [current_cycle(now).period_start]
    return next((bas.cycle_for(s) for s in starts if bas.cycle_id(org_id, s) == named), None)


async def _lock_target_cycle(
    conn: asyncpg.Connection, org_id: uuid.UUID, named: uuid.UUID | None, now: datetime
) -> tuple[cycles.CycleRow, str]:
    """The cycle a plan is asked for, locked under the org's money lock, and its status (LODGED, or READY/BLOCKED
    from the allocation): the preview's cycle unless the body names another of the org's cycles (404 when it has
    none such). Its row is inserted if no write has needed it yet."""
    await cycles.lock_org_money(conn, org_id)
    ledger = await cycles.ledger(conn, org_id)
    if named is None:
        cycle = cycle_to_lodge_next(ledger, now)
    elif (row := await cycles.get_cycle(conn, org_id, named)) is not None:
        cycle = row.cycle
    elif (found := _named_cycle(org_id, named, ledger, now)) is not None:
        cycle = found
    else:
        raise ApiError("not_found", "This org has no BAS cycle with that id")
    locked = await cycles.lock_cycle(conn, org_id, await cycles.ensure_cycle(conn, org_id, cycle))
    if locked.status == "LODGED":
        return locked, "LODGED"
    balances = await cycles.designated_balances(conn, org_id)
    return locked, allocate(balances, ledger).of(cycle.period_start).status


@documented("The org's payment plans, newest first", response=PlanList, tags=["bas"])
@guard(roles=REQUESTERS)
async def list_plans(request: Request, principal: Principal) -> Response:
    query = parse_query(request.query_params, PlanQuery)
    org_id = uuid.UUID(principal.org_id)
    async with request.app.state.runtime.db.pool.acquire() as conn, conn.transaction():
        found = await store.list_plans(conn, org_id, query.cycle_id, query.limit)
        await audit.append(
            conn,
            org_id=org_id,
            actor=audit.actor_of(principal),
            action="payment_plans.read",
            target="payment_plans",
            detail={"count": len(found), "cycle_id": None if query.cycle_id is None else str(query.cycle_id)},
        )
    return Response(PlanList(items=[PlanView.of(plan) for plan in found]).model_dump_json(), media_type=JSON_MEDIA_TYPE)


@documented(
    "Ask for a payment plan for a BLOCKED BAS cycle (idempotent with Idempotency-Key)",
    request=NewPlan,
    response=PlanView,
    status=201,
    tags=["bas"],
)
@guard(roles=REQUESTERS)
async def create_plan(request: Request, principal: Principal) -> Response:
    body = await parse_body(request, NewPlan)
    org_id = uuid.UUID(principal.org_id)
    actor = audit.actor_of(principal)
    now = datetime.now(UTC)
    async with request.app.state.runtime.db.pool.acquire() as conn, conn.transaction():
        await hold_org(conn, org_id)

        async def create() -> Response:
            cycle, status = await _lock_target_cycle(conn, org_id, body.cycle_id, now)
            refusal = plan_rules.request_error(status)
            if refusal is not None:
                raise ApiError("cycle_not_blocked", refusal)
            plan = await store.insert_plan(
                conn,
                store.NewPlan(
                    id=uuid.uuid4(),
                    org_id=org_id,
                    cycle_id=cycle.id,
                    reason=body.reason,
                    weekly_amount=body.weekly_amount,
                    start_date=body.start_date,
                    notes=body.notes,
                    requested_by=actor,
                ),
            )
            if plan is None:
                raise ApiError("plan_exists", "This BAS cycle already has a submitted or approved payment plan")
            await audit.append(
                conn,
                org_id=org_id,
                actor=actor,
                action="payment_plan.create",
                target=f"payment_plan:{plan.id}",
                detail={
                    "id": str(plan.id),
                    "cycle_id": str(plan.cycle_id),
                    "weekly_amount": format_money(plan.weekly_amount),
                    "start_date": plan.start_date.isoformat(),
                    "reason_chars": len(plan.reason),
                    "notes_chars": len(plan.notes or ""),
                },
            )
            return Response(
                PlanView.of(plan).model_dump_json(),
                status_code=201,
                media_type=JSON_MEDIA_TYPE,
                headers={"location": f"/bas/payment-plans/{plan.id}"},
            )

        return await idempotent(request, conn, create, org_id=org_id, actor=actor, body=body)


async def _decide(request: Request, principal: Principal, decision: plan_rules.Decision) -> Response:
    plan_id = path_uuid(request, "id")
    body = await parse_body(request, Decision)
    org_id = uuid.UUID(principal.org_id)
    actor = audit.actor_of(principal)
    async with request.app.state.runtime.db.pool.acquire() as conn, conn.transaction():
        await hold_org(conn, org_id)

        async def decide() -> Response:
            before = await store.get_plan(conn, org_id, plan_id)
            if before is None:
                raise ApiError("not_found")
            status = plan_rules.decide(before.status, decision)
            if status is None:
                raise ApiError("plan_decided", f"The payment plan is already {before.status}")
            outcome, plan = await store.decide_plan(conn, org_id, plan_id, status=status, actor=actor, note=body.note)
            if outcome is not store.Decided.DECIDED or plan is None:  # another decision won meanwhile
                raise ApiError("plan_decided", "The payment plan was decided by another request")
            await audit.append(
                conn,
                org_id=org_id,
                actor=actor,
                action=f"payment_plan.{decision}",
                target=f"payment_plan:{plan_id}",
                detail={
                    "id": str(plan_id),
                    "cycle_id": str(plan.cycle_id),
                    "status": plan.status,
                    "note_chars": len(body.note or ""),
                },
            )
            return Response(PlanView.of(plan).model_dump_json(), media_type=JSON_MEDIA_TYPE)

        return await idempotent(request, conn, decide, org_id=org_id, actor=actor, body=body)


@documented(
    "Approve a submitted payment plan (admin, needs a recent step-up)",
    request=Decision,
    response=PlanView,
    tags=["bas"],
)
@guard(roles=DECIDERS, step_up=True)
async def approve_plan(request: Request, principal: Principal) -> Response:
    return await _decide(request, principal, "approve")


@documented(
    "Reject a submitted payment plan (admin, needs a recent step-up)", request=Decision, response=PlanView, tags=["bas"]
)
@guard(roles=DECIDERS, step_up=True)
async def reject_plan(request: Request, principal: Principal) -> Response:
    return await _decide(request, principal, "reject")
