"""Access and refresh tokens through the real auth service: forgeries refused, rotation, lockout, key rotation."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import statistics
import time
from typing import Any

import asyncpg
import orjson
import pytest
from auth_support import PASSWORD, Org, b64url, call, login
from joserfc.jwk import OKPKey

from services.auth.keys import PUBLISH_AHEAD_S, rotate
from shared.config import Secret
from shared.crypto import SecretBox
from shared.tokens import REGULATOR_AUDIENCE, USER_AUDIENCE, access_claims, sign

pytestmark = pytest.mark.e2e


def dev_box() -> SecretBox:
    return SecretBox(Secret(os.environ["APGMS_MASTER_KEY"]))  # the session's key (tests/conftest.py)


async def server_key(database_url: str) -> OKPKey:
    """The auth service's active private key, opened with the dev master key the test services run with."""
    connection = await asyncpg.connect(database_url)
    try:
        row = await connection.fetchrow("SELECT kid, private_sealed FROM auth.signing_keys WHERE status = 'active'")
    finally:
        await connection.close()
    pem = dev_box().open(row["private_sealed"], associated=row["kid"].encode())
    return OKPKey.import_key(pem, {"kid": row["kid"]})


def admin_claims(org: Org, **overrides: Any) -> dict[str, Any]:
    user = org.users["admin"]
    claims = access_claims(
        issuer="urn:apgms:auth",
        audience=USER_AUDIENCE,
        subject=str(user.id),
        kind="user",
        org_id=str(org.id),
        role="admin",
        scopes=(),
        amr=["pwd", "otp"],
        auth_time=int(time.time()),
        now=time.time(),
    )
    return {**claims, **overrides}


def unsigned(header: dict[str, Any], claims: dict[str, Any]) -> str:
    return f"{b64url(orjson.dumps(header))}.{b64url(orjson.dumps(claims))}."


async def user_count(database_url: str) -> int:
    connection = await asyncpg.connect(database_url)
    try:
        return int(await connection.fetchval("SELECT count(*) FROM auth.users"))
    finally:
        await connection.close()


NEW_USER = {"email": "new.person@example.com", "password": "a-long-enough-password", "role": "finance"}


async def test_a_real_stepped_up_token_is_accepted(start_service, http, org, database_url) -> None:
    """The control for the forgeries below: the same claims, signed properly, create the user."""
    auth = start_service("auth")
    await login(http, auth.url, org.email("admin"))  # creates the first signing key
    token = sign(admin_claims(org), await server_key(database_url))
    status, body, _ = await call(http, "POST", f"{auth.url}/users", token=token, json=NEW_USER)
    assert status == 201, body


@pytest.mark.parametrize(
    "forgery",
    [
        "alg_none",
        "hs256_with_public_key",
        "unknown_kid",
        "expired",
        "not_yet_valid",
        "wrong_audience",
        "wrong_issuer",
        "tampered_payload",
        "regulator_audience",
        "garbage",
    ],
)
async def test_forged_tokens_are_refused_with_401_and_change_nothing(
    start_service, http, org, database_url, forgery
) -> None:
    auth = start_service("auth")
    await login(http, auth.url, org.email("finance"))
    key = await server_key(database_url)
    now = int(time.time())
    header = {"alg": "Ed25519", "kid": key.kid, "typ": "at+jwt"}
    if forgery == "alg_none":
        token = unsigned({**header, "alg": "none"}, admin_claims(org))
    elif forgery == "hs256_with_public_key":
        public = key.as_dict(private=False)
        signing_input = f"{b64url(orjson.dumps({**header, 'alg': 'HS256'}))}.{b64url(orjson.dumps(admin_claims(org)))}"
        mac = hmac.new(public["x"].encode(), signing_input.encode(), hashlib.sha256).digest()
        token = f"{signing_input}.{b64url(mac)}"
    elif forgery == "unknown_kid":
        token = sign(admin_claims(org), OKPKey.generate_key("Ed25519", parameters={"kid": "not-ours"}))
    elif forgery == "expired":
        token = sign(admin_claims(org, iat=now - 3600, nbf=now - 3600, exp=now - 600), key)
    elif forgery == "not_yet_valid":
        token = sign(admin_claims(org, nbf=now + 600), key)
    elif forgery == "wrong_audience":
        token = sign(admin_claims(org, aud="urn:someone:else"), key)
    elif forgery == "wrong_issuer":
        token = sign(admin_claims(org, iss="urn:evil"), key)
    elif forgery == "tampered_payload":
        real = (await login(http, auth.url, org.email("finance")))["access_token"]
        head, payload, signature = real.split(".")
        claims = orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        token = f"{head}.{b64url(orjson.dumps({**claims, 'role': 'admin', 'amr': ['pwd', 'otp']}))}.{signature}"
    elif forgery == "regulator_audience":
        token = sign(admin_claims(org, aud=REGULATOR_AUDIENCE), key)
    else:
        token = "not.a.jwt"
    before = await user_count(database_url)

    status, body, headers = await call(http, "POST", f"{auth.url}/users", token=token, json=NEW_USER)
    assert (status, body["code"]) == (401, "invalid_token")
    assert headers["www-authenticate"].startswith("Bearer")
    status, body, _ = await call(http, "GET", f"{auth.url}/auth/me", token=token)
    assert (status, body["code"]) == (401, "invalid_token")
    assert await user_count(database_url) == before


async def test_missing_token_is_401_unauthorized(start_service, http) -> None:
    auth = start_service("auth")
    status, body, _ = await call(http, "GET", f"{auth.url}/auth/me")
    assert (status, body["code"]) == (401, "unauthorized")
    status, body, _ = await call(http, "GET", f"{auth.url}/auth/me", headers={"authorization": "Basic Zm9vOmJhcg=="})
    assert (status, body["code"]) == (401, "unauthorized")


async def test_refresh_rotates_and_reuse_revokes_the_family(start_service, http, org) -> None:
    auth = start_service("auth")
    first = await login(http, auth.url, org.email("finance"))

    status, second, _ = await call(
        http, "POST", f"{auth.url}/auth/refresh", json={"refresh_token": first["refresh_token"]}
    )
    assert status == 200
    assert second["refresh_token"] != first["refresh_token"]
    status, me, _ = await call(http, "GET", f"{auth.url}/auth/me", token=second["access_token"])
    assert (status, me["role"]) == (200, "finance")

    status, body, _ = await call(
        http, "POST", f"{auth.url}/auth/refresh", json={"refresh_token": first["refresh_token"]}
    )
    assert (status, body["code"]) == (401, "invalid_token")
    status, body, _ = await call(
        http, "POST", f"{auth.url}/auth/refresh", json={"refresh_token": second["refresh_token"]}
    )
    assert (status, body["code"]) == (401, "invalid_token"), "reuse of a rotated token revokes the whole family"

    other = await login(http, auth.url, org.email("finance"))
    status, _, _ = await call(http, "POST", f"{auth.url}/auth/refresh", json={"refresh_token": other["refresh_token"]})
    assert status == 200, "another login's family is untouched"


async def test_logout_revokes_the_refresh_token(start_service, http, org) -> None:
    auth = start_service("auth")
    session = await login(http, auth.url, org.email("auditor"))
    status, _, _ = await call(http, "POST", f"{auth.url}/auth/logout", json={"refresh_token": session["refresh_token"]})
    assert status == 204
    status, body, _ = await call(
        http, "POST", f"{auth.url}/auth/refresh", json={"refresh_token": session["refresh_token"]}
    )
    assert (status, body["code"]) == (401, "invalid_token")


async def test_unknown_user_and_wrong_password_look_the_same(start_service, http, org) -> None:
    auth = start_service("auth", {"REDIS_URL": None})

    async def timed(email: str, password: str) -> tuple[float, int, dict]:
        started = time.perf_counter()
        status, body, _ = await call(
            http, "POST", f"{auth.url}/auth/login", json={"email": email, "password": password}
        )
        return time.perf_counter() - started, status, body

    wrong, unknown = [], []
    for attempt in range(4):
        elapsed, status, body = await timed(org.email("analyst"), f"wrong-{attempt}")
        wrong.append(elapsed)
        assert (status, body["code"]) == (401, "bad_credentials")
        elapsed, status, unknown_body = await timed(f"nobody{attempt}@example.com", "whatever")
        unknown.append(elapsed)
        assert (status, unknown_body["code"], unknown_body["detail"]) == (401, "bad_credentials", body["detail"])
    assert statistics.median(unknown) > 0.5 * statistics.median(wrong), (unknown, wrong)


async def _fail_logins(http, urls: list[str], email: str, count: int) -> list[int]:
    statuses = []
    for attempt in range(count):
        status, _, _ = await call(
            http, "POST", f"{urls[attempt % len(urls)]}/auth/login", json={"email": email, "password": "nope"}
        )
        statuses.append(status)
    return statuses


async def test_lockout_is_shared_by_two_instances_through_redis(start_service, http, org) -> None:
    first, second = start_service("auth"), start_service("auth")
    email = org.email("finance")
    assert await _fail_logins(http, [first.url, second.url], email, 5) == [401] * 5

    for instance in (first, second):
        status, body, headers = await call(
            http, "POST", f"{instance.url}/auth/login", json={"email": email, "password": PASSWORD}
        )
        assert (status, body["code"]) == (429, "rate_limited")
        assert int(headers["retry-after"]) > 0
    status, _, _ = await call(
        http, "POST", f"{first.url}/auth/login", json={"email": org.email("admin"), "password": PASSWORD}
    )
    assert status == 200, "other accounts are not locked"


async def test_a_burst_of_concurrent_guesses_gets_five_password_checks(start_service, http, org) -> None:
    first, second = start_service("auth"), start_service("auth")
    email = org.email("analyst")
    results = await asyncio.gather(
        *(
            call(http, "POST", f"{(first, second)[n % 2].url}/auth/login", json={"email": email, "password": f"x{n}"})
            for n in range(24)
        )
    )
    codes = [body["code"] for _, body, _ in results]
    assert codes.count("bad_credentials") == 5, codes
    assert codes.count("rate_limited") == 19


async def test_lockout_without_redis_in_one_instance(start_service, http, org) -> None:
    auth = start_service("auth", {"REDIS_URL": None})
    email = org.email("auditor")
    assert await _fail_logins(http, [auth.url], email, 5) == [401] * 5
    status, body, headers = await call(
        http, "POST", f"{auth.url}/auth/login", json={"email": email, "password": PASSWORD}
    )
    assert (status, body["code"]) == (429, "rate_limited")
    assert "retry-after" in headers
    async with http.get(f"{auth.url}/metrics") as response:
        text = await response.text()
    assert 'security_events_total{event="auth.lockout"} 1.0' in text


async def test_key_rotation_under_live_traffic_fails_no_request(start_service, http, org, database_url) -> None:
    auth = start_service("auth")
    old_session = await login(http, auth.url, org.email("admin"))
    failures: list[tuple[int, Any]] = []
    done = asyncio.Event()

    session = await login(http, auth.url, org.email("analyst"))

    async def traffic() -> int:
        nonlocal session
        count = 0
        while not done.is_set():
            status, session, _ = await call(
                http, "POST", f"{auth.url}/auth/refresh", json={"refresh_token": session["refresh_token"]}
            )
            assert status == 200, session
            for token in (session["access_token"], old_session["access_token"]):
                status, body, _ = await call(http, "GET", f"{auth.url}/auth/me", token=token)
                count += 1
                if status != 200:
                    kid = orjson.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))["kid"]
                    failures.append((status, kid, token is old_session["access_token"], body))
        return count

    load = asyncio.create_task(traffic())
    await asyncio.sleep(0.5)
    connection = await asyncpg.connect(database_url)
    try:
        old_kid, new_kid = await rotate(connection, dev_box())
    finally:
        await connection.close()
    await asyncio.sleep(PUBLISH_AHEAD_S + 2)  # the new key signs from here on; the old one still verifies
    done.set()
    served = await load
    assert failures == []
    assert served > 10

    _, jwks, _ = await call(http, "GET", f"{auth.url}/auth/.well-known/jwks.json")
    assert {key["kid"] for key in jwks["keys"]} == {old_kid, new_kid}
    head = orjson.loads(base64.urlsafe_b64decode(session["access_token"].split(".")[0] + "=="))
    assert head["kid"] == new_kid


async def test_anomaly_raised_by_repeated_401s_from_one_address(start_service, http) -> None:
    auth = start_service("auth")
    for _ in range(10):
        await call(http, "GET", f"{auth.url}/auth/me", token="not.a.jwt")
    # Observed after each response is sent, so the last one may land a moment after the client has its answer.
    line = auth.wait_for_log(lambda r: r.get("event") == "security_event" and r.get("security.event") == "anomaly.auth")
    assert line["level"] == "warning"
    async with http.get(f"{auth.url}/metrics") as response:
        text = await response.text()
    assert 'security_events_total{event="anomaly.auth"} 1.0' in text


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"{not json", "application/json"),
        (b'{"email": 5, "password": []}', "application/json"),
        (b'{"email": "a@b.example", "password": "x", "extra": 1}', "application/json"),
        (b"email=a@b.example&password=x", "application/x-www-form-urlencoded"),
        (b'{"email": "' + b"a" * 5000 + b'@b.example", "password": "x"}', "application/json"),
        (b'{"email": "a@example.com\\u0000", "password": "x"}', "application/json"),
        (b'{"email": "a@example.com", "password": "x\\u0000"}', "application/json"),
    ],
)
async def test_bad_login_bodies_are_4xx_problems(start_service, http, body, content_type) -> None:
    auth = start_service("auth")
    status, problem, headers = await call(
        http, "POST", f"{auth.url}/auth/login", data=body, headers={"content-type": content_type}
    )
    assert 400 <= status < 500
    assert headers["content-type"] == "application/problem+json"
    assert problem["request_id"] == headers["x-request-id"]
