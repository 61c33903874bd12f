"""Readiness: how check results become the `/ready` status and body, and how a check failure is reported."""

from __future__ import annotations

import asyncio

import orjson
from prometheus_client import REGISTRY

from shared.health import HEALTH_MEDIA_TYPE, CheckResult, Health, health_json, readiness_body, run_check

LEAKY_MESSAGE = "could not connect to db.internal:5432 as user apgms with password=hunter2"


def test_all_checks_passing_is_200_ready() -> None:
    results = [CheckResult("postgres", True, 1.23456, None), CheckResult("redis", True, 0.5, None)]
    status, body = readiness_body("core", results, draining=False)
    assert status == 200
    assert body == {
        "status": "pass",
        "ok": True,
        "ready": True,
        "service": "core",
        "checks": {"postgres": {"status": "pass", "latency_ms": 1.23}, "redis": {"status": "pass", "latency_ms": 0.5}},
    }


def test_one_failing_check_is_503_with_the_reason() -> None:
    results = [CheckResult("postgres", True, 2.0, None), CheckResult("redis", False, None, "timed out after 1s")]
    status, body = readiness_body("core", results, draining=False)
    assert status == 503
    assert body["status"] == "fail"
    assert body["ok"] is False
    assert body["ready"] is False
    assert body["checks"]["redis"] == {"status": "fail", "error": "timed out after 1s"}
    assert body["checks"]["postgres"]["status"] == "pass"
    assert "draining" not in body


def test_a_failing_degradable_check_is_200_warn_with_the_check_shown_failing() -> None:
    results = [CheckResult("postgres", True, 2.0, None), CheckResult("redis", False, None, "ConnectionError")]
    status, body = readiness_body("core", results, draining=False, degradable=frozenset({"redis"}))
    assert status == 200
    assert (body["status"], body["ok"], body["ready"]) == ("warn", True, True)
    assert body["checks"]["redis"] == {"status": "fail", "error": "ConnectionError"}
    # A critical check still fails readiness, degradable ones or not.
    results[0] = CheckResult("postgres", False, None, "OSError")
    status, body = readiness_body("core", results, draining=False, degradable=frozenset({"redis"}))
    assert (status, body["status"], body["ready"]) == (503, "fail", False)
    # Draining wins over everything.
    status, body = readiness_body("core", [], draining=True, degradable=frozenset({"redis"}))
    assert (status, body["status"]) == (503, "fail")


def test_draining_is_503_even_when_every_check_passes() -> None:
    status, body = readiness_body("core", [CheckResult("postgres", True, 1.0, None)], draining=True)
    assert status == 503
    assert body["draining"] is True
    assert body["ready"] is False
    assert body["status"] == "fail"


def test_no_checks_and_not_draining_is_ready() -> None:
    assert readiness_body("auth", [], draining=False) == (
        200,
        {"status": "pass", "ok": True, "ready": True, "service": "auth", "checks": {}},
    )


async def test_run_check_reports_latency_of_a_passing_check() -> None:
    async def ok(_: float) -> float:
        return 3.5

    assert await run_check("postgres", ok, 1.0) == CheckResult("postgres", True, 3.5, None)


async def test_run_check_reports_only_the_exception_class() -> None:
    async def refused(_: float) -> float:
        raise ConnectionRefusedError(LEAKY_MESSAGE)

    result = await run_check("postgres", refused, 1.0)
    assert result == CheckResult("postgres", False, None, "ConnectionRefusedError")
    assert "hunter2" not in orjson.dumps(result.as_json()).decode()


async def test_run_check_reports_a_timeout_with_its_duration() -> None:
    async def hangs(timeout_s: float) -> float:
        async with asyncio.timeout(timeout_s):
            await asyncio.sleep(10)
        return 0.0

    result = await asyncio.wait_for(run_check("redis", hangs, 0.05), timeout=2)
    assert result.ok is False
    assert result.latency_ms is None
    assert result.error == "timed out after 0.05s"
    assert result.as_json() == {"status": "fail", "error": "timed out after 0.05s"}


async def test_health_readiness_runs_checks_with_its_timeout_and_counts_failures() -> None:
    seen: list[float] = []

    async def ok(timeout_s: float) -> float:
        seen.append(timeout_s)
        return 1.0

    async def broken(_: float) -> float:
        raise OSError(LEAKY_MESSAGE)

    health = Health("compliance", {"postgres": ok, "redis": broken}, timeout_s=0.75)
    before = REGISTRY.get_sample_value("security_events_total", {"event": "readiness.fail"}) or 0.0
    status, body = await health.readiness()
    assert status == 503
    assert seen == [0.75]
    assert body["checks"] == {
        "postgres": {"status": "pass", "latency_ms": 1.0},
        "redis": {"status": "fail", "error": "OSError"},
    }
    assert REGISTRY.get_sample_value("security_events_total", {"event": "readiness.fail"}) == before + 1


async def test_health_readiness_while_draining_skips_the_checks() -> None:
    async def must_not_run(_: float) -> float:
        raise AssertionError("checks are skipped while draining")

    health = Health("core", {"postgres": must_not_run}, timeout_s=1.0)
    health.draining = True
    status, body = await health.readiness()
    assert status == 503
    assert body["draining"] is True


def test_health_json_uses_the_health_media_type() -> None:
    response = health_json(503, {"status": "fail"})
    assert response.status_code == 503
    assert response.media_type == HEALTH_MEDIA_TYPE == "application/health+json"
    assert orjson.loads(response.body) == {"status": "fail"}
