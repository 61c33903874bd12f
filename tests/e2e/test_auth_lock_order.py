"""A refresh or a logout racing a disable or an admin MFA reset of the same user: neither answers 500 and the
user's sessions end revoked (issue #9, review of the finding 3 and 7 fixes).

Every path takes the user's row before the family's lock and token rows (services/auth/store.py). Before, a
refresh took its token row and then share-locked the user to mint, while a disable locked the user and then
revoked the token rows: each waited for the other, and PostgreSQL aborted one with deadlock_detected (a 500).
An MFA reset locked no user row, so its revoking UPDATE waited for the refresh's token row and then missed the
token that refresh had minted, which outlived the reset.

The window is made certain: the test holds the presented token row, so the first request waits on it after
taking every lock it takes before it; the second request is started and waits too; then the row is released."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
from auth_support import call, create_user, login
from test_auth_mfa import enrol, step_up
from test_auth_step_up_revocation import wait_until_blocked_on
from test_auth_tokens import admin_claims, server_key

from services.auth.passwords import token_hash
from shared.tokens import sign

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize(
    ("first", "second"),
    [("refresh", "disable"), ("refresh", "mfa_reset"), ("logout", "disable"), ("logout", "step_up")],
)
async def test_a_session_call_racing_a_disable_or_mfa_reset_neither_fails_nor_outlives_it(
    start_service, http, org, database_url, first, second
) -> None:
    auth = start_service("auth")
    await login(http, auth.url, org.email("finance"))  # creates the first signing key
    acting_admin = sign(admin_claims(org), await server_key(database_url))
    created = await create_user(http, auth.url, acting_admin, f"raced.user.{org.id.hex[:8]}@example.com", "finance")
    session = await login(http, auth.url, f"raced.user.{org.id.hex[:8]}@example.com")
    # Rotated once, so the family has two live rows for the revoking UPDATEs to take in some order.
    status, rotated, _ = await call(
        http, "POST", f"{auth.url}/auth/refresh", json={"refresh_token": session["refresh_token"]}
    )
    assert status == 200, rotated
    presented = rotated["refresh_token"]
    if second == "step_up":
        _, recovery_codes, _ = await enrol(http, auth.url, rotated["access_token"])

    holder = await asyncpg.connect(database_url)
    try:
        held = holder.transaction()
        await held.start()
        await holder.execute(
            "SELECT id FROM auth.refresh_tokens WHERE token_hash = $1 FOR UPDATE", token_hash(presented)
        )
        session_call = asyncio.create_task(
            call(http, "POST", f"{auth.url}/auth/{first}", json={"refresh_token": presented})
        )
        await wait_until_blocked_on(database_url, "refresh_tokens")
        if second == "disable":
            change = call(
                http, "PATCH", f"{auth.url}/users/{created['id']}", token=acting_admin, json={"disabled": True}
            )
        elif second == "mfa_reset":
            change = call(http, "DELETE", f"{auth.url}/users/{created['id']}/mfa", token=acting_admin)
        else:
            change = step_up(http, auth.url, rotated["access_token"], recovery_codes[0])
        changing = asyncio.create_task(change)
        await wait_until_blocked_on(database_url, "", waiting=2)  # on a row or on the family's advisory lock
        await held.rollback()
    finally:
        await holder.close()
    (first_status, first_body, _), (second_status, second_body, _) = await asyncio.gather(session_call, changing)

    deadlocks = [line for line in auth.output() + auth.stderr_lines() if "deadlock detected" in line.lower()]
    assert not deadlocks, deadlocks[0][deadlocks[0].lower().index("deadlock detected") - 200 :][:400]

    if second == "step_up":
        # The step-up checks the session after the logout committed: it has ended.
        assert (second_status, second_body["code"]) == (401, "invalid_token"), second_body
    else:
        assert second_status == (200 if second == "disable" else 204), second_body
    if first == "logout":
        assert first_status == 204, first_body
    else:
        assert first_status in (200, 401), first_body
    connection = await asyncpg.connect(database_url)
    try:
        live = await connection.fetchval(
            "SELECT count(*) FROM auth.refresh_tokens WHERE user_id = $1 AND revoked_at IS NULL", created["id"]
        )
    finally:
        await connection.close()
    assert live == 0, "a refresh token outlived the change"
    if first_status == 200:
        status, body, _ = await call(
            http, "POST", f"{auth.url}/auth/refresh", json={"refresh_token": first_body["refresh_token"]}
        )
        assert (status, body["code"]) == (401, "invalid_token"), body
