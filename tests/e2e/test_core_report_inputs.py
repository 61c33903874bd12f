"""`GET /internal/orgs/{org_id}/report-inputs` through real auth and core processes: the org's cycles (current one
live, earlier ones as recorded, at most eight, labelled), payment plans without their free text, the alert summary,
the current obligations and the designated totals, from rows written by core's own store functions; JSON and
msgpack alike; service tokens with `core:read` only; no row written, not even an audit row; no PII."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

import aiohttp
import msgpack
import orjson
import pytest
from auth_support import Org, login
from core2_support import insert_alert
from core_support import connect, start_core
from test_core_internal import get, line, service_token

from services.core import bas
from services.core.designated import account_id
from services.core.evaluation import current_cycle
from services.core.internal import period_label
from services.core.obligations import ZERO, TaxAmounts, evaluate, totals_by_quarter
from services.core.store import accounts, cycles, insert_line, plans
from shared.contracts.core import REPORT_CYCLES

pytestmark = pytest.mark.e2e

MSGPACK = "application/msgpack"
PATH = "/internal/orgs/{org}/report-inputs"
PRIVATE = "private words of the org"


def test_period_labels_name_the_calendar_quarter_and_its_months() -> None:
    assert period_label(date(2025, 7, 1)) == "2025-Q3 (Jul-Sep)"
    assert period_label(date(2025, 10, 1)) == "2025-Q4 (Oct-Dec)"
    assert period_label(date(2026, 1, 1)) == "2026-Q1 (Jan-Mar)"
    assert period_label(date(2026, 4, 1)) == "2026-Q2 (Apr-Jun)"


def earlier(cycle: bas.Cycle, quarters: int) -> bas.Cycle:
    for _ in range(quarters):
        cycle = bas.cycle_for(cycle.period_start - timedelta(days=1))
    return cycle


def at_noon(day: date) -> datetime:
    return datetime.combine(day, time(12), tzinfo=bas.BAS_TIMEZONE)


async def write_history(database_url: str, org: Org, now: datetime) -> dict[str, Any]:
    """Ten earlier cycles (one lodged on time, one lodged late, one BLOCKED, the rest OPEN), lines (with the
    quarter's running totals) and a deposit in the current quarter, two plans, and alerts of every kind and
    severity; what the test expects to find named."""
    current = current_cycle(now)
    last, before = earlier(current, 1), earlier(current, 2)
    async with connect(database_url) as conn, conn.transaction():
        ids = {}
        for back in range(1, 11):
            ids[back] = await cycles.ensure_cycle(conn, org.id, earlier(current, back))
        # Lodged with nothing required, so the allocation gives the current quarter every deposited dollar.
        figures = evaluate(TaxAmounts(ZERO, ZERO), TaxAmounts(ZERO, ZERO))
        for back, lodged_at in ((1, at_noon(last.due_date)), (2, at_noon(before.due_date) + timedelta(days=1))):
            await cycles.lodge_cycle(
                conn, ids[back], cycles.Lodged(figures, lodged_at, "user:lodger", "recording", f"REC-{back}", "{}")
            )
        await cycles.set_status(conn, ids[3], "BLOCKED")
        day = current.period_start.isoformat()
        lines = [
            line(org.id, day, "-1300.00", "-300.00", "1000.00"),
            line(org.id, day, "-330.00", "-30.00", "0.00"),
            line(org.id, current.period_end.isoformat(), "660.00", "60.00", "0.00"),
        ]
        for written in lines:
            await insert_line(conn, written)
        await cycles.add_to_totals(conn, org.id, totals_by_quarter(lines))  # as every writer of lines does
        paygw = account_id(org.id, "PAYGW")
        await accounts.ensure_account(conn, org.id, paygw, "PAYGW")
        await accounts.insert_transfer(
            conn, org_id=org.id, account_id=paygw, amount=Decimal("400.00"), source="ANZ-1", reference="r1", actor="t"
        )
        rejected = await plans.insert_plan(
            conn,
            plans.NewPlan(uuid.uuid4(), org.id, ids[3], PRIVATE, Decimal("50.00"), before.due_date, PRIVATE, "user:f"),
        )
        assert rejected is not None
        await plans.decide_plan(conn, org.id, rejected.id, status="REJECTED", actor="user:a", note=PRIVATE)
    async with connect(database_url) as conn:  # a later transaction: a later requested_at
        submitted = await plans.insert_plan(
            conn,
            plans.NewPlan(uuid.uuid4(), org.id, ids[3], PRIVATE, Decimal("75.50"), before.due_date, None, "user:f"),
        )
        assert submitted is not None
    high_new = await insert_alert(database_url, org.id, severity="HIGH", message="Newest high")
    high_old = await insert_alert(
        database_url, org.id, severity="HIGH", message="Older high", created_at=now - timedelta(days=200)
    )
    await insert_alert(database_url, org.id, severity="MEDIUM")
    for _ in range(3):
        await insert_alert(database_url, org.id, severity="LOW")
    await insert_alert(database_url, org.id, severity="HIGH", resolved=True)
    await insert_alert(database_url, org.id, severity="LOW", resolved=True)
    long_ago = await insert_alert(database_url, org.id, severity="HIGH", resolved=True)
    async with connect(database_url) as conn:
        since = datetime.combine(current.period_start, time.min, tzinfo=bas.BAS_TIMEZONE)
        await conn.execute(
            "UPDATE core.alerts SET resolved_at = $2 WHERE id = $1", long_ago, since - timedelta(seconds=1)
        )
    return {
        "cycles": ids,
        "plans": [submitted.id, rejected.id],
        "open_high": [high_new, high_old],
        "current": current,
    }


async def counts(database_url: str) -> dict[str, int]:
    async with connect(database_url) as conn:
        return {
            table: int(await conn.fetchval(f"SELECT count(*) FROM {table}"))  # noqa: S608 (names from this list)
            for table in ("audit.records", "core.bas_cycles", "core.alerts", "core.payment_plans")
        }


async def test_report_inputs_carry_cycles_plans_alerts_obligations_and_totals(
    start_service: Any, database_url: str, org: Org, other_org: Org, http: aiohttp.ClientSession
) -> None:
    stack = start_core(start_service, database_url)
    now = datetime.now(UTC)
    written = await write_history(database_url, org, now)
    await write_history(database_url, other_org, now)  # another org's rows change nothing of this org's answer
    current: bas.Cycle = written["current"]
    before = await counts(database_url)
    token = await service_token(http, stack.auth, "compliance")
    url = stack.core.url + PATH.format(org=org.id)

    status, media_type, raw, _ = await get(http, url, token, {})
    assert (status, media_type) == (200, "application/json"), raw
    report = orjson.loads(raw)
    assert report["org_id"] == str(org.id)

    # Cycles: the current one (no row yet: derived, live BLOCKED), then seven earlier rows, newest first.
    listed = report["cycles"]
    assert len(listed) == REPORT_CYCLES
    assert listed[0] == {
        "id": str(bas.cycle_id(org.id, current.period_start)),
        "period": period_label(current.period_start),
        "period_start": current.period_start.isoformat(),
        "period_end": current.period_end.isoformat(),
        "due_date": current.due_date.isoformat(),
        "status": "BLOCKED",
        "current": True,
        "lodged_at": None,
        "lodged_on_time": None,
        "lodgement_reference": None,
    }
    assert [c["id"] for c in listed[1:]] == [str(written["cycles"][back]) for back in range(1, REPORT_CYCLES)]
    assert [c["status"] for c in listed[1:4]] == ["LODGED", "LODGED", "BLOCKED"]
    assert {c["status"] for c in listed[4:]} == {"OPEN"}
    assert [(c["lodged_on_time"], c["lodgement_reference"]) for c in listed[1:4]] == [
        (True, "REC-1"),
        (False, "REC-2"),
        (None, None),
    ]
    assert listed[1]["period"] == period_label(earlier(current, 1).period_start)
    assert not any(c["current"] for c in listed[1:])

    # Plans, newest first, without reason, notes or decision note.
    assert [p["id"] for p in report["payment_plans"]] == [str(i) for i in written["plans"]]
    assert [(p["status"], p["weekly_amount"]) for p in report["payment_plans"]] == [
        ("SUBMITTED", "75.50"),
        ("REJECTED", "50.00"),
    ]
    assert PRIVATE.encode() not in raw
    assert report["payment_plans"][1]["decided_at"] is not None

    # Alerts: open HIGH ones (newest first), and those resolved since the quarter began in Australia.
    summary = report["alerts"]
    assert summary["open_high_count"] == 2
    # Open ones of every severity (resolved ones are not counted), from the same one-pass count.
    assert summary["open_by_severity"] == {"HIGH": 2, "MEDIUM": 1, "LOW": 3}
    assert summary["open_total"] == 6
    assert [a["id"] for a in summary["open_high"]] == [str(i) for i in written["open_high"]]
    assert {(a["severity"], a["status"], a["resolution_note"]) for a in summary["open_high"]} == {
        ("HIGH", "open", None)
    }
    assert (summary["resolved_this_quarter"], summary["quarter_start"]) == (2, current.period_start.isoformat())

    # Obligations of the current quarter's lines against the designated balances.
    assert report["obligations"] == {
        "cycle_id": str(bas.cycle_id(org.id, current.period_start)),
        "period": period_label(current.period_start),
        "paygw": {"required": "1000.00", "secured": "400.00", "shortfall": "600.00", "status": "BLOCKED"},
        "gst": {"required": "0.00", "secured": "0.00", "shortfall": "0.00", "status": "READY"},
        "total_shortfall": "600.00",
        "status": "BLOCKED",
        "blockers": ["PAYGW short by $600.00"],
        "next_bas_due": bas.next_bas_due(bas.business_date(now)).isoformat(),
    }
    assert report["designated_totals"] == {"paygw": "400.00", "gst": "0.00"}

    # msgpack carries the same document; the regulator's token reads it too.
    regulator = await service_token(http, stack.auth, "regulator")
    status, media_type, packed, _ = await get(http, url, regulator, {}, accept=MSGPACK)
    assert (status, media_type) == (200, MSGPACK)
    unpacked = msgpack.unpackb(packed)
    assert {**unpacked, "generated_at": None} == {**report, "generated_at": None}

    # Reads only: not a row more anywhere, not even an audit row.
    assert await counts(database_url) == before


async def test_an_org_without_rows_gets_its_derived_current_cycle_and_zeros(
    start_service: Any, database_url: str, http: aiohttp.ClientSession
) -> None:
    stack = start_core(start_service, database_url)
    nobody = uuid.uuid4()
    token = await service_token(http, stack.auth, "compliance")
    status, _, raw, _ = await get(http, stack.core.url + PATH.format(org=nobody), token, {})
    assert status == 200, raw
    report = orjson.loads(raw)
    current = current_cycle(datetime.now(UTC))
    assert [(c["id"], c["status"], c["current"]) for c in report["cycles"]] == [
        (str(bas.cycle_id(nobody, current.period_start)), "READY", True)
    ]
    assert report["payment_plans"] == []
    assert report["alerts"]["open_high_count"] == 0
    assert (report["alerts"]["open_total"], report["alerts"]["open_by_severity"]) == (
        0,
        {"HIGH": 0, "MEDIUM": 0, "LOW": 0},
    )
    assert report["alerts"]["open_high"] == []
    assert report["obligations"]["total_shortfall"] == "0.00"
    assert report["obligations"]["blockers"] == []
    assert report["designated_totals"] == {"paygw": "0.00", "gst": "0.00"}
    async with connect(database_url) as conn:
        assert await conn.fetchval("SELECT count(*) FROM core.bas_cycles") == 0


async def test_only_services_with_core_read_get_report_inputs(
    start_service: Any, database_url: str, org: Org, http: aiohttp.ClientSession
) -> None:
    stack = start_core(start_service, database_url)
    url = stack.core.url + PATH.format(org=org.id)
    user = str((await login(http, stack.auth.url, org.email("admin")))["access_token"])
    core_own = await service_token(http, stack.auth, "core")  # a service without core:read
    compliance = await service_token(http, stack.auth, "compliance")

    for token, expected in (
        (None, (401, "unauthorized")),
        (user, (401, "invalid_token")),
        (core_own, (403, "forbidden")),
    ):
        status, _, raw, _ = await get(http, url, token, {})
        assert (status, orjson.loads(raw)["code"]) == expected
    status, _, raw, _ = await get(http, stack.core.url + PATH.format(org="not-a-uuid"), compliance, {})
    assert (status, orjson.loads(raw)["code"]) == (400, "bad_request")
    status, _, raw, _ = await get(http, url, compliance, {}, accept="text/html")
    assert (status, orjson.loads(raw)["code"]) == (406, "not_acceptable")
