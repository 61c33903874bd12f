"""`/health` (liveness, no I/O) and `/ready` (dependencies answer, not draining), as application/health+json.

A check is critical unless named in `Health(degradable=...)`: a failing critical check makes `/ready` 503 (the
process cannot serve: balancers and the proxy move away), a failing degradable one makes it 200 with
`"status": "warn"` and the check shown as failing (the process serves, with less: Redis, whose limits fall back to
this process's memory, `shared.ratelimit.FallbackBackend`). Taking every replica out of rotation because a
shared cache is down would turn a degraded stack into a dead one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from shared.metrics import record_security_event

__all__ = [
    "HEALTH_MEDIA_TYPE",
    "Check",
    "CheckResult",
    "Health",
    "health_json",
    "readiness_body",
    "run_check",
]

HEALTH_MEDIA_TYPE = "application/health+json"

# A check takes a timeout in seconds and returns its latency in milliseconds, raising when it fails.
Check = Callable[[float], Awaitable[float]]


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    latency_ms: float | None
    error: str | None

    def as_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"status": "pass" if self.ok else "fail"}
        if self.latency_ms is not None:
            body["latency_ms"] = round(self.latency_ms, 2)
        if self.error:
            body["error"] = self.error
        return body


def readiness_body(
    service: str, results: list[CheckResult], *, draining: bool, degradable: frozenset[str] = frozenset()
) -> tuple[int, dict[str, Any]]:
    """The HTTP status and body of `/ready` for these check results: 503 `fail` while draining or when a check not
    in `degradable` fails, 200 `warn` when only degradable ones fail, 200 `pass` otherwise."""
    ready = not draining and all(result.ok or result.name in degradable for result in results)
    degraded = ready and not all(result.ok for result in results)
    body: dict[str, Any] = {
        "status": ("warn" if degraded else "pass") if ready else "fail",
        "ok": ready,
        "ready": ready,
        "service": service,
        "checks": {result.name: result.as_json() for result in results},
    }
    if draining:
        body["draining"] = True
    return (200 if ready else 503), body


async def run_check(name: str, check: Check, timeout_s: float) -> CheckResult:
    try:
        latency_ms = await check(timeout_s)
    except TimeoutError:
        return CheckResult(name, False, None, f"timed out after {timeout_s:g}s")
    except Exception as exc:
        # The class name only: driver messages can carry host names and user names.
        return CheckResult(name, False, None, type(exc).__name__)
    return CheckResult(name, True, latency_ms, None)


def health_json(status: int, body: Mapping[str, Any]) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type=HEALTH_MEDIA_TYPE)


class Health:
    """Owns the draining flag and the readiness checks of one process."""

    def __init__(
        self,
        service: str,
        checks: Mapping[str, Check],
        timeout_s: float,
        *,
        degradable: frozenset[str] = frozenset(),
    ) -> None:
        self.service = service
        self.checks = dict(checks)
        self.timeout_s = timeout_s
        self.degradable = degradable
        self.draining = False

    async def readiness(self) -> tuple[int, dict[str, Any]]:
        if self.draining:
            return readiness_body(self.service, [], draining=True)
        results = await asyncio.gather(*(run_check(name, check, self.timeout_s) for name, check in self.checks.items()))
        status, body = readiness_body(self.service, list(results), draining=False, degradable=self.degradable)
        if status != 200:
            record_security_event("readiness.fail", checks=body["checks"])
        return status, body

    async def health_endpoint(self, _: Request) -> Response:
        return health_json(200, {"status": "pass", "ok": True, "service": self.service})

    async def ready_endpoint(self, _: Request) -> Response:
        return health_json(*await self.readiness())
