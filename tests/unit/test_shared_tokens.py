"""Access-token signing and verification, the JWKS cache, and sealed secrets, without a server."""

from __future__ import annotations

import base64
import time
import warnings
from typing import Any

import pytest
from joserfc import jws, jwt
from joserfc.jwk import KeySet, OKPKey

from shared.config import Secret
from shared.crypto import SealError, SecretBox
from shared.tokens import (
    ALGORITHMS,
    JWS_REGISTRY,
    SERVICE_AUDIENCE,
    USER_AUDIENCE,
    JwksCache,
    TokenError,
    Verifier,
    access_claims,
    principal_from_claims,
    sign,
    token_kid,
    verification_keys,
    verify,
)

ISSUER = "urn:apgms:auth"


def new_key(kid: str) -> OKPKey:
    return OKPKey.generate_key("Ed25519", parameters={"kid": kid})


def claims(**overrides: Any) -> dict[str, Any]:
    base = access_claims(
        issuer=ISSUER,
        audience=USER_AUDIENCE,
        subject="user-1",
        kind="user",
        org_id="org-1",
        role="finance",
        scopes=(),
        amr=["pwd"],
        auth_time=int(time.time()),
        now=time.time(),
    )
    return {**base, **overrides}


def jwks_of(*keys: OKPKey) -> dict[str, Any]:
    return {"keys": [key.as_dict(private=False) for key in keys]}


def test_round_trip_gives_the_principal() -> None:
    key = new_key("k1")
    principal = verify(sign(claims(), key), KeySet([key]), issuer=ISSUER, audience=USER_AUDIENCE)
    assert (principal.subject, principal.org_id, principal.role, principal.kind) == (
        "user-1",
        "org-1",
        "finance",
        "user",
    )
    assert principal.user_id == "user-1"
    assert principal.client_id is None


@pytest.mark.parametrize(
    ("overrides", "audience"),
    [
        ({"exp": -120}, USER_AUDIENCE),
        ({"nbf": +120}, USER_AUDIENCE),
        ({"iss": "urn:evil"}, USER_AUDIENCE),
        ({}, "urn:apgms:regulator"),
        ({"sub": ""}, USER_AUDIENCE),
        ({"kind": "superuser"}, USER_AUDIENCE),
        ({"amr": "pwd"}, USER_AUDIENCE),
        ({"auth_time": "yesterday"}, USER_AUDIENCE),
    ],
)
def test_bad_claims_are_refused(overrides: dict[str, Any], audience: str) -> None:
    """`exp` and `nbf` are given as offsets from now (parameters are built at import time)."""
    key = new_key("k1")
    now = int(time.time())
    resolved = {k: now + v if k in ("exp", "nbf") else v for k, v in overrides.items()}
    token = sign(claims(**resolved), key)
    with pytest.raises(TokenError):
        verify(token, KeySet([key]), issuer=ISSUER, audience=audience)


def test_small_clock_skew_is_tolerated() -> None:
    key = new_key("k1")
    token = sign(claims(nbf=int(time.time()) + 10, iat=int(time.time()) + 10), key)
    assert verify(token, KeySet([key]), issuer=ISSUER, audience=USER_AUDIENCE).subject == "user-1"


def test_a_token_signed_by_another_key_with_the_same_kid_is_refused() -> None:
    real, impostor = new_key("k1"), new_key("k1")
    with pytest.raises(TokenError):
        verify(sign(claims(), impostor), KeySet([real]), issuer=ISSUER, audience=USER_AUDIENCE)


@pytest.mark.parametrize("token", ["", "abc", "a.b", "a.b.c", "x" * 9000 + ".y.z", "..", "eyJ.eyJ.sig"])
def test_malformed_tokens_are_refused(token: str) -> None:
    with pytest.raises(TokenError):
        verify(token, KeySet([new_key("k1")]), issuer=ISSUER, audience=USER_AUDIENCE)
    assert token_kid(token) is None


def test_tokens_are_signed_eddsa_and_typed_as_access_tokens() -> None:
    key = new_key("k1")
    header = jws.extract_compact(sign(claims(), key).encode()).protected
    assert header == {"alg": "EdDSA", "kid": "k1", "typ": "at+jwt"}


def test_a_token_named_ed25519_from_before_the_switch_still_verifies() -> None:
    key = new_key("k1")
    token = jwt.encode({"alg": "Ed25519", "kid": "k1", "typ": "at+jwt"}, claims(), key, algorithms=["Ed25519"])
    keys = verification_keys({"keys": [{**key.as_dict(private=False), "alg": "EdDSA"}]})
    assert verify(token, keys, issuer=ISSUER, audience=USER_AUDIENCE).subject == "user-1"


def test_eddsa_on_an_ed448_key_is_refused_even_from_the_key_set() -> None:
    """joserfc's own `EdDSA` verifies Ed448 too; ours is pinned to Ed25519."""
    key = OKPKey.generate_key("Ed448", parameters={"kid": "k448"})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # joserfc's SecurityWarning: "EdDSA is deprecated via RFC 9864"
        token = jwt.encode({"alg": "EdDSA", "kid": "k448", "typ": "at+jwt"}, claims(), key, algorithms=["EdDSA"])
    with pytest.raises(TokenError):
        verify(token, KeySet([key]), issuer=ISSUER, audience=USER_AUDIENCE)
    assert verification_keys(jwks_of(key)).keys == []


@pytest.mark.parametrize("typ", [None, "JWT", "at+jwt2", ""])
def test_a_token_not_typed_as_an_access_token_is_refused(typ: object) -> None:
    key = new_key("k1")
    header: dict[str, Any] = {"alg": "EdDSA", "kid": "k1"}
    if typ is not None:
        header["typ"] = typ
    token = jwt.encode(header, claims(), key, algorithms=ALGORITHMS, registry=JWS_REGISTRY)
    with pytest.raises(TokenError):
        verify(token, KeySet([key]), issuer=ISSUER, audience=USER_AUDIENCE)


def test_principal_step_up_window() -> None:
    now = time.time()
    stepped = principal_from_claims(claims(amr=["pwd", "otp"], auth_time=int(now) - 599))
    assert stepped.stepped_up(now)
    assert not stepped.stepped_up(now + 2)
    assert not principal_from_claims(claims(amr=["pwd"], auth_time=int(now))).stepped_up(now)


async def test_jwks_cache_fetches_once_and_refetches_on_an_unknown_kid() -> None:
    first, second = new_key("k1"), new_key("k2")
    published = [first]
    fetches = 0

    async def fetch() -> dict[str, Any]:
        nonlocal fetches
        fetches += 1
        return jwks_of(*published)

    verifier = Verifier(JwksCache(fetch, refetch_interval_s=0.0), issuer=ISSUER)
    for _ in range(3):
        assert (await verifier.principal(sign(claims(), first))).subject == "user-1"
    assert fetches == 1

    published.append(second)
    assert (await verifier.principal(sign(claims(), second))).subject == "user-1"
    assert fetches == 2


async def test_unknown_kids_refetch_at_most_once_per_interval() -> None:
    key = new_key("k1")
    fetches = 0

    async def fetch() -> dict[str, Any]:
        nonlocal fetches
        fetches += 1
        return jwks_of(key)

    verifier = Verifier(JwksCache(fetch, refetch_interval_s=60.0), issuer=ISSUER)
    await verifier.principal(sign(claims(), key))
    for attempt in range(20):
        with pytest.raises(TokenError):
            await verifier.principal(sign(claims(), new_key(f"forged-{attempt}")))
    assert fetches == 1, "a flood of unknown kids must not become a flood of JWKS requests"


async def test_cached_keys_keep_verifying_while_auth_is_down() -> None:
    key = new_key("k1")
    up = True

    async def fetch() -> dict[str, Any]:
        if not up:
            raise ConnectionError("auth is down")
        return jwks_of(key)

    verifier = Verifier(JwksCache(fetch, refetch_interval_s=0.0), issuer=ISSUER)
    await verifier.principal(sign(claims(), key))
    up = False
    assert (await verifier.principal(sign(claims(), key))).subject == "user-1"
    with pytest.raises(TokenError):
        await verifier.principal(sign(claims(), new_key("k9")))


async def test_no_keys_at_all_is_a_token_error_not_a_crash() -> None:
    async def fetch() -> dict[str, Any]:
        raise ConnectionError("auth is down")

    with pytest.raises(TokenError):
        await Verifier(JwksCache(fetch), issuer=ISSUER).principal(sign(claims(), new_key("k1")))


KEY = Secret(base64.b64encode(bytes(range(32))).decode())


def test_sealed_secrets_round_trip_and_bind_to_their_row() -> None:
    box = SecretBox(KEY)
    sealed = box.seal(b"JBSWY3DPEHPK3PXP", associated=b"user-1")
    assert "JBSWY3DPEHPK3PXP" not in sealed
    assert box.open(sealed, associated=b"user-1") == b"JBSWY3DPEHPK3PXP"
    assert box.seal(b"same", associated=b"x") != box.seal(b"same", associated=b"x"), "fresh nonce each time"
    with pytest.raises(SealError):
        box.open(sealed, associated=b"user-2")


@pytest.mark.parametrize("mangle", ["flip", "truncate", "garbage", "other_key"])
def test_tampered_or_foreign_sealed_values_do_not_open(mangle: str) -> None:
    box = SecretBox(KEY)
    sealed = box.seal(b"secret")
    if mangle == "flip":
        version, key_id, payload = sealed.split(".")
        sealed = f"{version}.{key_id}.{payload[:-2]}{'A' if payload[-2] != 'A' else 'B'}{payload[-1]}"
    elif mangle == "truncate":
        sealed = sealed[:-10]
    elif mangle == "garbage":
        sealed = "not-sealed"
    else:
        sealed = SecretBox(Secret(base64.b64encode(bytes(32)).decode())).seal(b"secret")
    with pytest.raises(SealError):
        box.open(sealed)


def service_claims(**overrides: Any) -> dict[str, Any]:
    base = access_claims(
        issuer=ISSUER,
        audience=SERVICE_AUDIENCE,
        subject="service-core",
        kind="service",
        org_id=None,
        role=None,
        scopes=(),
        amr=[],
        auth_time=None,
        now=time.time(),
    )
    return {**base, **overrides}


def test_a_service_token_has_no_org_and_verifies_only_for_the_service_audience() -> None:
    key = new_key("k1")
    token = sign(service_claims(), key)
    assert "org_id" not in service_claims()
    principal = verify(token, KeySet([key]), issuer=ISSUER, audience=SERVICE_AUDIENCE)
    assert (principal.kind, principal.subject, principal.org_id, principal.audience) == (
        "service",
        "service-core",
        "",
        SERVICE_AUDIENCE,
    )
    with pytest.raises(TokenError):
        verify(token, KeySet([key]), issuer=ISSUER, audience=USER_AUDIENCE)
    with pytest.raises(TokenError):
        verify(sign(claims(), key), KeySet([key]), issuer=ISSUER, audience=SERVICE_AUDIENCE)


def test_a_service_token_naming_an_org_or_a_user_token_without_one_is_refused() -> None:
    with pytest.raises(TokenError, match="names no org"):
        principal_from_claims(service_claims(org_id="org-1"))
    without_org = claims()
    del without_org["org_id"]
    with pytest.raises(TokenError, match="missing org_id"):
        principal_from_claims(without_org)
