"""The admins' regulator-credential routes and the health route against real processes (issue #14): roles and
step-up, the code shown once, revocation ending live sessions at once, other orgs' credentials unseen, audit rows."""

from __future__ import annotations

import uuid

import aiohttp
from auth_support import Org, call
from core2_support import stepped_up
from core_support import StartService, connect, role_tokens
from regulator_support import create_credential, regulator_login, start_regulator


async def test_admin_creates_lists_and_revokes_a_credential_of_their_org_only(
    start_service: StartService, database_url: str, http: aiohttp.ClientSession, org: Org, other_org: Org
) -> None:
    stack = start_regulator(start_service, database_url)
    base = f"{stack.url}/regulator/credentials"
    tokens = await role_tokens(http, stack.core_stack, org)
    admin = await stepped_up(http, stack.auth.url, org.email("admin"))

    # Roles and step-up: a finance user is forbidden, an admin without step-up must step up, no token is 401.
    status, body, _ = await call(http, "GET", base, token=tokens["finance"])
    assert (status, body["code"]) == (403, "forbidden")
    status, body, _ = await call(http, "POST", base, token=admin.plain_token, json={"name": "asic-1"})
    assert (status, body["code"]) == (401, "mfa_required")
    status, body, _ = await call(http, "GET", base)
    assert (status, body["code"]) == (401, "unauthorized")

    # Bad bodies are 400 naming the field, and change nothing.
    for bad in ({"name": "has space"}, {"name": "ok", "extra": 1}, {"name": "ok", "expires_in_days": 0}, {}):
        status, body, _ = await call(http, "POST", base, token=admin.token, json=bad)
        assert (status, body["code"]) == (400, "invalid_body"), bad

    status, created, _ = await call(
        http,
        "POST",
        base,
        token=admin.token,
        json={"name": "asic-1", "expires_in_days": 30},
        headers={"idempotency-key": "create-asic-1"},
    )
    assert status == 201, created
    code = created["access_code"]
    assert code.startswith("rgc.") and created["credential"]["name"] == "asic-1"
    assert created["credential"]["org_count"] == 1
    # A replay answers the same credential without the code: the stored answer holds no working secret.
    status, replayed, headers = await call(
        http,
        "POST",
        base,
        token=admin.token,
        json={"name": "asic-1", "expires_in_days": 30},
        headers={"idempotency-key": "create-asic-1"},
    )
    assert status == 201 and headers.get("idempotent-replay") == "true"
    assert replayed["credential"]["id"] == created["credential"]["id"] and "access_code" not in replayed
    status, body, _ = await call(http, "POST", base, token=admin.token, json={"name": "asic-1"})
    assert (status, body["code"]) == (409, "conflict")
    assert "never reused" in body["detail"] and "revoke it" not in body["detail"], body

    # The code logs in; a regulator token opens no admin route, and the listing never shows a hash.
    session = await regulator_login(http, stack, code, org.id)
    status, body, _ = await call(http, "GET", base, token=session["token"])
    assert (status, body["code"]) == (401, "invalid_token")
    other_code = await create_credential(database_url, [other_org.id], name="other-org-only")
    shared_code = await create_credential(database_url, [org.id, other_org.id], name="both-orgs")
    status, listed, _ = await call(http, "GET", base, token=admin.token)
    assert status == 200, listed
    assert [item["name"] for item in listed["items"]] == ["asic-1", "both-orgs"]
    assert all("hash" not in key for item in listed["items"] for key in item)
    assert listed["items"][0]["live_sessions"] == 1

    # Another org's credential is 404, and so is an id that is not one.
    async with connect(database_url) as conn:
        other_id = await conn.fetchval("SELECT id FROM regulator.credentials WHERE name = 'other-org-only'")
        both_id = await conn.fetchval("SELECT id FROM regulator.credentials WHERE name = 'both-orgs'")
    for bad_id in (other_id, uuid.uuid4(), "not-a-uuid"):
        status, body, _ = await call(http, "POST", f"{base}/{bad_id}/revoke", token=admin.token)
        assert (status, body["code"]) == (404, "not_found"), bad_id

    # Revocation ends the live session at once.
    status, revoked, _ = await call(http, "POST", f"{base}/{created['credential']['id']}/revoke", token=admin.token)
    assert status == 200, revoked
    assert revoked["scope"] == "credential" and revoked["credential"]["revoked_at"] is not None
    status, body, _ = await call(http, "POST", f"{stack.url}/regulator/logout", token=session["token"])
    assert (status, body["code"]) == (401, "invalid_token")
    status, body, _ = await call(
        http, "POST", f"{stack.url}/regulator/login", json={"access_code": code, "org_id": str(org.id)}
    )
    assert (status, body["code"]) == (401, "access_denied")

    # A credential spanning two orgs: the admin's org comes off it, the other org keeps it.
    org_session = await regulator_login(http, stack, shared_code, org.id)
    other_session = await regulator_login(http, stack, shared_code, other_org.id)
    status, revoked, _ = await call(http, "POST", f"{base}/{both_id}/revoke", token=admin.token)
    assert status == 200 and revoked["scope"] == "org" and revoked["credential"]["revoked_at"] is None
    status, body, _ = await call(http, "POST", f"{stack.url}/regulator/logout", token=org_session["token"])
    assert (status, body["code"]) == (401, "invalid_token")
    status, _, _ = await call(http, "POST", f"{stack.url}/regulator/logout", token=other_session["token"])
    assert status == 204
    await regulator_login(http, stack, other_code, other_org.id)

    async with connect(database_url) as conn:
        rows = await conn.fetch(
            "SELECT actor, action, target FROM audit.records WHERE org_id = $1 AND action LIKE 'regulator.credential.%'"
            " ORDER BY seq",
            org.id,
        )
        other_rows = await conn.fetch(
            "SELECT action FROM audit.records WHERE org_id = $1 AND action LIKE 'regulator.credential.%'",
            other_org.id,
        )
    admin_actor = f"user:{org.users['admin'].id}"
    assert [(r["actor"], r["action"]) for r in rows] == [
        (admin_actor, "regulator.credential.create"),
        (admin_actor, "regulator.credential.revoke"),
        (admin_actor, "regulator.credential.revoke"),
    ]
    assert rows[2]["target"] == f"regulator_credential:{both_id}"
    assert other_rows == [], "the other org's chain records nothing of this org's admin"


async def test_health_answers_without_a_login_and_fails_without_its_database(
    start_service: StartService, database_url: str, http: aiohttp.ClientSession
) -> None:
    stack = start_regulator(start_service, database_url)
    status, body, _ = await call(http, "GET", f"{stack.url}/regulator/health")
    assert status == 200, body
    assert body["status"] == "pass"
    assert body["checks"]["session_guard"]["status"] == "pass"
    assert body["checks"]["login_throttle"]["status"] == "pass"

    broken = start_service(
        "regulator",
        {
            "DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none",
            "AUTH_URL": stack.auth.url,
            "READY_CHECK_TIMEOUT_S": "0.5",
        },
    )
    status, body, _ = await call(http, "GET", f"{broken.url}/regulator/health")
    assert status == 503, body
    assert body["status"] == "fail" and body["checks"]["session_guard"]["status"] == "fail"
