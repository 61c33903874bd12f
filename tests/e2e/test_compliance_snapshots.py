"""`POST/GET /monitoring/snapshots` through real auth, core and compliance processes: a snapshot's alert counts,
designated totals and BAS status are core's figures, its traffic counts the requests core served since the
sampler's earlier reading (the regulator, which nothing serves, unreachable), nothing in it is a float, and it is
stored with its audit record; every role may take and list them; bad bodies are 400 and store nothing; with core
stopped the answer is a quick 502/503 and nothing is stored. The sampler deletes samples past their time and says
once, not every run, that a service does not answer."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import aiohttp
import pytest
from auth_support import Org, call
from compliance_support import ComplianceStack, start_compliance
from core2_support import insert_alert
from core_support import connect, new_line, post_line, role_tokens
from test_core_internal import service_token

from services.core.designated import account_id
from services.core.store import accounts
from shared.roles import ROLES

pytestmark = pytest.mark.e2e

SAMPLE_WAIT_S = 15.0
CORE_DOWN_ANSWER_S = 5.0
SERVICES = ["auth", "core", "compliance", "regulator"]


def floats_in(document: Any, path: str = "$") -> list[str]:
    """The paths of every float in parsed JSON (a snapshot has none: it is hashed as canonical JSON)."""
    if isinstance(document, float):
        return [path]
    if isinstance(document, dict):
        return [p for key, value in document.items() for p in floats_in(value, f"{path}.{key}")]
    if isinstance(document, list):
        return [p for index, value in enumerate(document) for p in floats_in(value, f"{path}.{index}")]
    return []


async def stored(database_url: str, org: Org) -> tuple[int, int]:
    """(the org's snapshot rows, its snapshot.create audit records)."""
    async with connect(database_url) as conn:
        rows = await conn.fetchval("SELECT count(*) FROM compliance.snapshots WHERE org_id = $1", org.id)
        audited = await conn.fetchval(
            "SELECT count(*) FROM audit.records WHERE org_id = $1 AND action = 'snapshot.create'", org.id
        )
    return int(rows), int(audited)


async def wait_for_sample(database_url: str, source: str, after: datetime) -> None:
    """Until the sampler has stored a reading of `source` taken after `after`."""
    deadline = time.monotonic() + SAMPLE_WAIT_S
    while time.monotonic() < deadline:
        async with connect(database_url) as conn:
            if await conn.fetchval(
                "SELECT count(*) FROM compliance.metric_samples WHERE source = $1 AND taken_at > $2", source, after
            ):
                return
        await asyncio.sleep(0.2)
    raise AssertionError(f"no sample of {source} after {after} within {SAMPLE_WAIT_S}s")


async def seed(stack: ComplianceStack, org: Org) -> None:
    """Open alerts (2 HIGH, 1 MEDIUM; one HIGH resolved, not counted) and 400.00 deposited to PAYGW."""
    for severity in ("HIGH", "HIGH", "MEDIUM"):
        await insert_alert(stack.database_url, org.id, severity=severity)
    await insert_alert(stack.database_url, org.id, severity="HIGH", resolved=True)
    paygw = account_id(org.id, "PAYGW")
    async with connect(stack.database_url) as conn, conn.transaction():
        await accounts.ensure_account(conn, org.id, paygw, "PAYGW")
        await accounts.insert_transfer(
            conn, org_id=org.id, account_id=paygw, amount=Decimal("400.00"), source="ANZ-1", reference="r", actor="t"
        )


async def test_a_snapshot_holds_cores_figures_and_the_traffic_since_the_earlier_sample(
    start_service: Any, database_url: str, org: Org, other_org: Org, http: aiohttp.ClientSession
) -> None:
    stack = start_compliance(start_service, database_url, {"METRICS_SAMPLE_INTERVAL_S": "1"})
    base = f"{stack.compliance.url}/monitoring/snapshots"
    tokens = await role_tokens(http, stack.core_stack, org)
    await seed(stack, org)
    await insert_alert(database_url, other_org.id, severity="LOW")  # another org's: counted nowhere here

    # A reading of core exists before the requests below, so the snapshot's baseline is older than all of them.
    await wait_for_sample(database_url, "core", datetime.now(UTC) - timedelta(hours=1))
    made = 0
    for amount in ("-110.00", "-220.00"):
        status, body, _ = await post_line(http, stack.core_stack, tokens["finance"], new_line(amount=amount))
        assert status == 201, body
        made += 1
    for url, token, expected in (
        (f"{stack.core.url}/alerts", tokens["analyst"], 200),
        (f"{stack.core.url}/bank-lines/{uuid.uuid4()}", tokens["finance"], 404),
        (f"{stack.core.url}/bank-lines", None, 401),
        (f"{stack.core.url}/bank-lines/{uuid.uuid4()}", "not-a-token", 401),
    ):
        status, _, _ = await call(http, "GET", url, token=token)
        assert status == expected
        made += 1

    status, snapshot, headers = await call(http, "POST", base, token=tokens["admin"])
    assert status == 201, snapshot
    assert headers["content-type"].startswith("application/json")
    assert floats_in(snapshot) == []
    assert snapshot["taken_by"].startswith("user:")
    body = snapshot["body"]

    # Core's own figures, read the way compliance reads them.
    compliance_token = await service_token(http, stack.auth, "compliance")
    status, inputs, _ = await call(
        http, "GET", f"{stack.core.url}/internal/orgs/{org.id}/report-inputs", token=compliance_token
    )
    assert status == 200, inputs
    assert body["alerts"] == {
        "open_total": 3,
        "open_by_severity": {"HIGH": 2, "MEDIUM": 1, "LOW": 0},
        "open_high": 2,
    }
    assert body["alerts"]["open_by_severity"] == inputs["alerts"]["open_by_severity"]
    assert body["alerts"]["open_high"] == inputs["alerts"]["open_high_count"]
    assert body["designated_totals"] == inputs["designated_totals"] == {"paygw": "400.00", "gst": "0.00"}
    obligations = inputs["obligations"]
    assert body["bas"] == {
        "cycle_id": obligations["cycle_id"],
        "period": obligations["period"],
        "status": obligations["status"],
        "blockers": obligations["blockers"],
        "total_shortfall": obligations["total_shortfall"],
        "next_bas_due": obligations["next_bas_due"],
    }

    traffic = body["traffic"]
    by_service = {entry["service"]: entry for entry in traffic["services"]}
    assert [entry["service"] for entry in traffic["services"]] == SERVICES
    core = by_service["core"]
    assert core["status"] == "ok"
    assert core["requests"] >= made  # ours, and compliance's own calls of core's internal API
    assert core["errors_5xx"] == 0  # nothing above failed on core's side
    assert core["error_ratio_5xx"] == "0.0000"
    assert 0 <= core["window_seconds"] <= 300  # whole seconds: the sample may be under a second old
    assert Decimal(core["requests_per_second"]) > 0
    assert Decimal(core["requests_per_second"]).as_tuple().exponent == -2
    assert by_service["regulator"] == {
        "service": "regulator",
        "status": "unreachable",
        "window_seconds": None,
        "requests": None,
        "errors_5xx": None,
        "requests_per_second": None,
        "error_ratio_5xx": None,
    }
    assert by_service["auth"]["status"] == "ok"  # our logins are auth's traffic
    ok = [entry for entry in traffic["services"] if entry["status"] == "ok"]
    assert traffic["total"]["services_ok"] == len(ok)
    assert traffic["total"]["requests"] == sum(entry["requests"] for entry in ok)
    assert traffic["total"]["errors_5xx"] == sum(entry["errors_5xx"] for entry in ok) == 0
    assert traffic["window_seconds"] == max(entry["window_seconds"] for entry in ok)
    assert await stored(database_url, org) == (1, 1)
    async with connect(database_url) as conn:
        record = await conn.fetchrow(
            "SELECT actor, target, detail::text AS detail FROM audit.records "
            "WHERE org_id = $1 AND action = 'snapshot.create'",
            org.id,
        )
    assert record is not None
    assert (record["actor"], record["target"]) == (snapshot["taken_by"], f"snapshot:{snapshot['id']}")
    assert snapshot["id"] in record["detail"]

    # Every role may take one, with no body or `{}`; and list them, newest first, paged.
    taken = [snapshot["id"]]
    for role in ROLES:
        status, created, _ = await call(http, "POST", base, token=tokens[role], json={})
        assert status == 201, (role, created)
        taken.append(created["id"])
    assert await stored(database_url, org) == (len(taken), len(taken))
    listed: list[dict[str, Any]] = []
    cursor = None
    for _ in range(len(taken)):
        query = {"limit": "2", **({"cursor": cursor} if cursor else {})}
        status, page, _ = await call(http, "GET", base, token=tokens["auditor"], params=query)
        assert status == 200, page
        listed += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert [item["id"] for item in listed] == list(reversed(taken))
    assert listed[-1] == snapshot  # the stored body is the one answered
    assert floats_in(listed) == []

    # Another org sees none of them.
    other = await role_tokens(http, stack.core_stack, other_org)
    status, page, _ = await call(http, "GET", base, token=other["admin"])
    assert (status, page["items"]) == (200, [])

    # An Idempotency-Key replays the same snapshot.
    key = {"idempotency-key": str(uuid.uuid4())}
    status, first, _ = await call(http, "POST", base, token=tokens["admin"], headers=key)
    assert status == 201, first
    status, again, headers = await call(http, "POST", base, token=tokens["admin"], headers=key)
    assert (status, again, headers.get("idempotent-replay")) == (201, first, "true")
    taken.append(first["id"])
    assert await stored(database_url, org) == (len(taken), len(taken))


async def test_bad_requests_and_core_stopped_store_nothing(
    start_service: Any, database_url: str, org: Org, http: aiohttp.ClientSession
) -> None:
    stack = start_compliance(start_service, database_url)
    base = f"{stack.compliance.url}/monitoring/snapshots"
    tokens = await role_tokens(http, stack.core_stack, org)
    json_type = {"content-type": "application/json"}
    for data, headers, expected in (
        (b"[]", json_type, (400, "invalid_body")),
        (b'"{}"', json_type, (400, "invalid_body")),
        (b"{not json", json_type, (400, "invalid_body")),
        (b'{"window": 60}', json_type, (400, "invalid_body")),
        (b"{}", {"content-type": "text/plain"}, (415, "unsupported_media_type")),
    ):
        status, problem, _ = await call(http, "POST", base, token=tokens["admin"], data=data, headers=headers)
        assert (status, problem["code"]) == expected, (data, problem)
    for method in ("POST", "GET"):
        status, problem, _ = await call(http, method, base)
        assert (status, problem["code"]) == (401, "unauthorized")
    status, problem, _ = await call(http, "GET", base, token=tokens["admin"], params={"cursor": "nonsense"})
    assert (status, problem["code"]) == (400, "invalid_query")
    assert await stored(database_url, org) == (0, 0)

    # The first snapshot of a fresh stack: no sample yet, so services that answer have no baseline.
    status, snapshot, _ = await call(http, "POST", base, token=tokens["admin"])
    assert status == 201, snapshot
    statuses = {entry["service"]: entry["status"] for entry in snapshot["body"]["traffic"]["services"]}
    assert statuses == {"auth": "no_baseline", "core": "no_baseline", "compliance": "no_baseline",
                        "regulator": "unreachable"}  # fmt: skip
    assert snapshot["body"]["traffic"]["total"]["services_ok"] == 0

    stack.core.stop()
    started = time.monotonic()
    status, problem, _ = await call(http, "POST", base, token=tokens["admin"])
    assert time.monotonic() - started < CORE_DOWN_ANSWER_S
    assert status in (502, 503), problem
    assert problem["code"] == "upstream_unavailable"
    assert await stored(database_url, org) == (1, 1)


async def test_the_sampler_deletes_samples_older_than_fifteen_minutes(
    start_service: Any, database_url: str, http: aiohttp.ClientSession
) -> None:
    stack = start_compliance(start_service, database_url, {"METRICS_SAMPLE_INTERVAL_S": "1"})
    old = datetime.now(UTC) - timedelta(minutes=16)
    recent = datetime.now(UTC) - timedelta(minutes=14)
    async with connect(database_url) as conn:
        await conn.executemany(
            "INSERT INTO compliance.metric_samples (source, taken_at, requests, errors_5xx) VALUES ($1, $2, 5, 0)",
            [("core", old), ("core", recent)],
        )
    started = datetime.now(UTC)
    await wait_for_sample(database_url, "compliance", started)
    await wait_for_sample(database_url, "auth", started)
    async with connect(database_url) as conn:
        kept = await conn.fetch("SELECT taken_at FROM compliance.metric_samples WHERE taken_at < $1", started)
        sources = await conn.fetch("SELECT DISTINCT source FROM compliance.metric_samples")
    assert [row["taken_at"] for row in kept] == [recent]
    # The regulator answers nowhere: no sample of it, and one log line saying so however many runs missed it.
    assert {row["source"] for row in sources} == {"auth", "core", "compliance"}
    await wait_for_sample(database_url, "auth", datetime.now(UTC))
    unreachable = [
        r
        for r in stack.compliance.log_lines()
        if r.get("event") == "metrics_source_unreachable" and r.get("source") == "regulator"
    ]
    assert len(unreachable) == 1
    assert not [r for r in stack.compliance.log_lines() if r.get("event") == "metric_sampling_failed"]
