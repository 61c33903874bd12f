"""Logout, disabling a user and changing their role end their access tokens on every service within seconds
(issue #9, finding 7), through two auth processes and a second service that share only Redis."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg
import pytest
from auth_support import PASSWORD, call, create_user, login
from test_auth_step_up_revocation import wait_until_blocked_on
from test_auth_tokens import admin_claims, server_key

from shared.tokens import sign

pytestmark = pytest.mark.e2e

REVOKED_WITHIN_S = 5.0
POLL_INTERVAL_S = 0.1


async def refused_within(http, urls: list[str], token: str, deadline_s: float) -> dict[str, float]:
    """How long after the call each URL took to answer 401 to `token`; fails if one still accepts it at the
    deadline."""
    started = time.monotonic()
    refused_after: dict[str, float] = {}
    while len(refused_after) < len(urls):
        for url in urls:
            if url not in refused_after:
                status, body, _ = await call(http, "GET", url, token=token)
                if status == 401:
                    assert body["code"] == "invalid_token"
                    refused_after[url] = time.monotonic() - started
                else:
                    assert status == 200, body
        if time.monotonic() - started > deadline_s:
            pytest.fail(f"still accepted after {deadline_s} s: {sorted(set(urls) - set(refused_after))}")
        await asyncio.sleep(POLL_INTERVAL_S)
    return refused_after


async def accepted_soon(http, auth_url: str, email: str, url: str) -> tuple[dict[str, Any], int, Any]:
    """A fresh login's token and its answer at `url` once one is accepted (at most REVOKED_WITHIN_S): a token issued
    in the second of a revocation is refused for good (`iat` has one-second resolution), so log in again."""
    deadline = time.monotonic() + REVOKED_WITHIN_S
    while True:
        fresh = await login(http, auth_url, email)
        status, body, _ = await call(http, "GET", url, token=fresh["access_token"])
        if status != 401 or time.monotonic() > deadline:
            return fresh, status, body
        await asyncio.sleep(0.5)


@pytest.mark.parametrize("action", ["logout", "disable", "role_change"])
async def test_tokens_stop_working_on_every_service_within_5_s(start_service, http, org, database_url, action) -> None:
    auth = start_service("auth")
    other_auth = start_service("auth")
    guarded = start_service("guarded", {"AUTH_URL": auth.url}, module="tests.e2e.guarded_service")
    await login(http, auth.url, org.email("finance"))  # creates the first signing key
    acting_admin = sign(admin_claims(org), await server_key(database_url))  # stepped up, another admin
    victim_email = f"second.admin.{org.id.hex[:8]}@example.com"
    created = await create_user(http, auth.url, acting_admin, victim_email, "admin")
    session = await login(http, auth.url, victim_email)
    other_session = await login(http, other_auth.url, victim_email)
    urls = [f"{auth.url}/users", f"{other_auth.url}/users", f"{guarded.url}/whoami"]
    for url in urls:
        status, body, _ = await call(http, "GET", url, token=session["access_token"])
        assert status == 200, (url, body)

    if action == "logout":
        status, _, _ = await call(
            http, "POST", f"{auth.url}/auth/logout", json={"refresh_token": session["refresh_token"]}
        )
        assert status == 204
    else:
        change = {"disabled": True} if action == "disable" else {"role": "finance"}
        status, body, _ = await call(
            http, "PATCH", f"{auth.url}/users/{created['id']}", token=acting_admin, json=change
        )
        assert status == 200, body
        assert body["disabled"] is (action == "disable")
        assert body["role"] == ("finance" if action == "role_change" else "admin")

    refused_after = await refused_within(http, urls, session["access_token"], REVOKED_WITHIN_S)
    assert refused_after[urls[0]] < 0.5, "the auth process that revoked enforces it at once"

    if action == "logout":
        # Per session: the user's other session (another refresh family) keeps working.
        for url in urls:
            status, body, _ = await call(http, "GET", url, token=other_session["access_token"])
            assert status == 200, (url, body)
    else:
        # Per user: every session of theirs ends.
        await refused_within(http, urls, other_session["access_token"], 0.5)
    if action == "disable":
        status, body, _ = await call(
            http, "POST", f"{auth.url}/auth/login", json={"email": victim_email, "password": PASSWORD}
        )
        assert (status, body["code"]) == (401, "bad_credentials")
        status, _, _ = await call(
            http, "POST", f"{auth.url}/auth/refresh", json={"refresh_token": other_session["refresh_token"]}
        )
        assert status == 401
    if action == "role_change":
        fresh, status, body = await accepted_soon(http, auth.url, victim_email, f"{guarded.url}/whoami")
        assert status == 200, body
        assert body["role"] == "finance"
        status, body, _ = await call(http, "GET", f"{auth.url}/users", token=fresh["access_token"])
        assert (status, body["code"]) == (403, "forbidden")


async def test_update_user_rules(start_service, http, org, other_org, database_url) -> None:
    auth = start_service("auth")
    await login(http, auth.url, org.email("finance"))  # creates the first signing key
    key = await server_key(database_url)
    acting_admin = sign(admin_claims(org), key)
    target = org.users["analyst"].id

    async def patch(user_id: object, body: Any, token: str = acting_admin) -> tuple[int, Any]:
        status, answer, _ = await call(http, "PATCH", f"{auth.url}/users/{user_id}", token=token, json=body)
        return status, answer

    assert (await patch(other_org.users["analyst"].id, {"role": "admin"}))[0] == 404, "another org's user"
    assert (await patch("not-a-uuid", {"role": "admin"}))[0] == 404
    status, body = await patch(org.users["admin"].id, {"disabled": True})
    assert (status, body["code"]) == (409, "conflict"), "an admin cannot disable themselves"
    for bad in ({}, {"role": "root"}, {"disabled": "yes"}, {"role": "admin", "extra": 1}):
        status, body = await patch(target, bad)
        assert (status, body["code"]) == (400, "invalid_body"), bad
    not_stepped_up = sign(admin_claims(org, amr=["pwd"]), key)
    status, body = await patch(target, {"role": "admin"}, not_stepped_up)
    assert (status, body["code"]) == (401, "mfa_required")
    status, body = await patch(target, {"disabled": True})
    assert (status, body["disabled"], body["role"]) == (200, True, "analyst")
    status, body = await patch(target, {"disabled": False, "role": "auditor"})
    assert (status, body["disabled"], body["role"]) == (200, False, "auditor")
    assert (await login(http, auth.url, org.email("analyst")))["user"]["role"] == "auditor"


ROLE_CHANGE_TRIALS = 6
LOGIN_LOOPS = 4
LOGINS_PER_LOOP = 40


async def log_in_until_demoted(http, auth_url: str, email: str, addresses: str, demoted: asyncio.Event) -> list[str]:
    """Log in again and again (each from its own address) until a login after the demotion says `finance`."""
    tokens = []
    for attempt in range(LOGINS_PER_LOOP):
        status, body, _ = await call(
            http,
            "POST",
            f"{auth_url}/auth/login",
            json={"email": email, "password": PASSWORD},
            headers={"x-forwarded-for": f"{addresses}.{attempt + 1}"},
        )
        assert status == 200, body
        tokens.append(body["access_token"])
        if demoted.is_set() and body["user"]["role"] == "finance":
            break
    return tokens


async def test_a_login_racing_a_role_change_gets_no_token_that_outlives_it(
    start_service, http, org, database_url
) -> None:
    """Logins of an admin keep running while another admin demotes them. Before the user row was re-read under a
    lock when the tokens are minted, a login that had read the user before the change (then spent its argon2
    time) signed an admin token after it, which kept working: in every trial, once per login loop."""
    auth = start_service("auth", {"TRUSTED_PROXY_HOPS": "1"})
    await login(http, auth.url, org.email("finance"))  # creates the first signing key
    acting_admin = sign(admin_claims(org), await server_key(database_url))
    survivors = []
    for trial in range(ROLE_CHANGE_TRIALS):
        email = f"racer.{trial}.{org.id.hex[:8]}@example.com"
        created = await create_user(http, auth.url, acting_admin, email, "admin")
        demoted = asyncio.Event()

        async def demote(user_id: str, done: asyncio.Event) -> None:
            await asyncio.sleep(0.3)
            status, body, _ = await call(
                http, "PATCH", f"{auth.url}/users/{user_id}", token=acting_admin, json={"role": "finance"}
            )
            assert status == 200, body
            done.set()

        _, *minted = await asyncio.gather(
            demote(created["id"], demoted),
            *(
                log_in_until_demoted(http, auth.url, email, f"198.{trial}.{loop}", demoted)
                for loop in range(LOGIN_LOOPS)
            ),
        )
        for token in (token for tokens in minted for token in tokens):
            status, body, _ = await call(http, "GET", f"{auth.url}/users", token=token)
            assert status in (200, 401, 403), body
            if status == 200:
                survivors.append(trial)
    assert survivors == [], f"an admin token minted across the demotion kept working in trials {survivors}"


async def test_without_redis_the_auth_service_still_enforces_its_own_revocations(start_service, http, org) -> None:
    auth = start_service("auth", {"REDIS_URL": None})
    session = await login(http, auth.url, org.email("admin"))
    status, body, _ = await call(http, "GET", f"{auth.url}/users", token=session["access_token"])
    assert status == 200, body
    status, _, _ = await call(http, "POST", f"{auth.url}/auth/logout", json={"refresh_token": session["refresh_token"]})
    assert status == 204
    status, body, _ = await call(http, "GET", f"{auth.url}/users", token=session["access_token"])
    assert (status, body["code"]) == (401, "invalid_token")


async def test_two_admins_demoting_each_other_at_once_leave_the_org_an_admin(
    start_service, http, org, database_url
) -> None:
    """Both requests pass the guard (each token says admin) before either commits. Made certain by holding both
    users' row locks until both requests wait on them. Before the actor was re-read under a lock, both
    demotions went through and the org had no admin left."""
    auth = start_service("auth")
    await login(http, auth.url, org.email("finance"))  # creates the first signing key
    key = await server_key(database_url)
    first = org.users["admin"]
    created = await create_user(
        http, auth.url, sign(admin_claims(org), key), f"other.admin.{org.id.hex[:8]}@example.com", "admin"
    )
    second_id = created["id"]
    tokens = {str(first.id): sign(admin_claims(org), key), second_id: sign(admin_claims(org, sub=second_id), key)}

    holder = await asyncpg.connect(database_url)
    try:
        held = holder.transaction()
        await held.start()
        await holder.execute("SELECT 1 FROM auth.users WHERE id = ANY($1::uuid[]) FOR UPDATE", [first.id, second_id])
        demotions = [
            asyncio.create_task(
                call(http, "PATCH", f"{auth.url}/users/{target}", token=tokens[actor], json={"role": "analyst"})
            )
            for actor, target in ((str(first.id), second_id), (second_id, str(first.id)))
        ]
        await wait_until_blocked_on(database_url, "auth.users", waiting=2)
        await held.commit()
    finally:
        await holder.close()
    answers = [(status, body) for status, body, _ in await asyncio.gather(*demotions)]

    assert sorted(status for status, _ in answers) == [200, 403], answers
    assert [body["code"] for status, body in answers if status == 403] == ["forbidden"]
    connection = await asyncpg.connect(database_url)
    try:
        admins = await connection.fetchval(
            "SELECT count(*) FROM auth.users WHERE org_id = $1 AND role = 'admin' AND disabled_at IS NULL", org.id
        )
    finally:
        await connection.close()
    assert admins == 1
