"""No GET of core changes any row but audit rows: every table of the core, auth, idempotency, pii and audit schemas
is snapshotted (row count and an md5 over its rows' text) around each GET route of core (and its HEAD), with real
auth and core processes and data of every kind present, and only `audit.records` may differ, by growing.

The GET routes are those of the route matrix's TABLE (tests/e2e/test_core_routes_matrix.py), which fails when core
serves a route the table does not list; so a new GET route is snapshotted here without a change. Each is called by
a caller it admits (the org's admin, stepped up; compliance's service token for internal routes) for two orgs: one
with lines, a BAS cycle row, alerts (raised by writes), a payment plan, deposits and a whitelist, and one that never
wrote anything, whose current cycle and designated accounts a GET must name without inserting them.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from auth_support import Org, call, login
from core2_support import stepped_up
from core_support import CoreStack, connect, new_line, post_line, start_core
from test_core_internal import service_token
from test_core_routes_matrix import TABLE, Rule

from services.core import bas
from services.core.designated import account_id
from services.core.evaluation import current_cycle

pytestmark = pytest.mark.e2e

SCHEMAS = ("core", "auth", "idempotency", "pii", "audit")
GROWS = "audit.records"
SOURCE = "ANZ-Business-1"

Snapshot = dict[str, tuple[int, str]]


async def snapshot(database_url: str) -> Snapshot:
    """(row count, md5 of the rows' text in order) of every table of SCHEMAS."""
    async with connect(database_url) as conn:
        tables = await conn.fetch(
            "SELECT table_schema || '.' || table_name AS name FROM information_schema.tables "
            "WHERE table_schema = ANY($1::text[]) AND table_type = 'BASE TABLE' ORDER BY 1",
            list(SCHEMAS),
        )
        found: Snapshot = {}
        for table in tables:
            name = table["name"]
            row = await conn.fetchrow(
                f"SELECT count(*) AS n, md5(coalesce(string_agg(t::text, ',' ORDER BY t::text), '')) AS digest "  # noqa: S608
                f"FROM {name} t"
            )
            found[name] = (int(row["n"]), str(row["digest"]))
    return found


def changes(before: Snapshot, after: Snapshot) -> dict[str, str]:
    """What changed outside the one table allowed to grow (and that table, when it shrank or was rewritten)."""
    changed = {}
    for name in sorted(before.keys() | after.keys()):
        old, new = before.get(name), after.get(name)
        if old == new:
            continue
        if name == GROWS and old is not None and new is not None and new[0] > old[0]:
            continue
        changed[name] = f"{old} -> {new}"
    return changed


async def write_everything(http: aiohttp.ClientSession, stack: CoreStack, org: Org, admin: str) -> uuid.UUID:
    """Through the real API: a whitelist, lines leaving a PAYGW shortfall (a SUSPICIOUS_TAX_GAP, a BLOCKED cycle),
    a deposit, a refused withdrawal (a HIGH alert), a payment plan, a resolved alert. The first line's id."""
    finance = str((await login(http, stack.auth.url, org.email("finance")))["access_token"])
    base = stack.core.url
    paygw = account_id(org.id, "PAYGW")
    today = bas.business_date(datetime.now(UTC))
    in_quarter = current_cycle(datetime.now(UTC)).period_start.isoformat()

    async def ok(method: str, path: str, token: str, body: Any, expected: int = 200) -> Any:
        status, answer, _ = await call(
            http, method, base + path, token=token, json=body, headers={"idempotency-key": str(uuid.uuid4())}
        )
        assert status == expected, f"{method} {path}: {status} {answer}"
        return answer

    await ok("PUT", f"/org/designated-accounts/{paygw}/sources", admin, {"sources": [SOURCE]})
    first = None
    for amount in ("-900.00", "-400.00"):
        status, line, _ = await post_line(
            http, stack, finance, new_line(date=in_quarter, amount=amount, paygw_amount="300.00"), key=amount
        )
        assert status == 201, line
        first = first or uuid.UUID(line["id"])
    deposit = {"amount": "150.00", "source": SOURCE, "reference": "INV-1"}
    await ok("POST", f"/org/designated-accounts/{paygw}/deposits", finance, deposit, 201)
    await ok("POST", f"/org/designated-accounts/{paygw}/withdrawals", finance, {"amount": "10.00"}, 422)
    plan = {"reason": "Cash flow", "weekly_amount": "100.00", "start_date": (today + timedelta(days=7)).isoformat()}
    await ok("POST", "/bas/payment-plans", finance, plan, 201)
    alerts = await ok("GET", "/alerts?status=open", finance, None)
    assert {a["type"] for a in alerts["items"]} == {"SUSPICIOUS_TAX_GAP", "DESIGNATED_WITHDRAWAL_ATTEMPT"}
    withdrawal = next(a for a in alerts["items"] if a["type"] == "DESIGNATED_WITHDRAWAL_ATTEMPT")
    await ok("POST", f"/alerts/{withdrawal['id']}/resolve", admin, {"note": "Checked with the bookkeeper"})
    assert first is not None
    return first


def target(rule: Rule, org: Org, line_id: uuid.UUID | None) -> str:
    path = rule.path.format(
        line_id=line_id or uuid.uuid4(), account_id=account_id(org.id, "GST"), org=org.id, org_id=org.id
    )
    if rule.path.endswith("/bank-lines/summary"):
        quarter = current_cycle(datetime.now(UTC))
        year_before = quarter.period_start.replace(year=quarter.period_start.year - 1)
        return path + f"?from={year_before}&to={quarter.period_end}&group=month"
    if rule.path == "/bank-lines":
        return path + "?limit=1"
    return path


async def test_no_get_of_core_changes_a_row_but_audit_rows(
    start_service: Any, database_url: str, org: Org, other_org: Org, http: aiohttp.ClientSession
) -> None:
    stack = start_core(start_service, database_url)
    admins = {o.id: (await stepped_up(http, stack.auth.url, o.email("admin"))).token for o in (org, other_org)}
    service = await service_token(http, stack.auth, "compliance")
    first_line = await write_everything(http, stack, org, admins[org.id])
    gets = [rule for rule in TABLE if rule.method == "GET"]
    assert len(gets) >= 12, "the matrix lists every GET route of core"

    before = await snapshot(database_url)
    checked = []
    for who, line_id in ((org, first_line), (other_org, None)):
        for rule in gets:
            url = stack.core.url + target(rule, who, line_id)
            token = service if rule.internal else admins[who.id]
            for method in ("GET", "HEAD"):
                status, body, _ = await call(http, method, url, token=token)
                expected = 404 if rule.path.endswith("{line_id}") and line_id is None else 200
                assert status == expected, (method, url, body)
                after = await snapshot(database_url)
                assert changes(before, after) == {}, f"{method} {rule.path} changed rows"
                before = after
                checked.append((method, rule.path))
    # The org that never wrote still has no cycle, account, alert or plan row: its GETs named them only.
    async with connect(database_url) as conn:
        for table in ("bas_cycles", "designated_accounts", "alerts", "payment_plans", "designated_transfers"):
            count = await conn.fetchval(f"SELECT count(*) FROM core.{table} WHERE org_id = $1", other_org.id)  # noqa: S608
            assert count == 0, table
    assert len(checked) == 2 * 2 * len(gets)
