"""A service's /metrics answer is bounded and parsed off compliance's event loop: a 1.5 MiB answer is past the
1 MiB bound (that service is `unreachable` in the snapshot, which still answers), and while a 900 KB answer is
being parsed, compliance's GET /health answers promptly (the parse held the loop for about a second before)."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
from aiohttp import web
from auth_support import Org, call
from compliance_support import start_compliance
from core_support import StartService, role_tokens

from apgms.devservers import free_port

pytestmark = pytest.mark.e2e

HEALTH_WITHIN_S = 0.2
LINE = 'apgms_api_requests_total{{method="GET",route="/r/{index}",status="200"}} 1\n'


def exposition(size: int) -> bytes:
    head = b"# HELP apgms_api_requests_total Requests.\n# TYPE apgms_api_requests_total counter\n"
    lines, total, index = [head], len(head), 0
    while total < size:
        line = LINE.format(index=index).encode()
        lines.append(line)
        total += len(line)
        index += 1
    return b"".join(lines)


async def test_a_large_metrics_answer_is_refused_past_1_mib_and_parsed_without_stalling_the_service(
    start_service: StartService, http: aiohttp.ClientSession, database_url: str, org: Org
) -> None:
    answers = {"body": exposition(1024)}
    served = asyncio.Event()

    async def metrics(_: web.Request) -> web.Response:
        served.set()
        return web.Response(body=answers["body"], content_type="text/plain")

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        stack = start_compliance(
            start_service,
            database_url,
            {"REGULATOR_URL": f"http://127.0.0.1:{port}", "METRICS_SAMPLE_INTERVAL_S": "3600"},
        )
        token = (await role_tokens(http, stack.core_stack, org))["analyst"]
        url = f"{stack.compliance.url}/monitoring/snapshots"

        answers["body"] = exposition(1536 * 1024)
        status, body, _ = await call(http, "POST", url, token=token)
        assert status == 201, body
        regulator = next(entry for entry in body["body"]["traffic"]["services"] if entry["service"] == "regulator")
        assert regulator["status"] == "unreachable"

        answers["body"] = exposition(900 * 1000)
        served.clear()
        snapshot = asyncio.create_task(call(http, "POST", url, token=token))
        await served.wait()
        slowest = 0.0
        while not snapshot.done():
            started = time.monotonic()
            status, _, _ = await call(http, "GET", f"{stack.compliance.url}/health")
            assert status == 200
            slowest = max(slowest, time.monotonic() - started)
            await asyncio.sleep(0.02)
        status, body, _ = await snapshot
        assert status == 201, body
        regulator = next(entry for entry in body["body"]["traffic"]["services"] if entry["service"] == "regulator")
        assert regulator["status"] != "unreachable", regulator  # 900 KB is within the bound: read and parsed
        assert slowest < HEALTH_WITHIN_S, f"GET /health took {slowest:.3f}s while a /metrics answer was parsed"
    finally:
        await runner.cleanup()
