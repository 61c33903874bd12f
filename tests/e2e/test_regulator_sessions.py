"""Regulator login, logout and the session guard against real processes (issue #14)."""

from __future__ import annotations

import os
import statistics
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import aiohttp
import asyncpg
from auth_support import Org, call
from core_support import StartService, connect, role_tokens
from regulator_support import create_credential, regulator_login, start_regulator


async def test_login_opens_an_audited_session_and_logout_ends_it(
    start_service: StartService, database_url: str, http: aiohttp.ClientSession, org: Org
) -> None:
    stack = start_regulator(start_service, database_url)
    code = await create_credential(database_url, [org.id], name="asic.team-1")
    answer = await regulator_login(http, stack, code, org.id)
    assert answer["token_type"] == "Bearer"
    assert set(answer) == {"token", "token_type", "session"}
    assert answer["session"]["org_id"] == str(org.id)
    assert answer["session"]["credential"] == "asic.team-1"
    token = answer["token"]

    connection = await asyncpg.connect(database_url)
    try:
        stored = await connection.fetchval(
            "SELECT count(*) FROM regulator.sessions WHERE token_hash = sha256($1)", token.encode()
        )
        assert stored == 1, "the token is stored as its SHA-256 only"
        row = await connection.fetchrow(
            "SELECT actor, target FROM audit.records WHERE org_id = $1 AND action = 'regulator.login'",
            org.id,
        )
        assert row["actor"] == "regulator:asic.team-1"
        assert row["target"] == f"regulator_session:{answer['session']['id']}"

        status, body, _ = await call(http, "POST", f"{stack.url}/regulator/logout", token=token)
        assert status == 204, body
        status, body, _ = await call(http, "POST", f"{stack.url}/regulator/logout", token=token)
        assert (status, body["code"]) == (401, "invalid_token")
        actions = await connection.fetch(
            "SELECT action FROM audit.records WHERE org_id = $1 AND actor = 'regulator:asic.team-1' ORDER BY seq",
            org.id,
        )
        assert [a["action"] for a in actions] == ["regulator.login", "regulator.logout"]
    finally:
        await connection.close()


async def _login_status(http: aiohttp.ClientSession, url: str, code: str, org_id: uuid.UUID) -> tuple[int, Any, float]:
    started = time.perf_counter()
    status, body, headers = await call(
        http, "POST", f"{url}/regulator/login", json={"access_code": code, "org_id": str(org_id)}
    )
    return status, (body, headers), time.perf_counter() - started


async def test_every_refusal_is_the_same_401_in_about_the_same_time(
    start_service: StartService, database_url: str, http: aiohttp.ClientSession, org: Org, other_org: Org
) -> None:
    stack = start_regulator(start_service, database_url)
    good = await create_credential(database_url, [org.id])
    revoked = await create_credential(database_url, [org.id], revoked=True)
    expired = await create_credential(database_url, [org.id], expires_in=timedelta(days=-1))
    elsewhere = await create_credential(database_url, [other_org.id])
    wrong_secret = good.rsplit(".", 1)[0] + "." + "A" * 43
    cases: dict[str, Callable[[], tuple[str, uuid.UUID]]] = {
        "wrong code": lambda: (wrong_secret, org.id),
        "unknown lookup": lambda: (f"rgc.{os.urandom(8).hex()}.{'B' * 43}", org.id),
        "malformed": lambda: ("not a code", org.id),
        "revoked": lambda: (revoked, org.id),
        "expired": lambda: (expired, org.id),
        "org outside the credential": lambda: (elsewhere, org.id),
    }
    medians = {}
    bodies = set()
    for name, attempt in cases.items():
        times = []
        for _ in range(4):  # under the lockout's 5 failures per credential and the address's 30 a minute
            status, (body, headers), took = await _login_status(http, stack.url, *attempt())
            assert status == 401, (name, body)
            assert body["code"] == "access_denied" and "retry-after" not in headers
            bodies.add((body["title"], body["detail"], body["type"]))
            times.append(took)
        medians[name] = statistics.median(times)
    assert len(bodies) == 1, bodies
    # Every refusal costs one argon2 verification (~70 ms): none may be answered much faster than the others.
    assert max(medians.values()) < 4 * min(medians.values()), medians
    assert min(medians.values()) > 0.01, medians

    # The good code still logs in (its credential was not locked by others' failures).
    session = await regulator_login(http, stack, good, org.id)
    token = session["token"]

    # A regulator session opens no other service's route; a user token no regulator route.
    tokens = await role_tokens(http, stack.core_stack, org)
    for url in (f"{stack.core.url}/bank-lines", f"{stack.compliance.url}/compliance/report"):
        status, body, _ = await call(http, "GET", url, token=token)
        assert (status, body["code"]) == (401, "invalid_token"), url
    status, body, _ = await call(http, "POST", f"{stack.url}/regulator/logout", token=tokens["admin"])
    assert (status, body["code"]) == (401, "invalid_token")
    status, body, _ = await call(http, "POST", f"{stack.url}/regulator/logout")
    assert (status, body["code"]) == (401, "unauthorized")
    # The portal's cookie (dev name, since tests run plain HTTP) opens only the portal: the JSON API and the JSON
    # logout read the bearer token alone (a browser sends the cookie by itself, and they take no CSRF token).
    cookie = {"cookie": f"apgms_regulator={token}"}
    for method, path in (("GET", "/regulator/compliance/report"), ("POST", "/regulator/logout")):
        status, body, _ = await call(http, method, f"{stack.url}{path}", headers=cookie)
        assert (status, body["code"]) == (401, "unauthorized"), path
    status, body, _ = await call(http, "GET", f"{stack.url}/regulator/compliance/report", token=token)
    assert status == 200, body  # the cookie's logout ended nothing
    status, _, _ = await call(http, "POST", f"{stack.url}/regulator/logout", token=token)
    assert status == 204
    status, body, _ = await call(http, "GET", f"{stack.url}/regulator/compliance/report", token=token)
    assert (status, body["code"]) == (401, "invalid_token")


async def test_bad_bodies_are_400_naming_the_field(
    start_service: StartService, database_url: str, http: aiohttp.ClientSession, org: Org
) -> None:
    stack = start_regulator(start_service, database_url)
    url = f"{stack.url}/regulator/login"
    org_id = str(org.id)
    for body, path in (
        ({"access_code": "x"}, "org_id"),
        ({"org_id": org_id}, "access_code"),
        ({"access_code": "x", "org_id": "nope"}, "org_id"),
        ({"access_code": 12, "org_id": org_id}, "access_code"),
        ({"access_code": "x" * 201, "org_id": org_id}, "access_code"),
        ({"access_code": "x", "org_id": org_id, "role": "admin"}, "role"),
    ):
        status, answer, _ = await call(http, "POST", url, json=body)
        assert (status, answer["code"]) == (400, "invalid_body"), body
        assert any(path in error["path"] for error in answer["errors"]), (body, answer)
    for raw in (b"not json", b"[1, 2]", b""):
        status, answer, _ = await call(http, "POST", url, data=raw, headers={"content-type": "application/json"})
        assert status == 400 and answer["code"] in ("invalid_body", "bad_request"), (raw, answer)
    async with connect(database_url) as conn:
        assert await conn.fetchval("SELECT count(*) FROM regulator.sessions") == 0


async def test_repeated_failures_lock_the_credential_and_an_address_is_throttled(
    start_service: StartService, database_url: str, http: aiohttp.ClientSession, org: Org
) -> None:
    stack = start_regulator(start_service, database_url)
    good = await create_credential(database_url, [org.id])
    wrong = good.rsplit(".", 1)[0] + "." + "C" * 43
    for _ in range(5):
        status, (body, _), _ = await _login_status(http, stack.url, wrong, org.id)
        assert status == 401, body
    # Locked: even the right code is refused, with 429 and Retry-After, until the lock ends.
    status, (body, headers), _ = await _login_status(http, stack.url, good, org.id)
    assert (status, body["code"]) == (429, "rate_limited")
    assert int(headers["retry-after"]) > 60
    # Another credential is not locked, but the address runs out of attempts within its minute (30).
    other = await create_credential(database_url, [org.id])
    statuses = [(await _login_status(http, stack.url, "malformed", org.id))[0] for _ in range(26)]
    assert statuses[-1] == 429 and set(statuses) == {401, 429}, statuses
    status, (body, headers), _ = await _login_status(http, stack.url, other, org.id)
    assert (status, body["code"]) == (429, "rate_limited") and int(headers["retry-after"]) >= 1
    async with connect(database_url) as conn:
        assert await conn.fetchval("SELECT count(*) FROM regulator.sessions") == 0
