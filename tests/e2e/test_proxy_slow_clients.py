"""Issue #9 finding 2: slow request bodies, a full upstream pool and one address's share of the proxy, through the
real proxy (granian) in front of real service processes.

Each attack here is bounded (well under 30 s) and runs on loopback only.
"""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import pytest
from test_proxy import start_echo, start_proxy

pytestmark = pytest.mark.e2e

TRICKLERS = 150
TRICKLE_EVERY_S = 1.0
# Deadlines short enough to keep the test bounded, and above the trickle interval: the tricklers are caught by
# the total deadline, which a client sending a byte every second would never meet with 200 bytes to send.
BODY_DEADLINES = {"PROXY_BODY_IDLE_TIMEOUT_S": "3", "PROXY_BODY_TIMEOUT_S": "5"}
# The tricklers and the measuring client all come from 127.0.0.1: a cap of 64 would refuse them (429) before
# their bodies were ever read, and this test is about what their bodies hold. The cap has its own test below.
NO_CLIENT_CAP = {"PROXY_MAX_REQUESTS_PER_CLIENT": "1000"}
P99_LIMIT_S = 0.1
LOGIN_HEAD = (
    b"POST /auth/login HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n"
)


async def trickle(port: int, head: bytes, every_s: float, give_up_s: float) -> bytes:
    """A client that sends `head`, then one byte of body every `every_s`, until the server answers (what it
    answered) or `give_up_s` passes (b"")."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head)
        answer = asyncio.ensure_future(reader.read(65536))
        deadline = time.monotonic() + give_up_s
        while not answer.done() and time.monotonic() < deadline:
            writer.write(b" ")
            await writer.drain()
            await asyncio.wait({answer}, timeout=every_s)
        if not answer.done():
            answer.cancel()
            return b""
        return answer.result()
    except ConnectionError:
        return b""
    finally:
        writer.close()


def status_of(answer: bytes) -> int | None:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else None


def problem_code(answer: bytes) -> str | None:
    _, _, body = answer.partition(b"\r\n\r\n")
    try:
        return str(json.loads(body)["code"])
    except (ValueError, KeyError):
        return None


async def latencies(http: aiohttp.ClientSession, url: str, for_s: float, timeout_s: float = 2.0) -> list[float]:
    """Seconds per request of sequential GETs of `url` for `for_s` (a request that fails counts as `timeout_s`)."""
    samples: list[float] = []
    until = time.monotonic() + for_s
    while time.monotonic() < until:
        started = time.monotonic()
        try:
            async with http.get(url, timeout=aiohttp.ClientTimeout(total=timeout_s)) as response:
                await response.read()
                ok = response.status == 200
        except (aiohttp.ClientError, TimeoutError):
            ok = False
        samples.append(time.monotonic() - started if ok else timeout_s)
        await asyncio.sleep(0.01)
    return samples


def p99(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


async def test_trickling_bodies_hold_no_upstream_connection_and_each_gets_408(start_service) -> None:
    auth = start_service("auth")
    proxy = start_proxy(start_service, {"auth": [auth.url]}, **BODY_DEADLINES, **NO_CLIENT_CAP)
    jwks = f"{proxy.url}/auth/.well-known/jwks.json"
    async with aiohttp.ClientSession() as http:
        assert await latencies(http, jwks, 0.2)  # warm: the pool has its first connection
        tricklers = [
            asyncio.ensure_future(trickle(proxy.port, LOGIN_HEAD, TRICKLE_EVERY_S, give_up_s=12))
            for _ in range(TRICKLERS)
        ]
        await asyncio.sleep(0.5)  # every trickler connected and sent its head; measure while they all hold on
        samples = await latencies(http, jwks, for_s=3.5)
        answers = await asyncio.wait_for(asyncio.gather(*tricklers), timeout=15)

    assert p99(samples) < P99_LIMIT_S, f"p99 {p99(samples) * 1000:.0f} ms over {len(samples)} requests"
    statuses = [status_of(answer) for answer in answers]
    assert statuses == [408] * TRICKLERS, statuses
    assert {problem_code(answer) for answer in answers} == {"request_timeout"}
    assert all(b"connection: close" in answer.lower() for answer in answers)
    # Not one trickle reached the service: bodies are read whole before an upstream connection is taken.
    assert not [r for r in auth.log_lines() if r.get("event") == "request" and r.get("path") == "/auth/login"]


async def test_a_body_that_goes_quiet_is_408_after_the_idle_deadline(start_service) -> None:
    core = start_echo(start_service, "core")
    proxy = start_proxy(start_service, {"core": [core.url]}, PROXY_BODY_IDLE_TIMEOUT_S="1")
    for path in (b"/bank-lines", b"/bank-lines/import"):  # buffered, then streamed (20 MiB limit)
        started = time.monotonic()
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
        answer = await asyncio.wait_for(reader.read(65536), timeout=5)
        writer.close()
        assert (status_of(answer), problem_code(answer)) == (408, "request_timeout"), answer[:300]
        assert 0.9 < time.monotonic() - started < 3
    # The streamed one reached the service, which saw its body cut off: a 499 there, never a 5xx.
    core.wait_for_log(lambda r: r.get("event") == "request" and r.get("path") == "/bank-lines/import")
    assert [r["status"] for r in core.log_lines() if r.get("event") == "request"] == [499]


async def test_a_full_pool_is_503_upstream_busy_after_the_pool_wait_and_ejects_nothing(start_service) -> None:
    core = start_echo(start_service, "core")
    proxy = start_proxy(start_service, {"core": [core.url]}, PROXY_POOL_SIZE="2", PROXY_POOL_WAIT_S="0.5")
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:

        async def get(path: str) -> tuple[int, dict, dict]:
            async with http.get(f"{proxy.url}{path}") as response:
                return response.status, await response.json(content_type=None), dict(response.headers)

        slow = [asyncio.ensure_future(get("/bank-lines?sleep=3")) for _ in range(2)]
        await core.wait_for_log_async(
            lambda _: len([r for r in core.log_lines() if r.get("event") == "echo_arrived"]) == 2
        )
        started = time.monotonic()
        status, body, headers = await get("/alerts")
        waited = time.monotonic() - started
        assert (status, body["code"]) == (503, "upstream_busy")
        assert headers["Retry-After"] == "1"
        assert 0.45 < waited < 2
        assert [s for s, _, _ in await asyncio.gather(*slow)] == [200, 200]
        status, _, _ = await get("/alerts")
        assert status == 200  # the instance stayed in rotation: a full pool is not a dead instance
    core_events = [r for r in proxy.log_lines() if r.get("upstream") == "core"]
    assert not [r for r in core_events if r.get("event") in ("upstream_ejected", "upstream_error")]


async def test_one_address_gets_at_most_its_share_of_requests_in_flight(start_service) -> None:
    core = start_echo(start_service, "core")
    proxy = start_proxy(start_service, {"core": [core.url]}, PROXY_MAX_REQUESTS_PER_CLIENT="3", TRUSTED_PROXY_HOPS="1")
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:

        async def get(path: str, **headers: str) -> tuple[int, dict, dict]:
            async with http.get(f"{proxy.url}{path}", headers=headers) as response:
                return response.status, await response.json(content_type=None), dict(response.headers)

        slow = [asyncio.ensure_future(get("/bank-lines?sleep=3")) for _ in range(3)]
        await core.wait_for_log_async(
            lambda _: len([r for r in core.log_lines() if r.get("event") == "echo_arrived"]) == 3
        )
        status, body, headers = await get("/alerts")
        assert (status, body["code"]) == (429, "rate_limited")
        assert headers["Retry-After"] == "1"
        # Another client behind the trusted hop is a different address, with a share of its own.
        status, _, _ = await get("/alerts", **{"X-Forwarded-For": "198.51.100.7"})
        assert status == 200
        assert [s for s, _, _ in await asyncio.gather(*slow)] == [200, 200, 200]
        status, _, _ = await get("/alerts")
        assert status == 200  # the address's count went back to zero once its requests ended
    refused = proxy.wait_for_log(lambda r: r.get("security.event") == "rate_limited")
    assert (refused["limiter"], refused["address"]) == ("proxy_in_flight", "127.0.0.1")


async def test_trickling_bodies_take_no_regulator_slot(start_service) -> None:
    regulator = start_echo(start_service, "regulator")
    proxy = start_proxy(start_service, {"regulator": [regulator.url]}, REGULATOR_MAX_CONCURRENCY="2", **BODY_DEADLINES)
    head = b"POST /regulator/evidence HTTP/1.1\r\nHost: x\r\nContent-Length: 200\r\n\r\n"
    tricklers = [asyncio.ensure_future(trickle(proxy.port, head, 0.5, give_up_s=10)) for _ in range(5)]
    await asyncio.sleep(0.5)  # the tricklers have sent their heads and are sending their bodies
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http,
        http.get(f"{proxy.url}/regulator/alerts") as response,
    ):
        assert response.status == 200, await response.text()
    answers = await asyncio.wait_for(asyncio.gather(*tricklers), timeout=12)
    assert [status_of(answer) for answer in answers] == [408] * 5


async def test_bodies_buffered_at_once_are_bounded_process_wide_and_given_back(start_service) -> None:
    """The review of the fix: every request may hold up to 1 MiB for up to 60 s, and the per-address cap bounds one
    address, not many. Past PROXY_BUFFER_TOTAL_BYTES a body is refused (503 with Retry-After) instead of held."""
    core = start_echo(start_service, "core")
    proxy = start_proxy(
        start_service, {"core": [core.url]}, PROXY_BUFFER_TOTAL_BYTES="100000", PROXY_BODY_IDLE_TIMEOUT_S="10"
    )
    head = b"POST /bank-lines HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 60000\r\n\r\n"
    holders = []
    for _ in range(2):  # 80,000 bytes held, each body 20,000 short of its Content-Length
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(head + b" " * 40000)
        await writer.drain()
        holders.append((reader, writer))
    await asyncio.sleep(0.5)  # let the proxy read what they sent (nothing to await: it answers nothing yet)

    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(head + b" " * 40000)
    answer = await asyncio.wait_for(reader.read(65536), timeout=5)
    writer.close()
    assert (status_of(answer), problem_code(answer)) == (503, "service_unavailable"), answer[:300]
    assert b"\r\nretry-after: 1\r\n" in answer.lower()

    first_reader, first_writer = holders[0]
    first_writer.write(b" " * 20000)  # the first completes: its bytes are given back when its request ends
    assert status_of(await asyncio.wait_for(first_reader.read(65536), timeout=5)) == 200
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(head + b" " * 60000)
    assert status_of(await asyncio.wait_for(reader.read(65536), timeout=5)) == 200
    for _, holder in [*holders, (reader, writer)]:
        holder.close()
    assert proxy.wait_for_log(lambda r: r.get("event") == "request_buffers_full")
