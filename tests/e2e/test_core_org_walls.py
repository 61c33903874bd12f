"""The walls around a deleted org, against real auth and core processes.

- Deposits and refused deposits racing the org's deletion never deadlock it: every write takes the org's deletion
  lock first (services/core/store/orgs.py `hold_org`), so the DELETE answers 200, no request is a 500, core logs no
  unhandled error, and nothing of the org is left.
- After a deletion whose auth part failed (the org's tokens still work), every route of core answers 410 `gone`
  with those tokens, and the org's audit chain gains nothing after `admin.org.delete`.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from typing import Any

import aiohttp
import pytest
from auth_support import Org, call, create_org
from core2_support import stepped_up
from core_support import CoreStack, connect, role_tokens, start_core
from test_core_accounts import allow
from test_core_internal import service_token
from test_core_routes_matrix import TABLE, send, url_of

from services.core.designated import account_id
from services.core.store import orgs
from shared import audit

pytestmark = pytest.mark.e2e

SOURCE = "Payroll clearing 062-000 12345678"
ROUNDS = 5
WRITERS = 3
DELETE_AFTER_S = 0.3
# A writer stops once its org is gone (410, or 401 once auth revoked the token), or after this many requests.
MAX_WRITES = 400


async def deposit_loop(http: aiohttp.ClientSession, stack: CoreStack, token: str, org: Org, n: int) -> Counter[int]:
    url = f"{stack.core.url}/org/designated-accounts/{account_id(org.id, 'PAYGW')}/deposits"
    statuses: Counter[int] = Counter()
    for i in range(MAX_WRITES):
        # Every other one from an unlisted source: refused with a HIGH alert, which is a write too.
        source = SOURCE if i % 2 == 0 else f"unlisted-{n}"
        body = {"amount": "10.00", "source": source, "reference": f"race-{n}-{i}"}
        status, _, _ = await call(http, "POST", url, token=token, json=body, headers={"idempotency-key": f"{n}-{i}"})
        statuses[status] += 1
        if status in (401, 410):
            break
    return statuses


async def org_rows(database_url: str, org_id: uuid.UUID) -> dict[str, int]:
    async with connect(database_url) as conn:
        return {
            table: await conn.fetchval(f"SELECT count(*) FROM core.{table} WHERE org_id = $1", org_id)  # noqa: S608
            for table in orgs.DELETION_ORDER
        }


async def test_deposits_racing_the_orgs_deletion_never_deadlock_it(
    start_service: Any, database_url: str, http: aiohttp.ClientSession
) -> None:
    stack = start_core(start_service, database_url)
    for round_ in range(ROUNDS):
        org = await create_org(database_url, f"Race Org {round_}")
        await allow(database_url, org.id, SOURCE)
        # One stepped-up admin writes and deletes (a login and a step-up per round stay under auth's rate limits).
        admin = await stepped_up(http, stack.auth.url, org.email("admin"))
        writers = [asyncio.create_task(deposit_loop(http, stack, admin.token, org, n)) for n in range(WRITERS)]
        await asyncio.sleep(DELETE_AFTER_S)
        status, deleted, _ = await call(
            http, "DELETE", f"{stack.core.url}/admin/delete/{org.id}", token=admin.token, json={"confirm": str(org.id)}
        )
        statuses = sum(await asyncio.gather(*writers), Counter())
        assert status == 200, (round_, deleted)
        assert set(statuses) <= {201, 422, 410, 401}, (round_, statuses)
        assert statuses[201] > 0 and statuses[422] > 0, (round_, statuses)
        assert await org_rows(database_url, org.id) == dict.fromkeys(orgs.DELETION_ORDER, 0)
        async with connect(database_url) as conn:
            assert (await audit.verify_org(conn, org.id)).ok
    events = [record.get("event") for record in stack.core.log_lines()]
    assert "unhandled_error" not in events and "transaction_conflict" not in events


async def test_every_route_of_a_deleted_org_is_410_and_its_chain_ends_with_the_deletion(
    start_service: Any, database_url: str, org: Org, other_org: Org, http: aiohttp.ClientSession
) -> None:
    # Core cannot reach auth's erase (wrong service secret): the deletion commits, the org's tokens live on.
    stack = start_core(start_service, database_url, {"SERVICE_CLIENT_SECRET": "not-the-secret-" + "x" * 32})
    healthy = start_core(start_service, database_url)
    await allow(database_url, org.id, SOURCE)
    # A stepped-up admin may call every user route of core: each one answers 410, whatever it would have done.
    admin = await stepped_up(http, stack.auth.url, org.email("admin"))
    status, problem, _ = await call(
        http, "DELETE", f"{stack.core.url}/admin/delete/{org.id}", token=admin.token, json={"confirm": str(org.id)}
    )
    assert (status, problem["code"]) == (502, "upstream_unavailable"), problem
    async with connect(database_url) as conn:
        before = [record async for record in audit.records(conn, org.id)]
    assert before[-1].action == "admin.org.delete"

    service = await service_token(http, healthy.auth, "compliance")
    # Both core processes: the one that deleted remembers it, the other reads the tombstone.
    for base in (stack.core.url, healthy.core.url):
        for rule in TABLE:
            if rule.method == "DELETE":
                continue  # the deletion's retry does auth's part (test_core_admin)
            token = service if rule.internal else admin.token
            status, code = await send(http, rule, url_of(base, rule, org), token)
            assert (status, code) == (410, "gone"), (base, rule)

    async with connect(database_url) as conn:
        after = [record async for record in audit.records(conn, org.id)]
        assert (await audit.verify_org(conn, org.id)).ok
    assert [r.action for r in after] == [r.action for r in before]
    assert await org_rows(database_url, org.id) == dict.fromkeys(orgs.DELETION_ORDER, 0)
    # Another org is served as before.
    others = await role_tokens(http, healthy, other_org)
    status, _, _ = await call(http, "GET", f"{healthy.core.url}/bank-lines", token=others["finance"])
    assert status == 200
    internal_alerts = next(rule for rule in TABLE if rule.internal and rule.path.endswith("/alerts"))
    status, _ = await send(http, internal_alerts, url_of(healthy.core.url, internal_alerts, other_org), service)
    assert status == 200
    for stack_ in (stack, healthy):
        assert "unhandled_error" not in [record.get("event") for record in stack_.core.log_lines()]
