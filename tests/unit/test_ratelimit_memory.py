"""Rate limiter, login guard and anomaly detector on the in-process backend, with a hand-driven clock."""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from typing import Any

import pytest
from prometheus_client import REGISTRY
from redis.exceptions import ConnectionError as RedisConnectionError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient

from shared.anomaly import AnomalyDetector, AnomalyMiddleware
from shared.context import RequestContextMiddleware, request_state
from shared.errors import ApiError
from shared.log import capture_logs
from shared.ratelimit import (
    Decision,
    LoginGuard,
    MemoryBackend,
    RateLimiter,
    WindowCount,
    make_backend,
    rate_limited_error,
    retry_after_s,
)
from shared.tokens import Principal

EMAIL = "Ann.Smith@Example.com"


async def failed_attempt(guard: LoginGuard, account: str, address: str | None) -> bool:
    """One wrong password as the services do it: `check` admits (and reserves) the attempt, then it fails."""
    if not (await guard.check(account, address)).allowed:
        return False
    return await guard.record_failure(account, address)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def backend(clock: Clock) -> MemoryBackend:
    return MemoryBackend(clock=clock)


def security_events(event: str) -> float:
    return REGISTRY.get_sample_value("security_events_total", {"event": event}) or 0.0


@pytest.fixture
def captured() -> Iterator[list[MutableMapping[str, Any]]]:
    with capture_logs() as logs:
        yield logs


def security_lines(logs: list[MutableMapping[str, Any]], event: str) -> list[MutableMapping[str, Any]]:
    return [line for line in logs if line["event"] == "security_event" and line["security.event"] == event]


# --- rate limiter ----------------------------------------------------------------------------------------------


async def test_limiter_allows_limit_then_refuses_until_the_window_ends(backend: MemoryBackend, clock: Clock) -> None:
    limiter = RateLimiter(backend, limit=3, window_s=60, name="t")
    assert [await limiter.hit("k") for _ in range(3)] == [
        Decision(True, 2, 0),
        Decision(True, 1, 0),
        Decision(True, 0, 0),
    ]
    clock.advance(20.5)
    refused = await limiter.hit("k")
    assert refused == Decision(False, 0, 40)
    clock.advance(39.0)
    assert (await limiter.hit("k")).retry_after_s == 1
    clock.advance(0.5)
    assert await limiter.hit("k") == Decision(True, 2, 0)


async def test_keys_and_limiters_count_separately(backend: MemoryBackend) -> None:
    first = RateLimiter(backend, limit=1, window_s=60, name="first")
    second = RateLimiter(backend, limit=1, window_s=60, name="second")
    assert (await first.hit("a")).allowed
    assert not (await first.hit("a")).allowed
    assert (await first.hit("b")).allowed
    assert (await second.hit("a")).allowed


async def test_each_refusal_is_one_rate_limited_event(
    backend: MemoryBackend, captured: list[MutableMapping[str, Any]]
) -> None:
    limiter = RateLimiter(backend, limit=1, window_s=60, name="t")
    before = security_events("rate_limited")
    await limiter.hit("k")
    assert security_events("rate_limited") == before
    await limiter.hit("k")
    await limiter.hit("k")
    assert security_events("rate_limited") == before + 2
    assert [line["limiter"] for line in security_lines(captured, "rate_limited")] == ["t", "t"]


def test_retry_after_is_whole_seconds_rounded_up_and_at_least_one() -> None:
    assert retry_after_s(1) == 1
    assert retry_after_s(0) == 1
    assert retry_after_s(1000) == 1
    assert retry_after_s(1001) == 2


def test_rate_limited_error_is_429_with_retry_after() -> None:
    error = rate_limited_error(Decision(False, 0, 42))
    assert isinstance(error, ApiError)
    assert (error.code, error.kind.status) == ("rate_limited", 429)
    assert error.headers == {"retry-after": "42"}


@pytest.mark.parametrize(("limit", "window_s"), [(0, 1.0), (1, 0.0), (1, -1.0)])
def test_limiter_refuses_nonsense_settings(backend: MemoryBackend, limit: int, window_s: float) -> None:
    with pytest.raises(ValueError):
        RateLimiter(backend, limit=limit, window_s=window_s, name="t")


def test_factory_picks_memory_without_redis() -> None:
    assert isinstance(make_backend(None), MemoryBackend)


# --- memory backend bounds -------------------------------------------------------------------------------------


async def test_expired_keys_are_swept_on_write(backend: MemoryBackend, clock: Clock) -> None:
    for key in ("a", "b", "c"):
        await backend.increment(key, 1000)
    await backend.acquire("lock", 5000)
    assert len(backend) == 4
    clock.advance(1.0)
    await backend.increment("d", 1000)
    assert len(backend) == 2
    assert await backend.ttl_ms("a") == 0
    assert await backend.ttl_ms("lock") == 4000


async def test_key_cap_drops_the_oldest(clock: Clock) -> None:
    backend = MemoryBackend(max_keys=3, clock=clock)
    for key in ("a", "b", "c", "d"):
        await backend.increment(key, 60_000)
    assert len(backend) == 3
    assert await backend.increment("a", 60_000) == WindowCount(1, 60_000)
    assert await backend.increment("d", 60_000) == WindowCount(2, 60_000)


async def test_deleted_and_recreated_key_keeps_its_own_expiry(backend: MemoryBackend, clock: Clock) -> None:
    await backend.increment("k", 1000)
    clock.advance(0.5)
    await backend.delete("k")
    await backend.increment("k", 1000)
    clock.advance(0.6)
    await backend.increment("other", 1000)
    assert await backend.ttl_ms("k") == 400


async def test_expiry_heap_stays_bounded_under_churn(clock: Clock) -> None:
    backend = MemoryBackend(max_keys=10, clock=clock)
    for n in range(1000):
        await backend.increment(f"k{n}", 60_000)
        await backend.delete(f"k{n}")
    assert len(backend) == 0
    assert len(backend._expiries) <= 2 * backend.max_keys


# --- login guard -----------------------------------------------------------------------------------------------


async def test_lockout_after_max_failures_reported_once(
    backend: MemoryBackend, clock: Clock, captured: list[MutableMapping[str, Any]]
) -> None:
    guard = LoginGuard(backend, max_failures=3, lockout_s=600)
    before = security_events("auth.lockout")
    assert [await failed_attempt(guard, EMAIL, "10.0.0.1") for _ in range(3)] == [False, False, True]
    for _ in range(5):
        assert not await failed_attempt(guard, EMAIL, "10.0.0.1")
    refused = await guard.check(EMAIL, "10.0.0.2")
    assert refused == Decision(False, 0, 600)
    assert rate_limited_error(refused).headers == {"retry-after": "600"}
    assert security_events("auth.lockout") == before + 1
    [line] = security_lines(captured, "auth.lockout")
    assert line["address"] == "10.0.0.1"
    assert EMAIL.lower() not in repr(captured).lower()


async def test_lock_ends_after_lockout_and_failures_start_again(backend: MemoryBackend, clock: Clock) -> None:
    guard = LoginGuard(backend, max_failures=2, failure_window_s=3600, lockout_s=60)
    await failed_attempt(guard, EMAIL, None)
    assert await failed_attempt(guard, EMAIL, None)
    clock.advance(59.5)
    assert (await guard.check(EMAIL, None)).retry_after_s == 1
    clock.advance(0.5)
    assert (await guard.check(EMAIL, None)).allowed
    assert not await guard.record_failure(EMAIL, None), "the admitted attempt above is the first failure again"
    assert await failed_attempt(guard, EMAIL, None)


async def test_success_clears_failures(backend: MemoryBackend) -> None:
    guard = LoginGuard(backend, max_failures=3)
    await failed_attempt(guard, EMAIL, None)
    await failed_attempt(guard, EMAIL, None)
    await guard.record_success(EMAIL)
    await failed_attempt(guard, EMAIL, None)
    assert not await failed_attempt(guard, EMAIL, None)
    assert (await guard.check(EMAIL, None)).allowed


async def test_failures_outside_the_window_do_not_add_up(backend: MemoryBackend, clock: Clock) -> None:
    guard = LoginGuard(backend, max_failures=2, failure_window_s=60)
    await failed_attempt(guard, EMAIL, None)
    clock.advance(60)
    assert not await failed_attempt(guard, EMAIL, None)


async def test_account_is_normalised(backend: MemoryBackend) -> None:
    guard = LoginGuard(backend, max_failures=2)
    await failed_attempt(guard, "  ANN.SMITH@example.COM ", None)
    assert await failed_attempt(guard, "ann.smith@example.com", None)
    assert not (await guard.check(EMAIL, None)).allowed


async def test_per_address_limit_is_independent_of_account(
    backend: MemoryBackend, clock: Clock, captured: list[MutableMapping[str, Any]]
) -> None:
    guard = LoginGuard(backend, per_address_limit=3, per_address_window_s=60)
    decisions = [await guard.check(f"user{n}@example.com", "10.0.0.1") for n in range(3)]
    assert [d.remaining for d in decisions] == [2, 1, 0]
    before = security_events("rate_limited")
    assert await guard.check("someone-else@example.com", "10.0.0.1") == Decision(False, 0, 60)
    assert security_events("rate_limited") == before + 1
    [line] = security_lines(captured, "rate_limited")
    assert (line["limiter"], line["reason"], line["address"]) == ("login", "address_limit", "10.0.0.1")
    assert (await guard.check("user0@example.com", "10.0.0.2")).allowed
    clock.advance(60)
    assert (await guard.check("someone-else@example.com", "10.0.0.1")).allowed


async def test_locked_and_over_limit_refuses_once_with_the_longer_wait(backend: MemoryBackend) -> None:
    guard = LoginGuard(backend, max_failures=1, lockout_s=900, per_address_limit=1, per_address_window_s=60)
    await failed_attempt(guard, EMAIL, "10.0.0.1")
    await guard.check(EMAIL, "10.0.0.1")
    before = security_events("rate_limited")
    assert await guard.check(EMAIL, "10.0.0.1") == Decision(False, 0, 900)
    assert security_events("rate_limited") == before + 1


async def test_guards_with_different_names_do_not_share_counts(backend: MemoryBackend) -> None:
    users = LoginGuard(backend, max_failures=1)
    regulators = LoginGuard(backend, max_failures=1, name="regulator-login")
    await failed_attempt(users, EMAIL, None)
    assert not (await users.check(EMAIL, None)).allowed
    assert (await regulators.check(EMAIL, None)).allowed


# --- anomaly detector ------------------------------------------------------------------------------------------


async def test_anomaly_raised_once_when_threshold_reached(
    backend: MemoryBackend, clock: Clock, captured: list[MutableMapping[str, Any]]
) -> None:
    detector = AnomalyDetector(backend, threshold=3, window_s=60)
    before = security_events("anomaly.auth")
    assert not await detector.observe(401, address="10.0.0.9", principal=None)
    assert not await detector.observe(403, address="10.0.0.9", principal=None)
    assert security_events("anomaly.auth") == before
    assert security_lines(captured, "anomaly.auth") == []
    assert await detector.observe(401, address="10.0.0.9", principal=None)
    for _ in range(10):
        assert not await detector.observe(401, address="10.0.0.9", principal=None)
    assert security_events("anomaly.auth") == before + 1
    [line] = security_lines(captured, "anomaly.auth")
    assert (line["address"], line["principal"], line["by"]) == ("10.0.0.9", None, "address")
    clock.advance(60)
    for _ in range(3):
        await detector.observe(401, address="10.0.0.9", principal=None)
    assert security_events("anomaly.auth") == before + 2


async def test_other_statuses_are_not_counted(backend: MemoryBackend) -> None:
    detector = AnomalyDetector(backend, threshold=1)
    for status in (200, 404, 429, 500):
        assert not await detector.observe(status, address="10.0.0.9", principal="user-1")
    assert len(backend) == 0


async def test_principal_counts_across_addresses(
    backend: MemoryBackend, captured: list[MutableMapping[str, Any]]
) -> None:
    detector = AnomalyDetector(backend, threshold=3)
    results = [await detector.observe(403, address=f"10.0.0.{n}", principal="user-1") for n in range(3)]
    assert results == [False, False, True]
    [line] = security_lines(captured, "anomaly.auth")
    assert (line["principal"], line["by"]) == ("user-1", "principal")


async def test_address_and_principal_tripping_together_is_one_event(
    backend: MemoryBackend, captured: list[MutableMapping[str, Any]]
) -> None:
    detector = AnomalyDetector(backend, threshold=2)
    before = security_events("anomaly.auth")
    for _ in range(2):
        await detector.observe(403, address="10.0.0.9", principal="user-1")
    assert security_events("anomaly.auth") == before + 1
    [line] = security_lines(captured, "anomaly.auth")
    assert line["by"] == "address,principal"


# --- anomaly middleware ----------------------------------------------------------------------------------------


async def unauthorized(_: Request) -> Response:
    return PlainTextResponse("no", status_code=401)


async def forbidden(request: Request) -> Response:
    request_state(request.scope).principal = Principal(
        subject="user-7",
        kind="user",
        org_id="org-1",
        role="admin",
        scopes=frozenset(),
        amr=("pwd",),
        auth_time=None,
        token_id="jti",
        audience="urn:apgms:api",
    )
    return PlainTextResponse("no", status_code=403)


async def ok(_: Request) -> Response:
    return PlainTextResponse("yes")


def anomaly_app(detector: AnomalyDetector) -> Any:
    routes = [Route("/private", unauthorized), Route("/admin", forbidden), Route("/public", ok)]
    return RequestContextMiddleware(AnomalyMiddleware(Starlette(routes=routes), detector))


def test_middleware_raises_anomaly_for_repeated_401(
    backend: MemoryBackend, captured: list[MutableMapping[str, Any]]
) -> None:
    detector = AnomalyDetector(backend, threshold=3)
    before = security_events("anomaly.auth")
    with TestClient(anomaly_app(detector)) as client:
        assert client.get("/public").status_code == 200
        statuses = [client.get("/private").status_code for _ in range(2)]
        assert security_events("anomaly.auth") == before
        statuses += [client.get("/private").status_code for _ in range(3)]
    assert statuses == [401] * 5
    assert security_events("anomaly.auth") == before + 1
    [line] = security_lines(captured, "anomaly.auth")
    assert (line["address"], line["principal"]) == ("testclient", None)


def test_middleware_reads_the_principal_from_request_state(
    backend: MemoryBackend, captured: list[MutableMapping[str, Any]]
) -> None:
    detector = AnomalyDetector(backend, threshold=2)
    with TestClient(anomaly_app(detector)) as client:
        assert [client.get("/admin").status_code for _ in range(2)] == [403, 403]
    [line] = security_lines(captured, "anomaly.auth")
    assert (line["address"], line["principal"], line["by"]) == ("testclient", "user-7", "address,principal")


class BrokenBackend(MemoryBackend):
    async def increment(self, key: str, window_ms: int) -> WindowCount:
        raise RedisConnectionError("Connection refused")


def test_middleware_survives_a_failing_backend(captured: list[MutableMapping[str, Any]]) -> None:
    detector = AnomalyDetector(BrokenBackend(), threshold=1)
    with TestClient(anomaly_app(detector)) as client:
        response = client.get("/private")
    assert (response.status_code, response.text) == (401, "no")
    [warning] = [line for line in captured if line["event"] == "anomaly_observe_failed"]
    assert warning["log_level"] == "warning"
    assert warning["error"] == "ConnectionError"
