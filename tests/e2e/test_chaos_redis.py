"""Chaos drill 2 (docs/ops/chaos.md): Redis down under a running auth and core, then back.

Both processes reach the session's Redis through a TCP forwarder the test cuts and restores. While Redis is down:
each service's /ready says so, 200 with status "warn" and its `redis` check failing (shared.health: Redis is a
degradable dependency: the login limits are shared across replicas only through it, but a service without it still
serves), and the stack keeps serving: logins answer 200 and 401 as
usual, bank lines are read and written, and the login limits keep working in each process's memory
(shared.ratelimit.FallbackBackend): the fifth wrong password still locks the account. After the restore /ready is
200 again and the limiter goes back to Redis (its `ratelimit_fallback` line with state "up").

The second drill asks the same of the stack as its users reach it, through the proxy: the proxy's health checks read
the 200 and keep every instance in rotation. (Before readiness told a degraded service from a broken one, every
/ready was 503 and the proxy took every instance out, answering 503 "No healthy instance" although every process
behind it still served: the defect this drill found.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import aiohttp
import pytest
from auth_support import PASSWORD, Org, call
from chaos_support import TcpForwarder, wait_for
from chaos_support import in_rotation as upstream_in_rotation
from core_support import SESSION_KEK, CoreStack, StartService, get_lines, new_line, post_line
from test_proxy import start_proxy

from shared.ratelimit import LOGIN_MAX_FAILURES, REDIS_RETRY_S

pytestmark = pytest.mark.e2e

READY_FLIPS_WITHIN_S = 5.0
# The limiter tries Redis again at most once every REDIS_RETRY_S; a login a little after that finds it back.
LIMITER_BACK_WITHIN_S = REDIS_RETRY_S + 5.0


@pytest.fixture
def redis_forwarder(clean_redis_url: str) -> Iterator[TcpForwarder]:
    forwarder = TcpForwarder.for_url(clean_redis_url)
    yield forwarder
    forwarder.close()


async def readiness(http: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, object]]:
    status, body, _ = await call(http, "GET", f"{url}/ready")
    return status, body


async def login_status(http: aiohttp.ClientSession, stack: CoreStack, email: str, password: str) -> tuple[int, object]:
    status, body, _ = await call(
        http, "POST", f"{stack.auth.url}/auth/login", json={"email": email, "password": password}
    )
    return status, body


async def test_redis_down_the_stack_keeps_serving_and_readiness_says_so(
    start_service: StartService,
    database_url: str,
    clean_redis_url: str,
    redis_forwarder: TcpForwarder,
    org: Org,
    http: aiohttp.ClientSession,
) -> None:
    through = {"REDIS_URL": redis_forwarder.url_for(clean_redis_url)}
    auth = start_service("auth", through)
    core = start_service("core", {"AUTH_URL": auth.url, "APGMS_KEK": SESSION_KEK, **through})
    stack = CoreStack(auth=auth, core=core, database_url=database_url)
    services = {"auth": stack.auth.url, "core": stack.core.url}
    for name, url in services.items():
        await wait_for(lambda url=url: _ready_says(http, url, "pass"), READY_FLIPS_WITHIN_S, f"{name} ready before")
    assert redis_forwarder.connections_accepted > 0  # both really talk to Redis through the forwarder

    redis_forwarder.cut()
    for name, url in services.items():
        await wait_for(lambda url=url: _ready_warns(http, url), READY_FLIPS_WITHIN_S, f"{name} /ready warn")
        status, body = await readiness(http, url)
        checks = body["checks"]
        assert (status, body["status"]) == (200, "warn"), body  # type: ignore[index]
        assert checks["redis"]["status"] == "fail", body  # type: ignore[index]
        assert checks["postgres"]["status"] == "pass", body  # type: ignore[index]

    # Logins answer as usual: right password 200, wrong 401.
    status, session = await login_status(http, stack, org.email("finance"), PASSWORD)
    assert status == 200, session
    token = session["access_token"]  # type: ignore[index]
    status, body = await login_status(http, stack, org.email("admin"), "wrong password")
    assert (status, body["code"]) == (401, "bad_credentials"), body  # type: ignore[index]
    logged = await stack.auth.wait_for_log_async(lambda line: line.get("event") == "ratelimit_fallback")
    assert logged["state"] == "down", logged

    # Bank lines are read and written.
    status, created, _ = await post_line(http, stack, token, new_line(payee="While Redis is down"), key="chaos-redis")
    assert status == 201, created
    status, page, _ = await get_lines(http, stack, token)
    assert status == 200 and [item["id"] for item in page["items"]] == [created["id"]], page

    # The lockout still works, counted in auth's memory: LOGIN_MAX_FAILURES wrong passwords in all (one above),
    # then even the right password is refused with 429 until the lock ends.
    for _ in range(LOGIN_MAX_FAILURES - 1):
        status, body = await login_status(http, stack, org.email("admin"), "wrong password")
        assert status == 401, body
    status, body = await login_status(http, stack, org.email("admin"), PASSWORD)
    assert (status, body["code"]) == (429, "rate_limited"), body  # type: ignore[index]

    redis_forwarder.restore()
    for name, url in services.items():
        await wait_for(lambda url=url: _ready_says(http, url, "pass"), READY_FLIPS_WITHIN_S, f"{name} passes again")

    # The limiter tries Redis again on a call after REDIS_RETRY_S and says it is back. One login a second at most:
    # polled faster, the logins would use up this address's login limit (30 a minute) before the limiter is back.
    async def limiter_back() -> bool:
        status, body = await login_status(http, stack, org.email("analyst"), PASSWORD)
        assert status == 200, body
        return any(
            line.get("event") == "ratelimit_fallback" and line.get("state") == "up" for line in stack.auth.log_lines()
        )

    await wait_for(limiter_back, LIMITER_BACK_WITHIN_S, "the limiter back on Redis", interval_s=1.0)


async def _ready_warns(http: aiohttp.ClientSession, url: str) -> bool:
    return await _ready_says(http, url, "warn")


async def _ready_says(http: aiohttp.ClientSession, url: str, health: str) -> bool:
    """/ready answers 200 with this health status ("pass", or "warn" for a degraded service)."""
    status, body = await readiness(http, url)
    return status == 200 and isinstance(body, dict) and body.get("status") == health


# Enough of the proxy's fast health checks (test_proxy.FAST_HEALTH: every 0.2 s, out after 2 failures) to act.
PROXY_SETTLES_S = 2.0


async def test_redis_down_the_stack_keeps_serving_through_the_proxy(
    start_service: StartService,
    database_url: str,
    clean_redis_url: str,
    redis_forwarder: TcpForwarder,
    org: Org,
    http: aiohttp.ClientSession,
) -> None:
    through = {"REDIS_URL": redis_forwarder.url_for(clean_redis_url)}
    auth = start_service("auth", through)
    core = start_service("core", {"AUTH_URL": auth.url, "APGMS_KEK": SESSION_KEK, **through})
    proxy = start_proxy(start_service, {"auth": [auth.url], "core": [core.url]})
    base = proxy.url

    async def in_rotation() -> bool:
        return await upstream_in_rotation(http, base, "auth", 1) and await upstream_in_rotation(http, base, "core", 1)

    await wait_for(in_rotation, READY_FLIPS_WITHIN_S, "auth and core in the proxy's rotation before the cut")
    redis_forwarder.cut()
    await asyncio.sleep(PROXY_SETTLES_S)
    status, session, _ = await call(
        http, "POST", f"{base}/auth/login", json={"email": org.email("finance"), "password": PASSWORD}
    )
    assert status == 200, session
    status, page, _ = await call(http, "GET", f"{base}/bank-lines", token=session["access_token"])
    assert status == 200, page
