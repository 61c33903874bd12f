"""Auth's changes in the audit chain, through the real auth service: each admin change and enrolment leaves its
record in the change's transaction, and a change whose audit record cannot be written does not happen (500
`audit_failed`, counted and logged once)."""

from __future__ import annotations

import re
import uuid

import aiohttp
import asyncpg
import pytest
from auth_support import Org, call, login
from test_auth_mfa import StartService, assert_problem, code, enrol, post, step_up

from shared.audit import AuditRecord, records, verify_org

pytestmark = pytest.mark.e2e

NEW_USER = {"email": "new.hire@example.com", "password": "a-long-enough-password", "role": "analyst"}
REFUSE_AUDIT_INSERTS = """
CREATE FUNCTION audit.test_refuse_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION 'audit insert refused by the test'; END $$;
CREATE TRIGGER test_refuse_insert BEFORE INSERT ON audit.records
    FOR EACH ROW EXECUTE FUNCTION audit.test_refuse_insert();
"""


async def stepped_up_admin(http: aiohttp.ClientSession, url: str, org: Org) -> str:
    """An access token of the org's admin, enrolled in TOTP (which is audited) and stepped up."""
    token = (await login(http, url, org.email("admin")))["access_token"]
    secret, _, step = await enrol(http, url, token)
    status, body, _ = await step_up(http, url, token, code(secret, step))
    assert status == 200, body
    return str(body["access_token"])


async def chain_of(database_url: str, org_id: uuid.UUID) -> tuple[list[AuditRecord], bool]:
    connection = await asyncpg.connect(database_url)
    try:
        rows = [record async for record in records(connection, org_id)]
        return rows, (await verify_org(connection, org_id)).ok
    finally:
        await connection.close()


async def audit_failed_total(http: aiohttp.ClientSession, url: str) -> float:
    async with http.get(f"{url}/metrics") as response:
        text = await response.text()
    match = re.search(r'^security_events_total\{event="audit_failed"\} (\S+)$', text, re.MULTILINE)
    assert match, text
    return float(match.group(1))


async def test_user_changes_and_mfa_enrolment_leave_records_the_chain_verifies(
    start_service: StartService, http: aiohttp.ClientSession, org: Org, database_url: str
) -> None:
    auth = start_service("auth")
    admin = org.users["admin"]
    finance = org.users["finance"]
    token = await stepped_up_admin(http, auth.url, org)

    status, created, headers = await post(http, f"{auth.url}/users", token, NEW_USER)
    assert status == 201, created
    create_request = headers["x-request-id"]
    status, body, headers = await call(
        http, "PATCH", f"{auth.url}/users/{created['id']}", token=token, json={"role": "finance"}
    )
    assert status == 200, body
    update_request = headers["x-request-id"]
    status, body, headers = await call(http, "DELETE", f"{auth.url}/users/{finance.id}/mfa", token=token)
    assert status == 204, body
    reset_request = headers["x-request-id"]
    # A refused change leaves nothing: another org's user is 404 and no record.
    status, body, _ = await call(http, "DELETE", f"{auth.url}/users/{uuid.uuid4()}/mfa", token=token)
    assert_problem(status, body, 404, "not_found")

    rows, intact = await chain_of(database_url, org.id)
    assert intact
    admin_actor = f"user:{admin.id}"
    assert [(row.seq, row.action, row.actor, row.target) for row in rows] == [
        (1, "mfa.totp.enrol", admin_actor, f"user:{admin.id}"),
        (2, "user.create", admin_actor, f"user:{created['id']}"),
        (3, "user.update", admin_actor, f"user:{created['id']}"),
        (4, "mfa.reset", admin_actor, f"user:{finance.id}"),
    ]
    assert [row.request_id for row in rows[1:]] == [create_request, update_request, reset_request]
    assert rows[1].detail == {"user_id": created["id"], "role": "analyst"}
    assert rows[2].detail == {
        "user_id": created["id"],
        "role": {"old": "analyst", "new": "finance"},
        "disabled": {"old": False, "new": False},
    }
    assert rows[3].detail == {"user_id": str(finance.id)}
    stored_text = repr(rows)
    assert "@" not in stored_text, "no email in the audit trail"


async def test_a_change_whose_audit_record_fails_is_rolled_back_with_500_audit_failed(
    start_service: StartService, http: aiohttp.ClientSession, org: Org, database_url: str
) -> None:
    auth = start_service("auth")
    token = await stepped_up_admin(http, auth.url, org)
    connection = await asyncpg.connect(database_url)
    try:
        await connection.execute(REFUSE_AUDIT_INSERTS)
    finally:
        await connection.close()
    before = await audit_failed_total(http, auth.url)

    status, body, headers = await post(http, f"{auth.url}/users", token, NEW_USER)
    assert_problem(status, body, 500, "audit_failed")
    assert body["title"] == "Audit trail could not be written"
    assert "refused" not in str(body), "the cause stays in the log"
    request_id = headers["x-request-id"]
    assert body["request_id"] == request_id

    connection = await asyncpg.connect(database_url)
    try:
        users = await connection.fetchval(
            "SELECT count(*) FROM auth.users WHERE org_id = $1 AND email_key = $2", org.id, NEW_USER["email"]
        )
    finally:
        await connection.close()
    assert users == 0, "the user was created without its audit record"
    assert await audit_failed_total(http, auth.url) == before + 1

    auth.wait_for_log(lambda r: r.get("event") == "request" and r.get("request_id") == request_id)
    lines = [line for line in auth.log_lines() if line.get("request_id") == request_id]
    failed = [line for line in lines if line.get("event") == "audit_failed"]
    assert len(failed) == 1, lines
    assert (failed[0]["org_id"], failed[0]["action"], failed[0]["level"]) == (str(org.id), "user.create", "error")
    events = [line for line in lines if line.get("event") == "security_event"]
    assert [line["security.event"] for line in events] == ["audit_failed"]
    assert not [line for line in lines if line.get("event") == "unhandled_error"]
    assert NEW_USER["email"] not in str(lines)
    access = next(line for line in lines if line.get("event") == "request")
    assert access["status"] == 500

    rows, intact = await chain_of(database_url, org.id)
    assert intact
    assert [row.action for row in rows] == ["mfa.totp.enrol"]
