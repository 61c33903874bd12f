"""Common JWT libraries verify our access tokens against the published JWKS (issue #9, finding 13): PyJWT's
`PyJWKClient` and authlib's `authlib.jose`, each given only the JWKS URL of a real auth process."""

from __future__ import annotations

import asyncio
import warnings
from typing import Any

import asyncpg
import jwt as pyjwt
import pytest
from auth_support import call, login
from joserfc.jwk import OKPKey
from test_auth_tokens import dev_box

from services.auth import store
from shared.tokens import USER_AUDIENCE

pytestmark = pytest.mark.e2e

ISSUER = "urn:apgms:auth"


async def store_key_as_before_the_switch(database_url: str) -> str:
    """An active key stored the way the auth service stored keys before `EdDSA`: `alg: Ed25519` in its JWK."""
    kid = "legacy-ed25519"
    key = OKPKey.generate_key("Ed25519", parameters={"kid": kid, "use": "sig", "alg": "Ed25519"})
    connection = await asyncpg.connect(database_url)
    try:
        sealed = dev_box().seal(key.as_pem(private=True), associated=kid.encode())
        await store.insert_active_key(connection, kid, key.as_dict(private=False), sealed)
        await connection.execute("UPDATE auth.signing_keys SET alg = 'Ed25519' WHERE kid = $1", kid)
    finally:
        await connection.close()
    return kid


def verify_with_pyjwt(jwks_url: str, token: str) -> dict[str, Any]:
    client = pyjwt.PyJWKClient(jwks_url, cache_keys=False, timeout=5)
    signing_key = client.get_signing_key_from_jwt(token)
    claims: dict[str, Any] = pyjwt.decode(
        token, signing_key.key, algorithms=["EdDSA"], audience=USER_AUDIENCE, issuer=ISSUER
    )
    return claims


def verify_with_authlib(jwks: dict[str, Any], token: str) -> dict[str, Any]:
    # authlib announces that authlib.jose moves to joserfc; the clients this test stands for still use it.
    # authlib.deprecate installs an "always" filter for its warning when first imported: import it first, so
    # that the "ignore" below comes after it and wins whether or not authlib was imported before this test.
    import authlib.deprecate  # type: ignore[import-untyped]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", authlib.deprecate.AuthlibDeprecationWarning)
        from authlib.jose import JsonWebKey, JsonWebToken  # type: ignore[import-untyped]

    claims = JsonWebToken(["EdDSA"]).decode(
        token,
        JsonWebKey.import_key_set(jwks),
        claims_options={
            "iss": {"essential": True, "value": ISSUER},
            "aud": {"essential": True, "value": USER_AUDIENCE},
        },
    )
    claims.validate()
    return dict(claims)


@pytest.mark.parametrize("key_origin", ["new_key", "key_stored_before_the_switch"])
async def test_pyjwt_and_authlib_verify_a_real_access_token(start_service, http, org, database_url, key_origin) -> None:
    kid = await store_key_as_before_the_switch(database_url) if key_origin != "new_key" else None
    auth = start_service("auth")
    session = await login(http, auth.url, org.email("finance"))
    token = session["access_token"]
    jwks_url = f"{auth.url}/auth/.well-known/jwks.json"
    status, jwks, _ = await call(http, "GET", jwks_url)
    assert status == 200
    [published] = jwks["keys"]
    assert {name: published[name] for name in ("kty", "crv", "alg", "use")} == {
        "kty": "OKP",
        "crv": "Ed25519",
        "alg": "EdDSA",
        "use": "sig",
    }
    assert kid is None or published["kid"] == kid

    by_pyjwt = await asyncio.to_thread(verify_with_pyjwt, jwks_url, token)
    by_authlib = verify_with_authlib(jwks, token)

    user = org.users["finance"]
    assert by_pyjwt["sub"] == by_authlib["sub"] == str(user.id)
    assert by_pyjwt["role"] == by_authlib["role"] == "finance"
    assert pyjwt.get_unverified_header(token)["alg"] == "EdDSA"
    assert pyjwt.get_unverified_header(token)["kid"] == published["kid"]
