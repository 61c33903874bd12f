"""Payment plans in PostgreSQL: one open plan per cycle however many requests race (the partial unique index
decides), a new plan once the open one is rejected, decisions that happen once, and org-scoped reads."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import date
from decimal import Decimal

import asyncpg
import pytest

from services.core.bas import cycle_for
from services.core.store import cycles, plans

ORG = uuid.UUID("6d3e9f50-2b4c-4d7e-9f0a-1b2c3d4e5f60")
OTHER = uuid.UUID("0f1e2d3c-4b5a-4968-8776-655443322110")
CYCLE = cycle_for(date(2025, 8, 15))
ACTOR = "user:3c2d5e7f-9a1b-4c3d-8e5f-7a9b1c3d5e7f"
RACERS = 12


@pytest.fixture
async def conn(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(database_url)
    yield connection
    await connection.close()


def new_plan(org: uuid.UUID, cycle_id: uuid.UUID, weekly: str = "250.00") -> plans.NewPlan:
    return plans.NewPlan(
        id=uuid.uuid4(),
        org_id=org,
        cycle_id=cycle_id,
        reason="A customer paid late",
        weekly_amount=Decimal(weekly),
        start_date=date(2025, 8, 18),
        notes=None,
        requested_by=ACTOR,
    )


async def test_a_cycle_has_one_open_plan_and_may_ask_again_after_a_rejection(conn: asyncpg.Connection) -> None:
    cycle_id = await cycles.ensure_cycle(conn, ORG, CYCLE)
    first = await plans.insert_plan(conn, new_plan(ORG, cycle_id))
    assert first is not None and first.status == "SUBMITTED" and first.decided_at is None
    assert first.weekly_amount == Decimal("250.00")
    assert await plans.insert_plan(conn, new_plan(ORG, cycle_id)) is None

    outcome, rejected = await plans.decide_plan(conn, ORG, first.id, status="REJECTED", actor=ACTOR, note=None)
    assert outcome is plans.Decided.DECIDED and rejected is not None
    assert (rejected.status, rejected.decided_by) == ("REJECTED", ACTOR)
    second = await plans.insert_plan(conn, new_plan(ORG, cycle_id, "300.00"))
    assert second is not None
    outcome, approved = await plans.decide_plan(conn, ORG, second.id, status="APPROVED", actor=ACTOR, note="ok")
    assert outcome is plans.Decided.DECIDED and approved is not None and approved.decision_note == "ok"
    assert await plans.insert_plan(conn, new_plan(ORG, cycle_id)) is None  # an approved plan is open too

    listed = await plans.list_plans(conn, ORG, None, 10)
    assert [p.id for p in listed] == [second.id, first.id]
    assert [p.id for p in await plans.list_plans(conn, ORG, cycle_id, 1)] == [second.id]
    assert await plans.list_plans(conn, OTHER, None, 10) == []
    assert await plans.list_plans(conn, ORG, uuid.uuid4(), 10) == []


async def test_a_plan_is_decided_once_and_only_in_its_org(conn: asyncpg.Connection) -> None:
    cycle_id = await cycles.ensure_cycle(conn, ORG, CYCLE)
    plan = await plans.insert_plan(conn, new_plan(ORG, cycle_id))
    assert plan is not None
    assert await plans.get_plan(conn, OTHER, plan.id) is None
    assert await plans.decide_plan(conn, OTHER, plan.id, status="APPROVED", actor=ACTOR, note=None) == (
        plans.Decided.NOT_FOUND,
        None,
    )
    outcome, _ = await plans.decide_plan(conn, ORG, plan.id, status="APPROVED", actor=ACTOR, note=None)
    assert outcome is plans.Decided.DECIDED
    outcome, found = await plans.decide_plan(conn, ORG, plan.id, status="REJECTED", actor=ACTOR, note=None)
    assert outcome is plans.Decided.ALREADY_DECIDED and found is not None and found.status == "APPROVED"


async def test_the_table_refuses_a_non_positive_amount(conn: asyncpg.Connection) -> None:
    cycle_id = await cycles.ensure_cycle(conn, ORG, CYCLE)
    with pytest.raises(asyncpg.CheckViolationError):
        await plans.insert_plan(conn, new_plan(ORG, cycle_id, "0.00"))


async def test_racing_requests_open_one_plan_and_racing_decisions_have_one_winner(database_url: str) -> None:
    pool = await asyncpg.create_pool(database_url, min_size=RACERS, max_size=RACERS)
    try:
        async with pool.acquire() as conn:
            cycle_id = await cycles.ensure_cycle(conn, ORG, CYCLE)
        start = asyncio.Event()

        async def request() -> plans.Plan | None:
            async with pool.acquire() as conn, conn.transaction():
                await start.wait()
                return await plans.insert_plan(conn, new_plan(ORG, cycle_id))

        tasks = [asyncio.create_task(request()) for _ in range(RACERS)]
        await asyncio.sleep(0.1)
        start.set()
        opened = [plan for plan in await asyncio.gather(*tasks) if plan is not None]
        assert len(opened) == 1

        decide_start = asyncio.Event()

        async def decide(status: str) -> plans.Decided:
            async with pool.acquire() as conn, conn.transaction():
                await decide_start.wait()
                outcome, _ = await plans.decide_plan(
                    conn,
                    ORG,
                    opened[0].id,
                    status=status,
                    actor=ACTOR,
                    note=None,  # type: ignore[arg-type]
                )
                return outcome

        deciders = [asyncio.create_task(decide(("APPROVED", "REJECTED")[n % 2])) for n in range(RACERS)]
        await asyncio.sleep(0.1)
        decide_start.set()
        outcomes = await asyncio.gather(*deciders)
        assert outcomes.count(plans.Decided.DECIDED) == 1
        assert outcomes.count(plans.Decided.ALREADY_DECIDED) == RACERS - 1
    finally:
        await pool.close()
