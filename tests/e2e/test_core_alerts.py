"""GET /alerts and POST /alerts/{id}/resolve through real auth and core processes (issue #12), and the runbook's
smoke step through a real proxy: resolving without a step-up is 401 `mfa_required`, counted under the route
`/alerts/:id/resolve` at core (and in the proxy's /federate) and under the proxy's prefix `/alerts` at the proxy."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest
import pytest_asyncio
from auth_support import PASSWORD, Org, call, login
from core2_support import insert_alert, stepped_up
from core_support import CoreStack, connect, role_tokens, start_core
from prometheus_client.parser import text_string_to_metric_families
from test_proxy import start_proxy

from services.auth import store as auth_store
from services.auth.passwords import hash_password
from shared.audit import verify_org

pytestmark = pytest.mark.e2e

StartService = Callable[..., Any]
T0 = datetime(2025, 7, 1, 9, 0, tzinfo=UTC)
COUNT_WAIT_S = 10.0


@pytest_asyncio.fixture
async def stack(start_service: StartService, database_url: str) -> AsyncIterator[CoreStack]:
    yield start_core(start_service, database_url)


def alerts_url(stack: CoreStack) -> str:
    return f"{stack.core.url}/alerts"


def resolve_url(base: str, alert_id: uuid.UUID | str) -> str:
    return f"{base}/alerts/{alert_id}/resolve"


async def audit_rows(database_url: str, org_id: uuid.UUID, action: str) -> list[asyncpg.Record]:
    async with connect(database_url) as conn:
        return list(
            await conn.fetch(
                "SELECT actor, target, detail::text AS detail FROM audit.records "
                "WHERE org_id = $1 AND action = $2 ORDER BY seq",
                org_id,
                action,
            )
        )


async def alert_rows(database_url: str) -> list[asyncpg.Record]:
    async with connect(database_url) as conn:
        return list(await conn.fetch("SELECT * FROM core.alerts ORDER BY id"))


def sample(text: str, name: str, **labels: str) -> float:
    """The value of the sample `name` with (at least) `labels` in an exposition; 0 when there is none."""
    for family in text_string_to_metric_families(text):
        for found in family.samples:
            if found.name == name and all(found.labels.get(k) == v for k, v in labels.items()):
                return float(found.value)
    return 0.0


async def metrics(http: aiohttp.ClientSession, url: str, **params: str) -> str:
    async with http.get(url, params=params) as response:
        assert response.status == 200
        return await response.text()


# --- GET /alerts -----------------------------------------------------------------------------------------------------


async def test_every_role_lists_its_orgs_alerts_newest_first_with_filters_and_cursors(
    stack: CoreStack, http: aiohttp.ClientSession, org: Org, other_org: Org
) -> None:
    ids = [
        await insert_alert(
            stack.database_url,
            org.id,
            severity=("LOW", "MEDIUM", "HIGH")[n % 3],
            resolved=n % 2 == 1,
            created_at=T0 + timedelta(minutes=n),
            detail={"n": n},
        )
        for n in range(7)
    ]
    # Two alerts at the same instant: the id breaks the tie, and neither is skipped or repeated across pages.
    same = [await insert_alert(stack.database_url, org.id, created_at=T0 + timedelta(minutes=10)) for _ in range(2)]
    await insert_alert(stack.database_url, other_org.id, created_at=T0 + timedelta(minutes=20))
    newest_first = sorted(same, key=lambda i: i.bytes, reverse=True) + ids[::-1]
    tokens = await role_tokens(http, stack, org)

    for role, token in tokens.items():
        status, page, _ = await call(http, "GET", alerts_url(stack), token=token)
        assert status == 200, (role, page)
        assert [uuid.UUID(item["id"]) for item in page["items"]] == newest_first
        assert page["next_cursor"] is None

    token = tokens["auditor"]
    seen: list[uuid.UUID] = []
    query = {"limit": "3"}
    while True:
        status, page, _ = await call(http, "GET", alerts_url(stack), token=token, params=query)
        assert status == 200, page
        assert len(page["items"]) <= 3
        seen += [uuid.UUID(item["id"]) for item in page["items"]]
        if page["next_cursor"] is None:
            break
        query["cursor"] = page["next_cursor"]
    assert seen == newest_first

    status, page, _ = await call(http, "GET", alerts_url(stack), token=token, params={"status": "resolved"})
    assert [item["id"] for item in page["items"]] == [str(ids[n]) for n in (5, 3, 1)]
    assert {item["status"] for item in page["items"]} == {"resolved"}
    assert all(item["resolved_at"] and item["resolved_by"] for item in page["items"])
    status, page, _ = await call(
        http, "GET", alerts_url(stack), token=token, params={"status": "open", "severity": "HIGH"}
    )
    [item] = page["items"]  # n = 2; n = 5 is HIGH too but resolved
    assert (item["id"], item["severity"], item["status"]) == (str(ids[2]), "HIGH", "open")
    assert (item["detail"], item["resolved_at"], item["resolution_note"]) == ({"n": 2}, None, None)
    assert (item["type"], item["created_by"]) == ("TEST_ALERT", "test:fixture")
    assert datetime.fromisoformat(item["created_at"]) == T0 + timedelta(minutes=2)


async def test_a_cursor_works_only_for_its_org_and_filters_and_bad_queries_are_400(
    stack: CoreStack, http: aiohttp.ClientSession, org: Org, other_org: Org
) -> None:
    for n in range(3):
        await insert_alert(stack.database_url, org.id, severity="HIGH", created_at=T0 + timedelta(minutes=n))
        await insert_alert(stack.database_url, other_org.id, severity="HIGH", created_at=T0 + timedelta(minutes=n))
    mine = (await role_tokens(http, stack, org))["analyst"]
    theirs = (await role_tokens(http, stack, other_org))["analyst"]
    status, page, _ = await call(http, "GET", alerts_url(stack), token=mine, params={"limit": "1", "severity": "HIGH"})
    assert status == 200, page
    cursor = page["next_cursor"]
    assert cursor is not None

    refused = [
        (theirs, {"limit": "1", "severity": "HIGH", "cursor": cursor}),  # another org's cursor
        (mine, {"limit": "1", "cursor": cursor}),  # made for other filters
        (mine, {"limit": "1", "severity": "HIGH", "cursor": cursor[:-1] + ("A" if cursor[-1] != "A" else "B")}),
    ]
    for token, params in refused:
        status, body, _ = await call(http, "GET", alerts_url(stack), token=token, params=params)
        assert (status, body["code"]) == (400, "invalid_query"), body
        assert [error["path"] for error in body["errors"]] == ["cursor"]
    for params in ({"status": "closed"}, {"severity": "CRITICAL"}, {"limit": "0"}, {"limit": "201"}, {"type": "x"}):
        status, body, _ = await call(http, "GET", alerts_url(stack), token=mine, params=params)
        assert (status, body["code"]) == (400, "invalid_query"), (params, body)


async def test_a_read_writes_its_audit_row_and_nothing_else(
    stack: CoreStack, http: aiohttp.ClientSession, org: Org
) -> None:
    for n in range(2):
        await insert_alert(stack.database_url, org.id, severity="HIGH", created_at=T0 + timedelta(minutes=n))
    before = await alert_rows(stack.database_url)
    token = (await role_tokens(http, stack, org))["finance"]
    status, page, _ = await call(http, "GET", alerts_url(stack), token=token, params={"severity": "HIGH"})
    assert status == 200, page
    assert await alert_rows(stack.database_url) == before
    [row] = await audit_rows(stack.database_url, org.id, "alerts.read")
    assert row["target"] == "alerts"
    assert row["actor"] == f"user:{org.users['finance'].id}"
    assert orjson.loads(row["detail"]) == {"count": 2, "filters": {"severity": "HIGH"}, "first_page": True}


# --- POST /alerts/{id}/resolve ---------------------------------------------------------------------------------------


async def test_resolving_needs_a_step_up_for_every_user_enrolled_or_not(
    stack: CoreStack, http: aiohttp.ClientSession, org: Org
) -> None:
    alert_id = await insert_alert(stack.database_url, org.id, severity="HIGH")
    admin = await stepped_up(http, stack.auth.url, org.email("admin"))  # enrolled, and stepped up
    never_enrolled = str((await login(http, stack.auth.url, org.email("finance")))["access_token"])
    for token in (never_enrolled, admin.plain_token):
        status, body, _ = await call(
            http, "POST", resolve_url(stack.core.url, alert_id), token=token, json={"note": "x"}
        )
        assert (status, body["code"]) == (401, "mfa_required"), body
        assert "/auth/mfa/totp/begin" in body["detail"]
    tokens = await role_tokens(http, stack, org)
    for role in ("analyst", "auditor"):
        status, body, _ = await call(
            http, "POST", resolve_url(stack.core.url, alert_id), token=tokens[role], json={"note": "x"}
        )
        assert (status, body["code"]) == (403, "forbidden"), (role, body)
    assert all(row["resolved_at"] is None for row in await alert_rows(stack.database_url))
    assert await audit_rows(stack.database_url, org.id, "alert.resolve") == []


async def test_a_stepped_up_finance_user_resolves_once_then_409_and_the_audit_row_has_no_note(
    stack: CoreStack, http: aiohttp.ClientSession, org: Org, other_org: Org
) -> None:
    alert_id = await insert_alert(stack.database_url, org.id, type="SUSPICIOUS_TAX_GAP", severity="HIGH")
    theirs = await insert_alert(stack.database_url, other_org.id, severity="HIGH")
    finance = await stepped_up(http, stack.auth.url, org.email("finance"))
    note = "Called Jane Citizen on 0412 345 678; the deposit was made"
    url = resolve_url(stack.core.url, alert_id)

    for bad in ({}, {"note": ""}, {"note": "   "}, {"note": "x" * 1001}, {"note": "ok", "extra": 1}, {"note": 5}):
        status, body, _ = await call(http, "POST", url, token=finance.token, json=bad)
        assert (status, body["code"]) == (400, "invalid_body"), (bad, body)
    for missing in (theirs, uuid.uuid4(), "not-a-uuid"):
        status, body, _ = await call(
            http, "POST", resolve_url(stack.core.url, missing), token=finance.token, json={"note": "x"}
        )
        assert (status, body["code"]) == (404, "not_found"), body

    status, resolved, _ = await call(http, "POST", url, token=finance.token, json={"note": note})
    assert status == 200, resolved
    assert (resolved["id"], resolved["status"], resolved["resolution_note"]) == (str(alert_id), "resolved", note)
    assert resolved["resolved_by"] == f"user:{org.users['finance'].id}"
    status, body, _ = await call(http, "POST", url, token=finance.token, json={"note": "again"})
    assert (status, body["code"]) == (409, "already_resolved"), body

    [row] = await audit_rows(stack.database_url, org.id, "alert.resolve")
    assert row["target"] == f"alert:{alert_id}"
    assert orjson.loads(row["detail"]) == {
        "id": str(alert_id),
        "type": "SUSPICIOUS_TAX_GAP",
        "severity": "HIGH",
        "note_chars": len(note),
    }
    async with connect(stack.database_url) as conn:
        assert (await verify_org(conn, org.id)).ok
        assert await conn.fetchval("SELECT resolved_at FROM core.alerts WHERE id = $1", theirs) is None
    # A new SUSPICIOUS_TAX_GAP may be raised once the open one is resolved (the partial unique index allows it).
    await insert_alert(stack.database_url, org.id, type="SUSPICIOUS_TAX_GAP", severity="HIGH")


async def test_resolution_is_idempotent_and_racing_resolutions_have_one_winner(
    stack: CoreStack, http: aiohttp.ClientSession, org: Org
) -> None:
    admin = await stepped_up(http, stack.auth.url, org.email("admin"))
    first = await insert_alert(stack.database_url, org.id)
    url = resolve_url(stack.core.url, first)
    headers = {"idempotency-key": "resolve-1"}
    status, resolved, _ = await call(http, "POST", url, token=admin.token, json={"note": "done"}, headers=headers)
    assert status == 200, resolved
    status, replayed, replay_headers = await call(
        http, "POST", url, token=admin.token, json={"note": "done"}, headers=headers
    )
    assert (status, replayed) == (200, resolved)
    assert replay_headers["idempotent-replay"] == "true"
    status, body, _ = await call(http, "POST", url, token=admin.token, json={"note": "other"}, headers=headers)
    assert (status, body["code"]) == (409, "idempotency_conflict"), body

    second = await insert_alert(stack.database_url, org.id)
    results = await asyncio.gather(
        *(
            call(http, "POST", resolve_url(stack.core.url, second), token=admin.token, json={"note": f"race {n}"})
            for n in range(8)
        )
    )
    statuses = sorted(status for status, _, _ in results)
    assert statuses == [200] + [409] * 7, results
    assert len(await audit_rows(stack.database_url, org.id, "alert.resolve")) == 2


# --- the runbook's smoke step ----------------------------------------------------------------------------------------


async def test_through_the_proxy_resolving_without_step_up_is_a_counted_401(
    start_service: StartService, stack: CoreStack, http: aiohttp.ClientSession, org: Org, database_url: str
) -> None:
    # A user who never enrolled: the runbook's operator has no authenticator yet.
    async with connect(database_url) as conn:
        fresh = await auth_store.create_user(
            conn, org.id, f"new.finance.{org.id.hex[:8]}@example.com", hash_password(PASSWORD), "finance"
        )
    assert fresh is not None
    proxy = start_proxy(start_service, {"auth": [stack.auth.url], "core": [stack.core.url]})
    alert_id = await insert_alert(database_url, org.id, severity="HIGH")
    token = str((await login(http, proxy.url, fresh.email))["access_token"])
    labels = {"method": "POST", "route": "/alerts/:id/resolve", "status": "401"}
    before = sample(await metrics(http, f"{stack.core.url}/metrics"), "apgms_api_requests_total", **labels)

    status, body, _ = await call(http, "POST", resolve_url(proxy.url, alert_id), token=token, json={"note": "smoke"})
    assert (status, body["code"]) == (401, "mfa_required"), body

    # A request is counted once its answer is sent, so a scrape right after the answer may be a moment early.
    proxy_labels = {**labels, "route": "/alerts"}
    federate = {"match[]": '{__name__="apgms_api_requests_total"}'}
    counted = {
        "core": lambda: counter(http, f"{stack.core.url}/metrics", labels, before + 1),
        "proxy": lambda: counter(http, f"{proxy.url}/metrics", proxy_labels, 1),
        # Core's own series as the runbook's Prometheus scrapes it, through the proxy's /federate.
        "federated": lambda: counter(
            http, f"{proxy.url}/federate", {**labels, "service": "core"}, before + 1, federate
        ),
    }
    for where, check in counted.items():
        assert await check(), where


async def counter(
    http: aiohttp.ClientSession, url: str, labels: dict[str, str], want: float, params: dict[str, str] | None = None
) -> bool:
    """Whether the exposition at `url` reaches `want` for apgms_api_requests_total with `labels` in time."""
    deadline = asyncio.get_running_loop().time() + COUNT_WAIT_S
    while True:  # the proxy's /federate fetches the services' expositions at most once a second
        if sample(await metrics(http, url, **(params or {})), "apgms_api_requests_total", **labels) == want:
            return True
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.2)
