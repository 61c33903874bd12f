"""`GET /regulator/health`: whether the regulator can refuse and admit sessions right now, without a login (the
runbook uses it to show the guard rails are active).

200 `{"status": "pass", "checks": {...}}` only when both checks pass within the ready timeout
(READY_CHECK_TIMEOUT_S), else 503 with the failing check named:

    session_guard   the guard's own validity query (`store.live_session`) for a random token hash answers, and
                    answers "no session" (so the database, the schema and the rule are all there)
    login_throttle  the login guard's counter store (Redis, or memory) answers one read (Redis itself: the guard
                    falls back to memory while Redis is down, but the check does not)

It is unauthenticated, so its cost is bounded: one indexed query and one counter read, no argon2, no other service.
"""

from __future__ import annotations

import asyncio
import os
import time

from starlette.requests import Request
from starlette.responses import Response

from services.regulator import store
from services.regulator.deps import RegulatorDeps, regulator_deps
from shared.health import CheckResult, health_json, readiness_body, run_check
from shared.openapi import documented
from shared.ratelimit import shared_backend

__all__ = ["GuardBroken", "regulator_health"]

# The counter read by the throttle check; it is never written, so it costs one PTTL of a missing key.
_PROBE_KEY = "regulator-health:probe"


class GuardBroken(Exception):
    """The session guard's query admitted a token nobody was given."""


async def _session_guard(deps: RegulatorDeps, timeout_s: float) -> float:
    started = time.perf_counter()
    async with asyncio.timeout(timeout_s):
        async with deps.pool.acquire(timeout=timeout_s) as conn:
            found = await store.live_session(conn, os.urandom(32))
    if found is not None:
        raise GuardBroken
    return (time.perf_counter() - started) * 1000


async def _login_throttle(deps: RegulatorDeps, timeout_s: float) -> float:
    started = time.perf_counter()
    async with asyncio.timeout(timeout_s):
        await shared_backend(deps.login_guard.backend).ttl_ms(_PROBE_KEY)
    return (time.perf_counter() - started) * 1000


@documented("Whether the regulator's session guard works (no login)", tags=["regulator"])
async def regulator_health(request: Request) -> Response:
    runtime = request.app.state.runtime
    timeout_s = runtime.settings.ready_timeout_s
    try:
        deps = regulator_deps(request)
    except RuntimeError:
        results = [CheckResult("session_guard", False, None, "not started")]
    else:
        results = list(
            await asyncio.gather(
                run_check("session_guard", lambda t: _session_guard(deps, t), timeout_s),
                run_check("login_throttle", lambda t: _login_throttle(deps, t), timeout_s),
            )
        )
    status, body = readiness_body("regulator", results, draining=runtime.health.draining)
    return health_json(status, body)
