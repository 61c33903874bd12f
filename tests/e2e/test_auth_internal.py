"""Auth's internal route `GET /internal/orgs/{org_id}/users`, against a real auth process: core's service token (the
client `service-core` with the SERVICE_CLIENT_SECRET the harness provisions, scope `auth:read`) reads any org's
users; another service's token, without that scope, is 403; a user's or an org API client's token, whatever its
scopes, is for another audience and refused as 401 `invalid_token`."""

from __future__ import annotations

import base64
import os
import uuid
from typing import Any

import aiohttp
import asyncpg
import pytest
from auth_support import Org, call, login

from services.auth.oauth import create_client
from shared.config import service_client_id, service_client_secret_variable
from shared.service_client import ServiceClient

pytestmark = pytest.mark.e2e

CORE = "core"


def basic(client_id: str, secret: str) -> dict[str, str]:
    return {"authorization": "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()}


async def client_token(http: aiohttp.ClientSession, auth: Any, client_id: str, secret: str) -> str:
    status, body, _ = await call(
        http,
        "POST",
        f"{auth.url}/auth/oauth/token",
        data={"grant_type": "client_credentials"},
        headers=basic(client_id, secret),
    )
    assert status == 200, body
    token: str = body["access_token"]
    return token


async def service_token(http: aiohttp.ClientSession, auth: Any, service: str = CORE) -> str:
    """A service's token (core's by default), from the auth process, with the secret both were given."""
    secret = os.environ[service_client_secret_variable(service)]
    return await client_token(http, auth, service_client_id(service), secret)


async def org_client_token(http: aiohttp.ClientSession, auth: Any, database_url: str, org: Org) -> str:
    connection = await asyncpg.connect(database_url)
    try:
        client_id, secret = await create_client(connection, org.id, "test client", ["users:read"])
    finally:
        await connection.close()
    return await client_token(http, auth, client_id, secret)


def users_of(org: Org) -> list[tuple[str, str, str]]:
    return sorted((str(user.id), user.email, role) for role, user in org.users.items())


def listed(items: list[dict[str, str]]) -> list[tuple[str, str, str]]:
    return sorted((item["id"], item["email"], item["role"]) for item in items)


@pytest.fixture
def auth(start_service: Any) -> Any:
    return start_service("auth")


async def test_a_service_token_reads_any_orgs_users(
    auth: Any, org: Org, other_org: Org, http: aiohttp.ClientSession
) -> None:
    token = await service_token(http, auth)
    for each in (org, other_org):
        status, page, _ = await call(http, "GET", f"{auth.url}/internal/orgs/{each.id}/users", token=token)
        assert status == 200, page
        assert listed(page["items"]) == users_of(each)
        assert page["next_cursor"] is None


async def test_pages_follow_the_cursor_to_the_end(auth: Any, org: Org, http: aiohttp.ClientSession) -> None:
    token = await service_token(http, auth)
    items: list[dict[str, str]] = []
    cursor: str | None = None
    pages = 0
    while True:
        params = {"limit": "1", **({"cursor": cursor} if cursor else {})}
        status, page, _ = await call(
            http, "GET", f"{auth.url}/internal/orgs/{org.id}/users", token=token, params=params
        )
        assert status == 200, page
        assert len(page["items"]) == 1
        items += page["items"]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == len(org.users)
    assert listed(items) == users_of(org)


async def test_an_org_that_does_not_exist_is_not_found(auth: Any, http: aiohttp.ClientSession) -> None:
    token = await service_token(http, auth)
    for org_id in (str(uuid.uuid4()), "not-a-uuid"):
        status, problem, _ = await call(http, "GET", f"{auth.url}/internal/orgs/{org_id}/users", token=token)
        assert (status, problem["code"]) == (404, "not_found"), org_id


async def test_a_service_without_auth_read_is_forbidden(auth: Any, org: Org, http: aiohttp.ClientSession) -> None:
    for service in ("compliance", "regulator"):
        token = await service_token(http, auth, service)
        status, problem, _ = await call(http, "GET", f"{auth.url}/internal/orgs/{org.id}/users", token=token)
        assert (status, problem["code"]) == (403, "forbidden"), service
        assert "auth:read" in problem["detail"]


async def test_user_and_org_client_tokens_are_refused_even_for_their_own_org(
    auth: Any, database_url: str, org: Org, http: aiohttp.ClientSession
) -> None:
    url = f"{auth.url}/internal/orgs/{org.id}/users"
    tokens = {
        "an org API client with users:read": await org_client_token(http, auth, database_url, org),
        "an admin of the org": (await login(http, auth.url, org.email("admin")))["access_token"],
    }
    for who, token in tokens.items():
        status, problem, headers = await call(http, "GET", url, token=token)
        assert (status, problem["code"]) == (401, "invalid_token"), who
        assert headers["www-authenticate"].startswith("Bearer ")
    status, problem, _ = await call(http, "GET", url)
    assert (status, problem["code"]) == (401, "unauthorized"), "no token at all"


async def test_a_calling_services_client_reads_users_through_the_real_auth_service(
    auth: Any, org: Org, http: aiohttp.ClientSession
) -> None:
    client = ServiceClient(auth.url, service_client_id(CORE), os.environ[service_client_secret_variable(CORE)], http)
    page = await client.get_json(f"{auth.url}/internal/orgs/{org.id}/users")
    assert listed(page["items"]) == users_of(org)
