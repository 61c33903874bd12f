"""A step-up that is checking its code while the user is demoted, disabled or logged out gets no token that
outlives the change (issue #9, finding 7, its step-up half).

The window is made certain instead of hit by luck: the test holds the row lock on the user's recovery codes, so
the step-up has read the user and checked the code but waits to mark it used; the change commits meanwhile, and
the lock is released only in the next whole second, so a token signed then has an `iat` at or after the
revocation's not-before time and would pass it if it still carried the old role or session."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg
import jwt
import pytest
from auth_support import call, create_user, login
from test_auth_mfa import enrol, step_up
from test_auth_tokens import admin_claims, server_key

from shared.tokens import sign

pytestmark = pytest.mark.e2e

WAIT_FOR_LOCK_S = 10.0
POLL_INTERVAL_S = 0.02


async def wait_until_blocked_on(database_url: str, table: str, waiting: int = 1) -> None:
    """Until `waiting` backends wait for a lock in a statement on `table` (polled outside any transaction: the
    activity view is a snapshot for the whole of one)."""
    deadline = time.monotonic() + WAIT_FOR_LOCK_S
    connection = await asyncpg.connect(database_url)
    try:
        while (
            await connection.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE $1", f"%{table}%"
            )
            < waiting
        ):
            assert time.monotonic() < deadline, f"nothing waited for a lock on {table}"
            await asyncio.sleep(POLL_INTERVAL_S)
    finally:
        await connection.close()


def claims_of(token: str) -> dict[str, Any]:
    return dict(jwt.decode(token, options={"verify_signature": False}))


@pytest.mark.parametrize("action", ["role_change", "disable", "logout"])
async def test_a_step_up_racing_a_change_gets_no_token_that_outlives_it(
    start_service, http, org, database_url, action
) -> None:
    auth = start_service("auth")
    await login(http, auth.url, org.email("finance"))  # creates the first signing key
    acting_admin = sign(admin_claims(org), await server_key(database_url))
    email = f"stepping.admin.{org.id.hex[:8]}@example.com"
    created = await create_user(http, auth.url, acting_admin, email, "admin")
    session = await login(http, auth.url, email)
    _, recovery_codes, _ = await enrol(http, auth.url, session["access_token"])

    holder = await asyncpg.connect(database_url)
    try:
        held = holder.transaction()
        await held.start()
        await holder.execute("SELECT id FROM auth.recovery_codes WHERE user_id = $1 FOR UPDATE", created["id"])
        stepping_up = asyncio.create_task(step_up(http, auth.url, session["access_token"], recovery_codes[0]))
        await wait_until_blocked_on(database_url, "recovery_codes")
        if action == "logout":
            status, body, _ = await call(
                http, "POST", f"{auth.url}/auth/logout", json={"refresh_token": session["refresh_token"]}
            )
            assert status == 204, body
        else:
            change = {"role": "analyst"} if action == "role_change" else {"disabled": True}
            status, body, _ = await call(
                http, "PATCH", f"{auth.url}/users/{created['id']}", token=acting_admin, json=change
            )
            assert status == 200, body
        await asyncio.sleep(1.05 - time.time() % 1)  # into the next second: see the module docstring
        await held.commit()
    finally:
        await holder.close()
    status, body, _ = await stepping_up

    if action == "role_change":
        assert status == 200, body
        assert claims_of(body["access_token"])["role"] == "analyst"
        status, answer, _ = await call(http, "GET", f"{auth.url}/users", token=body["access_token"])
        assert (status, answer["code"]) == (403, "forbidden"), "the step-up token kept the admin role"
    else:
        assert (status, body["code"]) == (401, "invalid_token"), body
