"""The regulator's read-only API through real auth, core, compliance and regulator processes: a session for org A
reads A's report, alerts, snapshots, bank-line summary and evidence packs, and never B's, by any parameter; each
read writes exactly one audit row in A's chain with actor `regulator:<name>`; a user's token and an ended session
are 401; a stopped compliance is a quick 502 with no audit row; and nothing in core or compliance changes."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
from auth_support import Org, call
from core2_support import insert_alert
from core_support import connect, new_line, post_line, role_tokens
from regulator_support import create_credential, regulator_login, start_regulator
from test_compliance_internal import make_pack, row_counts

pytestmark = pytest.mark.e2e

VIEWS = (
    "compliance/report",
    "alerts",
    "monitoring/snapshots",
    "bank-lines/summary",
    "evidence",
)
# A stopped upstream is a refused connection: answered well inside a second, never near the 6 s deadline.
DOWN_ANSWER_S = 2.0


async def audit_rows(database_url: str, org_id: uuid.UUID, after_seq: int = 0) -> list[dict[str, Any]]:
    async with connect(database_url) as conn:
        rows = await conn.fetch(
            "SELECT seq, actor, action, target, detail::text AS detail FROM audit.records "
            "WHERE org_id = $1 AND seq > $2 ORDER BY seq",
            org_id,
            after_seq,
        )
    return [dict(row) for row in rows]


async def last_seq(database_url: str, org_id: uuid.UUID) -> int:
    async with connect(database_url) as conn:
        return int(await conn.fetchval("SELECT coalesce(max(seq), 0) FROM audit.records WHERE org_id = $1", org_id))


def without_audit(counts: dict[str, int]) -> dict[str, int]:
    return {table: count for table, count in counts.items() if not table.startswith("audit.")}


async def test_a_session_reads_its_orgs_data_only_and_each_read_is_audited_once(
    start_service: Any, database_url: str, org: Org, other_org: Org, http: aiohttp.ClientSession
) -> None:
    stack = start_regulator(start_service, database_url)
    base = f"{stack.url}/regulator"
    mine, theirs = await role_tokens(http, stack.core_stack, org), await role_tokens(http, stack.core_stack, other_org)
    today = datetime.now(UTC).date().isoformat()
    for amount, gst in (("-110.00", "-10.00"), ("220.00", "20.00")):
        line = new_line(date=today, amount=amount, gst_amount=gst)
        status, body, _ = await post_line(http, stack.core_stack, mine["finance"], line)
        assert status == 201, body
    status, body, _ = await post_line(http, stack.core_stack, theirs["finance"], new_line(date=today))
    assert status == 201, body
    alert_a = await insert_alert(database_url, org.id, severity="HIGH")
    await insert_alert(database_url, other_org.id, severity="LOW")
    pack_a = await make_pack(http, stack.compliance.url, mine["admin"])
    pack_b = await make_pack(http, stack.compliance.url, theirs["admin"])
    status, snapshot_a, _ = await call(
        http, "POST", f"{stack.compliance.url}/monitoring/snapshots", token=mine["admin"]
    )
    assert status == 201, snapshot_a
    name = f"reg-{uuid.uuid4().hex[:8]}"
    code = await create_credential(database_url, [org.id, other_org.id], name=name)
    token = (await regulator_login(http, stack, code, org.id))["token"]
    before = without_audit(await row_counts(database_url))
    seq = await last_seq(database_url, org.id)
    other_seq = await last_seq(database_url, other_org.id)

    async def read(path: str, action: str, target: str, **params: str) -> Any:
        nonlocal seq
        status, body, headers = await call(http, "GET", f"{base}/{path}", token=token, params=params)
        assert status == 200, (path, body)
        assert headers["content-type"].startswith("application/json")
        rows = await audit_rows(database_url, org.id, seq)
        assert [(row["actor"], row["action"], row["target"]) for row in rows] == [(f"regulator:{name}", action, target)]
        seq = rows[-1]["seq"]
        return body

    org_target = f"org:{org.id}"
    report = await read("compliance/report", "regulator.report.read", org_target)
    assert report["org_id"] == str(org.id) and report["alerts"]["open_high_count"] == 1
    alerts = await read("alerts", "regulator.alerts.read", org_target)
    assert [item["id"] for item in alerts["items"]] == [str(alert_a)]
    high = await read("alerts", "regulator.alerts.read", org_target, status="open", severity="HIGH", limit="1")
    assert [item["id"] for item in high["items"]] == [str(alert_a)]
    snapshots = await read("monitoring/snapshots", "regulator.snapshots.read", org_target)
    assert [item["id"] for item in snapshots["items"]] == [snapshot_a["id"]]
    summary = await read("bank-lines/summary", "regulator.bank_lines.read", org_target)
    assert summary["org_id"] == str(org.id) and summary["count"] == 2 and summary["amount"] == "110.00"
    assert len(summary["months"]) == 12 and summary["to"] == today and summary["months"][-1]["count"] == 2
    ranged = await read("bank-lines/summary", "regulator.bank_lines.read", org_target, **{"from": today, "to": today})
    assert ranged["count"] == 2 and len(ranged["months"]) == 1
    packs = await read("evidence", "regulator.evidence.list", org_target)
    assert [item["id"] for item in packs["items"]] == [pack_a]
    item = await read(f"evidence/{pack_a}", "regulator.evidence.read", f"evidence_pack:{pack_a}")
    assert item["export"]["id"] == pack_a and item["export"]["org_id"] == str(org.id)
    assert item["verification"]["valid"] is True

    # Org B by any parameter: an org parameter is unknown (400), B's pack is 404; neither is audited.
    for path in (*VIEWS, f"evidence/{pack_a}"):
        for parameter in ("org_id", "org", "orgId"):
            status, problem, _ = await call(
                http, "GET", f"{base}/{path}", token=token, params={parameter: str(other_org.id)}
            )
            assert status == 400 and problem["code"] == "invalid_query", (path, parameter, problem)
    for bad_pack in (pack_b, str(uuid.uuid4()), "not-a-pack"):
        status, problem, _ = await call(http, "GET", f"{base}/evidence/{bad_pack}", token=token)
        assert status == 404 and problem["code"] == "not_found", problem
    status, problem, _ = await call(
        http, "GET", f"{base}/bank-lines/summary", token=token, params={"from": "2015-01-01", "to": today}
    )
    assert status == 400 and problem["code"] == "invalid_query"
    status, problem, _ = await call(http, "GET", f"{base}/alerts", token=token, params={"cursor": "bm90LW91cnM"})
    assert status == 400 and problem["code"] == "invalid_query", problem
    assert await audit_rows(database_url, org.id, seq) == []
    assert await audit_rows(database_url, other_org.id, other_seq) == []

    # A user's token is not a regulator session; after logout the session is refused at once.
    for path in (*VIEWS, f"evidence/{pack_a}"):
        status, problem, _ = await call(http, "GET", f"{base}/{path}", token=mine["admin"])
        assert status == 401, (path, problem)
    status, _, _ = await call(http, "POST", f"{base}/logout", token=token)
    assert status == 204
    for path in (*VIEWS, f"evidence/{pack_a}"):
        status, problem, _ = await call(http, "GET", f"{base}/{path}", token=token)
        assert status == 401 and problem["code"] == "invalid_token", (path, problem)

    assert without_audit(await row_counts(database_url)) == before


async def test_a_stopped_upstream_is_a_quick_502_and_writes_no_audit_row(
    start_service: Any, database_url: str, org: Org, http: aiohttp.ClientSession
) -> None:
    stack = start_regulator(start_service, database_url)
    base = f"{stack.url}/regulator"
    code = await create_credential(database_url, [org.id])
    token = (await regulator_login(http, stack, code, org.id))["token"]
    status, _, _ = await call(http, "GET", f"{base}/compliance/report", token=token)
    assert status == 200
    stack.compliance.stop()
    seq = await last_seq(database_url, org.id)
    for path in ("compliance/report", "monitoring/snapshots", "evidence", f"evidence/{uuid.uuid4()}"):
        started = time.monotonic()
        status, problem, _ = await call(http, "GET", f"{base}/{path}", token=token)
        assert status == 502 and problem["code"] == "upstream_unavailable", (path, problem)
        assert time.monotonic() - started < DOWN_ANSWER_S
    stack.core.stop()
    for path in ("alerts", "bank-lines/summary"):
        status, problem, _ = await call(http, "GET", f"{base}/{path}", token=token)
        assert status == 502 and problem["code"] == "upstream_unavailable", (path, problem)
    assert await audit_rows(database_url, org.id, seq) == []
