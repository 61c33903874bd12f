"""BAS cycles through real auth and core processes (issue #12): obligations from posted lines, the
SUSPICIOUS_TAX_GAP a write raises (once), the preview's blockers and the cycle it shows, lodging (step-up for every
user; only an ended quarter, in order, 409 while BLOCKED, 200 once READY, idempotent, then immutable), a line
written into a lodged quarter (one BAS_AMENDMENT_NEEDED, no gap), and GETs that write nothing but their audit rows.

The current cycle is the quarter containing today in Sydney, so most lines are dated on its first day; lodging
uses the two quarters before it (ended)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import aiohttp
import asyncpg
import pytest
import pytest_asyncio
from auth_support import Org, call
from core2_support import stepped_up
from core_support import CoreStack, connect, new_line, post_line, role_tokens, start_core

from services.core.bas import business_date, cycle_for, cycle_id, next_bas_due
from services.core.designated import Tax, account_id
from shared.audit import verify_org

pytestmark = pytest.mark.e2e

StartService = Callable[..., Any]
TODAY = business_date(datetime.now(UTC))
CYCLE = cycle_for(TODAY)
DAY = CYCLE.period_start.isoformat()
# Paid wages of 1,000.00 with 300.00 withheld; a sale of 1,100.00 with 100.00 GST; a purchase with 10.00 credit.
WAGES = new_line(
    date=DAY, amount="-1000.00", paygw_amount="300.00", gst_amount="0.00", payee="Staff", description="Wages"
)
SALE = new_line(date=DAY, amount="1100.00", gst_amount="100.00", payee="Customer", description="Invoice 1")
PURCHASE = new_line(date=DAY)  # -110.00 with -10.00 GST
PREVIOUS = cycle_for(CYCLE.period_start - timedelta(days=1))
EARLIER = cycle_for(PREVIOUS.period_start - timedelta(days=1))


def dated(line: dict[str, Any], cycle: Any) -> dict[str, Any]:
    return {**line, "date": cycle.period_start.isoformat()}


@pytest_asyncio.fixture
async def stack(start_service: StartService, database_url: str) -> AsyncIterator[CoreStack]:
    yield start_core(start_service, database_url)


async def get(http: aiohttp.ClientSession, stack: CoreStack, path: str, token: str) -> tuple[int, Any, Any]:
    return await call(http, "GET", f"{stack.core.url}{path}", token=token)


async def lodge(
    http: aiohttp.ClientSession, stack: CoreStack, token: str, key: str | None = None, period: Any = None
) -> tuple[int, Any]:
    headers = {"idempotency-key": key} if key else {}
    chosen = {} if period is None else {"json": {"period_start": period.period_start.isoformat()}}
    status, body, _ = await call(http, "POST", f"{stack.core.url}/bas/lodge", token=token, headers=headers, **chosen)
    return status, body


async def post(http: aiohttp.ClientSession, stack: CoreStack, token: str, line: dict[str, Any]) -> None:
    status, body, _ = await post_line(http, stack, token, line)
    assert status == 201, body


async def deposit(database_url: str, org_id: uuid.UUID, tax: Tax, amount: str) -> None:
    """A transfer written straight into the database (the deposit route has its own tests)."""
    account = account_id(org_id, tax)
    async with connect(database_url) as conn:
        await conn.execute(
            "INSERT INTO core.designated_accounts (id, org_id, tax) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            account,
            org_id,
            tax,
        )
        await conn.execute(
            "INSERT INTO core.designated_transfers (id, org_id, account_id, amount, source, reference, created_by) "
            "VALUES ($1, $2, $3, $4, 'bank', 'test', 'test:fixture')",
            uuid.uuid4(),
            org_id,
            account,
            Decimal(amount),
        )


async def actions(database_url: str, org_id: uuid.UUID) -> list[str]:
    async with connect(database_url) as conn:
        rows = await conn.fetch("SELECT action FROM audit.records WHERE org_id = $1 ORDER BY seq", org_id)
    return [row["action"] for row in rows]


async def gap_alerts(database_url: str, org_id: uuid.UUID) -> list[asyncpg.Record]:
    async with connect(database_url) as conn:
        return list(
            await conn.fetch(
                "SELECT * FROM core.alerts WHERE org_id = $1 AND type = 'SUSPICIOUS_TAX_GAP' ORDER BY created_at",
                org_id,
            )
        )


async def totals_and_sums(database_url: str, org_id: uuid.UUID) -> tuple[dict[Any, Any], dict[Any, Any]]:
    """The org's running totals per quarter (core.cycle_totals), and the same summed from its lines."""
    async with connect(database_url) as conn:
        totals = await conn.fetch(
            "SELECT period_start, lines, paygw, gst FROM core.cycle_totals WHERE org_id = $1", org_id
        )
        sums = await conn.fetch(
            "SELECT date_trunc('quarter', date)::date, count(*), sum(paygw_amount), sum(gst_amount) "
            "FROM core.bank_lines WHERE org_id = $1 GROUP BY 1",
            org_id,
        )
    return ({r[0]: (r[1], r[2], r[3]) for r in totals}, {r[0]: (r[1], r[2], r[3]) for r in sums})


async def snapshot(database_url: str) -> dict[str, str]:
    """A digest of every table outside the audit schema (and the catalogs)."""
    async with connect(database_url) as conn:
        tables = await conn.fetch(
            "SELECT table_schema, table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE' "
            "AND table_schema NOT IN ('pg_catalog', 'information_schema', 'audit') ORDER BY 1, 2"
        )
        digests = {}
        for table in tables:
            name = f'"{table["table_schema"]}"."{table["table_name"]}"'
            digests[name] = await conn.fetchval(
                f"SELECT count(*)::text || ':' || coalesce(md5(string_agg(t::text, ',' ORDER BY t::text)), '') "  # noqa: S608
                f"FROM {name} t"
            )
    return digests


async def test_obligations_follow_the_lines_and_a_shortfall_above_the_threshold_raises_one_alert(
    http: aiohttp.ClientSession, stack: CoreStack, org: Org
) -> None:
    tokens = await role_tokens(http, stack, org)
    for role in ("admin", "finance", "analyst", "auditor"):
        status, body, _ = await get(http, stack, "/org/obligations/current", tokens[role])
        assert status == 200, (role, body)
    assert body["cycle"] == {
        "id": str(cycle_id(org.id, CYCLE.period_start)),
        "period_start": CYCLE.period_start.isoformat(),
        "period_end": CYCLE.period_end.isoformat(),
        "due_date": CYCLE.due_date.isoformat(),
        "status": "READY",
        "lodged_at": None,
        "lodged_by": None,
        "lodgement_reference": None,
    }
    assert body["next_bas_due"] == next_bas_due(TODAY).isoformat()
    for line in (WAGES, SALE, PURCHASE):
        await post(http, stack, tokens["finance"], line)
    status, body, _ = await get(http, stack, "/org/obligations/current", tokens["analyst"])
    assert status == 200
    assert body["paygw"] == {"required": "300.00", "secured": "0.00", "shortfall": "300.00", "status": "BLOCKED"}
    assert body["gst"] == {"required": "90.00", "secured": "0.00", "shortfall": "90.00", "status": "BLOCKED"}
    assert body["cycle"]["status"] == "BLOCKED"
    assert await gap_alerts(stack.database_url, org.id) == []  # 390.00 is not above 500.00

    # 110.01 more withheld: 500.01 short in all, above the threshold: one HIGH alert, by the writer.
    await post(http, stack, tokens["admin"], {**WAGES, "amount": "-500.00", "paygw_amount": "110.01"})
    alerts = await gap_alerts(stack.database_url, org.id)
    assert len(alerts) == 1 and alerts[0]["severity"] == "HIGH"
    assert alerts[0]["created_by"] == f"user:{org.users['admin'].id}"
    assert (
        alerts[0]["message"] == f"{DAY} to {CYCLE.period_end.isoformat()}: PAYGW short by $410.01, GST short by $90.00"
    )
    # A second write over the threshold raises none while it is open; nor does a GET.
    await post(http, stack, tokens["finance"], WAGES)
    await get(http, stack, "/org/obligations/current", tokens["finance"])
    assert len(await gap_alerts(stack.database_url, org.id)) == 1
    recorded = await actions(stack.database_url, org.id)
    assert recorded.count("alert.raise") == 1
    assert recorded[recorded.index("alert.raise") + 1] == "bank_line.create"  # in the writer's transaction
    async with connect(stack.database_url) as conn:
        assert (await verify_org(conn, org.id)).ok


async def test_preview_shows_blockers_to_finance_and_admin_only(
    http: aiohttp.ClientSession, stack: CoreStack, org: Org
) -> None:
    tokens = await role_tokens(http, stack, org)
    await post(http, stack, tokens["finance"], WAGES)
    await post(http, stack, tokens["finance"], SALE)
    await deposit(stack.database_url, org.id, "GST", "40.00")
    for role in ("analyst", "auditor"):
        status, body, _ = await get(http, stack, "/bas/preview", tokens[role])
        assert (status, body["code"]) == (403, "forbidden")
    for role in ("finance", "admin"):
        status, body, _ = await get(http, stack, "/bas/preview", tokens[role])
        assert status == 200, body
        assert body["status"] == "BLOCKED" and body["cycle"]["status"] == "BLOCKED"
        assert body["blockers"] == ["PAYGW short by $300.00", "GST short by $60.00"]
        assert body["paygw"]["shortfall"] == "300.00"
        assert body["gst"] == {"required": "100.00", "secured": "40.00", "shortfall": "60.00", "status": "BLOCKED"}
        assert body["total_shortfall"] == "360.00"
        # Nothing has ended that waits to be lodged: the current quarter is shown, not yet lodgeable.
        assert body["cycle"]["period_start"] == DAY and body["lodgeable"] is False
        assert body["reason"].endswith(f"from {(CYCLE.period_end + timedelta(days=1)).isoformat()}")
        assert body["amendments"] == []
    assert (await actions(stack.database_url, org.id)).count("bas.preview") == 2


async def test_lodging_needs_a_step_up_and_a_ready_cycle_and_leaves_it_immutable(
    http: aiohttp.ClientSession, stack: CoreStack, org: Org
) -> None:
    tokens = await role_tokens(http, stack, org)
    await post(http, stack, tokens["finance"], dated(WAGES, PREVIOUS))
    await post(http, stack, tokens["finance"], dated(SALE, PREVIOUS))
    # Without a step-up: 401 for a user without MFA (finance) and, below, for one with it before stepping up.
    assert (await lodge(http, stack, tokens["finance"]))[1]["code"] == "mfa_required"
    for role in ("analyst", "auditor"):
        status, body = await lodge(http, stack, tokens[role])
        assert (status, body["code"]) == (403, "forbidden")
    admin = await stepped_up(http, stack.auth.url, org.email("admin"))
    status, body = await lodge(http, stack, admin.plain_token)
    assert (status, body["code"]) == (401, "mfa_required")

    # The preview shows the ended quarter with lines, BLOCKED; lodging it (the default) is refused.
    status, shown, _ = await get(http, stack, "/bas/preview", tokens["finance"])
    assert shown["cycle"]["period_start"] == PREVIOUS.period_start.isoformat() and shown["lodgeable"] is False
    assert shown["reason"].endswith("PAYGW short by $300.00; GST short by $100.00")
    status, body = await lodge(http, stack, admin.token, key="lodge-1")
    assert (status, body["code"]) == (409, "bas_cycle_blocked")
    assert body["blockers"] == ["PAYGW short by $300.00", "GST short by $100.00"]
    row_id = cycle_id(org.id, PREVIOUS.period_start)
    # The current quarter has not ended: never lodged, whatever it holds.
    status, body = await lodge(http, stack, admin.token, period=CYCLE)
    assert (status, body["code"]) == (409, "bas_period_open")
    status, body, _ = await call(
        http, "POST", f"{stack.core.url}/bas/lodge", token=admin.token, json={"period_start": "2025-08-01"}
    )
    assert (status, body["code"]) == (400, "invalid_body")

    await deposit(stack.database_url, org.id, "PAYGW", "300.00")
    await deposit(stack.database_url, org.id, "GST", "100.00")
    status, shown, _ = await get(http, stack, "/bas/preview", tokens["finance"])
    assert shown["lodgeable"] is True and shown["reason"] is None and shown["status"] == "READY"
    status, body = await lodge(http, stack, admin.token, key="lodge-1")  # the refusal kept nothing under the key
    assert status == 200, body
    assert body["status"] == "LODGED" and body["blockers"] == [] and body["total_shortfall"] == "0.00"
    assert body["cycle"]["period_start"] == PREVIOUS.period_start.isoformat()
    assert body["cycle"]["lodged_by"] == f"user:{org.users['admin'].id}"
    assert body["cycle"]["lodgement_reference"].startswith("recorded-")
    # The same key replays the answer; another lodgement of it is refused.
    replay_status, replay = await lodge(http, stack, admin.token, key="lodge-1")
    assert (replay_status, replay) == (200, body)
    status, again = await lodge(http, stack, admin.token, key="lodge-2", period=PREVIOUS)
    assert (status, again["code"]) == (409, "bas_cycle_lodged")
    # Nothing else has ended with lines: the default names the open current quarter.
    status, again = await lodge(http, stack, admin.token, key="lodge-3")
    assert (status, again["code"]) == (409, "bas_period_open")

    async with connect(stack.database_url) as conn:
        row = await conn.fetchrow("SELECT * FROM core.bas_cycles WHERE id = $1", row_id)
        assert row["status"] == "LODGED" and row["lodgement_gateway"] == "recording"
        assert (row["paygw_required"], row["gst_secured"]) == (Decimal("300.00"), Decimal("100.00"))
        assert '"PAYGW":{"required":"300.00","secured":"300.00"}' in row["lodgement_payload"]
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("UPDATE core.bas_cycles SET gst_required = 0 WHERE id = $1", row_id)
    assert (await actions(stack.database_url, org.id)).count("bas.lodge") == 1

    # The lodged money is spoken for: the current quarter's 300.00 is short by all of it.
    await post(http, stack, tokens["finance"], WAGES)
    status, body, _ = await get(http, stack, "/org/obligations/current", tokens["analyst"])
    assert body["cycle"]["period_start"] == DAY
    assert body["paygw"] == {"required": "300.00", "secured": "0.00", "shortfall": "300.00", "status": "BLOCKED"}

    # 1,000.00 more withheld in the lodged quarter: no gap for it, one amendment alert, shown in the preview.
    late = {**dated(WAGES, PREVIOUS), "paygw_amount": "1000.00"}
    await post(http, stack, tokens["finance"], late)
    await post(http, stack, tokens["finance"], late)
    assert await gap_alerts(stack.database_url, org.id) == []
    async with connect(stack.database_url) as conn:
        amendments = await conn.fetch("SELECT * FROM core.alerts WHERE type = 'BAS_AMENDMENT_NEEDED'")
    assert len(amendments) == 1 and amendments[0]["severity"] == "MEDIUM"
    assert amendments[0]["detail"] == (
        f'{{"cycle_id": "{row_id}", "period_end": "{PREVIOUS.period_end.isoformat()}", '
        f'"period_start": "{PREVIOUS.period_start.isoformat()}"}}'
    )
    status, shown, _ = await get(http, stack, "/bas/preview", tokens["finance"])
    assert shown["amendments"] == [
        {
            "cycle_id": str(row_id),
            "period_start": PREVIOUS.period_start.isoformat(),
            "period_end": PREVIOUS.period_end.isoformat(),
            "paygw_lodged": "300.00",
            "paygw_now": "2300.00",
            "gst_lodged": "100.00",
            "gst_now": "100.00",
        }
    ]
    async with connect(stack.database_url) as conn:
        assert await conn.fetchval("SELECT status FROM core.bas_cycles WHERE id = $1", row_id) == "LODGED"


async def test_quarters_are_lodged_in_order_and_one_deposit_secures_one(
    http: aiohttp.ClientSession, stack: CoreStack, org: Org
) -> None:
    tokens = await role_tokens(http, stack, org)
    for cycle in (EARLIER, PREVIOUS):
        await post(http, stack, tokens["finance"], dated(WAGES, cycle))
    await deposit(stack.database_url, org.id, "PAYGW", "300.00")
    admin = await stepped_up(http, stack.auth.url, org.email("admin"))
    # One deposit of 300.00 secures the older quarter, not both.
    status, shown, _ = await get(http, stack, "/bas/preview", tokens["admin"])
    assert shown["cycle"]["period_start"] == EARLIER.period_start.isoformat() and shown["lodgeable"] is True
    status, body = await lodge(http, stack, admin.token, period=PREVIOUS)
    assert (status, body["code"]) == (409, "bas_earlier_cycle_unlodged")
    assert body["period_start"] == EARLIER.period_start.isoformat()
    status, body = await lodge(http, stack, admin.token)
    assert status == 200 and body["cycle"]["period_start"] == EARLIER.period_start.isoformat(), body
    status, shown, _ = await get(http, stack, "/bas/preview", tokens["admin"])
    assert shown["cycle"]["period_start"] == PREVIOUS.period_start.isoformat()
    assert shown["paygw"] == {"required": "300.00", "secured": "0.00", "shortfall": "300.00", "status": "BLOCKED"}
    status, body = await lodge(http, stack, admin.token)
    assert (status, body["code"]) == (409, "bas_cycle_blocked")
    await deposit(stack.database_url, org.id, "PAYGW", "300.00")
    status, body = await lodge(http, stack, admin.token)
    assert status == 200 and body["cycle"]["period_start"] == PREVIOUS.period_start.isoformat(), body


async def test_gets_write_nothing_but_their_audit_rows(http: aiohttp.ClientSession, stack: CoreStack, org: Org) -> None:
    tokens = await role_tokens(http, stack, org)
    # First with no cycle row (no write has needed it), then with one that a write made BLOCKED.
    for expected in ("READY", "BLOCKED"):
        before = await snapshot(stack.database_url)
        audited = len(await actions(stack.database_url, org.id))
        for path in ("/org/obligations/current", "/bas/preview"):
            status, body, _ = await get(http, stack, path, tokens["finance"])
            assert status == 200, body
            assert body["cycle"]["status"] == expected
        assert await snapshot(stack.database_url) == before
        assert (await actions(stack.database_url, org.id))[audited:] == ["org.obligations.read", "bas.preview"]
        await post(http, stack, tokens["finance"], WAGES)
    async with connect(stack.database_url) as conn:
        assert await conn.fetchval("SELECT count(*) FROM core.bas_cycles WHERE org_id = $1", org.id) == 1


async def test_an_import_re_evaluates_the_cycle_and_raises_the_gap_alert_once(
    http: aiohttp.ClientSession, stack: CoreStack, org: Org
) -> None:
    tokens = await role_tokens(http, stack, org)
    header = "date,amount,payee,description,gst_amount,paygw_amount\n"
    rows = "".join(f"{DAY},-1000.00,Staff {n},Wages,0.00,300.00\n" for n in range(2))
    for _ in range(2):
        status, body, _ = await call(
            http,
            "POST",
            f"{stack.core.url}/bank-lines/import",
            token=tokens["finance"],
            data=(header + rows).encode(),
            headers={"content-type": "text/csv"},
        )
        assert status == 201, body
    alerts = await gap_alerts(stack.database_url, org.id)
    assert (
        len(alerts) == 1 and alerts[0]["message"] == f"{DAY} to {CYCLE.period_end.isoformat()}: PAYGW short by $600.00"
    )
    async with connect(stack.database_url) as conn:
        row = await conn.fetchrow(
            "SELECT status FROM core.bas_cycles WHERE id = $1", cycle_id(org.id, CYCLE.period_start)
        )
    assert row["status"] == "BLOCKED"
    assert (await actions(stack.database_url, org.id)) == ["alert.raise", "bank_lines.import", "bank_lines.import"]
    # Both imports (and a line in another quarter) added to their quarters' running totals, as summed from the lines.
    await post(http, stack, tokens["finance"], dated(WAGES, PREVIOUS))
    assert (
        await totals_and_sums(stack.database_url, org.id)
        == (
            {
                CYCLE.period_start: (4, Decimal("1200.00"), Decimal("0.00")),
                PREVIOUS.period_start: (1, Decimal("300.00"), Decimal("0.00")),
            },
        )
        * 2
    )
