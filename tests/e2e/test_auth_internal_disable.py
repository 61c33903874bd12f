"""Auth's internal route `POST /internal/orgs/{org_id}/erase` (core's admin deletion of an org), against a real auth
process: with core's service token (scope `auth:admin`) every user of the org is disabled and their personal data
erased, their sessions and access tokens end, the org's API clients stop working, the audit chain gains a verified
`org.erase` record, and another org is untouched. Other services' tokens are 403, user tokens 401."""

from __future__ import annotations

import uuid
from typing import Any

import aiohttp
import asyncpg
import pytest
from auth_support import Org, call, login
from test_auth_internal import client_token, service_token

from services.auth.oauth import create_client
from shared import audit

pytestmark = pytest.mark.e2e


@pytest.fixture
def auth(start_service: Any) -> Any:
    return start_service("auth")


def erase_url(auth: Any, org_id: object) -> str:
    return f"{auth.url}/internal/orgs/{org_id}/erase"


async def fetch(database_url: str, query: str, *args: Any) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(database_url)
    try:
        return list(await connection.fetch(query, *args))
    finally:
        await connection.close()


async def test_erasing_an_org_ends_every_way_in_and_leaves_no_address(
    auth: Any, database_url: str, org: Org, other_org: Org, http: aiohttp.ClientSession
) -> None:
    session = await login(http, auth.url, org.email("admin"))
    connection = await asyncpg.connect(database_url)
    try:
        client_id, secret = await create_client(connection, org.id, "Payroll sync", ["users:read"])
    finally:
        await connection.close()
    api_token = await client_token(http, auth, client_id, secret)
    token = await service_token(http, auth)

    status, body, _ = await call(http, "POST", erase_url(auth, org.id), token=token)
    assert status == 200, body
    assert body == {
        "org_id": str(org.id),
        "users_disabled": len(org.users),
        "clients_revoked": 1,
        "refresh_tokens_revoked": 1,
    }

    for role in org.users:
        status, problem, _ = await call(
            http, "POST", f"{auth.url}/auth/login", json={"email": org.email(role), "password": "x" * 12}
        )
        assert status == 401, (role, problem)
        status, problem, _ = await call(
            http,
            "POST",
            f"{auth.url}/auth/login",
            json={"email": org.email(role), "password": "correct horse battery staple"},
        )
        assert (status, problem["code"]) == (401, "bad_credentials"), role
    status, problem, _ = await call(
        http, "POST", f"{auth.url}/auth/refresh", json={"refresh_token": session["refresh_token"]}
    )
    assert status == 401, problem
    status, problem, _ = await call(http, "GET", f"{auth.url}/auth/me", token=session["access_token"])
    assert (status, problem["code"]) == (401, "invalid_token")
    status, problem, _ = await call(http, "GET", f"{auth.url}/users", token=api_token)
    assert (status, problem["code"]) == (401, "invalid_token")
    status, problem, _ = await call(
        http,
        "POST",
        f"{auth.url}/auth/oauth/token",
        data={"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret},
    )
    assert (status, problem["error"]) == (401, "invalid_client")

    # No address, name or authenticator of the org is left; ids and roles are.
    rows = await fetch(database_url, "SELECT u::text AS row FROM auth.users u WHERE org_id = $1 ORDER BY role", org.id)
    text = "\n".join(row["row"] for row in rows)
    assert len(rows) == len(org.users)
    for user in org.users.values():
        assert user.email not in text and user.email.split("@")[0] not in text
        assert str(user.id) in text
    assert [r["name"] for r in await fetch(database_url, "SELECT name FROM auth.orgs WHERE id = $1", org.id)] == [
        "(erased)"
    ]
    assert not await fetch(
        database_url,
        "SELECT 1 FROM auth.totp_credentials t JOIN auth.users u ON u.id = t.user_id WHERE u.org_id = $1 "
        "UNION ALL SELECT 1 FROM auth.recovery_codes r JOIN auth.users u ON u.id = r.user_id WHERE u.org_id = $1",
        org.id,
    )

    # The chain records the erasure, by core, and still verifies.
    connection = await asyncpg.connect(database_url)
    try:
        chain = [row async for row in audit.records(connection, org.id)]
        assert (await audit.verify_org(connection, org.id)).ok
    finally:
        await connection.close()
    assert (chain[-1].action, chain[-1].actor, chain[-1].target) == (
        "org.erase",
        "client:service-core",
        f"org:{org.id}",
    )
    assert chain[-1].detail == {"users_disabled": 4, "clients_revoked": 1, "refresh_tokens_revoked": 1}

    # Again: nothing new to revoke, the same users and clients.
    status, again, _ = await call(http, "POST", erase_url(auth, org.id), token=token)
    assert status == 200, again
    assert again == {**body, "refresh_tokens_revoked": 0}

    # The other org is untouched.
    other = await login(http, auth.url, other_org.email("admin"))
    status, me, _ = await call(http, "GET", f"{auth.url}/auth/me", token=other["access_token"])
    assert status == 200, me


async def test_only_cores_service_token_may_erase(auth: Any, org: Org, http: aiohttp.ClientSession) -> None:
    for service in ("compliance", "regulator"):
        token = await service_token(http, auth, service)
        status, problem, _ = await call(http, "POST", erase_url(auth, org.id), token=token)
        assert (status, problem["code"]) == (403, "forbidden"), service
        assert "auth:admin" in problem["detail"]
    admin = (await login(http, auth.url, org.email("admin")))["access_token"]
    status, problem, _ = await call(http, "POST", erase_url(auth, org.id), token=admin)
    assert (status, problem["code"]) == (401, "invalid_token")
    token = await service_token(http, auth)
    for org_id in (uuid.uuid4(), "not-a-uuid"):
        status, problem, _ = await call(http, "POST", erase_url(auth, org_id), token=token)
        assert (status, problem["code"]) == (404, "not_found"), org_id
    # Nothing was erased by the refused calls.
    assert (await login(http, auth.url, org.email("finance")))["access_token"]
