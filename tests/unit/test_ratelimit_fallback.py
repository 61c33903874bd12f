"""The limiter's fallback: when Redis cannot be reached, counts move to this process's memory for that call (limits
then hold per process), one `ratelimit_fallback` line marks each change of state, and nothing is raised to the
handler; the health check still reads Redis itself."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared.log import capture_logs
from shared.ratelimit import (
    LOGIN_MAX_FAILURES,
    FallbackBackend,
    LoginGuard,
    MemoryBackend,
    RateLimiter,
    WindowCount,
    make_backend,
    shared_backend,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FlakyRedis(MemoryBackend):
    """A stand-in for Redis that refuses every call while `down`; counts the calls that reached it."""

    def __init__(self, clock: Clock) -> None:
        super().__init__(clock=clock)
        self.down = False
        self.error: type[Exception] = RedisConnectionError
        self.calls = 0

    def _reach(self) -> None:
        self.calls += 1
        if self.down:
            raise self.error("Connection refused")

    async def increment(self, key: str, window_ms: int) -> WindowCount:
        self._reach()
        return await super().increment(key, window_ms)

    async def acquire(self, key: str, ttl_ms: int) -> bool:
        self._reach()
        return await super().acquire(key, ttl_ms)

    async def count(self, key: str) -> int:
        self._reach()
        return await super().count(key)

    async def ttl_ms(self, key: str) -> int:
        self._reach()
        return await super().ttl_ms(key)

    async def delete(self, key: str) -> None:
        self._reach()
        await super().delete(key)


async def test_falls_back_to_memory_logs_each_change_of_state_and_never_raises() -> None:
    clock = Clock()
    redis = FlakyRedis(clock)
    backend = FallbackBackend(redis, fallback=MemoryBackend(clock=clock), retry_s=5.0, clock=clock)
    limiter = RateLimiter(backend, limit=2, window_s=60, name="t")
    with capture_logs() as logs:
        assert (await limiter.hit("a")).allowed  # Redis answers
        redis.down = True
        # Down: the limit now holds in memory (a fresh count there), and the caller sees no error.
        assert (await limiter.hit("a")).allowed
        assert (await limiter.hit("a")).allowed
        assert not (await limiter.hit("a")).allowed
        assert backend.degraded
        # Within retry_s only the first call tried Redis; the rest went straight to memory.
        assert redis.calls == 2
        redis.error = RedisTimeoutError
        clock.now += 5.0
        assert not (await limiter.hit("a")).allowed  # tried Redis once more (timed out), still memory
        assert redis.calls == 3
        redis.down = False
        clock.now += 5.0
        assert (await limiter.hit("a")).allowed  # Redis again, where "a" counted one
        assert not backend.degraded
        assert (await limiter.hit("b")).allowed
    fallbacks = [line for line in logs if line["event"] == "ratelimit_fallback"]
    assert [line["state"] for line in fallbacks] == ["down", "up"]
    assert fallbacks[0]["error"] == "ConnectionError"
    assert all(line["log_level"] == "warning" for line in fallbacks)


async def test_login_guard_keeps_working_and_locking_while_redis_is_down() -> None:
    clock = Clock()
    redis = FlakyRedis(clock)
    redis.down = True
    guard = LoginGuard(FallbackBackend(redis, fallback=MemoryBackend(clock=clock), clock=clock))
    with capture_logs():
        assert (await guard.check("ann@example.com", "10.0.0.1")).allowed
        await guard.record_success("ann@example.com")
        locked = False
        for _ in range(LOGIN_MAX_FAILURES):
            assert (await guard.check("bob@example.com", "10.0.0.1")).allowed
            locked = await guard.record_failure("bob@example.com", "10.0.0.1")
        assert locked  # the lockout holds in this process
        assert not (await guard.check("bob@example.com", "10.0.0.1")).allowed


async def test_an_unreachable_redis_client_falls_back_and_health_still_sees_it() -> None:
    client = aioredis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=1, socket_timeout=1)
    try:
        backend = make_backend(client)
        assert isinstance(backend, FallbackBackend)
        guard = LoginGuard(backend, name="regulator-login")
        with capture_logs() as logs:
            decision = await guard.check("rgc-lookup", "10.0.0.2")
            assert decision.allowed
            assert await guard.record_failure("rgc-lookup", "10.0.0.2") is False
            await guard.record_success("rgc-lookup")
        assert [line["state"] for line in logs if line["event"] == "ratelimit_fallback"] == ["down"]
        # The health check reads Redis itself: it must still fail.
        with pytest.raises(RedisConnectionError):
            await shared_backend(backend).ttl_ms("probe")
        assert shared_backend(MemoryBackend()) is not None
    finally:
        await client.aclose()
