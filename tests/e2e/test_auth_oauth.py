"""Client credentials at `POST /auth/oauth/token` for an org's API clients, against a real auth process: the token
is a user-audience access token of kind `client` with the client's org and granted scopes (checked against the
published JWKS), and it opens no user route. (Auth's internal routes take service tokens only:
test_auth_internal.py.)"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Sequence
from typing import Any

import aiohttp
import asyncpg
import pytest
from auth_support import Org, call, login

from services.auth.oauth import create_client
from shared.config import DEFAULT_TOKEN_ISSUER
from shared.tokens import USER_AUDIENCE, Principal, verification_keys, verify

pytestmark = pytest.mark.e2e


async def new_client(database_url: str, org_id: uuid.UUID, scopes: Sequence[str]) -> tuple[str, str]:
    connection = await asyncpg.connect(database_url)
    try:
        return await create_client(connection, org_id, "test client", scopes)
    finally:
        await connection.close()


def basic(client_id: str, secret: str) -> dict[str, str]:
    return {"authorization": "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()}


async def token_request(
    http: aiohttp.ClientSession, auth: Any, form: dict[str, str], headers: dict[str, str] | None = None
) -> tuple[int, Any, Any]:
    return await call(http, "POST", f"{auth.url}/auth/oauth/token", data=form, headers=headers or {})


async def verified(http: aiohttp.ClientSession, auth: Any, token: str) -> Principal:
    """The token's principal as any service verifies it: against the auth process's JWKS, for the user audience."""
    status, jwks, _ = await call(http, "GET", f"{auth.url}/auth/.well-known/jwks.json")
    assert status == 200, jwks
    return verify(token, verification_keys(jwks), issuer=DEFAULT_TOKEN_ISSUER, audience=USER_AUDIENCE)


@pytest.fixture
def auth(start_service: Any) -> Any:
    return start_service("auth")


async def test_basic_auth_token_is_an_access_token_of_the_clients_org(
    auth: Any, database_url: str, org: Org, http: aiohttp.ClientSession
) -> None:
    client_id, secret = await new_client(database_url, org.id, ["users:read"])
    status, body, headers = await token_request(
        http, auth, {"grant_type": "client_credentials"}, basic(client_id, secret)
    )
    assert status == 200, body
    assert body["token_type"] == "Bearer" and body["expires_in"] == 900 and body["scope"] == "users:read"
    assert "refresh_token" not in body
    assert headers["cache-control"] == "no-store"

    principal = await verified(http, auth, body["access_token"])
    assert (principal.kind, principal.subject, principal.org_id) == ("client", client_id, str(org.id))
    assert principal.scopes == {"users:read"}


async def test_form_credentials_and_scope_narrowing(
    auth: Any, database_url: str, org: Org, http: aiohttp.ClientSession
) -> None:
    client_id, secret = await new_client(database_url, org.id, ["users:read", "reports:read"])
    form = {"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret}

    status, body, _ = await token_request(http, auth, form)
    assert status == 200, body
    assert body["scope"] == "users:read reports:read"

    status, body, _ = await token_request(http, auth, {**form, "scope": "reports:read unknown:scope"})
    assert (status, body["scope"]) == (200, "reports:read")
    assert (await verified(http, auth, body["access_token"])).scopes == {"reports:read"}, "narrowed in the token"

    status, body, _ = await token_request(http, auth, {**form, "scope": "unknown:scope"})
    assert (status, body["error"]) == (400, "invalid_scope")


async def test_wrong_secret_and_unknown_client_answer_the_same_401(
    auth: Any, database_url: str, org: Org, http: aiohttp.ClientSession
) -> None:
    client_id, secret = await new_client(database_url, org.id, ["users:read"])
    answers = []
    for credentials in (basic(client_id, secret + "x"), basic("apgms-client-unknown", secret)):
        status, body, headers = await token_request(http, auth, {"grant_type": "client_credentials"}, credentials)
        assert (status, body["error"]) == (401, "invalid_client")
        assert headers["www-authenticate"].startswith("Basic ")
        assert body["request_id"] == headers["x-request-id"]
        answers.append(body["error_description"])
    form = {"grant_type": "client_credentials", "client_id": client_id, "client_secret": "wrong"}
    status, body, headers = await token_request(http, auth, form)
    assert (status, body["error"]) == (401, "invalid_client") and "www-authenticate" in headers
    answers.append(body["error_description"])
    status, body, _ = await token_request(http, auth, {"grant_type": "client_credentials"})
    assert (status, body["error"]) == (401, "invalid_client"), "no credentials at all"
    assert len(set(answers)) == 1, "an unknown client is indistinguishable from a wrong secret"
    await auth.wait_for_log_async(lambda r: r.get("event") == "security_event" and r.get("reason") == "invalid_client")


async def test_bad_requests_get_rfc6749_errors(
    auth: Any, database_url: str, org: Org, http: aiohttp.ClientSession
) -> None:
    client_id, secret = await new_client(database_url, org.id, ["users:read"])
    credentials = basic(client_id, secret)

    status, body, _ = await token_request(http, auth, {"grant_type": "password"}, credentials)
    assert (status, body["error"]) == (400, "unsupported_grant_type")
    assert body["request_id"]

    status, body, _ = await token_request(http, auth, {}, credentials)
    assert (status, body["error"]) == (400, "invalid_request")

    status, body, _ = await call(
        http, "POST", f"{auth.url}/auth/oauth/token", json={"grant_type": "client_credentials"}, headers=credentials
    )
    assert (status, body["error"]) == (400, "invalid_request"), "JSON instead of a form"

    both = {"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret}
    status, body, _ = await token_request(http, auth, both, credentials)
    assert (status, body["error"]) == (400, "invalid_request"), "two authentication methods"


async def test_tokens_only_work_where_their_kind_is_allowed(
    auth: Any, database_url: str, org: Org, http: aiohttp.ClientSession
) -> None:
    user_token = (await login(http, auth.url, org.email("admin")))["access_token"]
    status, problem, _ = await call(http, "GET", f"{auth.url}/internal/orgs/{org.id}/users", token=user_token)
    assert (status, problem["code"]) == (401, "invalid_token"), "a user token on the internal route (service only)"

    client_id, secret = await new_client(database_url, org.id, ["users:read"])
    _, body, _ = await token_request(http, auth, {"grant_type": "client_credentials"}, basic(client_id, secret))
    for path in ("/auth/me", "/users"):
        status, problem, _ = await call(http, "GET", auth.url + path, token=body["access_token"])
        assert (status, problem["code"]) == (403, "forbidden"), path


@pytest.mark.parametrize("value", ["Basic /w==", "Basic \u00e9\u00e9\u00e9\u00e9", "Basic !!!", "Basic Og=="])
async def test_malformed_basic_credentials_are_401_invalid_client(
    auth: Any, http: aiohttp.ClientSession, value: str
) -> None:
    headers = {"authorization": value.encode().decode("latin-1")}
    status, body, _ = await token_request(http, auth, {"grant_type": "client_credentials"}, headers)
    assert (status, body.get("error"), body.get("code")) == (401, "invalid_client", None), body


async def test_many_token_requests_by_one_client_are_not_locked_out(
    auth: Any, database_url: str, org: Org, http: aiohttp.ClientSession
) -> None:
    client_id, secret = await new_client(database_url, org.id, ["users:read"])
    for _ in range(8):
        status, body, _ = await token_request(
            http, auth, {"grant_type": "client_credentials"}, basic(client_id, secret)
        )
        assert status == 200, body


async def test_a_nul_in_the_client_id_is_an_unknown_client(auth: Any, http: aiohttp.ClientSession) -> None:
    form = {"grant_type": "client_credentials", "client_id": "abc\x00", "client_secret": "x" * 40}
    status, body, _ = await token_request(http, auth, form)
    assert (status, body["error"]) == (401, "invalid_client")
