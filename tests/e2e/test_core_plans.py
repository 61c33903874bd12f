"""Payment plans through real auth and core processes: asked for a BLOCKED cycle only (its allocated shortfall: the
designated balances shared out over the org's cycles oldest first, as the preview shows), by default the cycle the
preview shows (the oldest ended, unlodged quarter with lines, else the current one), one open plan per cycle,
approved or rejected once by an admin with a recent step-up, and every route refusing the roles it does not list."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest
import pytest_asyncio
from auth_support import Org, call
from core2_support import stepped_up
from core_support import CoreStack, connect, new_line, post_line, role_tokens, start_core

from services.core import bas
from services.core.designated import Tax, account_id
from services.core.store import accounts

pytestmark = pytest.mark.e2e

StartService = Callable[..., Any]


@pytest_asyncio.fixture
async def stack(start_service: StartService, database_url: str) -> AsyncIterator[CoreStack]:
    yield start_core(start_service, database_url)


def today() -> Any:
    return bas.business_date(datetime.now(UTC))


def plans_url(stack: CoreStack) -> str:
    return f"{stack.core.url}/bas/payment-plans"


def plan_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "reason": "Our largest customer paid 60 days late",
        "weekly_amount": "150.00",
        "start_date": (today() + timedelta(days=7)).isoformat(),
        "notes": "From the operating account every Monday",
    }
    body.update(overrides)
    return {name: value for name, value in body.items() if value is not None}


async def block_cycle(http: aiohttp.ClientSession, stack: CoreStack, token: str) -> None:
    """A line in the current quarter with PAYG withheld and nothing set aside: the cycle is BLOCKED."""
    line = new_line(date=today().isoformat(), amount="-1000.00", gst_amount="0.00", paygw_amount="600.00")
    status, body, _ = await post_line(http, stack, token, line)
    assert status == 201, body


def previous_quarter() -> bas.Cycle:
    return bas.cycle_for(bas.cycle_for(today()).period_start - timedelta(days=1))


def wages(day: Any, paygw: str = "300.00") -> dict[str, Any]:
    return new_line(date=day.isoformat(), amount="-1000.00", gst_amount="0.00", paygw_amount=paygw)


async def deposit(database_url: str, org_id: uuid.UUID, tax: Tax, amount: str) -> None:
    """A transfer written straight into the database (the deposit route, its sources and step-up have their own
    tests); the next money write or lodgement sees it under the org's money lock."""
    account = account_id(org_id, tax)
    async with connect(database_url) as conn:
        await accounts.ensure_account(conn, org_id, account, tax)
        await accounts.insert_transfer(
            conn,
            org_id=org_id,
            account_id=account,
            amount=Decimal(amount),
            source="bank",
            reference="test",
            actor="test:fixture",
        )


async def preview(http: aiohttp.ClientSession, stack: CoreStack, token: str) -> Any:
    status, shown, _ = await call(http, "GET", f"{stack.core.url}/bas/preview", token=token)
    assert status == 200, shown
    return shown


async def audit_rows(database_url: str, org_id: uuid.UUID, action: str) -> list[dict[str, Any]]:
    async with connect(database_url) as conn:
        rows = await conn.fetch(
            "SELECT actor, target, detail::text AS detail FROM audit.records "
            "WHERE org_id = $1 AND action = $2 ORDER BY seq",
            org_id,
            action,
        )
    return [{**dict(row), "detail": orjson.loads(row["detail"])} for row in rows]


async def plan_rows(database_url: str) -> list[asyncpg.Record]:
    async with connect(database_url) as conn:
        return list(await conn.fetch("SELECT * FROM core.payment_plans ORDER BY requested_at"))


async def test_only_a_blocked_cycle_gets_a_plan_and_only_one_open_at_a_time(
    stack: CoreStack, http: aiohttp.ClientSession, org: Org
) -> None:
    tokens = await role_tokens(http, stack, org)
    status, body, _ = await call(http, "POST", plans_url(stack), token=tokens["finance"], json=plan_body())
    assert (status, body["code"]) == (409, "cycle_not_blocked"), body
    assert "READY" in body["detail"]
    assert await plan_rows(stack.database_url) == []

    await block_cycle(http, stack, tokens["finance"])
    status, plan, headers = await call(http, "POST", plans_url(stack), token=tokens["finance"], json=plan_body())
    assert status == 201, plan
    assert headers["location"] == f"/bas/payment-plans/{plan['id']}"
    current = bas.cycle_for(today())
    assert plan["cycle_id"] == str(bas.cycle_id(org.id, current.period_start))
    assert (plan["status"], plan["weekly_amount"], plan["decided_at"]) == ("SUBMITTED", "150.00", None)
    assert plan["requested_by"] == f"user:{org.users['finance'].id}"

    status, body, _ = await call(http, "POST", plans_url(stack), token=tokens["admin"], json=plan_body())
    assert (status, body["code"]) == (409, "plan_exists"), body

    [row] = await audit_rows(stack.database_url, org.id, "payment_plan.create")
    assert row["detail"] == {
        "id": plan["id"],
        "cycle_id": plan["cycle_id"],
        "weekly_amount": "150.00",
        "start_date": plan_body()["start_date"],
        "reason_chars": len(plan_body()["reason"]),
        "notes_chars": len(plan_body()["notes"]),
    }

    for role in ("admin", "finance"):
        status, page, _ = await call(http, "GET", plans_url(stack), token=tokens[role])
        assert (status, [item["id"] for item in page["items"]]) == (200, [plan["id"]]), page
    status, page, _ = await call(
        http, "GET", plans_url(stack), token=tokens["admin"], params={"cycle_id": str(uuid.uuid4())}
    )
    assert (status, page["items"]) == (200, [])
    reads = await audit_rows(stack.database_url, org.id, "payment_plans.read")
    assert [r["detail"]["count"] for r in reads] == [1, 1, 0]


async def test_roles_and_bad_requests_are_refused_and_write_nothing(
    stack: CoreStack, http: aiohttp.ClientSession, org: Org, other_org: Org
) -> None:
    tokens = await role_tokens(http, stack, org)
    await block_cycle(http, stack, tokens["finance"])
    for role in ("analyst", "auditor"):
        for method, url in (
            ("GET", plans_url(stack)),
            ("POST", plans_url(stack)),
            ("POST", f"{plans_url(stack)}/{uuid.uuid4()}/approve"),
            ("POST", f"{plans_url(stack)}/{uuid.uuid4()}/reject"),
        ):
            status, body, _ = await call(http, method, url, token=tokens[role], json=plan_body())
            assert (status, body["code"]) == (403, "forbidden"), (role, url, body)
    past = (today() - timedelta(days=1)).isoformat()
    other_cycle = bas.cycle_id(other_org.id, bas.cycle_for(today()).period_start)
    for bad, code in (
        (plan_body(start_date=past), "invalid_body"),
        (plan_body(weekly_amount="0.00"), "invalid_body"),
        (plan_body(reason=" "), "invalid_body"),
        (plan_body(cycle_id=str(other_cycle)), "not_found"),  # another org's current cycle
        (plan_body(cycle_id=str(uuid.uuid4())), "not_found"),
    ):
        status, body, _ = await call(http, "POST", plans_url(stack), token=tokens["finance"], json=bad)
        assert body["code"] == code, (bad, body)
    assert await plan_rows(stack.database_url) == []
    status, body, _ = await call(http, "GET", plans_url(stack), token=tokens["admin"], params={"limit": "201"})
    assert (status, body["code"]) == (400, "invalid_query")


async def test_an_admin_with_step_up_decides_once_and_a_rejected_cycle_may_ask_again(
    stack: CoreStack, http: aiohttp.ClientSession, org: Org, other_org: Org
) -> None:
    tokens = await role_tokens(http, stack, org)
    await block_cycle(http, stack, tokens["finance"])
    status, plan, _ = await call(http, "POST", plans_url(stack), token=tokens["finance"], json=plan_body())
    assert status == 201, plan
    approve = f"{plans_url(stack)}/{plan['id']}/approve"
    reject = f"{plans_url(stack)}/{plan['id']}/reject"

    # An admin who never enrolled, and one who did but has not stepped up: both 401; a stepped-up finance user 403.
    status, body, _ = await call(http, "POST", approve, token=tokens["admin"], json={})
    assert (status, body["code"]) == (401, "mfa_required"), body
    admin = await stepped_up(http, stack.auth.url, org.email("admin"))
    status, body, _ = await call(http, "POST", approve, token=admin.plain_token, json={})
    assert (status, body["code"]) == (401, "mfa_required"), body
    finance = await stepped_up(http, stack.auth.url, org.email("finance"))
    status, body, _ = await call(http, "POST", approve, token=finance.token, json={})
    assert (status, body["code"]) == (403, "forbidden"), body
    their_admin = await stepped_up(http, stack.auth.url, other_org.email("admin"))
    status, body, _ = await call(http, "POST", approve, token=their_admin.token, json={})
    assert (status, body["code"]) == (404, "not_found"), body

    status, rejected, _ = await call(
        http,
        "POST",
        reject,
        token=admin.token,
        json={"note": "Weekly amount too low"},
        headers={"idempotency-key": "r1"},
    )
    assert status == 200, rejected
    assert (rejected["status"], rejected["decision_note"]) == ("REJECTED", "Weekly amount too low")
    assert rejected["decided_by"] == f"user:{org.users['admin'].id}"
    status, replayed, headers = await call(
        http,
        "POST",
        reject,
        token=admin.token,
        json={"note": "Weekly amount too low"},
        headers={"idempotency-key": "r1"},
    )
    assert (status, replayed, headers["idempotent-replay"]) == (200, rejected, "true")
    for url in (approve, reject):
        status, body, _ = await call(http, "POST", url, token=admin.token, json={})
        assert (status, body["code"]) == (409, "plan_decided"), body
    [row] = await audit_rows(stack.database_url, org.id, "payment_plan.reject")
    assert row["detail"] == {"id": plan["id"], "cycle_id": plan["cycle_id"], "status": "REJECTED", "note_chars": 21}

    status, again, _ = await call(
        http, "POST", plans_url(stack), token=tokens["finance"], json=plan_body(weekly_amount="300.00")
    )
    assert status == 201, again
    results = await asyncio.gather(
        *(
            call(http, "POST", f"{plans_url(stack)}/{again['id']}/{verb}", token=admin.token, json={})
            for verb in ("approve", "reject") * 3
        )
    )
    assert sorted(status for status, _, _ in results) == [200] + [409] * 5, results
    decided = [body for status, body, _ in results if status == 200]
    verb = {"APPROVED": "approve", "REJECTED": "reject"}[decided[0]["status"]]
    assert len(await audit_rows(stack.database_url, org.id, f"payment_plan.{verb}")) == (2 if verb == "reject" else 1)
    status, page, _ = await call(http, "GET", plans_url(stack), token=tokens["finance"])
    assert [(item["id"], item["status"]) for item in page["items"]] == [
        (again["id"], decided[0]["status"]),
        (plan["id"], "REJECTED"),
    ]


async def test_an_ended_quarter_short_of_money_gets_the_plan_by_default_and_the_current_one_can_be_named(
    stack: CoreStack, http: aiohttp.ClientSession, org: Org
) -> None:
    tokens = await role_tokens(http, stack, org)
    previous, current = previous_quarter(), bas.cycle_for(today())
    for day in (previous.period_start, today()):
        status, body, _ = await post_line(http, stack, tokens["finance"], wages(day))
        assert status == 201, body
    shown = await preview(http, stack, tokens["finance"])
    previous_id = str(bas.cycle_id(org.id, previous.period_start))
    assert (shown["cycle"]["id"], shown["status"], shown["total_shortfall"]) == (previous_id, "BLOCKED", "300.00")

    # No write has needed the ended quarter's row yet: the plan's POST inserts it.
    status, plan, _ = await call(http, "POST", plans_url(stack), token=tokens["finance"], json=plan_body())
    assert (status, plan["cycle_id"]) == (201, previous_id), plan
    status, body, _ = await call(http, "POST", plans_url(stack), token=tokens["finance"], json=plan_body())
    assert (status, body["code"]) == (409, "plan_exists"), body

    current_id = str(bas.cycle_id(org.id, current.period_start))
    status, named, _ = await call(
        http, "POST", plans_url(stack), token=tokens["finance"], json=plan_body(cycle_id=current_id)
    )
    assert (status, named["cycle_id"]) == (201, current_id), named
    # A quarter without lines or a row is none of the org's cycles.
    later = bas.cycle_for(current.period_end + timedelta(days=1))
    status, body, _ = await call(
        http,
        "POST",
        plans_url(stack),
        token=tokens["finance"],
        json=plan_body(cycle_id=str(bas.cycle_id(org.id, later.period_start))),
    )
    assert (status, body["code"]) == (404, "not_found"), body
    assert [row["cycle_id"] for row in await plan_rows(stack.database_url)] == [
        uuid.UUID(previous_id),
        uuid.UUID(current_id),
    ]


async def test_a_quarter_covered_by_the_oldest_first_allocation_is_not_blocked_and_a_lodged_one_gets_none(
    stack: CoreStack, http: aiohttp.ClientSession, org: Org
) -> None:
    tokens = await role_tokens(http, stack, org)
    previous = previous_quarter()
    previous_id = str(bas.cycle_id(org.id, previous.period_start))
    current_id = str(bas.cycle_id(org.id, bas.cycle_for(today()).period_start))
    status, body, _ = await post_line(http, stack, tokens["finance"], wages(previous.period_start))
    assert status == 201, body
    await deposit(stack.database_url, org.id, "PAYGW", "300.00")
    status, body, _ = await post_line(http, stack, tokens["finance"], wages(today()))
    assert status == 201, body

    # The 300.00 set aside covers the ended quarter (allocated first), so it is READY and gets no plan, by default
    # or by name; the current quarter is left short by its 300.00 and can be named.
    shown = await preview(http, stack, tokens["finance"])
    assert (shown["cycle"]["id"], shown["status"], shown["lodgeable"]) == (previous_id, "READY", True)
    for asked in (plan_body(), plan_body(cycle_id=previous_id)):
        status, body, _ = await call(http, "POST", plans_url(stack), token=tokens["finance"], json=asked)
        assert (status, body["code"]) == (409, "cycle_not_blocked"), body
        assert "READY" in body["detail"]
    assert await plan_rows(stack.database_url) == []
    status, plan, _ = await call(
        http, "POST", plans_url(stack), token=tokens["finance"], json=plan_body(cycle_id=current_id)
    )
    assert (status, plan["cycle_id"]) == (201, current_id), plan

    # Once the ended quarter is lodged it gets no plan; the preview and the default move on to the current one.
    admin = await stepped_up(http, stack.auth.url, org.email("admin"))
    status, lodged, _ = await call(http, "POST", f"{stack.core.url}/bas/lodge", token=admin.token)
    assert (status, lodged["cycle"]["id"]) == (200, previous_id), lodged
    status, body, _ = await call(
        http, "POST", plans_url(stack), token=tokens["finance"], json=plan_body(cycle_id=previous_id)
    )
    assert (status, body["code"]) == (409, "cycle_not_blocked"), body
    assert "lodged" in body["detail"]
    assert (await preview(http, stack, tokens["finance"]))["cycle"]["id"] == current_id
    status, body, _ = await call(http, "POST", plans_url(stack), token=tokens["finance"], json=plan_body())
    assert (status, body["code"]) == (409, "plan_exists"), body  # the current quarter's plan, asked for above
