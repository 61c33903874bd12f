"""The routing proxy through real processes: proxy and upstreams under hypercorn, real HTTP between them."""

from __future__ import annotations

import asyncio
import gzip
import io
import os
import re
import signal
import time
from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest
import pytest_asyncio

from apgms.devservers import free_port

pytestmark = pytest.mark.e2e

UUID4 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
SERVICES = ("auth", "core", "compliance", "regulator")
FAST_HEALTH = {
    "PROXY_HEALTH_INTERVAL_S": "0.2",
    "PROXY_UNHEALTHY_THRESHOLD": "2",
    "PROXY_HEALTHY_THRESHOLD": "2",
    "PROXY_EJECT_AFTER_FAILURES": "1",
}


@pytest_asyncio.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15), auto_decompress=False) as session:
        yield session


def start_echo(start_service, name: str = "echo", **env: str):
    return start_service(name, env, module="tests.e2e.echo_service")


def start_proxy(start_service, upstreams: dict[str, list[str]], *, wait: bool = True, **env: str):
    urls = {
        f"UPSTREAM_{service.upper()}_URLS": ",".join(upstreams.get(service, [f"http://127.0.0.1:{free_port()}"]))
        for service in SERVICES
    }
    return start_service("api-gateway", {**urls, **FAST_HEALTH, **env}, module="proxy", wait=wait)


async def wait_until(condition: Callable[[], bool], within_s: float, what: str) -> float:
    started = time.monotonic()
    while time.monotonic() - started < within_s:
        if condition():
            return time.monotonic() - started
        await asyncio.sleep(0.05)
    pytest.fail(f"{what} did not happen within {within_s}s")


async def echo_of(http: aiohttp.ClientSession, url: str, **kwargs) -> tuple[int, dict, aiohttp.typedefs.LooseHeaders]:
    async with http.request(kwargs.pop("method", "GET"), url, **kwargs) as response:
        return response.status, await response.json(content_type=None), response.headers.copy()


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        lines = status.read().splitlines()
    for line in lines:
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def header_map(echo: dict) -> dict[str, str]:
    return {name: value for name, value in echo["headers"]}


async def test_request_id_and_traceparent_cross_the_proxy_and_appear_in_both_logs(start_service, http) -> None:
    core = start_echo(start_service)
    proxy = start_proxy(start_service, {"core": [core.url]})

    status, echo, headers = await echo_of(
        http, f"{proxy.url}/bank-lines?x=1", headers={"x-request-id": "trace-me.1", "traceparent": TRACEPARENT}
    )
    assert status == 200
    assert headers["x-request-id"] == "trace-me.1"
    upstream = header_map(echo)
    assert upstream["x-request-id"] == "trace-me.1"
    assert upstream["traceparent"] == TRACEPARENT
    assert (echo["path"], echo["query"]) == ("/bank-lines", "x=1")
    assert proxy.wait_for_log(lambda r: r.get("request_id") == "trace-me.1" and r.get("event") == "request")
    assert core.wait_for_log(lambda r: r.get("request_id") == "trace-me.1" and r.get("event") == "request")

    status, echo, headers = await echo_of(http, f"{proxy.url}/bank-lines", headers={"x-request-id": "bad id\t!"})
    replaced = headers["x-request-id"]
    assert UUID4.fullmatch(replaced)
    assert header_map(echo)["x-request-id"] == replaced
    assert re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-01", header_map(echo)["traceparent"])
    assert core.wait_for_log(lambda r: r.get("request_id") == replaced)


async def test_hop_by_hop_and_connection_named_headers_never_cross(start_service, http) -> None:
    core = start_echo(start_service)
    proxy = start_proxy(start_service, {"core": [core.url]})
    status, echo, headers = await echo_of(
        http,
        f"{proxy.url}/alerts",
        headers={
            "Connection": "keep-alive, X-Client-Secret, X-Forwarded-For",
            "X-Client-Secret": "drop-me",
            "X-Forwarded-For": "6.6.6.6",
            "Keep-Alive": "timeout=99",
            "TE": "trailers",
            "Proxy-Authorization": "Basic Zm9vOmJhcg==",
            "X-Kept": "yes",
        },
    )
    assert status == 200
    upstream = header_map(echo)
    assert upstream["x-kept"] == "yes"
    for dropped in ("x-client-secret", "keep-alive", "te", "proxy-authorization"):
        assert dropped not in upstream
    assert upstream["x-forwarded-for"] == "127.0.0.1"
    assert upstream["x-forwarded-proto"] == "http"
    assert upstream["x-forwarded-host"] == f"127.0.0.1:{proxy.port}"
    assert "x-upstream-secret" not in headers
    assert "keep-alive" not in headers
    assert headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize(
    "path",
    [
        "/auth/../internal/secret",
        "/auth/%2e%2e/internal/secret",
        "/auth/..%2finternal/secret",
        "/auth/%2E%2E%2Finternal%2Fsecret",
        "//internal/secret",
        "/internal/secret",
    ],
)
async def test_traversal_never_reaches_internal_routes_or_another_service(start_service, http, path) -> None:
    auth = start_echo(start_service, "auth")
    core = start_echo(start_service, "core")
    proxy = start_proxy(start_service, {"auth": [auth.url], "core": [core.url]})
    async with http.get(f"{proxy.url}{path}") as response:
        body = await response.json(content_type=None)
    assert response.status == 404
    assert body["code"] == "not_found"
    await asyncio.sleep(0.2)
    for upstream in (auth, core):
        assert not [r for r in upstream.log_lines() if r.get("event") == "echo"]


async def test_traversal_to_another_prefix_is_matched_as_that_prefix(start_service, http) -> None:
    auth = start_echo(start_service, "auth")
    core = start_echo(start_service, "core")
    proxy = start_proxy(start_service, {"auth": [auth.url], "core": [core.url]})
    status, echo, _ = await echo_of(http, f"{proxy.url}/auth/%2e%2e/bank-lines")
    assert status == 200
    assert echo["path"] == "/bank-lines"
    assert echo["instance"] == str(core.port)
    assert not [r for r in auth.log_lines() if r.get("event") == "echo"]


async def test_failures_answer_their_problem_without_hanging(start_service, http) -> None:
    core = start_echo(start_service, "core")
    compliance_port = free_port()
    proxy = start_proxy(
        start_service,
        {"core": [core.url], "compliance": [f"http://127.0.0.1:{compliance_port}"]},
        PROXY_TIMEOUTS="/alerts=0.5",
        PROXY_EJECT_AFTER_FAILURES="100",
        PROXY_UNHEALTHY_THRESHOLD="1000",
    )

    # 48 MiB: far more than the socket buffers hold, so the client is still sending when the 413 comes back; the
    # proxy reads and drops the rest (up to LINGER_BYTES) so the client gets to read the answer.
    async with http.post(f"{proxy.url}/bank-lines", data=io.BytesIO(b"x" * (48 * 1024 * 1024))) as response:
        body = await response.json(content_type=None)
    assert (response.status, body["code"]) == (413, "payload_too_large")
    assert body["request_id"] == response.headers["x-request-id"]

    status, echo, _ = await echo_of(
        http, f"{proxy.url}/bank-lines/import", method="POST", data=io.BytesIO(b"y" * (2 * 1024 * 1024))
    )
    assert (status, echo["body_bytes"]) == (200, 2 * 1024 * 1024)
    assert not [r for r in core.log_lines() if r.get("path") == "/bank-lines" and r.get("method") == "POST"]

    started = time.monotonic()
    async with http.get(f"{proxy.url}/alerts?sleep=3") as response:
        body = await response.json(content_type=None)
    assert (response.status, body["code"]) == (504, "upstream_timeout")
    assert time.monotonic() - started < 2

    async with http.post(f"{proxy.url}/compliance/evidence", json={}) as response:
        body = await response.json(content_type=None)
    assert (response.status, body["code"]) == (502, "upstream_unavailable")


async def test_no_healthy_instance_is_503(start_service, http) -> None:
    proxy = start_proxy(start_service, {})
    await asyncio.sleep(1.0)
    async with http.get(f"{proxy.url}/regulator/health") as response:
        body = await response.json(content_type=None)
    assert (response.status, body["code"]) == (503, "service_unavailable")
    async with http.get(f"{proxy.url}/ready") as response:
        assert response.status == 503


async def test_a_post_refused_a_connection_goes_to_another_instance_once(start_service, http) -> None:
    """Nothing reached an instance that refused the connection (a crashed replica, until ejected), so a POST is
    sent to another one, exactly once, rather than answered 502."""
    live = start_echo(start_service, "core")
    dead_port = free_port()
    dead = f"http://127.0.0.1:{dead_port}"
    # A slow health check keeps the dead instance in rotation: only real traffic's connection failures eject it.
    proxy = start_proxy(start_service, {"core": [dead, live.url]}, PROXY_HEALTH_INTERVAL_S="60")
    answers = []
    for n in range(4):
        status, echo, _ = await echo_of(http, f"{proxy.url}/bank-lines", method="POST", json={"n": n})
        answers.append((status, echo["instance"], echo["method"]))
    assert answers == [(200, str(live.port), "POST")] * 4
    dead_label = f"127.0.0.1:{dead_port}"
    refused = [r for r in proxy.log_lines() if r.get("event") == "upstream_error" and r.get("instance") == dead_label]
    assert refused, "no POST was sent to the refusing instance first: the retry was not exercised"
    await wait_until(lambda: len(_posts_logged(live)) >= 4, 5, "the live instance's access lines")
    assert len(_posts_logged(live)) == 4  # each POST arrived once


def _posts_logged(service) -> list[dict]:
    return [r for r in service.log_lines() if r.get("event") == "request" and r.get("method") == "POST"]


async def test_gzip_passes_through_untouched(start_service, http) -> None:
    core = start_echo(start_service, "core")
    proxy = start_proxy(start_service, {"core": [core.url]})
    async with http.get(f"{core.url}/org?gzip=1", headers={"accept-encoding": "gzip"}) as direct:
        direct_body = await direct.read()
    async with http.get(f"{proxy.url}/org?gzip=1", headers={"accept-encoding": "gzip"}) as proxied:
        proxied_body = await proxied.read()
    assert proxied.headers["content-encoding"] == "gzip"
    assert proxied_body == direct_body
    assert gzip.decompress(proxied_body).startswith(b"compressed payload")


async def _bounded_get_stream(http: aiohttp.ClientSession, url: str, count: int, results: list[int]) -> None:
    for _ in range(count):
        try:
            async with http.get(url) as response:
                await response.read()
                results.append(response.status)
        except aiohttp.ClientError:
            results.append(0)
        await asyncio.sleep(0.01)


def ejected(proxy, port: int) -> Callable[[], bool]:
    def check() -> bool:
        return any(
            r.get("event") == "upstream_ejected" and r.get("instance") == f"127.0.0.1:{port}" for r in proxy.log_lines()
        )

    return check


async def test_killing_an_instance_ejects_it_fast_and_loses_nothing_else(start_service, http) -> None:
    first = start_echo(start_service, "core")
    second = start_echo(start_service, "core")
    proxy = start_proxy(start_service, {"core": [first.url, second.url]})
    results: list[int] = []
    stream = asyncio.create_task(_bounded_get_stream(http, f"{proxy.url}/bank-lines", 300, results))
    await asyncio.sleep(0.5)

    os.killpg(second.popen.pid, signal.SIGKILL)
    killed_at = time.monotonic()
    await wait_until(ejected(proxy, second.port), 2, "ejection of the killed instance")
    assert time.monotonic() - killed_at < 2
    await stream
    assert results.count(200) == len(results), f"lost requests: {[s for s in results if s != 200]}"

    restarted = start_service("core", {"PORT": str(second.port)}, module="tests.e2e.echo_service")
    await wait_until(
        lambda: any(
            r.get("event") == "upstream_admitted" and r.get("instance") == f"127.0.0.1:{second.port}"
            for r in proxy.log_lines()
        ),
        5,
        "re-admission",
    )
    seen = set()
    for _ in range(10):
        _, echo, _ = await echo_of(http, f"{proxy.url}/bank-lines")
        seen.add(echo["instance"])
    assert seen == {str(first.port), str(restarted.port)}


async def test_sigterm_to_an_instance_loses_no_request(start_service, http) -> None:
    first = start_echo(start_service, "core", SHUTDOWN_DELAY_S="1")
    second = start_echo(start_service, "core", SHUTDOWN_DELAY_S="1")
    proxy = start_proxy(start_service, {"core": [first.url, second.url]})
    results: list[int] = []
    stream = asyncio.create_task(_bounded_get_stream(http, f"{proxy.url}/bank-lines?sleep=0.05", 150, results))
    await asyncio.sleep(0.5)
    second.popen.send_signal(signal.SIGTERM)
    await stream
    assert second.popen.wait(timeout=10) == 0
    assert results == [200] * len(results)


async def test_sigterm_to_an_instance_under_post_traffic_loses_no_request(start_service, http) -> None:
    """POSTs are never retried, so the instance must leave the rotation before its listener closes, and no pooled
    connection to it may be reused after that (it answers `Connection: close` while draining)."""
    first = start_echo(start_service, "core", SHUTDOWN_DELAY_S="2")
    second = start_echo(start_service, "core", SHUTDOWN_DELAY_S="2")
    proxy = start_proxy(start_service, {"core": [first.url, second.url]}, PROXY_EJECT_AFTER_FAILURES="2")
    results: list[int] = []

    async def post_stream(count: int) -> None:
        for n in range(count):
            try:
                async with http.post(f"{proxy.url}/bank-lines?sleep=0.02", json={"n": n}) as response:
                    await response.read()
                    results.append(response.status)
            except aiohttp.ClientError:
                results.append(0)

    streams = [asyncio.create_task(post_stream(60)) for _ in range(4)]
    await asyncio.sleep(0.5)
    second.popen.send_signal(signal.SIGTERM)
    await asyncio.gather(*streams)
    assert second.popen.wait(timeout=15) == 0
    assert results == [200] * len(results), [status for status in results if status != 200]


async def test_a_draining_service_asks_clients_to_close_keep_alive_connections(start_service, http) -> None:
    service = start_echo(start_service, "core", SHUTDOWN_DELAY_S="2")
    async with http.get(f"{service.url}/slow?s=0") as response:
        assert response.headers.get("connection", "").lower() != "close"
    service.popen.send_signal(signal.SIGTERM)
    await asyncio.sleep(0.3)
    async with http.get(f"{service.url}/slow?s=0") as response:
        assert response.status == 200
        assert response.headers["connection"].lower() == "close"


async def test_federate_returns_every_services_series_with_labels(start_service, http) -> None:
    services = {name: start_service(name) for name in SERVICES}
    proxy = start_proxy(start_service, {name: [s.url] for name, s in services.items()})
    for name in SERVICES:
        async with http.get(f"{services[name].url}/ready"):
            pass
    async with http.get(f"{proxy.url}/federate", params={"match[]": '{__name__="apgms_api_requests_total"}'}) as r:
        text = await r.text()
    assert r.status == 200
    assert text.count("# TYPE apgms_api_requests_total counter") == 1
    for name in (*SERVICES, "api-gateway"):
        assert re.search(rf'apgms_api_requests_total{{[^}}]*service="{name}"', text), name
    assert re.search(rf'service="core",instance="127.0.0.1:{services["core"].port}"', text)
    assert "process_resident_memory_bytes" not in text

    async with http.get(f"{proxy.url}/federate") as r:
        body = await r.json(content_type=None)
    assert (r.status, body["code"]) == (400, "invalid_query")


async def test_streamed_response_keeps_proxy_memory_flat(start_service, http) -> None:
    core = start_echo(start_service, "core")
    proxy = start_proxy(start_service, {"core": [core.url]})
    before = rss_bytes(proxy.pid)
    received = 0
    async with http.get(f"{proxy.url}/bank-lines?bytes={50 * 1024 * 1024}") as response:
        async for chunk in response.content.iter_any():
            received += len(chunk)
    growth = rss_bytes(proxy.pid) - before
    assert received == 50 * 1024 * 1024
    assert growth < 20 * 1024 * 1024, f"proxy RSS grew by {growth / 1e6:.1f} MB"


async def test_cors_disallowed_origin_is_refused_and_counted(start_service, http) -> None:
    core = start_echo(start_service, "core")
    proxy = start_proxy(start_service, {"core": [core.url]}, CORS_ALLOWED_ORIGINS="https://app.example")
    async with http.get(f"{proxy.url}/bank-lines", headers={"Origin": "https://evil.example"}) as response:
        body = await response.json(content_type=None)
    assert (response.status, body["code"]) == (403, "cors_forbidden")
    async with http.get(f"{proxy.url}/bank-lines", headers={"Origin": "https://app.example"}) as response:
        assert response.status == 200
        assert response.headers["access-control-allow-origin"] == "https://app.example"
    async with http.get(f"{proxy.url}/metrics") as response:
        assert 'security_events_total{event="cors.reject"} 1.0' in await response.text()
    assert not [r for r in core.log_lines() if r.get("event") == "echo" and r.get("path") == "/bank-lines"][1:]


async def test_regulator_traffic_is_tagged_in_access_lines(start_service, http) -> None:
    regulator = start_echo(start_service, "regulator")
    proxy = start_proxy(start_service, {"regulator": [regulator.url]})
    status, _, headers = await echo_of(http, f"{proxy.url}/regulator/health")
    assert status == 200
    line = proxy.wait_for_log(lambda r: r.get("request_id") == headers["x-request-id"] and r.get("event") == "request")
    assert line["traffic"] == "regulator"
    assert line["route"] == "/regulator"


async def test_proxy_shuts_down_cleanly(start_service, http) -> None:
    core = start_echo(start_service, "core")
    proxy = start_proxy(start_service, {"core": [core.url]}, SHUTDOWN_DELAY_S="0.3")
    in_flight = asyncio.create_task(echo_of(http, f"{proxy.url}/bank-lines?sleep=1"))
    await asyncio.sleep(0.3)
    proxy.popen.send_signal(signal.SIGTERM)
    status, _, _ = await in_flight
    assert status == 200
    assert proxy.popen.wait(timeout=10) == 0
    assert proxy.wait_for_log(lambda r: r.get("event") == "api-gateway shut down cleanly")


async def test_shutdown_is_bounded_by_the_grace_period_and_leftovers_answer_503(start_service, http) -> None:
    core = start_echo(start_service, "core")
    proxy = start_proxy(start_service, {"core": [core.url]}, SHUTDOWN_DELAY_S="0", GRACEFUL_TIMEOUT_S="2")
    stuck = asyncio.create_task(echo_of(http, f"{proxy.url}/bank-lines?sleep=30"))
    # Half a request head: granian alone would wait for it until its header timeout (60 s).
    half_sent = await asyncio.open_connection("127.0.0.1", proxy.port)
    half_sent[1].write(b"GET /bank-lines HTTP/1.1\r\nHost: x\r\nX-A: ")
    await half_sent[1].drain()
    await asyncio.sleep(0.3)
    code, took_s = await proxy.terminate_timed()
    assert took_s < 4, "shutdown is bounded by GRACEFUL_TIMEOUT_S"
    assert code == 0
    status, body, _ = await stuck
    assert (status, body["code"]) == (503, "service_unavailable"), "a request cut off by shutdown is not a 500"
    assert proxy.wait_for_log(lambda r: r.get("event") == "drain_timeout")
    assert proxy.wait_for_log(lambda r: r.get("event") == "request" and r.get("status") == 503)
    assert proxy.wait_for_log(lambda r: r.get("event") == "api-gateway shut down cleanly")
    not_json = [line for line in proxy.output() if not line.startswith("{")]
    assert not_json == [], "every line the proxy writes is a JSON log line"
    half_sent[1].close()


def test_a_taken_port_is_refused_not_shared(start_service) -> None:
    core = start_echo(start_service, "core")
    first = start_proxy(start_service, {"core": [core.url]})
    second = start_proxy(start_service, {"core": [core.url]}, PORT=str(first.port), wait=False)
    assert second.popen.wait(timeout=15) == 1
    assert second.wait_for_log(lambda r: r.get("event") == "address_in_use")
    assert first.returncode is None


async def raw_exchange(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(65536), timeout=5)
    finally:
        writer.close()


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /bank-lines HTTP/1.1\r\n\r\n",
        b"GET /bank-lines HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n",
    ],
    ids=["no-host", "two-hosts"],
)
async def test_a_request_without_exactly_one_host_is_400(start_service, request_bytes: bytes) -> None:
    core = start_echo(start_service, "core")
    proxy = start_proxy(start_service, {"core": [core.url]})
    answer = await raw_exchange(proxy.port, request_bytes)
    assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
    assert b'"code":"bad_request"' in answer
    assert not core.log_lines() or all(r.get("path") != "/bank-lines" for r in core.log_lines())


async def test_a_malformed_chunked_body_is_the_clients_fault_not_the_upstreams(start_service) -> None:
    core = start_echo(start_service, "core")
    proxy = start_proxy(start_service, {"core": [core.url]})
    answer = await raw_exchange(
        proxy.port,
        b"POST /bank-lines HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nabc\r\nzz\r\n\r\n",
    )
    assert not answer.startswith(b"HTTP/1.1 502"), answer[:200]
    assert not answer.startswith(b"HTTP/1.1 5"), answer[:200]
    assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
    assert not [r for r in proxy.log_lines() if r.get("event") == "upstream_error"]


def test_a_second_signal_stops_the_proxy_at_once(start_service) -> None:
    core = start_echo(start_service, "core")
    proxy = start_proxy(start_service, {"core": [core.url]}, SHUTDOWN_DELAY_S="30")
    code, took_s = proxy.interrupt_while_draining()
    assert code == 128 + signal.SIGINT
    assert took_s < 2
