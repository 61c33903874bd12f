"""Who may enrol, replace and reset an authenticator, through the real auth service (issue #9, finding 5).

The attack: with a stolen 15-minute access token of an account without MFA, enrol the thief's authenticator, get
the recovery codes and step-up for good. Enrolling now needs the password again; replacing an authenticator
needs that and a step-up with the current one; an admin with step-up can remove a user's authenticator.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import aiohttp
import asyncpg
import pyotp
import pytest
from auth_support import PASSWORD, Org, call, login
from test_auth_mfa import (
    StartService,
    assert_problem,
    begin,
    code,
    enrol,
    fetchrows,
    me,
    post,
    settled_step,
    step_up,
    wrong_code,
)
from test_auth_step_up_revocation import wait_until_blocked_on
from test_auth_tokens import dev_box

from services.auth import store

pytestmark = pytest.mark.e2e


async def test_a_stolen_access_token_cannot_enrol_an_authenticator(
    start_service: StartService, http: aiohttp.ClientSession, org: Org, database_url: str
) -> None:
    auth = start_service("auth")
    user = org.users["finance"]
    stolen = (await login(http, auth.url, user.email))["access_token"]
    begin_url = f"{auth.url}/auth/mfa/totp/begin"

    status, body, _ = await post(http, begin_url, stolen, {})
    assert_problem(status, body, 400, "invalid_body")
    assert [e["path"] for e in body["errors"]] == ["password"]
    status, body, _ = await post(http, begin_url, stolen, {"password": "the thief's guess"})
    assert_problem(status, body, 401, "bad_credentials")
    assert await fetchrows(database_url, "SELECT 1 FROM auth.totp_credentials WHERE user_id = $1", user.id) == []
    assert (await me(http, auth.url, stolen))["mfa_enrolled"] is False

    # The real user, who knows the password, enrols as before.
    secret = await begin(http, auth.url, stolen, PASSWORD)
    step = await settled_step()
    status, body, _ = await post(http, f"{auth.url}/auth/mfa/totp/confirm", stolen, {"code": code(secret, step)})
    assert status == 200, body
    assert len(body["recovery_codes"]) == 10


async def test_wrong_passwords_at_enrolment_count_towards_the_login_lockout(
    start_service: StartService, http: aiohttp.ClientSession, org: Org
) -> None:
    auth = start_service("auth")
    email = org.email("analyst")
    token = (await login(http, auth.url, email))["access_token"]
    for _ in range(5):
        status, body, _ = await post(http, f"{auth.url}/auth/mfa/totp/begin", token, {"password": "a guess"})
        assert_problem(status, body, 401, "bad_credentials")
    status, body, headers = await post(http, f"{auth.url}/auth/mfa/totp/begin", token, {"password": PASSWORD})
    assert_problem(status, body, 429, "rate_limited")
    assert int(headers["retry-after"]) >= 1
    status, body, _ = await post(http, f"{auth.url}/auth/login", None, {"email": email, "password": PASSWORD})
    assert_problem(status, body, 429, "rate_limited")


async def test_replacing_an_authenticator_needs_the_password_and_a_step_up_with_the_current_one(
    start_service: StartService, http: aiohttp.ClientSession, org: Org, database_url: str
) -> None:
    auth = start_service("auth")
    user = org.users["finance"]
    token = (await login(http, auth.url, user.email))["access_token"]
    old, old_recovery, step = await enrol(http, auth.url, token)  # step - 1 used
    begin_url = f"{auth.url}/auth/mfa/totp/begin"
    [before] = await fetchrows(database_url, "SELECT * FROM auth.totp_credentials WHERE user_id = $1", user.id)

    status, body, _ = await post(http, begin_url, token, {"password": PASSWORD})
    assert_problem(status, body, 401, "mfa_required")
    status, body, _ = await step_up(http, auth.url, token, code(old, step))
    assert status == 200, body
    stepped_up = body["access_token"]
    status, body, _ = await post(http, begin_url, stepped_up, {"password": "not the password"})
    assert_problem(status, body, 401, "bad_credentials")
    [unchanged] = await fetchrows(database_url, "SELECT * FROM auth.totp_credentials WHERE user_id = $1", user.id)
    assert unchanged["secret_sealed"] == before["secret_sealed"]
    assert unchanged["pending_secret_sealed"] is None

    new = await begin(http, auth.url, stepped_up, PASSWORD)
    assert new != old
    # Until the new one is confirmed the current authenticator (and its recovery codes) keep working.
    status, body, _ = await step_up(http, auth.url, token, old_recovery[0])
    assert status == 200, body
    status, body, _ = await post(http, f"{auth.url}/auth/mfa/totp/confirm", token, {"code": wrong_code(new)})
    assert_problem(status, body, 401, "mfa_invalid")
    status, body, _ = await post(http, f"{auth.url}/auth/mfa/totp/confirm", token, {"code": code(new, step)})
    assert status == 200, body
    new_recovery = body["recovery_codes"]
    assert not set(new_recovery) & set(old_recovery)

    status, body, _ = await step_up(http, auth.url, token, code(old, step + 1))
    assert_problem(status, body, 401, "mfa_invalid")
    status, body, _ = await step_up(http, auth.url, token, old_recovery[1])
    assert_problem(status, body, 401, "mfa_invalid")
    status, body, _ = await step_up(http, auth.url, token, code(new, step + 1))
    assert status == 200, body
    status, body, _ = await step_up(http, auth.url, token, new_recovery[0])
    assert status == 200, body


async def test_an_admin_with_step_up_removes_a_users_authenticator_in_their_org_only(
    start_service: StartService, http: aiohttp.ClientSession, org: Org, other_org: Org, database_url: str
) -> None:
    auth = start_service("auth")
    user = org.users["finance"]
    user_session = await login(http, auth.url, user.email)
    user_token = user_session["access_token"]
    lost, _, _ = await enrol(http, auth.url, user_token)
    reset_url = f"{auth.url}/users/{user.id}/mfa"

    analyst = (await login(http, auth.url, org.email("analyst")))["access_token"]
    status, body, _ = await call(http, "DELETE", reset_url, token=analyst)
    assert_problem(status, body, 403, "forbidden")
    admin = (await login(http, auth.url, org.email("admin")))["access_token"]
    status, body, _ = await call(http, "DELETE", reset_url, token=admin)
    assert_problem(status, body, 401, "mfa_required")
    assert (await me(http, auth.url, user_token))["mfa_enrolled"] is True

    secret, _, step = await enrol(http, auth.url, admin)
    status, body, _ = await step_up(http, auth.url, admin, code(secret, step))
    assert status == 200, body
    stepped_up = body["access_token"]
    for elsewhere in (other_org.users["finance"].id, uuid.uuid4(), "not-a-uuid"):
        status, body, _ = await call(http, "DELETE", f"{auth.url}/users/{elsewhere}/mfa", token=stepped_up)
        assert_problem(status, body, 404, "not_found")
    other_id = other_org.users["finance"].id
    assert await fetchrows(database_url, "SELECT 1 FROM auth.users WHERE id = $1", other_id)

    status, body, _ = await call(http, "DELETE", reset_url, token=stepped_up)
    assert (status, body) == (204, None)
    reset_second = int(time.time())
    for table in ("totp_credentials", "recovery_codes"):
        assert await fetchrows(database_url, f"SELECT 1 FROM auth.{table} WHERE user_id = $1", user.id) == []  # noqa: S608
    # The user's sessions and tokens end with the authenticator (it may be in someone else's hands).
    status, body, _ = await call(http, "GET", f"{auth.url}/auth/me", token=user_token)
    assert_problem(status, body, 401, "invalid_token")
    refresh = {"refresh_token": user_session["refresh_token"]}
    status, body, _ = await post(http, f"{auth.url}/auth/refresh", None, refresh)
    assert_problem(status, body, 401, "invalid_token")
    # Tokens are refused up to the end of the revocation's second (`iat` has a one-second resolution).
    await asyncio.sleep(max(reset_second + 1 - time.time(), 0))
    user_token = (await login(http, auth.url, user.email))["access_token"]
    assert (await me(http, auth.url, user_token))["mfa_enrolled"] is False
    status, body, _ = await step_up(http, auth.url, user_token, code(lost, step + 1))
    assert_problem(status, body, 409, "conflict")
    # One audit record of the reset, in the acting admin's org (the 404s above left none).
    [audit] = await fetchrows(
        database_url, "SELECT org_id, actor, target FROM audit.records WHERE action = 'mfa.reset'"
    )
    assert tuple(audit) == (org.id, f"user:{org.users['admin'].id}", f"user:{user.id}")

    # The user enrols again, with their password.
    again, _, again_step = await enrol(http, auth.url, user_token)
    status, body, _ = await step_up(http, auth.url, user_token, code(again, again_step))
    assert status == 200, body


async def test_a_begin_racing_a_confirm_does_not_confirm_a_secret_the_user_never_saw(
    start_service: StartService, http: aiohttp.ClientSession, org: Org, database_url: str
) -> None:
    """The confirm checks its code against the secret it read; a `begin` committed before its update put another
    secret there. Made certain by holding the credential's row lock: the confirm waits at its update while the
    holder begins again (the store's own `begin_totp`) and commits. Before the update required the secret it
    checked, the newer secret was confirmed and recovery codes issued for it."""
    auth = start_service("auth")
    user = org.users["finance"]
    token = (await login(http, auth.url, user.email))["access_token"]
    seen = await begin(http, auth.url, token)
    step = await settled_step()
    holder = await asyncpg.connect(database_url)
    try:
        held = holder.transaction()
        await held.start()
        await holder.execute("SELECT 1 FROM auth.totp_credentials WHERE user_id = $1 FOR UPDATE", user.id)
        confirming = asyncio.create_task(
            post(http, f"{auth.url}/auth/mfa/totp/confirm", token, {"code": code(seen, step)})
        )
        await wait_until_blocked_on(database_url, "totp_credentials")
        unseen = pyotp.random_base32(length=32)
        assert await store.begin_totp(holder, user.id, dev_box().seal(unseen.encode(), associated=user.id.bytes))
        await held.commit()
    finally:
        await holder.close()
    status, body, _ = await confirming

    assert_problem(status, body, 409, "conflict")
    rows = await fetchrows(
        database_url, "SELECT confirmed_at, secret_sealed FROM auth.totp_credentials WHERE user_id = $1", user.id
    )
    assert rows[0]["confirmed_at"] is None, "a secret the user never saw was confirmed"
    assert await fetchrows(database_url, "SELECT 1 FROM auth.recovery_codes WHERE user_id = $1", user.id) == []
    assert dev_box().open(rows[0]["secret_sealed"], associated=user.id.bytes).decode() == unseen
