"""The foundation through real service processes under hypercorn, over real HTTP, on real PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from http.client import HTTPConnection
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
from multidict import CIMultiDict

from apgms.devservers import LocalPostgres, free_port, read_pid_file
from shared.migrations import migrate
from shared.runner import HYPERCORN_MAX_REQUESTS_PER_CONNECTION

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
UUID4 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
VALID_TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest_asyncio.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        yield session


async def get(http: aiohttp.ClientSession, url: str, **headers: str) -> tuple[int, CIMultiDict[str], dict]:
    async with http.get(url, headers=headers) as response:
        return response.status, response.headers.copy(), await response.json(content_type=None)


async def poll_status(http: aiohttp.ClientSession, url: str, want: int, within_s: float) -> tuple[float, dict]:
    """Seconds until `url` answers `want`, and that body; fails the test after `within_s`."""
    started = time.monotonic()
    last: tuple[int, dict] = (0, {})
    while time.monotonic() - started < within_s:
        try:
            status, _, body = await get(http, url)
            last = (status, body)
            if status == want:
                return time.monotonic() - started, body
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    pytest.fail(f"{url} did not answer {want} within {within_s}s; last {last}")


async def test_request_id_is_accepted_replaced_echoed_and_logged(start_service, http) -> None:
    service = start_service("auth")

    status, headers, _ = await get(http, f"{service.url}/openapi.json", **{"x-request-id": "client-req.42:a_b"})
    assert status == 200
    assert headers["x-request-id"] == "client-req.42:a_b"

    hostile = "x" * 129
    status, headers, _ = await get(http, f"{service.url}/openapi.json", **{"x-request-id": hostile})
    replaced = headers["x-request-id"]
    assert UUID4.fullmatch(replaced)

    async with http.get(
        f"{service.url}/openapi.json", headers={"x-request-id": "caf\u00e9".encode().decode("latin-1")}
    ) as r:
        non_ascii_replacement = r.headers["x-request-id"]
    assert UUID4.fullmatch(non_ascii_replacement)

    status, headers, body = await get(http, f"{service.url}/no/such/route", traceparent=VALID_TRACEPARENT)
    assert status == 404
    assert body["code"] == "not_found"
    assert body["request_id"] == headers["x-request-id"]

    accepted = service.wait_for_log(lambda line: line.get("request_id") == "client-req.42:a_b")
    assert accepted["event"] == "request"
    assert accepted["route"] == "/openapi.json"
    assert accepted["service"] == "auth"
    assert set(accepted) >= {"time", "level", "service", "event", "request_id", "duration_ms", "client"}
    assert service.wait_for_log(lambda line: line.get("request_id") == replaced)["status"] == 200
    assert service.wait_for_log(lambda line: line.get("request_id") == non_ascii_replacement)
    assert hostile not in "".join(str(line) for line in service.log_lines())
    not_found = service.wait_for_log(lambda line: line.get("path") == "/no/such/route")
    assert not_found["traceparent"] == VALID_TRACEPARENT
    assert not_found["route"] == "unmatched"


async def test_metrics_use_route_templates_and_unmatched(start_service, http) -> None:
    service = start_service("core")
    line = "/bank-lines/3f2c1b0a-9e8d-4c7b-8a69-5f4e3d2c1b0a"
    for path in ("/ready", "/alerts/123/no-such-action", "/no/such/route", line, "/alerts/123/resolve", "/ready"):
        async with http.get(service.url + path):
            pass
    async with http.get(f"{service.url}/metrics") as response:
        text = await response.text()
    assert response.headers["content-type"].startswith("text/plain")
    assert 'apgms_api_requests_total{method="GET",route="/ready",status="200"} 2.0' in text
    assert 'apgms_api_requests_total{method="GET",route="unmatched",status="404"} 2.0' in text
    assert "/alerts/123" not in text
    # A route matched by path but not method (resolve is POST only) keeps its template too.
    assert 'apgms_api_requests_total{method="GET",route="/alerts/:id/resolve",status="405"} 1.0' in text
    # A matched route is labelled by its template, never its path (the line needs a token: 401).
    assert 'apgms_api_requests_total{method="GET",route="/bank-lines/:line_id",status="401"} 1.0' in text
    assert line not in text
    assert 'apgms_api_request_duration_seconds_bucket{le="0.5",method="GET",route="/ready"}' in text
    assert 'security_events_total{event="anomaly.auth"} 0.0' in text
    assert "process_resident_memory_bytes" in text


async def test_every_service_serves_health_ready_metrics_and_openapi(start_service, http) -> None:
    for name in ("auth", "core", "compliance", "regulator"):
        service = start_service(name)
        status, headers, body = await get(http, f"{service.url}/health")
        assert (status, body) == (200, {"status": "pass", "ok": True, "service": name})
        assert headers["content-type"] == "application/health+json"
        status, _, body = await get(http, f"{service.url}/ready")
        assert status == 200
        assert body["ready"] is True
        assert body["checks"]["postgres"]["status"] == "pass"
        status, _, body = await get(http, f"{service.url}/openapi.json")
        assert status == 200
        assert body["info"]["title"] == f"APGMS {name} service"
        assert {"/health", "/ready"} <= set(body["paths"])


async def test_ready_checks_redis_when_configured(start_service, http, redis_url) -> None:
    service = start_service("compliance", {"REDIS_URL": redis_url})
    status, _, body = await get(http, f"{service.url}/ready")
    assert status == 200
    assert body["checks"]["redis"]["status"] == "pass"


@pytest.fixture
def own_postgres() -> Iterator[LocalPostgres]:
    """A PostgreSQL of this test's own, on a fixed port, so the test can stop and restart it."""
    data_dir = Path(tempfile.mkdtemp(prefix="apgms-outage-", dir="/tmp"))
    server = LocalPostgres(data_dir, port=free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


async def test_database_outage_turns_ready_503_and_recovers_without_restart(start_service, http, own_postgres) -> None:
    await migrate(own_postgres.dsn)
    service = start_service("core", {"DATABASE_URL": own_postgres.dsn})
    await poll_status(http, f"{service.url}/ready", 200, within_s=5)

    own_postgres.stop()
    elapsed, body = await poll_status(http, f"{service.url}/ready", 503, within_s=5)
    assert elapsed < 5
    assert body["checks"]["postgres"]["status"] == "fail"
    status, _, _ = await get(http, f"{service.url}/health")
    assert status == 200

    own_postgres.start()
    elapsed, body = await poll_status(http, f"{service.url}/ready", 200, within_s=5)
    assert elapsed < 5
    assert body["checks"]["postgres"]["status"] == "pass"
    assert service.popen.poll() is None, "the service must recover without a restart"
    assert service.wait_for_log(lambda line: line.get("event") == "request" and line.get("status") == 503)


async def test_start_with_database_down_serves_503_then_recovers(start_service, http, own_postgres) -> None:
    dsn = own_postgres.dsn
    await migrate(dsn)
    own_postgres.stop()
    service = start_service("auth", {"DATABASE_URL": dsn})
    status, _, body = await get(http, f"{service.url}/ready")
    assert status == 503
    assert body["checks"]["postgres"]["status"] == "fail"
    assert service.wait_for_log(lambda line: line.get("event") == "database_unreachable")

    own_postgres.start()
    await poll_status(http, f"{service.url}/ready", 200, within_s=12)
    assert service.popen.poll() is None


async def test_sigterm_drains_in_flight_request_then_exits_cleanly(start_service, http) -> None:
    service = start_service("slow", {"SHUTDOWN_DELAY_S": "0.2"}, module="tests.e2e.echo_service")
    in_flight = asyncio.create_task(get(http, f"{service.url}/slow?s=2"))
    await asyncio.sleep(0.4)

    service.popen.send_signal(signal.SIGTERM)
    await asyncio.sleep(0.1)
    status, _, body = await get(http, f"{service.url}/ready")
    assert status == 503
    assert body["draining"] is True

    status, _, body = await in_flight
    assert (status, body) == (200, {"slept_s": 2.0})
    assert service.popen.wait(timeout=10) == 0
    assert service.wait_for_log(lambda line: line.get("event") == "echo shut down cleanly")


def postgres_pids(server: LocalPostgres) -> list[int]:
    """The postmaster and all its backends and helpers."""
    postmaster = read_pid_file(server.data_dir / "postmaster.pid")
    assert postmaster is not None
    children = subprocess.run(["pgrep", "-P", str(postmaster)], capture_output=True, text=True).stdout.split()
    return [postmaster, *(int(pid) for pid in children)]


async def test_a_hung_database_answers_ready_503_within_the_check_timeout(start_service, http, own_postgres) -> None:
    await migrate(own_postgres.dsn)
    service = start_service("core", {"DATABASE_URL": own_postgres.dsn, "READY_CHECK_TIMEOUT_S": "1"})
    await poll_status(http, f"{service.url}/ready", 200, within_s=5)
    frozen = postgres_pids(own_postgres)
    assert frozen
    for pid in frozen:
        os.kill(pid, signal.SIGSTOP)
    try:
        for _ in range(2):
            started = time.monotonic()
            status, _, body = await get(http, f"{service.url}/ready")
            assert (status, body["checks"]["postgres"]["status"]) == (503, "fail")
            assert time.monotonic() - started < 2.0, "the readiness probe must not wait past its timeout"
    finally:
        for pid in frozen:
            os.kill(pid, signal.SIGCONT)
    await poll_status(http, f"{service.url}/ready", 200, within_s=5)


async def test_a_request_past_the_grace_period_does_not_double_the_shutdown(start_service, http) -> None:
    service = start_service(
        "slow", {"SHUTDOWN_DELAY_S": "0", "GRACEFUL_TIMEOUT_S": "2"}, module="tests.e2e.echo_service"
    )
    stuck = asyncio.create_task(http.get(f"{service.url}/slow?s=30"))
    await asyncio.sleep(0.3)
    code, took_s = await service.terminate_timed()
    assert took_s < 3.5, "shutdown is bounded by GRACEFUL_TIMEOUT_S, not twice it"
    assert code == 0
    assert service.wait_for_log(lambda line: line.get("event") == "drain_timeout")
    stuck.cancel()
    with contextlib.suppress(asyncio.CancelledError, aiohttp.ClientError):
        await stuck


def test_second_signal_exits_at_once(start_service) -> None:
    service = start_service("slow", {"SHUTDOWN_DELAY_S": "30"}, module="tests.e2e.echo_service")
    code, took_s = service.interrupt_while_draining()
    assert code == 128 + signal.SIGINT
    assert took_s < 2


@pytest.mark.parametrize(
    ("overrides", "variable"),
    [
        ({"DATABASE_URL": ""}, "DATABASE_URL"),
        ({"DATABASE_URL": "mysql://db/x"}, "DATABASE_URL"),
        ({"DATABASE_URL": "postgresql://u:s3cret@127.0.0.1:abc/x"}, "DATABASE_URL"),
        ({"PORT": "eighty"}, "PORT"),
        ({"APGMS_ENV": "staging"}, "APGMS_ENV"),
        ({"APGMS_ENV": "production", "DATABASE_URL": "postgresql://apgms:apgms-dev-only@db/apgms"}, "DATABASE_URL"),
    ],
)
def test_bad_configuration_exits_2_with_one_line_naming_the_variable(overrides, variable) -> None:
    env = {**os.environ, "APGMS_ENV": "test", "DATABASE_URL": "postgresql://u:s3cret@127.0.0.1:1/x", **overrides}
    result = subprocess.run(
        [sys.executable, "-m", "services.core"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert variable in lines[0]
    assert "Traceback" not in result.stderr
    assert "s3cret" not in result.stderr
    assert "apgms-dev-only@" not in result.stderr


def test_a_connection_is_closed_after_its_hundredth_request(start_service) -> None:
    """So pooled clients (the proxy behind a Kubernetes Service) spread again over replicas that restarted:
    shared.runner.HYPERCORN_MAX_REQUESTS_PER_CONNECTION."""
    core = start_service("core")
    connection = HTTPConnection("127.0.0.1", core.port, timeout=5)
    try:
        connection.connect()
        first_socket = connection.sock
        answers = []
        for _ in range(HYPERCORN_MAX_REQUESTS_PER_CONNECTION):
            connection.request("GET", "/health")
            response = connection.getresponse()
            response.read()
            answers.append((response.status, response.getheader("connection")))
        assert connection.sock is first_socket or connection.sock is None  # never reconnected on the way
        assert answers[:-1] == [(200, None)] * (HYPERCORN_MAX_REQUESTS_PER_CONNECTION - 1)
        assert answers[-1] == (200, "close")
    finally:
        connection.close()
