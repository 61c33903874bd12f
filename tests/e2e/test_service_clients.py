"""Service clients: a real service process calls with a client-credentials token it got from a real auth process
with its own SERVICE_CLIENT_SECRET (the harness provisions both sides, as `make run` and compose do), and the
audiences keep service tokens and user tokens apart."""

from __future__ import annotations

import base64
import os
from typing import Any

import aiohttp
import orjson
import pytest
from auth_support import Org, call, login

from shared.config import service_client_secret_variable
from shared.tokens import SERVICE_AUDIENCE

pytestmark = pytest.mark.e2e

CORE_CLIENT_ID = "service-core"


def core_secret() -> str:
    return os.environ[service_client_secret_variable("core")]


def basic(client_id: str, secret: str) -> dict[str, str]:
    return {"authorization": "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()}


async def service_token(http: aiohttp.ClientSession, auth: Any, secret: str, **form: str) -> tuple[int, Any]:
    status, body, _ = await call(
        http,
        "POST",
        f"{auth.url}/auth/oauth/token",
        data={"grant_type": "client_credentials", **form},
        headers=basic(CORE_CLIENT_ID, secret),
    )
    return status, body


@pytest.fixture
def auth(start_service: Any) -> Any:
    return start_service("auth")


async def test_a_service_process_calls_with_a_token_from_the_auth_process(
    start_service: Any, auth: Any, http: aiohttp.ClientSession
) -> None:
    core = start_service("core", {"AUTH_URL": auth.url}, module="tests.e2e.calling_service")
    status, principal, _ = await call(http, "GET", f"{core.url}/call-whoami")
    assert status == 200, principal
    assert principal == {
        "sub": CORE_CLIENT_ID,
        "kind": "service",
        "audience": SERVICE_AUDIENCE,
        "org_id": "",
        "scopes": ["auth:admin", "auth:read"],
    }


async def test_a_service_with_a_wrong_secret_gets_no_token(
    start_service: Any, auth: Any, http: aiohttp.ClientSession
) -> None:
    wrong = core_secret()[::-1]
    core = start_service(
        "core", {"AUTH_URL": auth.url, "SERVICE_CLIENT_SECRET": wrong}, module="tests.e2e.calling_service"
    )
    status, problem, _ = await call(http, "GET", f"{core.url}/call-whoami")
    assert (status, problem["code"]) == (500, "internal_error")
    # The refusal's log line is read from the process's pipe by a thread: wait for it rather than race it.
    await core.wait_for_log_async(lambda record: "invalid_client" in orjson.dumps(record).decode())
    status, body = await service_token(http, auth, wrong)
    assert (status, body["error"]) == (401, "invalid_client")


async def test_service_tokens_open_no_user_route_and_user_tokens_no_internal_one(
    start_service: Any, auth: Any, org: Org, http: aiohttp.ClientSession
) -> None:
    core = start_service("core", {"AUTH_URL": auth.url}, module="tests.e2e.calling_service")
    status, body = await service_token(http, auth, core_secret())
    assert status == 200, body
    assert body["scope"] == "auth:read auth:admin" and body["expires_in"] == 900
    token = body["access_token"]

    status, problem, _ = await call(http, "GET", f"{auth.url}/auth/me", token=token)
    assert (status, problem["code"]) == (401, "invalid_token"), "a service token on a user route"
    status, page, _ = await call(http, "GET", f"{auth.url}/internal/orgs/{org.id}/users", token=token)
    assert (status, len(page["items"])) == (200, len(org.users)), "a service token on auth's internal route"

    user_token = (await login(http, auth.url, org.email("admin")))["access_token"]
    for internal in (f"{core.url}/internal/whoami", f"{auth.url}/internal/orgs/{org.id}/users"):
        status, problem, _ = await call(http, "GET", internal, token=user_token)
        assert (status, problem["code"]) == (401, "invalid_token"), f"a user token on {internal}"
    status, principal, _ = await call(http, "GET", f"{core.url}/internal/whoami", token=token)
    assert (status, principal["sub"]) == (200, CORE_CLIENT_ID)


async def test_a_service_client_asking_for_a_scope_gets_invalid_scope(auth: Any, http: aiohttp.ClientSession) -> None:
    status, body = await service_token(http, auth, core_secret(), scope="users:read")
    assert (status, body["error"]) == (400, "invalid_scope")


async def test_without_its_secret_in_auth_a_service_is_an_unknown_client(
    start_service: Any, http: aiohttp.ClientSession
) -> None:
    auth = start_service("auth", {service_client_secret_variable("core"): None})
    status, body = await service_token(http, auth, core_secret())
    assert (status, body["error"]) == (401, "invalid_client")
