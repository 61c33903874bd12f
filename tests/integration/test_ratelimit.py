"""Rate limiter, login guard and anomaly detector on real Redis, as several service replicas would share it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import pytest_asyncio
import redis.asyncio as aioredis
from prometheus_client import REGISTRY

from shared.anomaly import AnomalyDetector
from shared.ratelimit import (
    Decision,
    FallbackBackend,
    LoginGuard,
    MemoryBackend,
    RateLimiter,
    RedisBackend,
    account_digest,
    make_backend,
)

EMAIL = "Ann.Smith@Example.com"

Connect = Callable[[], Awaitable[aioredis.Redis]]


async def failed_attempt(guard: LoginGuard, account: str, address: str | None) -> bool:
    """One wrong password as the services do it: `check` admits (and reserves) the attempt, then it fails."""
    if not (await guard.check(account, address)).allowed:
        return False
    return await guard.record_failure(account, address)


@pytest_asyncio.fixture
async def connect(clean_redis_url: str) -> AsyncIterator[Connect]:
    """Factory of separate Redis clients (one per simulated replica), all closed after the test."""
    clients: list[aioredis.Redis] = []

    async def new_client() -> aioredis.Redis:
        client = aioredis.Redis.from_url(clean_redis_url)
        clients.append(client)
        return client

    yield new_client
    for client in clients:
        await client.aclose()


@pytest_asyncio.fixture
async def redis_client(connect: Connect) -> aioredis.Redis:
    return await connect()


def security_events(event: str) -> float:
    return REGISTRY.get_sample_value("security_events_total", {"event": event}) or 0.0


async def test_limiter_allows_limit_then_refuses_and_allows_after_the_window(redis_client: aioredis.Redis) -> None:
    limiter = RateLimiter(RedisBackend(redis_client), limit=3, window_s=0.3, name="t")
    assert [(await limiter.hit("k")).allowed for _ in range(3)] == [True] * 3
    assert await limiter.hit("k") == Decision(False, 0, 1)
    await asyncio.sleep(0.35)
    assert await limiter.hit("k") == Decision(True, 2, 0)


async def test_retry_after_follows_the_window_left(redis_client: aioredis.Redis) -> None:
    limiter = RateLimiter(RedisBackend(redis_client), limit=1, window_s=120, name="t")
    await limiter.hit("k")
    refused = await limiter.hit("k")
    assert not refused.allowed
    assert 119 <= refused.retry_after_s <= 120


async def test_factory_uses_redis_when_given_a_client(redis_client: aioredis.Redis) -> None:
    """Redis first, with this process's memory for any call Redis cannot answer (`FallbackBackend`)."""
    backend = make_backend(redis_client)
    assert isinstance(backend, FallbackBackend)
    assert isinstance(backend.primary, RedisBackend)
    assert isinstance(backend.fallback, MemoryBackend)


async def test_two_replicas_on_separate_clients_share_counts(connect: Connect) -> None:
    first, second = RedisBackend(await connect()), RedisBackend(await connect())
    limiters = [RateLimiter(backend, limit=4, window_s=60, name="t") for backend in (first, second)]
    decisions = [await limiters[n % 2].hit("10.0.0.1") for n in range(5)]
    assert [d.remaining for d in decisions[:4]] == [3, 2, 1, 0]
    assert not decisions[4].allowed

    guards = [LoginGuard(backend, max_failures=4) for backend in (first, second)]
    locks = [await failed_attempt(guards[n % 2], EMAIL, "10.0.0.1") for n in range(4)]
    assert locks == [False, False, False, True]
    assert not (await guards[0].check(EMAIL, "10.0.0.2")).allowed
    assert not (await guards[1].check(EMAIL, "10.0.0.3")).allowed


async def test_fifty_concurrent_hits_allow_exactly_the_limit(connect: Connect) -> None:
    limiters = [RateLimiter(RedisBackend(await connect()), limit=10, window_s=60, name="t") for _ in range(2)]
    decisions = await asyncio.gather(*(limiters[n % 2].hit("10.0.0.1") for n in range(50)))
    assert sum(d.allowed for d in decisions) == 10
    assert sorted(d.remaining for d in decisions if d.allowed) == list(range(10))


async def test_concurrent_failures_start_one_lockout(connect: Connect) -> None:
    guards = [LoginGuard(RedisBackend(await connect()), max_failures=5) for _ in range(2)]
    before = security_events("auth.lockout")
    admitted = 0

    async def guess(guard: LoginGuard) -> None:
        nonlocal admitted
        if (await guard.check(EMAIL, "10.0.0.1")).allowed:
            admitted += 1
            await asyncio.sleep(0.01)  # the password check, during which the other guesses arrive
            await guard.record_failure(EMAIL, "10.0.0.1")

    await asyncio.gather(*(guess(guards[n % 2]) for n in range(30)))
    assert admitted == 5, "a burst of concurrent guesses gets max_failures checks, no more"
    assert security_events("auth.lockout") == before + 1


async def test_lockout_refuses_then_expires(redis_client: aioredis.Redis) -> None:
    guard = LoginGuard(RedisBackend(redis_client), max_failures=3, lockout_s=0.3)
    before = security_events("auth.lockout")
    for _ in range(3):
        await failed_attempt(guard, EMAIL, "10.0.0.1")
    assert await guard.check(EMAIL, "10.0.0.1") == Decision(False, 0, 1)
    await failed_attempt(guard, EMAIL, "10.0.0.1")
    assert security_events("auth.lockout") == before + 1
    await asyncio.sleep(0.35)
    assert (await guard.check(EMAIL, "10.0.0.1")).allowed


async def test_success_clears_failures(redis_client: aioredis.Redis) -> None:
    guard = LoginGuard(RedisBackend(redis_client), max_failures=3)
    for _ in range(2):
        await failed_attempt(guard, EMAIL, None)
    await guard.record_success(EMAIL.upper())
    for _ in range(2):
        assert not await failed_attempt(guard, EMAIL, None)
    assert (await guard.check(EMAIL, None)).allowed


async def test_per_address_limit_is_independent_of_account(redis_client: aioredis.Redis) -> None:
    guard = LoginGuard(RedisBackend(redis_client), per_address_limit=2, per_address_window_s=60)
    assert (await guard.check("a@example.com", "10.0.0.1")).allowed
    assert (await guard.check("b@example.com", "10.0.0.1")).allowed
    refused = await guard.check("c@example.com", "10.0.0.1")
    assert not refused.allowed
    assert 59 <= refused.retry_after_s <= 60
    assert (await guard.check("c@example.com", "10.0.0.2")).allowed


async def test_accounts_and_addresses_never_sit_in_redis_in_clear(redis_client: aioredis.Redis) -> None:
    backend = RedisBackend(redis_client)
    guard = LoginGuard(backend, max_failures=2)
    await guard.check(EMAIL, "203.0.113.7")
    await failed_attempt(guard, EMAIL, "203.0.113.7")
    await failed_attempt(guard, EMAIL, "203.0.113.7")
    await RateLimiter(backend, limit=5, window_s=60, name="t").hit(EMAIL)
    await AnomalyDetector(backend).observe(401, address="203.0.113.7", principal=EMAIL)

    keys = [key.decode() async for key in redis_client.scan_iter("*")]
    assert len(keys) == 5
    assert all(key.startswith("apgms:") for key in keys)
    assert f"apgms:login:locked:{account_digest(EMAIL)}" in keys
    for key in keys:
        assert "@" not in key and "example" not in key.lower() and "203.0.113" not in key
        assert await redis_client.pttl(key) > 0, f"{key} would never expire"


async def test_anomaly_counts_add_up_across_replicas(connect: Connect) -> None:
    detectors = [AnomalyDetector(RedisBackend(await connect()), threshold=4, window_s=60) for _ in range(2)]
    before = security_events("anomaly.auth")
    results = [await detectors[n % 2].observe(401, address="10.0.0.9", principal=None) for n in range(3)]
    assert results == [False, False, False]
    assert security_events("anomaly.auth") == before
    tripped = await asyncio.gather(
        *(detectors[n % 2].observe(401, address="10.0.0.9", principal=None) for n in range(10))
    )
    assert sum(tripped) == 1
    assert security_events("anomaly.auth") == before + 1


@pytest.mark.parametrize("prefix", ["apgms:", "other:"])
async def test_prefix_separates_deployments(connect: Connect, prefix: str) -> None:
    client = await connect()
    shared = RateLimiter(RedisBackend(client), limit=1, window_s=60, name="t")
    await shared.hit("k")
    separate = RateLimiter(RedisBackend(client, prefix=prefix), limit=1, window_s=60, name="t")
    assert (await separate.hit("k")).allowed is (prefix != "apgms:")
