"""A bounded surge on /regulator/* past the proxy's regulator concurrency limit: the excess is refused at once with
503 `regulator_busy` and Retry-After, while API clients' `GET /bank-lines` through the same proxy keeps its p95
under the runbook's 500 ms SLO. Real auth, core and regulator processes behind a real proxy; the figures it prints
are recorded in docs/benchmarks.md."""

from __future__ import annotations

import asyncio
import statistics
import time

import aiohttp
import pytest
from auth_support import Org
from core_support import StartService, new_line, post_line, role_tokens, start_core
from test_proxy import start_proxy

pytestmark = pytest.mark.e2e

REGULATOR_LIMIT = 4
SURGE_REQUESTS = 400
SURGE_WAVES = 8
BANK_LINE_RATE_PER_S = 20
DURATION_S = 4.0
SLO_P95_S = 0.5
# A refusal is the proxy counting a semaphore: 31-40 ms at p95 measured alone (docs/benchmarks.md), most of it this
# test's own client sending 50 requests at once from one event loop. In `make test` another worker shares the two
# cores (a loaded run measured 266 ms), so the bound is the SLO's: a refusal must never be slower than the answer
# an API client is promised.
REFUSAL_P95_S = 0.5


def p95(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=20)[-1] if len(samples) >= 2 else samples[0]


async def test_a_regulator_surge_is_shed_fast_while_bank_lines_keep_their_slo(
    start_service: StartService, database_url: str, org: Org, http: aiohttp.ClientSession
) -> None:
    stack = start_core(start_service, database_url)
    regulator = start_service("regulator", {"AUTH_URL": stack.auth.url, "CORE_URL": stack.core.url})
    proxy = start_proxy(
        start_service,
        {"auth": [stack.auth.url], "core": [stack.core.url], "regulator": [regulator.url]},
        REGULATOR_MAX_CONCURRENCY=str(REGULATOR_LIMIT),
    )
    token = (await role_tokens(http, stack, org))["finance"]
    for day in range(1, 21):
        status, body, _ = await post_line(http, stack, token, new_line(date=f"2025-07-{day:02d}"))
        assert status == 201, body

    bank_lines: list[tuple[int, float]] = []
    surge: list[tuple[int, str | None, str | None, float]] = []
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=10)) as client:

        async def timed_bank_lines() -> None:
            started = time.perf_counter()
            async with client.get(
                f"{proxy.url}/bank-lines?limit=50", headers={"authorization": f"Bearer {token}"}
            ) as response:
                await response.read()
                bank_lines.append((response.status, time.perf_counter() - started))

        async def timed_regulator() -> None:
            started = time.perf_counter()
            async with client.get(f"{proxy.url}/regulator/health") as response:
                body = await response.json(content_type=None)
                code = body.get("code") if isinstance(body, dict) else None
                surge.append(
                    (response.status, code, response.headers.get("retry-after"), time.perf_counter() - started)
                )

        async def steady_bank_lines() -> None:
            # Open model: requests leave on schedule whatever the answers' latency, so a slow proxy cannot slow the
            # load down and hide it.
            tasks = []
            start = time.perf_counter()
            for index in range(int(DURATION_S * BANK_LINE_RATE_PER_S)):
                await asyncio.sleep(max(0.0, start + index / BANK_LINE_RATE_PER_S - time.perf_counter()))
                tasks.append(asyncio.create_task(timed_bank_lines()))
            await asyncio.gather(*tasks)

        async def regulator_surge() -> None:
            await asyncio.sleep(0.5)
            per_wave = SURGE_REQUESTS // SURGE_WAVES
            tasks = []
            for _ in range(SURGE_WAVES):
                tasks += [asyncio.create_task(timed_regulator()) for _ in range(per_wave)]
                await asyncio.sleep(DURATION_S / (SURGE_WAVES + 2))
            await asyncio.gather(*tasks)

        async with asyncio.timeout(60):
            await asyncio.gather(steady_bank_lines(), regulator_surge())

    assert [status for status, _ in bank_lines] == [200] * len(bank_lines)
    bank_p95 = p95([latency for _, latency in bank_lines])
    served = [entry for entry in surge if entry[0] == 200]
    shed = [entry for entry in surge if entry[0] != 200]
    assert len(surge) == SURGE_REQUESTS
    assert shed, "the surge never passed the concurrency limit: the test proves nothing"
    assert {(status, code, retry) for status, code, retry, _ in shed} == {(503, "regulator_busy", "1")}
    refusal_p95 = p95([latency for *_, latency in shed])
    print(
        f"\nregulator surge: {len(surge)} requests in {SURGE_WAVES} waves, limit {REGULATOR_LIMIT}: "
        f"{len(served)} served, {len(shed)} shed (503 regulator_busy), refusal p95 {refusal_p95 * 1000:.1f} ms; "
        f"GET /bank-lines at {BANK_LINE_RATE_PER_S}/s during it: {len(bank_lines)} requests, all 200, "
        f"p95 {bank_p95 * 1000:.1f} ms (SLO {SLO_P95_S * 1000:.0f} ms)"
    )
    assert refusal_p95 < REFUSAL_P95_S
    assert bank_p95 < SLO_P95_S
