"""`GET /compliance/report` through real auth, core and compliance processes: the figures of an org with bank lines
and alerts (posted through core's API) are core's own, every role may read it, the time is recorded in
`apgms_job_duration_seconds{job="report"}`, a core that is down is a quick 502 problem (and a pack then stores
nothing), one that never answers a 504 at the deadline: never a 500 or a hang."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
from auth_support import Org, call
from compliance_support import start_compliance
from core2_support import insert_alert
from core_support import StartService, connect, new_line, post_line, role_tokens
from test_core_internal import service_token

from services.compliance.core_client import CORE_CALL_DEADLINE_S
from services.core.evaluation import current_cycle
from shared.roles import ROLES

pytestmark = pytest.mark.e2e

# Core refuses the connection at once when it is down; the report must say so well inside the proxy's 10 s.
QUICK_FAILURE_S = 3.0


def job_count(metrics_text: str, job: str) -> float:
    prefix = f'apgms_job_duration_seconds_count{{job="{job}"}} '
    for sample in metrics_text.splitlines():
        if sample.startswith(prefix):
            return float(sample.removeprefix(prefix))
    return 0.0


async def metrics_of(http: aiohttp.ClientSession, url: str) -> str:
    async with http.get(f"{url}/metrics") as response:
        return await response.text()


async def core_inputs(http: aiohttp.ClientSession, stack: Any, org: Org) -> dict[str, Any]:
    token = await service_token(http, stack.auth, "compliance")
    status, body, _ = await call(http, "GET", f"{stack.core.url}/internal/orgs/{org.id}/report-inputs", token=token)
    assert status == 200, body
    return dict(body)


async def test_the_report_shows_cores_figures_to_every_role(
    start_service: StartService, database_url: str, org: Org, http: aiohttp.ClientSession
) -> None:
    stack = start_compliance(start_service, database_url)
    tokens = await role_tokens(http, stack.core_stack, org)
    day = current_cycle(datetime.now(UTC)).period_start.isoformat()
    for body in (
        new_line(date=day, amount="-1300.00", gst_amount="-100.00", paygw_amount="1000.00"),
        new_line(date=day, amount="2200.00", gst_amount="200.00", paygw_amount="0.00"),
    ):
        status, answer, _ = await post_line(http, stack.core_stack, tokens["finance"], body)
        assert status == 201, answer
    high = await insert_alert(database_url, org.id, severity="HIGH", message="Shortfall on PAYGW")
    await insert_alert(database_url, org.id, severity="HIGH", resolved=True)
    await insert_alert(database_url, org.id, severity="LOW")
    url = f"{stack.compliance.url}/compliance/report"

    reports = {}
    for role in ROLES:
        status, reports[role], headers = await call(http, "GET", url, token=tokens[role])
        assert status == 200, reports[role]
        assert headers["content-type"] == "application/json"
    report = reports["analyst"]
    inputs = await core_inputs(http, stack, org)

    assert report["org_id"] == str(org.id)
    assert datetime.fromisoformat(report["generated_at"]) <= datetime.fromisoformat(inputs["generated_at"])
    # Every figure is core's, as core's internal API gives it a moment later (nothing changed in between).
    assert report["bas_history"] == inputs["cycles"]
    assert report["payment_plans"] == inputs["payment_plans"] == []
    assert report["alerts"] == inputs["alerts"]
    assert report["obligations"] == inputs["obligations"]
    assert report["next_bas_due"] == inputs["obligations"]["next_bas_due"]
    assert report["designated_totals"] == inputs["designated_totals"]
    # ... and they are the figures of what was posted.
    (current,) = report["bas_history"]
    assert (current["current"], current["period_start"], current["lodged_at"]) == (True, day, None)
    assert report["obligations"]["paygw"]["required"] == "1000.00"
    assert report["obligations"]["paygw"]["secured"] == "0.00"
    assert report["obligations"]["paygw"]["shortfall"] == "1000.00"
    assert report["obligations"]["gst"]["required"] == "100.00"  # 200.00 collected less 100.00 of credits
    assert report["obligations"]["status"] == "BLOCKED"
    assert report["designated_totals"] == {"paygw": "0.00", "gst": "0.00"}
    # The tax-gap alert core raised itself when the lines made the quarter BLOCKED, and the one written here.
    assert report["alerts"]["open_high_count"] == 2
    written, raised = report["alerts"]["open_high"]  # newest first
    assert written["id"] == str(high)
    assert (raised["type"], raised["severity"], raised["status"]) == ("SUSPICIOUS_TAX_GAP", "HIGH", "open"), raised
    assert report["alerts"]["resolved_this_quarter"] == 1
    # Money never leaves as a number.
    assert isinstance(report["obligations"]["total_shortfall"], str)

    assert job_count(await metrics_of(http, stack.compliance.url), "report") == len(ROLES)

    status, problem, _ = await call(http, "GET", url)
    assert (status, problem["code"]) == (401, "unauthorized")


async def test_core_down_is_a_quick_upstream_problem(
    start_service: StartService, database_url: str, org: Org, http: aiohttp.ClientSession
) -> None:
    stack = start_compliance(start_service, database_url)
    tokens = await role_tokens(http, stack.core_stack, org)
    url = f"{stack.compliance.url}/compliance/report"
    status, _, _ = await call(http, "GET", url, token=tokens["admin"])
    assert status == 200
    stack.core.stop()

    started = time.monotonic()
    status, problem, headers = await call(http, "GET", url, token=tokens["admin"])
    assert time.monotonic() - started < QUICK_FAILURE_S
    assert (status, problem["code"]) == (502, "upstream_unavailable")
    assert headers["content-type"] == "application/problem+json"
    assert problem["request_id"] == headers["x-request-id"]
    failure = stack.compliance.wait_for_log(lambda r: r.get("event") == "core_call_failed")
    assert failure["path"] == f"/internal/orgs/{org.id}/report-inputs"
    # Timed all the same: a job that fails is part of what the histogram shows.
    assert job_count(await metrics_of(http, stack.compliance.url), "report") == 2

    # A pack needs core too: the same problem, and nothing stored, not even an audit record.
    async with connect(database_url) as conn:
        records = await conn.fetchval("SELECT count(*) FROM audit.records WHERE org_id = $1", org.id)
    status, problem, _ = await call(http, "POST", f"{stack.compliance.url}/compliance/evidence", token=tokens["admin"])
    assert (status, problem["code"]) == (502, "upstream_unavailable")
    async with connect(database_url) as conn:
        assert await conn.fetchval("SELECT count(*) FROM compliance.evidence_packs") == 0
        assert await conn.fetchval("SELECT count(*) FROM audit.records WHERE org_id = $1", org.id) == records


async def test_a_core_that_never_answers_is_a_504_at_the_deadline(
    start_service: StartService, database_url: str, org: Org, http: aiohttp.ClientSession
) -> None:
    accepted: list[asyncio.StreamWriter] = []

    async def hold(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)  # read nothing, answer nothing

    silent = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = silent.sockets[0].getsockname()[1]
    try:
        stack = start_compliance(start_service, database_url, {"CORE_URL": f"http://127.0.0.1:{port}"})
        tokens = await role_tokens(http, stack.core_stack, org)
        started = time.monotonic()
        status, problem, _ = await call(http, "GET", f"{stack.compliance.url}/compliance/report", token=tokens["admin"])
        waited = time.monotonic() - started
        assert (status, problem["code"]) == (504, "upstream_timeout")
        assert CORE_CALL_DEADLINE_S <= waited < CORE_CALL_DEADLINE_S + QUICK_FAILURE_S
        assert accepted, "compliance never called the stand-in core"
    finally:
        for writer in accepted:
            writer.close()
        silent.close()
        await silent.wait_closed()
