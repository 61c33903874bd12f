"""Compliance's internal routes through real auth, core and compliance processes: the regulator's service token
(`compliance:read`) reads an org's report, snapshots, evidence packs and one pack with its verification, for the
org of the path only, in JSON or msgpack; a user's token is 401, core's and compliance's own service tokens 403, a
malformed org 400, another org's pack 404, and no read writes a row anywhere."""

from __future__ import annotations

import base64
import hashlib
import uuid
from typing import Any

import aiohttp
import msgpack
import pytest
from auth_support import Org, call
from compliance_support import start_compliance
from core2_support import insert_alert
from core_support import connect, role_tokens
from test_core_internal import service_token

pytestmark = pytest.mark.e2e

MSGPACK = "application/msgpack"


async def row_counts(database_url: str) -> dict[str, int]:
    """Row count of every table of schemas compliance, core and audit."""
    async with connect(database_url) as conn:
        tables = await conn.fetch(
            "SELECT schemaname, tablename FROM pg_tables WHERE schemaname IN ('compliance', 'core', 'audit')"
        )
        return {
            f"{row['schemaname']}.{row['tablename']}": int(
                await conn.fetchval(f'SELECT count(*) FROM "{row["schemaname"]}"."{row["tablename"]}"')  # noqa: S608
            )
            for row in tables
        }


async def make_pack(http: aiohttp.ClientSession, base: str, token: str) -> str:
    status, body, _ = await call(http, "POST", f"{base}/compliance/evidence", token=token, json={"tag": "internal"})
    assert status == 201, body
    return str(body["id"])


async def test_the_regulators_token_reads_one_orgs_compliance_data_and_writes_nothing(
    start_service: Any, database_url: str, org: Org, other_org: Org, http: aiohttp.ClientSession
) -> None:
    stack = start_compliance(start_service, database_url)
    base = stack.compliance.url
    mine, theirs = await role_tokens(http, stack.core_stack, org), await role_tokens(http, stack.core_stack, other_org)
    await insert_alert(database_url, org.id, severity="HIGH")
    pack_a = await make_pack(http, base, mine["admin"])
    pack_b = await make_pack(http, base, theirs["admin"])
    status, snapshot_a, _ = await call(http, "POST", f"{base}/monitoring/snapshots", token=mine["admin"])
    assert status == 201, snapshot_a
    status, _, _ = await call(http, "POST", f"{base}/monitoring/snapshots", token=theirs["admin"])
    assert status == 201
    regulator = await service_token(http, stack.auth, "regulator")
    before = await row_counts(database_url)
    org_a = f"{base}/internal/orgs/{org.id}"

    # The report is the one the org's users see (but for when it was generated).
    status, report, _ = await call(http, "GET", f"{org_a}/report", token=regulator)
    assert status == 200, report
    status, own, _ = await call(http, "GET", f"{base}/compliance/report", token=mine["auditor"])
    assert status == 200
    assert {**report, "generated_at": None} == {**own, "generated_at": None}
    assert report["org_id"] == str(org.id) and report["alerts"]["open_high_count"] == 1
    async with http.get(f"{org_a}/report", headers={"authorization": f"Bearer {regulator}", "accept": MSGPACK}) as r:
        assert r.status == 200 and r.headers["content-type"].startswith(MSGPACK)
        assert msgpack.unpackb(await r.read())["org_id"] == str(org.id)

    status, snapshots, _ = await call(http, "GET", f"{org_a}/snapshots", token=regulator)
    assert status == 200, snapshots
    assert [item["id"] for item in snapshots["items"]] == [snapshot_a["id"]]
    status, page, _ = await call(http, "GET", f"{org_a}/evidence", token=regulator, params={"limit": "5"})
    assert status == 200, page
    assert [item["id"] for item in page["items"]] == [pack_a] and page["next_cursor"] is None
    assert "payload_base64" not in page["items"][0]

    status, item, _ = await call(http, "GET", f"{org_a}/evidence/{pack_a}", token=regulator)
    assert status == 200, item
    export, verdict = item["export"], item["verification"]
    assert export["id"] == pack_a and export["org_id"] == str(org.id)
    assert hashlib.sha256(base64.b64decode(export["payload_base64"])).hexdigest() == export["sha256"]
    assert verdict["id"] == pack_a and verdict["valid"] is True and verdict["failed"] is None

    # Only the org of the path: another org's pack is 404 there (and 200 under its own org).
    status, problem, _ = await call(http, "GET", f"{org_a}/evidence/{pack_b}", token=regulator)
    assert status == 404 and problem["code"] == "not_found"
    status, item_b, _ = await call(
        http, "GET", f"{base}/internal/orgs/{other_org.id}/evidence/{pack_b}", token=regulator
    )
    assert status == 200 and item_b["export"]["org_id"] == str(other_org.id)
    status, problem, _ = await call(http, "GET", f"{org_a}/evidence/{uuid.uuid4()}", token=regulator)
    assert status == 404

    # A malformed org (not a UUID, or not in its 8-4-4-4-12 form) is 400 naming org_id; an unknown parameter 400.
    for bad in ("not-an-org", org.id.hex):
        status, problem, _ = await call(http, "GET", f"{base}/internal/orgs/{bad}/report", token=regulator)
        assert status == 400 and problem["code"] == "bad_request", problem
        assert problem["errors"][0]["path"] == "org_id"
    status, problem, _ = await call(http, "GET", f"{org_a}/evidence", token=regulator, params={"org_id": "x"})
    assert status == 400 and problem["code"] == "invalid_query"

    # Scopes: a user's token is for another audience (401); core's and compliance's own lack compliance:read (403).
    core_token = await service_token(http, stack.auth, "core")
    compliance_token = await service_token(http, stack.auth, "compliance")
    for path in ("report", "snapshots", "evidence", f"evidence/{pack_a}"):
        status, problem, _ = await call(http, "GET", f"{org_a}/{path}", token=mine["admin"])
        assert status == 401 and problem["code"] == "invalid_token", (path, problem)
        for token in (core_token, compliance_token):
            status, problem, _ = await call(http, "GET", f"{org_a}/{path}", token=token)
            assert status == 403 and problem["code"] == "forbidden", (path, problem)
        status, _, _ = await call(http, "GET", f"{org_a}/{path}")
        assert status == 401

    assert await row_counts(database_url) == before
