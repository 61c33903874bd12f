"""`apgms smoke load` as the runbook runs it, in a subprocess. Against the proxy in front of real auth, core,
compliance and regulator processes with a user's token it passes (exit 0, the per-endpoint table, the histogram
and both thresholds). Against a stand-in that answers every request after 800 ms it fails naming the p95
threshold, and the load is open-model: every request arrives on schedule, many in flight at once, and the run
takes about the duration plus one answer's latency, not rate x duration x 800 ms. An unreachable URL is one line
and exit 1, no traceback."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from auth_support import Org
from core_support import new_line, post_line, role_tokens
from regulator_support import start_proxy_for, start_regulator

from apgms.devservers import free_port

pytestmark = pytest.mark.e2e

SMOKE_TIMEOUT_S = 60
SLOW_ANSWER_S = 0.8


async def smoke_load(*args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    env = {**os.environ, "APGMS_TOKEN": "", "COLUMNS": "120"}
    started = time.monotonic()
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "apgms", "smoke", "load", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=SMOKE_TIMEOUT_S,
        check=False,
    )
    return result, time.monotonic() - started


def table_rows(output: str, name: str) -> list[list[str]]:
    """The cells of every table row whose first cell is `name`, in order (the summary table's first)."""
    rows = [[cell.strip() for cell in line.strip("│ ").split("│")] for line in output.splitlines()]
    found = [cells for cells in rows if cells[0] == name]
    assert found, f"no row {name!r} in:\n{output}"
    return found


def table_row(output: str, name: str) -> list[str]:
    return table_rows(output, name)[0]


async def test_the_smoke_passes_through_the_proxy_with_a_token(
    start_service: Any, database_url: str, org: Org, http: aiohttp.ClientSession
) -> None:
    stack = start_regulator(start_service, database_url)
    proxy = start_proxy_for(start_service, stack)
    tokens = await role_tokens(http, stack.core_stack, org)
    status, body, _ = await post_line(http, stack.core_stack, tokens["finance"], new_line())
    assert status == 201, body
    # The proxy's /ready passes once its health checks saw every service ready.
    for _ in range(100):
        async with http.get(f"{proxy.url}/ready") as response:
            ready = response.status == 200
        if ready:
            break
        await asyncio.sleep(0.1)
    assert ready, "the proxy did not see every service ready within 10 s"

    result, _ = await smoke_load(
        "--base-url", proxy.url, "--rate", "20", "--duration", "3s", "--token", tokens["analyst"]
    )
    out = result.stdout
    assert result.returncode == 0, (out, result.stderr)
    assert "Sending 60 iterations (180 requests: /health, /ready, /bank-lines)" in out
    for name in ("/health", "/ready", "/bank-lines"):
        cells = table_row(out, name)
        assert cells[1:3] == ["60", "100.0"], cells
        assert all(re.fullmatch(r"\d+", cell) for cell in cells[3:7]), cells
    assert table_row(out, "all")[1:3] == ["180", "100.0"]
    assert "Latency histogram" in out and "█" in out
    latency = table_row(out, "p(95) < 500 ms")
    assert re.fullmatch(r"\d+ ms", latency[1]) and latency[2] == "pass", latency
    assert table_row(out, "checks > 99%")[1:] == ["100.00% (180/180)", "pass"]
    assert out.rstrip().endswith("[ok] every threshold passed")

    # A token the stack refuses makes /bank-lines' checks fail: a third of the checks, so exit 1 naming checks.
    refused, _ = await smoke_load("--base-url", proxy.url, "--rate", "10", "--duration", "1s", "--token", "nope")
    assert refused.returncode == 1, refused.stdout
    assert table_rows(refused.stdout, "/bank-lines")[1] == ["/bank-lines", "status 401", "10"], refused.stdout
    assert "[fail] threshold checks > 99% failed: 66.67% (20/30)" in refused.stdout
    assert "p(95) < 500 ms failed" not in refused.stdout


@dataclass
class SlowServer:
    url: str
    arrivals: list[float] = field(default_factory=list)
    in_flight: int = 0
    most_in_flight: int = 0


@pytest_asyncio.fixture
async def slow_server() -> AsyncIterator[SlowServer]:
    port = free_port()
    server = SlowServer(url=f"http://127.0.0.1:{port}")

    async def answer(request: web.Request) -> web.Response:
        server.arrivals.append(time.monotonic())
        server.in_flight += 1
        server.most_in_flight = max(server.most_in_flight, server.in_flight)
        try:
            await asyncio.sleep(SLOW_ANSWER_S)
        finally:
            server.in_flight -= 1
        return web.json_response({"ok": True, "ready": True, "items": []})

    app = web.Application()
    app.router.add_get("/{tail:.*}", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield server
    await runner.cleanup()


async def test_a_slow_server_fails_p95_without_slowing_the_load_down(slow_server: SlowServer) -> None:
    rate, duration_s, deadline_s = 20, 3.0, 5.0
    result, took_s = await smoke_load(
        "--base-url", slow_server.url, "--rate", str(rate), "--duration", "3s", "--timeout", str(deadline_s)
    )
    out = result.stdout
    assert result.returncode == 1, out
    assert "[fail] threshold p(95) < 500 ms failed: 8" in out, out  # 800-odd ms
    assert "checks > 99% failed" not in out
    # One reachability probe, then 60 iterations of /health and /ready, every one answered.
    load = slow_server.arrivals[1:]
    assert len(load) == 2 * rate * duration_s
    assert table_row(out, "all")[1:3] == ["120", "100.0"]
    # Open model: the requests arrived on schedule over the duration (a closed loop would need 60 x 0.8 s),
    # dozens in flight at once, and the run took the duration plus about one answer.
    assert load[-1] - load[0] < duration_s + 0.5
    assert slow_server.most_in_flight >= 2 * rate * SLOW_ANSWER_S * 0.75
    run_s = float(re.search(r"requests in (\d+\.\d) s", out).group(1))  # type: ignore[union-attr]
    assert duration_s + SLOW_ANSWER_S - 0.2 <= run_s < duration_s + SLOW_ANSWER_S + 1.0
    assert took_s < duration_s + deadline_s + 5  # the process, its start-up and the probe included


async def test_an_unreachable_url_is_one_line_and_exit_1() -> None:
    result, took_s = await smoke_load("--base-url", f"http://127.0.0.1:{free_port()}", "--duration", "60s")
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert lines[0].startswith("[fail] cannot reach http://127.0.0.1:"), lines
    assert lines[1] == "[fail] threshold checks > 99% failed: no request can be answered"
    assert "Traceback" not in result.stdout + result.stderr
    assert took_s < 30  # it did not send a minute of load into nothing

    bad, _ = await smoke_load("--base-url", "http://127.0.0.1:1", "--rate", "1000", "--duration", "10m")
    assert bad.returncode == 2 and "100,000" in bad.stderr, bad.stderr
    for url in ("not-a-url", "ftp://127.0.0.1/", "http://"):
        wrong, _ = await smoke_load("--base-url", url)
        assert wrong.returncode == 2 and "is not an http(s) URL" in wrong.stderr, (url, wrong.stderr)
