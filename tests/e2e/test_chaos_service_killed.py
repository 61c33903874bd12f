"""Chaos drill 3 (docs/ops/chaos.md): core killed (SIGKILL, no drain) behind the proxy, then started again.

The proxy answers core's routes with a 502/503 problem at once (a refused connection, then an upstream its
active health checks have marked down), its other routes keep working (login through /auth), and once core is
started again on the same address the health checks put it back and the proxy routes to it within a bound.
"""

from __future__ import annotations

import signal

import aiohttp
import pytest
from auth_support import PASSWORD, Org, call
from chaos_support import in_rotation, timed, wait_for
from core_support import SESSION_KEK, StartService, role_tokens, start_core
from test_proxy import start_proxy

pytestmark = pytest.mark.e2e

# A refused connection is answered at once; the bound leaves room for a slow machine, far below any timeout.
DOWN_ANSWER_WITHIN_S = 2.0
# FAST_HEALTH (test_proxy): a check every 0.2 s, 2 good ones to come back; plus core's own start.
BACK_WITHIN_S = 10.0
UPSTREAM_DOWN_CODES = {"upstream_unavailable", "service_unavailable"}


async def test_core_killed_the_proxy_answers_fast_and_routes_to_it_again_when_it_returns(
    start_service: StartService, database_url: str, org: Org, http: aiohttp.ClientSession
) -> None:
    stack = start_core(start_service, database_url)
    proxy = start_proxy(start_service, {"auth": [stack.auth.url], "core": [stack.core.url]})
    finance = (await role_tokens(http, stack, org))["finance"]
    lines = f"{proxy.url}/bank-lines"

    async def lines_answered() -> bool:
        status, _, _ = await call(http, "GET", lines, token=finance)
        return status == 200

    await wait_for(lines_answered, BACK_WITHIN_S, "the proxy routing to core")

    stack.core.send_signal(signal.SIGKILL)
    assert stack.core.wait_exit(5) == -signal.SIGKILL

    # Core's routes: a problem at once, several times over (refused, then marked down by the health checks).
    for _ in range(5):
        (status, body, headers), took = await timed(call(http, "GET", lines, token=finance))
        assert took < DOWN_ANSWER_WITHIN_S, took
        assert status in (502, 503) and body["code"] in UPSTREAM_DOWN_CODES, body
        assert headers["content-type"].startswith("application/problem+json"), headers
    # The other routes keep working.
    status, body, _ = await call(
        http, "POST", f"{proxy.url}/auth/login", json={"email": org.email("analyst"), "password": PASSWORD}
    )
    assert status == 200, body
    status, body, _ = await call(http, "GET", f"{proxy.url}/health")
    assert status == 200, body
    # The active health checks took core out of rotation (and only core).
    await wait_for(lambda: in_rotation(http, proxy.url, "core", 0), BACK_WITHIN_S, "core out of rotation")
    assert await in_rotation(http, proxy.url, "auth", 1)

    # Core again, on the address the proxy knows: routed to within the bound, the answers are core's own.
    start_service("core", {"AUTH_URL": stack.auth.url, "APGMS_KEK": SESSION_KEK, "PORT": str(stack.core.port)})
    await wait_for(lines_answered, BACK_WITHIN_S, "the proxy routing to core again")
    assert await in_rotation(http, proxy.url, "core", 1)
    status, page, _ = await call(http, "GET", lines, token=finance)
    assert status == 200 and page["items"] == [], page
