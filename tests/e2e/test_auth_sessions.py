"""Refresh families and access-token types through the real auth service (issue #9, findings 3 and 12)."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import asyncpg
import pytest
from auth_support import call, login
from joserfc import jwt
from test_auth_tokens import admin_claims, server_key

from services.auth.sessions import REFRESH_FAMILY_MAX_AGE
from shared.tokens import ALGORITHMS, JWS_REGISTRY

pytestmark = pytest.mark.e2e

RACE_TRIALS = 50


async def refresh(http, auth_url: str, token: str, client: str = "198.51.100.1") -> tuple[int, Any]:
    status, body, _ = await call(
        http, "POST", f"{auth_url}/auth/refresh", json={"refresh_token": token}, headers={"x-forwarded-for": client}
    )
    return status, body


async def test_reuse_racing_a_rotation_leaves_no_token_of_the_family_alive(start_service, http, org) -> None:
    """Login → T1; refresh T1 → T2; then refresh(T1) (reuse) and refresh(T2) at once. Before the family lock, the
    T3 minted from T2 survived the reuse's revocation in about half the trials."""
    auth = start_service("auth", {"TRUSTED_PROXY_HOPS": "1"})
    survivors: list[int] = []
    for trial in range(RACE_TRIALS):
        # Each trial from its own address: 50 logins from one would meet the per-address login limit.
        client = f"198.51.100.{trial + 1}"
        status, first, _ = await call(
            http,
            "POST",
            f"{auth.url}/auth/login",
            json={"email": org.email("finance"), "password": "correct horse battery staple"},
            headers={"x-forwarded-for": client},
        )
        assert status == 200, first
        status, second = await refresh(http, auth.url, first["refresh_token"], client)
        assert status == 200, second
        (reuse_status, _), (rotate_status, third) = await asyncio.gather(
            refresh(http, auth.url, first["refresh_token"], client),
            refresh(http, auth.url, second["refresh_token"], client),
        )
        assert reuse_status == 401, "T1 was rotated: presenting it again is reuse"
        family = [first["refresh_token"], second["refresh_token"]]
        if rotate_status == 200:
            family.append(third["refresh_token"])
        alive = [token for token in family if (await refresh(http, auth.url, token, client))[0] == 200]
        if alive:
            survivors.append(trial)
    assert survivors == [], f"a token of the family outlived the detected reuse in trials {survivors}"


async def age_family(database_url: str, refresh_token_family_of: str, age: timedelta) -> None:
    """Move a family's login `age` into the past, as if it had been rotated ever since."""
    connection = await asyncpg.connect(database_url)
    try:
        await connection.execute(
            """
            UPDATE auth.refresh_tokens SET family_started_at = now() - $2::interval, issued_at = now() - $2::interval
            WHERE family_id = (
                SELECT family_id FROM auth.refresh_tokens WHERE token_hash = sha256(convert_to($1, 'UTF8'))
            )
            """,
            refresh_token_family_of,
            age,
        )
    finally:
        await connection.close()


async def family_expiry(database_url: str, refresh_token: str) -> tuple[Any, Any]:
    connection = await asyncpg.connect(database_url)
    try:
        row = await connection.fetchrow(
            "SELECT expires_at, family_started_at FROM auth.refresh_tokens "
            "WHERE token_hash = sha256(convert_to($1, 'UTF8'))",
            refresh_token,
        )
    finally:
        await connection.close()
    return row["expires_at"], row["family_started_at"]


async def test_a_family_older_than_its_max_age_cannot_refresh(start_service, http, org, database_url) -> None:
    auth = start_service("auth")
    young = await login(http, auth.url, org.email("finance"))
    old = await login(http, auth.url, org.email("finance"))
    await age_family(database_url, young["refresh_token"], REFRESH_FAMILY_MAX_AGE - timedelta(days=1))
    await age_family(database_url, old["refresh_token"], REFRESH_FAMILY_MAX_AGE + timedelta(minutes=1))

    status, rotated = await refresh(http, auth.url, young["refresh_token"])
    assert status == 200, rotated
    expires_at, started = await family_expiry(database_url, rotated["refresh_token"])
    assert expires_at <= started + REFRESH_FAMILY_MAX_AGE, "a rotated token never outlives its family"

    status, body = await refresh(http, auth.url, old["refresh_token"])
    assert (status, body["code"]) == (401, "invalid_token")


@pytest.mark.parametrize("typ", ["missing", "JWT", "dpop+jwt"])
async def test_a_token_not_typed_at_jwt_is_refused_on_a_real_route(start_service, http, org, database_url, typ) -> None:
    """A JWT signed by our own key for another purpose (an ID token, a DPoP proof) is not an access token."""
    auth = start_service("auth")
    await login(http, auth.url, org.email("finance"))  # creates the first signing key
    key = await server_key(database_url)

    def signed(header_typ: str | None) -> str:
        header = {"alg": "EdDSA", "kid": key.kid} | ({"typ": header_typ} if header_typ else {})
        return jwt.encode(header, admin_claims(org), key, algorithms=ALGORITHMS, registry=JWS_REGISTRY)

    status, body, _ = await call(http, "GET", f"{auth.url}/users", token=signed("at+jwt"))
    assert status == 200, body
    status, body, _ = await call(http, "GET", f"{auth.url}/users", token=signed(None if typ == "missing" else typ))
    assert (status, body["code"]) == (401, "invalid_token")
