"""Designated accounts through real auth and core processes (issue #12): deposits from whitelisted sources, every
attempt to move money out refused with 422 `designated_withdrawal_refused` and one HIGH DESIGNATED_WITHDRAWAL_ATTEMPT
alert with the actor and an audit record (committed although the answer is an error), idempotent replays, roles,
the whitelist behind a step-up, another org's accounts 404, and GETs that write nothing but their audit rows."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
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

from services.core.designated import MAX_SOURCES, Tax, account_id
from services.core.evaluation import current_cycle
from services.core.store import accounts as store
from shared.audit import verify_org

pytestmark = pytest.mark.e2e

StartService = Callable[..., Any]
SOURCE = "CBA 062-000 12345678"
CORE_TABLES = (
    "bank_lines",
    "bas_cycles",
    "designated_accounts",
    "designated_transfers",
    "designated_sources",
    "alerts",
    "payment_plans",
)


@pytest_asyncio.fixture
async def stack(start_service: StartService, database_url: str) -> AsyncIterator[CoreStack]:
    yield start_core(start_service, database_url)


def accounts_url(stack: CoreStack) -> str:
    return f"{stack.core.url}/org/designated-accounts"


def account_url(stack: CoreStack, account: uuid.UUID | str, what: str) -> str:
    return f"{accounts_url(stack)}/{account}/{what}"


def deposit_body(amount: str = "100.00", source: str = SOURCE, **more: str) -> dict[str, str]:
    return {"amount": amount, "source": source, "reference": "PAYRUN-2025-07-14", **more}


async def deposit(
    http: aiohttp.ClientSession, stack: CoreStack, token: str, account: uuid.UUID, body: Any, key: str | None = None
) -> tuple[int, Any, Any]:
    headers = {"idempotency-key": key} if key else {}
    return await call(http, "POST", account_url(stack, account, "deposits"), token=token, json=body, headers=headers)


async def allow(database_url: str, org: uuid.UUID, *sources: str, tax: Tax = "PAYGW") -> None:
    """Whitelist `sources` straight in the database (the route needs a step-up, tested on its own)."""
    account = account_id(org, tax)
    async with connect(database_url) as conn:
        await store.ensure_account(conn, org, account, tax)
        await store.replace_sources(conn, org, account, sources, "test:fixture")


async def audit_rows(database_url: str, org: uuid.UUID, action: str) -> list[asyncpg.Record]:
    async with connect(database_url) as conn:
        return list(
            await conn.fetch(
                "SELECT actor, target, detail::text AS detail FROM audit.records "
                "WHERE org_id = $1 AND action = $2 ORDER BY seq",
                org,
                action,
            )
        )


async def attempt_alerts(database_url: str, org: uuid.UUID) -> list[asyncpg.Record]:
    async with connect(database_url) as conn:
        return list(
            await conn.fetch(
                "SELECT id, severity, message, detail::text AS detail, created_by, resolved_at FROM core.alerts "
                "WHERE org_id = $1 AND type = 'DESIGNATED_WITHDRAWAL_ATTEMPT' ORDER BY created_at, id",
                org,
            )
        )


async def balance(database_url: str, org: uuid.UUID) -> Decimal:
    async with connect(database_url) as conn:
        return Decimal(
            await conn.fetchval(
                "SELECT coalesce(sum(amount), 0.00) FROM core.designated_transfers WHERE org_id = $1", org
            )
        )


async def snapshot(database_url: str) -> dict[str, list[str]]:
    """Every row of core's tables, as text, sorted: equal snapshots mean nothing changed."""
    async with connect(database_url) as conn:
        return {
            table: sorted(
                row["r"]
                for row in await conn.fetch(f"SELECT t::text AS r FROM core.{table} AS t")  # noqa: S608 (constant)
            )
            for table in CORE_TABLES
        }


async def test_get_names_both_accounts_and_writes_only_its_audit_row(
    http: aiohttp.ClientSession, stack: CoreStack, org: Org
) -> None:
    tokens = await role_tokens(http, stack, org)
    before = await snapshot(stack.database_url)
    status, body, _ = await call(http, "GET", accounts_url(stack), token=tokens["finance"])
    assert status == 200, body
    assert body == {
        "accounts": [
            {"id": str(account_id(org.id, "PAYGW")), "tax": "PAYGW", "balance": "0.00", "transfers": []},
            {"id": str(account_id(org.id, "GST")), "tax": "GST", "balance": "0.00", "transfers": []},
        ],
        "totals": {"paygw": "0.00", "gst": "0.00"},
    }
    status, sources, _ = await call(
        http, "GET", account_url(stack, account_id(org.id, "GST"), "sources"), token=tokens["admin"]
    )
    assert status == 200 and sources["sources"] == [] and sources["tax"] == "GST"
    assert await snapshot(stack.database_url) == before
    read = await audit_rows(stack.database_url, org.id, "designated_accounts.read")
    assert [row["actor"] for row in read] == [f"user:{org.users['finance'].id}"]
    assert orjson.loads(read[0]["detail"]) == {"paygw_balance": "0.00", "gst_balance": "0.00"}
    assert len(await audit_rows(stack.database_url, org.id, "designated_sources.read")) == 1


async def test_roles_outside_finance_and_admin_are_refused(
    http: aiohttp.ClientSession, stack: CoreStack, org: Org
) -> None:
    tokens = await role_tokens(http, stack, org)
    account = account_id(org.id, "PAYGW")
    await allow(stack.database_url, org.id, SOURCE)
    for role in ("analyst", "auditor"):
        checks = [
            await call(http, "GET", accounts_url(stack), token=tokens[role]),
            await deposit(http, stack, tokens[role], account, deposit_body()),
            await deposit(http, stack, tokens[role], account, deposit_body(amount="-5.00")),
            await call(http, "POST", account_url(stack, account, "withdrawals"), token=tokens[role], json={}),
            await call(http, "GET", account_url(stack, account, "sources"), token=tokens[role]),
            await call(
                http, "PUT", account_url(stack, account, "sources"), token=tokens[role], json={"sources": [SOURCE]}
            ),
        ]
        assert [(status, body["code"]) for status, body, _ in checks] == [(403, "forbidden")] * len(checks)
    # A finance user may read the whitelist but not change it, stepped up or not.
    status, body, _ = await call(
        http, "PUT", account_url(stack, account, "sources"), token=tokens["finance"], json={"sources": []}
    )
    assert (status, body["code"]) == (403, "forbidden")
    assert await balance(stack.database_url, org.id) == 0
    assert await attempt_alerts(stack.database_url, org.id) == []


async def test_deposits_from_a_listed_source_add_up_and_replay(
    http: aiohttp.ClientSession, stack: CoreStack, org: Org
) -> None:
    tokens = await role_tokens(http, stack, org)
    paygw, gst = account_id(org.id, "PAYGW"), account_id(org.id, "GST")
    await allow(stack.database_url, org.id, SOURCE)
    status, made, headers = await deposit(http, stack, tokens["finance"], paygw, deposit_body("1200.50"), key="d-1")
    assert status == 201, made
    assert made["balance"] == "1200.50"
    transfer = made["transfer"]
    assert (transfer["account_id"], transfer["amount"], transfer["source"], transfer["reference"]) == (
        str(paygw),
        "1200.50",
        SOURCE,
        "PAYRUN-2025-07-14",
    )
    assert transfer["created_by"] == f"user:{org.users['finance'].id}"
    status, again, headers = await deposit(http, stack, tokens["finance"], paygw, deposit_body("1200.50"), key="d-1")
    assert (status, again, headers.get("idempotent-replay")) == (201, made, "true")
    status, body, _ = await deposit(http, stack, tokens["finance"], paygw, deposit_body("1.00"), key="d-1")
    assert (status, body["code"]) == (409, "idempotency_conflict")
    status, second, _ = await deposit(http, stack, tokens["admin"], paygw, deposit_body("99.50"))
    assert (status, second["balance"]) == (201, "1300.00")
    # The GST account has its own whitelist, empty: the PAYGW source is not listed there.
    status, refused, _ = await deposit(http, stack, tokens["admin"], gst, deposit_body("10.00"))
    assert (status, refused["code"], refused["reason"]) == (422, "designated_withdrawal_refused", "unlisted_source")

    status, body, _ = await call(http, "GET", accounts_url(stack), token=tokens["admin"])
    assert status == 200
    listed = {account["tax"]: account for account in body["accounts"]}
    assert listed["PAYGW"]["balance"] == "1300.00" and listed["GST"]["balance"] == "0.00"
    assert [t["amount"] for t in listed["PAYGW"]["transfers"]] == ["99.50", "1200.50"]
    assert body["totals"] == {"paygw": "1300.00", "gst": "0.00"}
    assert await balance(stack.database_url, org.id) == Decimal("1300.00")
    made_audit = await audit_rows(stack.database_url, org.id, "designated.deposit")
    assert [orjson.loads(row["detail"])["balance"] for row in made_audit] == ["1200.50", "1300.00"]
    # Neither the reference nor the source's text: a tag of the source, the same for both deposits from it.
    details = [orjson.loads(row["detail"]) for row in made_audit]
    assert all("reference" not in d and "source" not in d for d in details)
    assert SOURCE not in str(details) and "PAYRUN" not in str(details)
    assert len(details[0]["source_tag"]) == 32 and details[0]["source_tag"] == details[1]["source_tag"]
    async with connect(stack.database_url) as conn:
        # Each deposit re-evaluated the current cycle: nothing required, 1300.00 secured.
        assert await conn.fetchval("SELECT status FROM core.bas_cycles WHERE org_id = $1", org.id) == "READY"
    assert (await verify_org_chain(stack.database_url, org.id)) is True


async def verify_org_chain(database_url: str, org: uuid.UUID) -> bool:
    async with connect(database_url) as conn:
        return (await verify_org(conn, org)).ok


@pytest.mark.parametrize(
    ("how", "reason", "amount"),
    [
        ("debit", "debit", "-250.00"),
        ("zero", "zero", "0.00"),
        ("unlisted", "unlisted_source", "250.00"),
        ("out", "withdrawal", "250.00"),
        ("withdrawal route", "withdrawal", "250.00"),
    ],
)
async def test_every_attempt_to_move_money_out_is_refused_alerted_and_audited(
    http: aiohttp.ClientSession, stack: CoreStack, org: Org, how: str, reason: str, amount: str
) -> None:
    tokens = await role_tokens(http, stack, org)
    account = account_id(org.id, "PAYGW")
    await allow(stack.database_url, org.id, SOURCE)
    status, made, _ = await deposit(http, stack, tokens["admin"], account, deposit_body("500.00"))
    assert status == 201, made
    url = account_url(stack, account, "withdrawals" if how == "withdrawal route" else "deposits")
    body = {
        "debit": deposit_body(amount),
        "zero": deposit_body(amount),
        "unlisted": deposit_body(amount, source="Westpac 032-000 99999999"),
        "out": deposit_body(amount, direction="out"),
        "withdrawal route": {"amount": amount, "to": "Westpac 032-000 99999999"},
    }[how]
    sent = {"idempotency-key": f"attempt-{how.replace(' ', '-')}"}
    status, problem, headers = await call(http, "POST", url, token=tokens["finance"], json=body, headers=sent)
    assert status == 422, problem
    assert headers["content-type"] == "application/problem+json"
    assert (problem["code"], problem["reason"], problem["account_id"]) == (
        "designated_withdrawal_refused",
        reason,
        str(account),
    )
    actor = f"user:{org.users['finance'].id}"
    alerts = await attempt_alerts(stack.database_url, org.id)
    assert len(alerts) == 1
    alert = alerts[0]
    assert (str(alert["id"]), alert["severity"], alert["created_by"], alert["resolved_at"]) == (
        problem["alert_id"],
        "HIGH",
        actor,
        None,
    )
    detail = orjson.loads(alert["detail"])
    assert (detail["reason"], detail["amount"], detail["actor"], detail["tax"]) == (reason, amount, actor, "PAYGW")
    refused = await audit_rows(stack.database_url, org.id, "designated.withdrawal_refused")
    assert [(row["actor"], orjson.loads(row["detail"])["alert_id"]) for row in refused] == [(actor, str(alert["id"]))]
    assert "source" not in orjson.loads(refused[0]["detail"])
    assert await balance(stack.database_url, org.id) == Decimal("500.00")

    # The same attempt retried under its key is answered again, without a second alert or audit record.
    status, again, headers = await call(http, "POST", url, token=tokens["finance"], json=body, headers=sent)
    assert (status, again, headers.get("idempotent-replay")) == (422, problem, "true")
    assert len(await attempt_alerts(stack.database_url, org.id)) == 1
    assert len(await audit_rows(stack.database_url, org.id, "designated.withdrawal_refused")) == 1
    assert await verify_org_chain(stack.database_url, org.id) is True


async def test_with_no_sources_every_deposit_is_refused(
    http: aiohttp.ClientSession, stack: CoreStack, org: Org
) -> None:
    tokens = await role_tokens(http, stack, org)
    status, problem, _ = await deposit(http, stack, tokens["admin"], account_id(org.id, "GST"), deposit_body())
    assert (status, problem["reason"]) == (422, "unlisted_source")
    alerts = await attempt_alerts(stack.database_url, org.id)
    detail = orjson.loads(alerts[0]["detail"])
    # The alert (the org's row, deleted with it) names what was tried, and its tag to match audit records against.
    assert detail["source"] == SOURCE and len(detail["source_tag"]) == 32
    async with connect(stack.database_url) as conn:
        assert await conn.fetchval("SELECT count(*) FROM core.designated_accounts WHERE org_id = $1", org.id) == 0


async def test_a_body_that_is_not_a_deposit_is_400_without_an_alert(
    http: aiohttp.ClientSession, stack: CoreStack, org: Org
) -> None:
    tokens = await role_tokens(http, stack, org)
    account = account_id(org.id, "PAYGW")
    for body in (
        deposit_body(amount="1e3"),
        deposit_body(amount=100),  # type: ignore[arg-type]
        deposit_body(source=" spaced"),
        deposit_body(reference=""),
        {**deposit_body(), "direction": "sideways"},
        {**deposit_body(), "extra": "x"},
    ):
        status, problem, _ = await deposit(http, stack, tokens["admin"], account, body)
        assert (status, problem["code"]) == (400, "invalid_body"), body
    assert await attempt_alerts(stack.database_url, org.id) == []


async def test_another_orgs_account_is_not_found(
    http: aiohttp.ClientSession, stack: CoreStack, org: Org, other_org: Org
) -> None:
    tokens = await role_tokens(http, stack, org)
    await allow(stack.database_url, other_org.id, SOURCE)
    stepped = await stepped_up(http, stack.auth.url, org.email("admin"))
    for account in (account_id(other_org.id, "PAYGW"), uuid.uuid4(), "not-a-uuid"):
        checks = [
            await deposit(http, stack, tokens["admin"], account, deposit_body()),  # type: ignore[arg-type]
            await call(http, "POST", account_url(stack, account, "withdrawals"), token=tokens["admin"], json={}),
            await call(http, "GET", account_url(stack, account, "sources"), token=tokens["admin"]),
            await call(
                http, "PUT", account_url(stack, account, "sources"), token=stepped.token, json={"sources": ["x"]}
            ),
        ]
        assert [(status, body["code"]) for status, body, _ in checks] == [(404, "not_found")] * len(checks)
    assert await balance(stack.database_url, other_org.id) == 0
    async with connect(stack.database_url) as conn:
        assert await conn.fetchval("SELECT count(*) FROM core.alerts") == 0
        assert [
            row["source"]
            for row in await conn.fetch("SELECT source FROM core.designated_sources WHERE org_id = $1", other_org.id)
        ] == [SOURCE]


async def test_changing_the_whitelist_needs_a_step_up(http: aiohttp.ClientSession, stack: CoreStack, org: Org) -> None:
    tokens = await role_tokens(http, stack, org)
    account = account_id(org.id, "GST")
    url = account_url(stack, account, "sources")
    # An admin without MFA enrolled is sent to step up like one with it.
    status, problem, _ = await call(http, "PUT", url, token=tokens["admin"], json={"sources": [SOURCE]})
    assert (status, problem["code"]) == (401, "mfa_required")
    stepped = await stepped_up(http, stack.auth.url, org.email("admin"))
    status, problem, _ = await call(http, "PUT", url, token=stepped.plain_token, json={"sources": [SOURCE]})
    assert (status, problem["code"]) == (401, "mfa_required")
    async with connect(stack.database_url) as conn:
        assert await conn.fetchval("SELECT count(*) FROM core.designated_sources") == 0

    status, body, _ = await call(http, "PUT", url, token=stepped.token, json={"sources": [SOURCE, "payroll-clearing"]})
    assert status == 200, body
    assert (body["account_id"], body["tax"]) == (str(account), "GST")
    assert [s["source"] for s in body["sources"]] == [SOURCE, "payroll-clearing"]
    assert {s["added_by"] for s in body["sources"]} == {f"user:{org.users['admin'].id}"}
    status, body, _ = await call(http, "PUT", url, token=stepped.token, json={"sources": ["payroll-clearing"]})
    assert [s["source"] for s in body["sources"]] == ["payroll-clearing"]
    for bad in ({"sources": ["a", "a"]}, {"sources": [f"s{i}" for i in range(MAX_SOURCES + 1)]}, {"sources": ["a!"]}):
        status, problem, _ = await call(http, "PUT", url, token=stepped.token, json=bad)
        assert (status, problem["code"]) == (400, "invalid_body"), bad
    changes = await audit_rows(stack.database_url, org.id, "designated_sources.replace")
    # The sources are named by their tags, never their text: what the second change removed is what the first added.
    (first_added, first_removed), (second_added, second_removed) = [
        (orjson.loads(r["detail"])["added"], orjson.loads(r["detail"])["removed"]) for r in changes
    ]
    assert (len(first_added), first_removed, second_added) == (2, [], [])
    assert second_removed == first_added[:1] and len(second_removed[0]) == 32
    assert SOURCE not in str([r["detail"] for r in changes]) and "payroll-clearing" not in str(
        [r["detail"] for r in changes]
    )

    status, body, _ = await call(http, "GET", url, token=tokens["finance"])
    assert (status, [s["source"] for s in body["sources"]]) == (200, ["payroll-clearing"])
    status, made, _ = await deposit(http, stack, tokens["finance"], account, deposit_body("40.00", "payroll-clearing"))
    assert (status, made["balance"]) == (201, "40.00")
    status, refused, _ = await deposit(http, stack, tokens["finance"], account, deposit_body("40.00", SOURCE))
    assert (status, refused["reason"]) == (422, "unlisted_source")


async def test_concurrent_deposits_and_bank_lines_raise_at_most_one_tax_gap(
    http: aiohttp.ClientSession, stack: CoreStack, org: Org
) -> None:
    tokens = await role_tokens(http, stack, org)
    await allow(stack.database_url, org.id, SOURCE)
    account = account_id(org.id, "PAYGW")
    day = current_cycle(datetime.now(UTC)).period_start.isoformat()
    writers = 20

    async def write(n: int) -> int:
        if n % 2:
            status, _, _ = await deposit(http, stack, tokens["finance"], account, deposit_body("10.00"))
        else:
            line = new_line(date=day, amount="-10000.00", gst_amount="0.00", paygw_amount="1000.00")
            status, _, _ = await post_line(http, stack, tokens["finance"], line)
        return status

    assert await asyncio.gather(*(write(n) for n in range(writers))) == [201] * writers
    assert await balance(stack.database_url, org.id) == Decimal("100.00")
    async with connect(stack.database_url) as conn:
        gaps = await conn.fetchval(
            "SELECT count(*) FROM core.alerts "
            "WHERE org_id = $1 AND type = 'SUSPICIOUS_TAX_GAP' AND resolved_at IS NULL",
            org.id,
        )
        assert gaps == 1
        assert await conn.fetchval("SELECT status FROM core.bas_cycles WHERE org_id = $1", org.id) == "BLOCKED"
    assert await verify_org_chain(stack.database_url, org.id) is True
