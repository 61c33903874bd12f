"""Idempotency keys through a real service process (tests/e2e/idempotent_service.py) on real PostgreSQL: one
execution for 50 concurrent identical requests, conflicts, a claim still in flight, and refused keys."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import aiohttp
import asyncpg
import pytest
from auth_support import call
from idempotent_service import COUNT_PAYMENTS, PAYMENTS_DDL

from shared.idempotency import CLAIM_WAIT_MS, IN_PROGRESS_RETRY_AFTER_S, KEY_MAX_CHARS

pytestmark = pytest.mark.e2e

ORG = uuid.UUID("7d7a6b0e-5c1f-4a39-9a57-0f3c2b1e8d44")
ACTOR = "user:3f2c1b0a-9e8d-4c7b-8a69-5f4e3d2c1b0a"
PAYMENT = {"amount": "1234.50", "payee": "ATO"}
CONCURRENT_REQUESTS = 50
# Longer than the claim wait, so the second request's wait runs out while the first still holds the key.
SLOW_FIRST_S = CLAIM_WAIT_MS / 1000 + 3


def headers(key: str | None, *, actor: str = ACTOR, delay_s: float = 0) -> dict[str, str]:
    sent = {"x-test-org": str(ORG), "x-test-actor": actor, "x-test-delay-s": str(delay_s)}
    if key is not None:
        sent["idempotency-key"] = key
    return sent


async def pay(
    http: aiohttp.ClientSession, url: str, key: str | None, body: dict[str, str] = PAYMENT, **kwargs: Any
) -> tuple[int, Any, Any]:
    return await call(http, "POST", f"{url}/payments", json=body, headers=headers(key, **kwargs))


async def payments(database_url: str) -> int:
    connection = await asyncpg.connect(database_url)
    try:
        return int(await connection.fetchval(COUNT_PAYMENTS))
    finally:
        await connection.close()


async def until_a_claim_is_held(database_url: str) -> None:
    """Until a transaction on the database sits idle: the slow request, holding its claim during its delay."""
    connection = await asyncpg.connect(database_url)
    try:
        for _ in range(100):
            held = await connection.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND state = 'idle in transaction'"
            )
            if held:
                return
            await asyncio.sleep(0.05)
        raise AssertionError("the slow request never claimed its key")
    finally:
        await connection.close()


@pytest.fixture
async def service_url(start_service: Any, database_url: str) -> str:
    connection = await asyncpg.connect(database_url)
    try:
        await connection.execute(PAYMENTS_DDL)
    finally:
        await connection.close()
    return str(start_service("idempotent", module="tests.e2e.idempotent_service").url)


async def test_50_concurrent_identical_requests_execute_once(
    service_url: str, http: aiohttp.ClientSession, database_url: str
) -> None:
    answers = await asyncio.gather(*(pay(http, service_url, "pay-once") for _ in range(CONCURRENT_REQUESTS)))
    assert await payments(database_url) == 1
    assert {status for status, _, _ in answers} == {201}
    bodies = [body for _, body, _ in answers]
    assert all(body == bodies[0] for body in bodies)
    assert bodies[0]["amount"] == "1234.50"
    locations = {answer_headers["location"] for _, _, answer_headers in answers}
    assert locations == {f"/payments/{bodies[0]['id']}"}
    replays = [answer_headers.get("idempotent-replay") for _, _, answer_headers in answers]
    assert replays.count("true") == CONCURRENT_REQUESTS - 1
    assert replays.count(None) == 1
    assert {answer_headers["content-type"] for _, _, answer_headers in answers} == {"application/json"}


async def test_a_replay_later_repeats_the_answer_and_another_body_is_a_409(
    service_url: str, http: aiohttp.ClientSession, database_url: str
) -> None:
    status, created, first_headers = await pay(http, service_url, "pay-1")
    assert status == 201
    assert "idempotent-replay" not in first_headers
    status, replayed, replay_headers = await pay(http, service_url, "pay-1")
    assert (status, replayed, replay_headers["idempotent-replay"]) == (201, created, "true")
    assert replay_headers["x-request-id"] != first_headers["x-request-id"]

    for changed in ({**PAYMENT, "amount": "1234.51"}, {**PAYMENT, "payee": "ATO "}):
        status, problem, problem_headers = await pay(http, service_url, "pay-1", changed)
        assert (status, problem["code"], problem["status"]) == (409, "idempotency_conflict", 409)
        assert problem_headers["content-type"] == "application/problem+json"
    status, problem, _ = await pay(http, service_url, "pay-1", actor="user:0b9f3e2a-1c4d-4e8f-8a6b-2d5c7e9f1a30")
    assert (status, problem["code"]) == (409, "idempotency_conflict")
    # The same body in another key order is the same request.
    status, reordered, _ = await call(
        http,
        "POST",
        f"{service_url}/payments",
        data=b'{"payee":"ATO","amount":"1234.50"}',
        headers={**headers("pay-1"), "content-type": "application/json"},
    )
    assert (status, reordered) == (201, created)
    assert await payments(database_url) == 1


async def test_without_a_key_every_request_executes(
    service_url: str, http: aiohttp.ClientSession, database_url: str
) -> None:
    first = await pay(http, service_url, None)
    second = await pay(http, service_url, None)
    assert first[0] == second[0] == 201
    assert first[1]["id"] != second[1]["id"]
    assert "idempotent-replay" not in second[2]
    assert await payments(database_url) == 2


async def test_a_refused_body_is_not_stored_and_the_key_stays_free(
    service_url: str, http: aiohttp.ClientSession, database_url: str
) -> None:
    status, problem, _ = await pay(http, service_url, "pay-2", {"amount": "12.5", "payee": "ATO"})
    assert (status, problem["code"]) == (400, "invalid_body")
    status, _, _ = await pay(http, service_url, "pay-2")
    assert status == 201
    assert await payments(database_url) == 1


async def test_a_request_while_the_first_is_in_flight_is_a_409_with_retry_after(
    service_url: str, http: aiohttp.ClientSession, database_url: str
) -> None:
    slow = asyncio.create_task(pay(http, service_url, "pay-slow", delay_s=SLOW_FIRST_S))
    await until_a_claim_is_held(database_url)
    status, problem, problem_headers = await pay(http, service_url, "pay-slow")
    assert (status, problem["code"]) == (409, "idempotency_in_progress")
    assert "in progress" in problem["detail"]
    assert problem_headers["retry-after"] == str(IN_PROGRESS_RETRY_AFTER_S)
    assert not slow.done()
    status, created, _ = await slow
    assert status == 201
    status, replayed, replay_headers = await pay(http, service_url, "pay-slow")
    assert (status, replayed, replay_headers["idempotent-replay"]) == (201, created, "true")
    assert await payments(database_url) == 1


async def test_bad_keys_are_400_problems(service_url: str, http: aiohttp.ClientSession, database_url: str) -> None:
    for key in ("", "x" * (KEY_MAX_CHARS + 1), "two words", "clé"):
        status, problem, problem_headers = await pay(http, service_url, key)
        assert (status, problem["code"]) == (400, "bad_request"), key
        assert "Idempotency-Key" in problem["detail"]
        assert problem_headers["content-type"] == "application/problem+json"
    assert await payments(database_url) == 0
    status, _, _ = await pay(http, service_url, "~" * KEY_MAX_CHARS)
    assert status == 201
