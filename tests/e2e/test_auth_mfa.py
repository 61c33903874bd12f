"""TOTP enrolment, step-up and the high-risk `POST /users` through the real auth service, PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import asyncpg
import pyotp
import pytest
from auth_support import PASSWORD, Org, call, login

from services.auth import store
from services.auth.passwords import hash_password

pytestmark = pytest.mark.e2e

STEP_S = 30
# Codes for the step before the current one are only valid while the server is still in the current step.
STEP_MARGIN_S = 3.0
RECOVERY_CODE = re.compile(r"[0-9a-hjkmnp-tv-z]{4}-[0-9a-hjkmnp-tv-z]{4}-[0-9a-hjkmnp-tv-z]{4}")
StartService = Callable[..., Any]  # tests/conftest.py: start_service(name) -> ServiceProcess
NEW_USER = {"email": "new.hire@example.com", "password": "a-long-enough-password", "role": "finance"}


def code(secret: str, step: int) -> str:
    return str(pyotp.TOTP(secret).generate_otp(step))


def wrong_code(secret: str) -> str:
    """Six digits that no step near now accepts."""
    now = int(time.time() // STEP_S)
    near = {code(secret, step) for step in range(now - 3, now + 4)}
    return next(f"{n:06d}" for n in range(1_000_000) if f"{n:06d}" not in near)


async def settled_step() -> int:
    """The current step, once at least STEP_MARGIN_S remain in it (so step - 1 stays in the server's window)."""
    remaining = STEP_S - time.time() % STEP_S
    if remaining < STEP_MARGIN_S:
        await asyncio.sleep(remaining + 0.05)
    return int(time.time() // STEP_S)


async def post(http: aiohttp.ClientSession, url: str, token: str | None, body: Any) -> tuple[int, Any, Any]:
    return await call(http, "POST", url, token=token, json=body)


async def begin(http: aiohttp.ClientSession, base_url: str, token: str, password: str = PASSWORD) -> str:
    """The secret of a new enrolment, begun with the account's password entered again."""
    status, body, _ = await post(http, f"{base_url}/auth/mfa/totp/begin", token, {"password": password})
    assert status == 200, body
    return str(body["secret"])


async def enrol(http: aiohttp.ClientSession, base_url: str, token: str) -> tuple[str, list[str], int]:
    """(secret, recovery codes, current step); confirmed with the code of the step before the current one."""
    secret = await begin(http, base_url, token)
    step = await settled_step()
    status, body, _ = await post(http, f"{base_url}/auth/mfa/totp/confirm", token, {"code": code(secret, step - 1)})
    assert status == 200, body
    return secret, list(body["recovery_codes"]), step


async def step_up(http: aiohttp.ClientSession, base_url: str, token: str, one_time: str) -> tuple[int, Any, Any]:
    return await post(http, f"{base_url}/auth/mfa/step-up", token, {"code": one_time})


async def me(http: aiohttp.ClientSession, base_url: str, token: str) -> dict[str, Any]:
    status, body, _ = await call(http, "GET", f"{base_url}/auth/me", token=token)
    assert status == 200, body
    return dict(body)


async def mfa_denied_total(http: aiohttp.ClientSession, base_url: str) -> float:
    async with http.get(f"{base_url}/metrics") as response:
        text = await response.text()
    match = re.search(r'^security_events_total\{event="mfa\.denied"\} (\S+)$', text, re.MULTILINE)
    assert match, text
    return float(match.group(1))


async def fetchrows(database_url: str, query: str, *args: Any) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(database_url)
    try:
        return list(await connection.fetch(query, *args))
    finally:
        await connection.close()


def assert_problem(status: int, body: Any, want_status: int, want_code: str) -> None:
    assert status == want_status, body
    assert body["code"] == want_code, body
    assert body["status"] == want_status
    assert body["request_id"]


# --- enrolment -----------------------------------------------------------------------------------------------------


async def test_enrolment_returns_ten_recovery_codes_once_and_seals_the_secret(
    start_service: StartService, http: aiohttp.ClientSession, org: Org, database_url: str
) -> None:
    auth = start_service("auth")
    token = (await login(http, auth.url, org.email("finance")))["access_token"]
    user = org.users["finance"]
    assert (await me(http, auth.url, token))["mfa_enrolled"] is False

    status, begun, _ = await post(http, f"{auth.url}/auth/mfa/totp/begin", token, {"password": PASSWORD})
    assert status == 200, begun
    secret = begun["secret"]
    assert re.fullmatch(r"[A-Z2-7]{32}", secret)
    parsed = pyotp.parse_uri(begun["otpauth_uri"])
    assert (parsed.secret, parsed.issuer, parsed.name) == (secret, "APGMS", user.email)
    assert (await me(http, auth.url, token))["mfa_enrolled"] is False

    step = await settled_step()
    status, body, _ = await post(http, f"{auth.url}/auth/mfa/totp/confirm", token, {"code": wrong_code(secret)})
    assert_problem(status, body, 401, "mfa_invalid")
    assert (await me(http, auth.url, token))["mfa_enrolled"] is False

    status, body, _ = await post(http, f"{auth.url}/auth/mfa/totp/confirm", token, {"code": code(secret, step)})
    assert status == 200, body
    codes = body["recovery_codes"]
    assert len(codes) == len(set(codes)) == 10
    assert all(RECOVERY_CODE.fullmatch(c) for c in codes), codes

    assert (await me(http, auth.url, token))["mfa_enrolled"] is True
    assert (await login(http, auth.url, user.email))["user"]["mfa_enrolled"] is True

    [row] = await fetchrows(database_url, "SELECT * FROM auth.totp_credentials WHERE user_id = $1", user.id)
    assert row["confirmed_at"] is not None
    assert row["last_step"] == step
    dumped = repr(dict(row))
    for form in (secret, secret.lower(), secret.encode().hex()):
        assert form not in dumped
    stored = await fetchrows(database_url, "SELECT * FROM auth.recovery_codes WHERE user_id = $1", user.id)
    assert len(stored) == 10
    assert len({r["salt"] for r in stored}) == 10
    assert all(len(r["salt"]) == 16 and r["used_at"] is None for r in stored)
    hashes = b"".join(r["code_hash"] for r in stored)
    assert not any(c.replace("-", "").encode() in hashes or c.encode() in hashes for c in codes)
    # Neither the secret nor a recovery code reached the service's log.
    output = "\n".join(auth.output())
    assert secret not in output
    assert not any(c in output for c in codes)

    # Enrolled: beginning again needs a step-up first (replacing: test_auth_mfa_enrolment.py), confirming again is
    # a conflict, and nothing changes.
    status, body, _ = await post(http, f"{auth.url}/auth/mfa/totp/begin", token, {"password": PASSWORD})
    assert_problem(status, body, 401, "mfa_required")
    assert "/auth/mfa/step-up" in body["detail"]
    status, body, _ = await post(http, f"{auth.url}/auth/mfa/totp/confirm", token, {"code": code(secret, step + 1)})
    assert_problem(status, body, 409, "conflict")
    [after] = await fetchrows(database_url, "SELECT * FROM auth.totp_credentials WHERE user_id = $1", user.id)
    assert (after["secret_sealed"], after["last_step"]) == (row["secret_sealed"], step)


async def test_beginning_again_before_confirming_replaces_the_secret(
    start_service: StartService, http: aiohttp.ClientSession, org: Org
) -> None:
    auth = start_service("auth")
    token = (await login(http, auth.url, org.email("analyst")))["access_token"]
    first = await begin(http, auth.url, token)
    second = await begin(http, auth.url, token)
    assert first != second
    step = await settled_step()
    if code(first, step) != code(second, step):
        status, body, _ = await post(http, f"{auth.url}/auth/mfa/totp/confirm", token, {"code": code(first, step)})
        assert_problem(status, body, 401, "mfa_invalid")
    status, body, _ = await post(http, f"{auth.url}/auth/mfa/totp/confirm", token, {"code": code(second, step)})
    assert status == 200, body


async def test_confirm_before_begin_and_step_up_without_enrolment_are_conflicts(
    start_service: StartService, http: aiohttp.ClientSession, org: Org
) -> None:
    auth = start_service("auth")
    token = (await login(http, auth.url, org.email("auditor")))["access_token"]
    status, body, _ = await post(http, f"{auth.url}/auth/mfa/totp/confirm", token, {"code": "123456"})
    assert_problem(status, body, 409, "conflict")
    assert "/auth/mfa/totp/begin" in body["detail"]
    for one_time in ("123456", "abcd-efgh-jkmn"):
        status, body, _ = await step_up(http, auth.url, token, one_time)
        assert_problem(status, body, 409, "conflict")
        assert body["detail"] == "Enrol an authenticator first: POST /auth/mfa/totp/begin"
    # Begun but not confirmed is not enrolled either.
    secret = await begin(http, auth.url, token)
    status, body, _ = await step_up(http, auth.url, token, code(secret, int(time.time() // STEP_S)))
    assert_problem(status, body, 409, "conflict")


# --- step-up -------------------------------------------------------------------------------------------------------


async def test_a_totp_step_is_accepted_once_and_never_an_older_one(
    start_service: StartService, http: aiohttp.ClientSession, org: Org
) -> None:
    auth = start_service("auth")
    token = (await login(http, auth.url, org.email("finance")))["access_token"]
    secret, _, step = await enrol(http, auth.url, token)  # accepted step - 1

    before = time.time()
    status, body, _ = await step_up(http, auth.url, token, code(secret, step))
    assert status == 200, body
    assert set(body) == {"access_token", "token_type", "expires_in"}
    assert (body["token_type"], body["expires_in"]) == ("Bearer", 900)
    profile = await me(http, auth.url, body["access_token"])
    assert profile["amr"] == ["pwd", "otp"]
    assert int(before) <= profile["auth_time"] <= time.time()

    status, body, _ = await step_up(http, auth.url, token, code(secret, step))
    assert_problem(status, body, 401, "mfa_invalid")
    assert body["title"] == "One-time code is invalid or already used"
    status, body, _ = await step_up(http, auth.url, token, code(secret, step - 1))
    assert_problem(status, body, 401, "mfa_invalid")

    status, body, _ = await step_up(http, auth.url, token, code(secret, step + 1))
    assert status == 200, body


async def test_a_recovery_code_works_once_however_it_is_typed(
    start_service: StartService, http: aiohttp.ClientSession, org: Org, database_url: str
) -> None:
    auth = start_service("auth")
    token = (await login(http, auth.url, org.email("finance")))["access_token"]
    _, codes, _ = await enrol(http, auth.url, token)

    status, body, _ = await step_up(http, auth.url, token, codes[0])
    assert status == 200, body
    assert (await me(http, auth.url, body["access_token"]))["amr"] == ["pwd", "otp"]
    for again in (codes[0], codes[0].upper(), codes[0].replace("-", "")):
        status, body, _ = await step_up(http, auth.url, token, again)
        assert_problem(status, body, 401, "mfa_invalid")

    status, body, _ = await step_up(http, auth.url, token, codes[1].upper().replace("-", ""))
    assert status == 200, body
    used = await fetchrows(
        database_url,
        "SELECT count(*) AS n FROM auth.recovery_codes WHERE user_id = $1 AND used_at IS NOT NULL",
        org.users["finance"].id,
    )
    assert used[0]["n"] == 2


async def test_concurrent_use_of_one_code_succeeds_exactly_once(
    start_service: StartService, http: aiohttp.ClientSession, org: Org
) -> None:
    auth = start_service("auth")
    token = (await login(http, auth.url, org.email("finance")))["access_token"]
    secret, codes, step = await enrol(http, auth.url, token)

    results = await asyncio.gather(*(step_up(http, auth.url, token, codes[2]) for _ in range(4)))
    assert sorted(status for status, _, _ in results) == [200, 401, 401, 401]
    # A right code clears the three wrong ones, so the next round cannot reach the lockout.
    status, body, _ = await step_up(http, auth.url, token, codes[3])
    assert status == 200, body
    results = await asyncio.gather(*(step_up(http, auth.url, token, code(secret, step)) for _ in range(4)))
    assert sorted(status for status, _, _ in results) == [200, 401, 401, 401]


async def test_wrong_codes_lock_step_up_with_429_and_retry_after(
    start_service: StartService, http: aiohttp.ClientSession, org: Org
) -> None:
    auth = start_service("auth")
    token = (await login(http, auth.url, org.email("finance")))["access_token"]
    secret, codes, step = await enrol(http, auth.url, token)

    for _ in range(5):
        status, body, _ = await step_up(http, auth.url, token, wrong_code(secret))
        assert_problem(status, body, 401, "mfa_invalid")
    status, body, headers = await step_up(http, auth.url, token, wrong_code(secret))
    assert_problem(status, body, 429, "rate_limited")
    assert 1 <= int(headers["retry-after"]) <= 300
    # While locked, right codes are refused too: otherwise the lock would not slow a guesser down.
    status, body, headers = await step_up(http, auth.url, token, code(secret, step))
    assert_problem(status, body, 429, "rate_limited")
    status, body, _ = await step_up(http, auth.url, token, codes[0])
    assert_problem(status, body, 429, "rate_limited")

    # The lock is per user: another user of the same org steps up as usual.
    other = (await login(http, auth.url, org.email("analyst")))["access_token"]
    other_secret, _, other_step = await enrol(http, auth.url, other)
    status, body, _ = await step_up(http, auth.url, other, code(other_secret, other_step))
    assert status == 200, body


async def test_a_right_code_clears_earlier_wrong_ones(
    start_service: StartService, http: aiohttp.ClientSession, org: Org
) -> None:
    auth = start_service("auth")
    token = (await login(http, auth.url, org.email("finance")))["access_token"]
    secret, codes, _ = await enrol(http, auth.url, token)
    for _ in range(4):
        status, _, _ = await step_up(http, auth.url, token, wrong_code(secret))
        assert status == 401
    status, body, _ = await step_up(http, auth.url, token, codes[0])
    assert status == 200, body
    for _ in range(4):
        status, _, _ = await step_up(http, auth.url, token, wrong_code(secret))
        assert status == 401
    status, body, _ = await step_up(http, auth.url, token, codes[1])
    assert status == 200, body


# --- the high-risk route -------------------------------------------------------------------------------------------


async def test_creating_a_user_needs_a_recent_step_up_with_or_without_mfa_enrolled(
    start_service: StartService, http: aiohttp.ClientSession, org: Org, database_url: str
) -> None:
    auth = start_service("auth")
    connection = await asyncpg.connect(database_url)
    try:
        second = await store.create_user(
            connection, org.id, f"second.admin.{org.id.hex[:8]}@example.com", hash_password(PASSWORD), "admin"
        )
    finally:
        await connection.close()
    assert second is not None
    enrolled_token = (await login(http, auth.url, org.email("admin")))["access_token"]
    unenrolled_token = (await login(http, auth.url, second.email))["access_token"]
    secret, _, step = await enrol(http, auth.url, enrolled_token)
    denied_before = await mfa_denied_total(http, auth.url)

    for token, new_email in ((enrolled_token, "a@example.com"), (unenrolled_token, "b@example.com")):
        status, body, _ = await post(http, f"{auth.url}/users", token, {**NEW_USER, "email": new_email})
        assert_problem(status, body, 401, "mfa_required")
        assert "/auth/mfa/step-up" in body["detail"]
        assert "/auth/mfa/totp/begin" in body["detail"]
    status, body, _ = await step_up(http, auth.url, unenrolled_token, "123456")
    assert_problem(status, body, 409, "conflict")
    status, body, _ = await step_up(http, auth.url, enrolled_token, wrong_code(secret))
    assert_problem(status, body, 401, "mfa_invalid")
    assert await mfa_denied_total(http, auth.url) == denied_before + 3
    refused = await fetchrows(
        database_url, "SELECT 1 FROM auth.users WHERE email = ANY($1)", ["a@example.com", "b@example.com"]
    )
    assert refused == []

    status, body, _ = await step_up(http, auth.url, enrolled_token, code(secret, step))
    assert status == 200, body
    status, created, _ = await post(http, f"{auth.url}/users", body["access_token"], NEW_USER)
    assert status == 201, created
    assert (created["email"], created["role"], created["org_id"]) == (NEW_USER["email"], "finance", str(org.id))
    rows = await fetchrows(database_url, "SELECT org_id, role FROM auth.users WHERE email = $1", NEW_USER["email"])
    assert [(r["org_id"], r["role"]) for r in rows] == [(org.id, "finance")]


# --- bad input -----------------------------------------------------------------------------------------------------

ROUTES = ["/auth/mfa/totp/begin", "/auth/mfa/totp/confirm", "/auth/mfa/step-up"]


async def test_every_route_wants_a_token_and_is_documented(
    start_service: StartService, http: aiohttp.ClientSession
) -> None:
    auth = start_service("auth")
    status, document, _ = await call(http, "GET", f"{auth.url}/openapi.json")
    assert status == 200
    operations = {path: document["paths"][path]["post"] for path in ROUTES}
    assert operations["/auth/mfa/totp/begin"]["responses"]["200"]["content"]
    assert "requestBody" in operations["/auth/mfa/totp/begin"]
    assert "requestBody" in operations["/auth/mfa/totp/confirm"]
    assert "requestBody" in operations["/auth/mfa/step-up"]
    schemas = document["components"]["schemas"]
    assert schemas["TotpConfirmRequest"]["properties"]["code"]["pattern"] == "^[0-9]{6}$"
    assert schemas["RecoveryCodes"]["required"] == ["recovery_codes"]
    for path in ROUTES:
        status, body, headers = await post(http, auth.url + path, None, {"code": "123456"})
        assert_problem(status, body, 401, "unauthorized")
        assert headers["www-authenticate"].startswith("Bearer")
        status, body, _ = await post(http, auth.url + path, "not.a.token", {"code": "123456"})
        assert_problem(status, body, 401, "invalid_token")


@pytest.mark.parametrize("path", ["/auth/mfa/totp/confirm", "/auth/mfa/step-up"])
async def test_malformed_bodies_are_4xx_problems_never_500(
    start_service: StartService, http: aiohttp.ClientSession, org: Org, path: str
) -> None:
    auth = start_service("auth")
    token = (await login(http, auth.url, org.email("finance")))["access_token"]
    url = auth.url + path
    headers = {"authorization": f"Bearer {token}"}

    async def raw(data: bytes, content_type: str = "application/json") -> tuple[int, Any]:
        async with http.post(url, data=data, headers={**headers, "content-type": content_type}) as response:
            return response.status, await response.json(content_type=None)

    status, body = await raw(b'{"code": "12')
    assert_problem(status, body, 400, "invalid_body")
    status, body = await raw(b'{"code": "123456"}', "text/plain")
    assert_problem(status, body, 415, "unsupported_media_type")
    status, body = await raw(b"")
    assert_problem(status, body, 400, "invalid_body")
    bad: Any
    for bad in ([], "123456", {}, {"code": 123456}, {"code": None}, {"code": "123456", "remember": True}):
        status, body, _ = await post(http, url, token, bad)
        assert_problem(status, body, 400, "invalid_body")
        assert body["errors"], body
    for bad_code in ("12a456", "12345", "1234567", "١٢٣٤٥٦", "x" * 65, "abcd-efgh-jkm!"):
        status, body, _ = await post(http, url, token, {"code": bad_code})
        assert_problem(status, body, 400, "invalid_body")
        assert [e["path"] for e in body["errors"]] == ["code"], body
    assert not any(line.get("level") == "error" for line in auth.log_lines())
