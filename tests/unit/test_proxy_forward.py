"""The proxy app in-process (`create_app` with its lifespan) in front of real aiohttp upstreams on loopback.

The proxy is driven through httpx2's ASGI transport, so no proxy process or port is involved; the upstreams are
real HTTP servers in this event loop, so forwarding, timeouts and connection failures are real.
"""

from __future__ import annotations

import asyncio
import gzip
import re
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import httpx2
import pytest
import pytest_asyncio
from aiohttp import web
from prometheus_client import REGISTRY, CollectorRegistry, Counter, generate_latest
from starlette.types import ASGIApp, Message

from apgms.replicas import ConnectionBalancer
from proxy.app import create_app
from proxy.config import load_proxy_settings
from proxy.forward import Forwarder
from proxy.limits import BodyPolicy, ClientCap, PoolGate, discard_body
from proxy.routing import MiB, build_route_table
from proxy.upstreams import HealthPolicy, build_upstreams
from shared.context import RequestContextMiddleware

SERVICES = ("auth", "core", "compliance", "regulator")
UUID4 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
TRACEPARENT_SHAPE = re.compile(r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")
PROBLEM = "application/problem+json"
GZIPPED = gzip.compress(b"compressed payload " * 200)
# Active checks are out of the way (one at start-up, then nothing for a minute) unless a test wants them.
QUIET_HEALTH = {"PROXY_HEALTH_INTERVAL_S": "60", "PROXY_UNHEALTHY_THRESHOLD": "5"}


@dataclass(frozen=True)
class Seen:
    service: str
    method: str
    target: str
    headers: list[tuple[str, str]]
    body_bytes: int

    def header(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key.lower() == name]


@dataclass
class Upstreams:
    """One aiohttp server listening on one port per service; every request but `/ready` is recorded."""

    ports: dict[str, int] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)
    metrics: bytes = b""
    # Targets whose request headers reached an upstream, recorded before the body is read.
    arrived: list[str] = field(default_factory=list)
    ready_status: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SERVICES, 200))

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.ports[service]}"

    def env(self) -> dict[str, str]:
        return {f"UPSTREAM_{service.upper()}_URLS": self.url(service) for service in SERVICES}

    def service_on(self, port: int) -> str:
        return next(name for name, p in self.ports.items() if p == port)

    def requests(self, path_prefix: str = "/") -> list[Seen]:
        return [seen for seen in self.seen if seen.target.startswith(path_prefix)]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        service = self.service_on(request.transport.get_extra_info("sockname")[1])
        if request.path == "/ready":
            status = self.ready_status[service]
            return web.json_response({"ready": status == 200}, status=status)
        self.arrived.append(request.raw_path)
        body = await request.read()
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.raw_headers]
        self.seen.append(Seen(service, request.method, request.raw_path, headers, len(body)))
        if request.path == "/metrics":
            return web.Response(body=self.metrics, content_type="text/plain")
        await asyncio.sleep(float(request.query.get("sleep", "0")))
        if "gzip" in request.query:
            return web.Response(body=GZIPPED, headers={"content-encoding": "gzip", "content-type": "text/plain"})
        return web.json_response(
            {"service": service, "path": request.path, "body_bytes": len(body)},
            headers={
                "x-request-id": "chosen-by-upstream",
                "keep-alive": "timeout=5",
                "connection": "x-upstream-secret",
                "x-upstream-secret": "must-not-cross",
                "x-upstream": service,
            },
        )


@pytest.fixture(autouse=True)
def empty_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


@pytest_asyncio.fixture
async def upstreams() -> AsyncIterator[Upstreams]:
    state = Upstreams()
    registry = CollectorRegistry()
    Counter("upstream_jobs", "Jobs.", ["service"], registry=registry).labels(service="worker").inc(4)
    state.metrics = generate_latest(registry)
    app = web.Application(client_max_size=64 * MiB)
    app.router.add_route("*", "/{tail:.*}", state.handle)
    runner = web.AppRunner(app, shutdown_timeout=0.5, handler_cancellation=True, access_log=None)
    await runner.setup()
    for service in SERVICES:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        state.ports[service] = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield state
    finally:
        await runner.cleanup()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@asynccontextmanager
async def lifespan(app: ASGIApp) -> AsyncIterator[None]:
    inbox: asyncio.Queue[Message] = asyncio.Queue()
    outbox: asyncio.Queue[Message] = asyncio.Queue()
    task = asyncio.create_task(app({"type": "lifespan", "asgi": {"version": "3.0"}}, inbox.get, outbox.put))
    await inbox.put({"type": "lifespan.startup"})
    assert (await outbox.get())["type"] == "lifespan.startup.complete"
    try:
        yield
    finally:
        await inbox.put({"type": "lifespan.shutdown"})
        assert (await outbox.get())["type"] == "lifespan.shutdown.complete"
        await task


@asynccontextmanager
async def proxy(env: Mapping[str, str]) -> AsyncIterator[httpx2.AsyncClient]:
    settings = load_proxy_settings(environ={"APGMS_ENV": "test", **QUIET_HEALTH, **env})
    app = create_app(settings)
    async with lifespan(app):
        transport = httpx2.ASGITransport(app, client=("203.0.113.7", 50000))
        async with httpx2.AsyncClient(transport=transport, base_url="http://api.example", timeout=10) as client:
            yield client


def assert_problem(response: httpx2.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body = response.json()
    assert (body["status"], body["code"]) == (status, code)
    assert body["request_id"] == response.headers["x-request-id"]
    return body


def upstream_requests_total(service: str, status: str) -> float:
    return REGISTRY.get_sample_value("apgms_proxy_upstream_requests_total", {"service": service, "status": status}) or 0


# --- forwarding -----------------------------------------------------------------------------------------------------


async def test_get_is_forwarded_with_path_query_and_our_headers(upstreams: Upstreams) -> None:
    async with proxy(upstreams.env()) as client:
        response = await client.get(
            "/compliance/report?from=2024-01-01&q=two%20words&tag=a&tag=b",
            headers={
                "x-request-id": "client-rid.1",
                "traceparent": TRACEPARENT,
                "x-forwarded-for": "6.6.6.6",
                "x-forwarded-host": "evil.example",
                "connection": "x-secret",
                "x-secret": "must-not-cross",
                "authorization": "Bearer abc",
            },
        )
    assert response.status_code == 200
    assert response.json() == {"service": "compliance", "path": "/compliance/report", "body_bytes": 0}
    (seen,) = upstreams.seen
    assert (seen.service, seen.method) == ("compliance", "GET")
    assert seen.target == "/compliance/report?from=2024-01-01&q=two%20words&tag=a&tag=b"
    assert seen.header("x-request-id") == ["client-rid.1"] == [response.headers["x-request-id"]]
    assert seen.header("traceparent") == [TRACEPARENT]
    assert seen.header("x-forwarded-for") == ["203.0.113.7"]
    assert seen.header("x-forwarded-proto") == ["http"]
    assert seen.header("x-forwarded-host") == ["api.example"]
    assert seen.header("x-secret") == []
    assert seen.header("authorization") == ["Bearer abc"]
    # The response: the upstream's own request ID and hop-by-hop headers never reach the client.
    assert response.headers.get_list("x-request-id") == ["client-rid.1"]
    assert "keep-alive" not in response.headers
    assert "x-upstream-secret" not in response.headers
    assert response.headers["x-upstream"] == "compliance"
    assert response.headers["x-content-type-options"] == "nosniff"


async def test_the_proxy_adds_no_client_headers_of_its_own(upstreams: Upstreams) -> None:
    async with proxy(upstreams.env()) as client:
        for name in ("user-agent", "accept", "accept-encoding"):
            client.headers.pop(name, None)
        response = await client.post("/bas/lodge", content=b"{}")
    assert response.status_code == 200
    (seen,) = upstreams.seen
    for invented in ("user-agent", "accept", "accept-encoding", "content-type"):
        assert seen.header(invented) == [], invented


async def test_the_upstream_receives_host_then_exactly_the_forwarded_headers_in_order(upstreams: Upstreams) -> None:
    async with proxy(upstreams.env()) as client:
        for name in ("user-agent", "accept", "accept-encoding"):
            client.headers.pop(name, None)
        response = await client.get(
            "/org",
            headers=[("x-a", "1"), ("cookie", "c1"), ("x-b", "2"), ("cookie", "c2"), ("x-request-id", "rid-1")],
        )
    assert response.status_code == 200
    (seen,) = upstreams.seen
    names = [name.lower() for name, _ in seen.headers]
    assert seen.headers[0] == ("Host", f"127.0.0.1:{upstreams.ports['core']}")
    assert names[1:] == [
        "x-a",
        "cookie",
        "x-b",
        "cookie",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "x-request-id",
        "traceparent",
    ]
    assert seen.header("cookie") == ["c1", "c2"]


async def test_an_unacceptable_request_id_and_traceparent_are_replaced_by_ours(upstreams: Upstreams) -> None:
    async with proxy(upstreams.env()) as client:
        response = await client.get("/auth/me", headers={"x-request-id": "bad id!" * 3, "traceparent": "00-zz-yy-01"})
    assert response.status_code == 200
    (seen,) = upstreams.seen
    (request_id,) = seen.header("x-request-id")
    assert UUID4.fullmatch(request_id)
    assert response.headers["x-request-id"] == request_id
    (traceparent,) = seen.header("traceparent")
    assert TRACEPARENT_SHAPE.fullmatch(traceparent)
    assert traceparent != "00-zz-yy-01"


@pytest.mark.parametrize(
    ("path", "service"),
    [
        ("/auth/login", "auth"),
        ("/users", "auth"),
        ("/bank-lines", "core"),
        ("/alerts/7/resolve", "core"),
        ("/bas/preview", "core"),
        ("/org/obligations/current", "core"),
        ("/admin/export/1", "core"),
        ("/compliance/report", "compliance"),
        ("/monitoring/snapshots", "compliance"),
        ("/audit/verify", "compliance"),
        ("/regulator/health", "regulator"),
    ],
)
async def test_each_prefix_reaches_its_service(upstreams: Upstreams, path: str, service: str) -> None:
    async with proxy(upstreams.env()) as client:
        response = await client.get(path)
    assert response.status_code == 200
    assert response.json()["service"] == service
    assert [(s.service, s.target) for s in upstreams.seen] == [(service, path)]


async def asgi_request(app: ASGIApp, method: str, raw_path: bytes) -> tuple[int, dict[str, str], bytes]:
    """One request straight into the ASGI app with a raw path no HTTP client library would send as is."""
    sent: list[Message] = []
    delivered = False

    async def receive() -> Message:
        nonlocal delivered
        if delivered:
            await asyncio.sleep(30)
            return {"type": "http.disconnect"}
        delivered = True
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": raw_path.decode("latin-1"),
        "raw_path": raw_path,
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"api.example")],
        "client": ("203.0.113.7", 50000),
        "server": ("api.example", 80),
    }
    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], {k.decode(): v.decode() for k, v in start["headers"]}, body


@pytest.mark.parametrize(
    ("raw_path", "forwarded_to"),
    [
        (b"/auth/../admin/export/1", ("core", "/admin/export/1")),
        (b"/regulator/%2e%2e/bank-lines", ("core", "/bank-lines")),
        (b"/bank-lines/..%2fauth/me", ("auth", "/auth/me")),
        (b"//compliance//report", ("compliance", "/compliance/report")),
        (b"/auth/./me", ("auth", "/auth/me")),
        (b"/auth/caf%C3%A9", ("auth", "/auth/caf%C3%A9")),
    ],
)
async def test_the_upstream_gets_exactly_the_normalised_path_that_was_matched(
    upstreams: Upstreams, raw_path: bytes, forwarded_to: tuple[str, str]
) -> None:
    app = create_app(load_proxy_settings(environ={"APGMS_ENV": "test", **QUIET_HEALTH, **upstreams.env()}))
    async with lifespan(app):
        status, _, _ = await asgi_request(app, "GET", raw_path)
    assert status == 200
    assert [(s.service, s.target) for s in upstreams.seen] == [forwarded_to]


@pytest.mark.parametrize(
    "raw_path",
    [
        b"/internal/x",
        b"/internal",
        b"/auth/../internal/users",
        b"/auth/%2e%2e/internal/x",
        b"/auth/..%2finternal",
        b"/auth/%2E%2E%2Finternal/x",
        b"//internal/x",
        b"/authx",
        b"/",
    ],
)
async def test_internal_and_unrouted_paths_are_404_and_never_forwarded(upstreams: Upstreams, raw_path: bytes) -> None:
    app = create_app(load_proxy_settings(environ={"APGMS_ENV": "test", **QUIET_HEALTH, **upstreams.env()}))
    async with lifespan(app):
        status, headers, body = await asgi_request(app, "GET", raw_path)
    assert status == 404
    assert headers["content-type"] == PROBLEM
    assert b'"code":"not_found"' in body
    assert upstreams.seen == []


@pytest.mark.parametrize("raw_path", [b"/auth/%252e%252e/internal", b"/auth/%00", b"/auth/%ff", b"/auth\\..\\admin"])
async def test_unsafe_paths_are_400_and_never_forwarded(upstreams: Upstreams, raw_path: bytes) -> None:
    app = create_app(load_proxy_settings(environ={"APGMS_ENV": "test", **QUIET_HEALTH, **upstreams.env()}))
    async with lifespan(app):
        status, _, body = await asgi_request(app, "GET", raw_path)
    assert status == 400
    assert b'"code":"bad_request"' in body
    assert upstreams.seen == []


async def test_internal_is_refused_through_http_too(upstreams: Upstreams) -> None:
    async with proxy(upstreams.env()) as client:
        response = await client.get("/internal/users/1")
        encoded = await client.get("/auth/%2e%2e/internal/users/1")
    assert_problem(response, 404, "not_found")
    assert_problem(encoded, 404, "not_found")
    assert upstreams.seen == []


# --- bodies ---------------------------------------------------------------------------------------------------------


async def test_a_body_over_the_limit_is_413_before_the_upstream_is_touched(upstreams: Upstreams) -> None:
    body = b"x" * (2 * MiB)

    async def declared_in_chunks() -> AsyncIterator[bytes]:
        # Small chunks under a declared Content-Length: only the early check keeps the first ones off the upstream.
        for start in range(0, len(body), 65536):
            yield body[start : start + 65536]

    async with proxy(upstreams.env()) as client:
        refused = await client.post(
            "/bank-lines",
            content=declared_in_chunks(),
            headers={"content-type": "application/json", "content-length": str(len(body))},
        )
        accepted = await client.post("/bank-lines/import", content=body, headers={"content-type": "text/csv"})
    assert_problem(refused, 413, "payload_too_large")
    assert accepted.status_code == 200
    assert accepted.json()["body_bytes"] == 2 * MiB
    assert [(s.service, s.target, s.body_bytes) for s in upstreams.seen] == [("core", "/bank-lines/import", 2 * MiB)]
    assert upstreams.arrived == ["/bank-lines/import"]
    (seen,) = upstreams.seen
    assert seen.header("content-type") == ["text/csv"]


async def test_a_body_exactly_at_the_limit_is_forwarded(upstreams: Upstreams) -> None:
    async with proxy({**upstreams.env(), "PROXY_BODY_LIMITS": "/bas=1000"}) as client:
        response = await client.post("/bas/lodge", content=b"y" * 1000)
        refused = await client.post("/bas/lodge", content=b"y" * 1001)
    assert response.status_code == 200
    assert response.json()["body_bytes"] == 1000
    assert_problem(refused, 413, "payload_too_large")
    assert len(upstreams.seen) == 1
    assert len(upstreams.arrived) == 1


async def test_a_chunked_body_is_buffered_and_sent_upstream_with_its_length(upstreams: Upstreams) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(3):
            yield b"q" * 1000

    async with proxy(upstreams.env()) as client:
        response = await client.post("/bas/lodge", content=chunks())
    assert response.status_code == 200
    (seen,) = upstreams.seen
    assert (seen.body_bytes, seen.header("content-length"), seen.header("transfer-encoding")) == (3000, ["3000"], [])


async def test_a_streamed_body_growing_past_the_limit_is_413(upstreams: Upstreams) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(40):
            yield b"z" * 65536

    async with proxy({**upstreams.env(), "PROXY_BODY_LIMITS": "/bas=100000"}) as client:
        response = await client.post("/bas/lodge", content=chunks())
    assert_problem(response, 413, "payload_too_large")
    assert all(seen.body_bytes <= 100000 for seen in upstreams.seen)


async def test_a_malformed_content_length_is_400(upstreams: Upstreams) -> None:
    app = create_app(load_proxy_settings(environ={"APGMS_ENV": "test", **QUIET_HEALTH, **upstreams.env()}))
    transport = httpx2.ASGITransport(app)
    async with lifespan(app), httpx2.AsyncClient(transport=transport, base_url="http://api.example") as client:
        request = client.build_request("POST", "/bas/lodge", content=b"abc")
        request.headers["content-length"] = "-3"
        response = await client.send(request)
    assert_problem(response, 400, "bad_request")
    assert upstreams.seen == []


async def test_a_gzip_response_passes_through_byte_identical(upstreams: Upstreams) -> None:
    async with (
        proxy(upstreams.env()) as client,
        client.stream("GET", "/org/report?gzip=1", headers={"accept-encoding": "gzip"}) as response,
    ):
        raw = b"".join([chunk async for chunk in response.aiter_raw()])
    assert response.status_code == 200
    assert response.headers["content-encoding"] == "gzip"
    assert raw == GZIPPED
    assert gzip.decompress(raw) == b"compressed payload " * 200
    (seen,) = upstreams.seen
    assert seen.header("accept-encoding") == ["gzip"]


# --- failures -------------------------------------------------------------------------------------------------------


async def test_a_slow_upstream_is_504_within_the_route_timeout(upstreams: Upstreams) -> None:
    before = upstream_requests_total("core", "timeout")
    async with proxy({**upstreams.env(), "PROXY_TIMEOUTS": "/alerts=0.5"}) as client:
        started = time.monotonic()
        response = await client.get("/alerts?sleep=3")
        elapsed = time.monotonic() - started
        fast = await client.get("/bas?sleep=0.7")
    body = assert_problem(response, 504, "upstream_timeout")
    assert "core" in body["detail"]
    assert 0.4 < elapsed < 1.5
    assert fast.status_code == 200  # the timeout belongs to /alerts only
    assert upstream_requests_total("core", "timeout") == before + 1


async def test_a_closed_port_is_502_then_503_once_ejected(upstreams: Upstreams) -> None:
    port = closed_port()
    env = {**upstreams.env(), "UPSTREAM_COMPLIANCE_URLS": f"http://127.0.0.1:{port}"}
    before = upstream_requests_total("compliance", "connect_error")
    async with proxy({**env, "PROXY_EJECT_AFTER_FAILURES": "2"}) as client:
        first = await client.get("/compliance/report")
        second = await client.get("/audit")
        third = await client.get("/monitoring/snapshots")
        instance_up = REGISTRY.get_sample_value(
            "apgms_proxy_upstream_up", {"service": "compliance", "instance": f"127.0.0.1:{port}"}
        )
        ready = await client.get("/ready")
    assert_problem(first, 502, "upstream_unavailable")
    assert_problem(second, 502, "upstream_unavailable")
    assert_problem(third, 503, "service_unavailable")
    assert instance_up == 0.0
    assert upstream_requests_total("compliance", "connect_error") == before + 2
    assert ready.status_code == 503
    assert ready.json()["checks"]["compliance"]["status"] == "fail"


async def test_idempotent_requests_are_retried_on_another_instance(upstreams: Upstreams) -> None:
    dead = f"http://127.0.0.1:{closed_port()}"
    env = {**upstreams.env(), "UPSTREAM_CORE_URLS": f"{dead},{upstreams.url('core')}"}
    async with proxy(env) as client:
        responses = [await client.get(f"/bank-lines?n={n}") for n in range(4)]
    assert [r.status_code for r in responses] == [200] * 4
    assert [s.target for s in upstreams.seen] == [f"/bank-lines?n={n}" for n in range(4)]


async def test_a_request_refused_a_connection_goes_to_another_instance_whatever_its_method(
    upstreams: Upstreams,
) -> None:
    """Not a byte reached the instance that refused the connection, so even a POST is safe to send elsewhere."""
    dead = f"http://127.0.0.1:{closed_port()}"
    env = {**upstreams.env(), "UPSTREAM_CORE_URLS": f"{dead},{upstreams.url('core')}"}
    async with proxy(env) as client:
        responses = [await client.post("/bank-lines", json={"n": n}) for n in range(2)]
    assert [r.status_code for r in responses] == [200, 200]
    assert [(s.method, s.target) for s in upstreams.seen] == [("POST", "/bank-lines")] * 2


async def test_a_post_whose_connection_broke_after_it_was_sent_is_not_retried(upstreams: Upstreams) -> None:
    """The instance may have done the work: a POST is answered 502 rather than sent again."""

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1024)  # the request arrived
        writer.transport.abort()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    env = {**upstreams.env(), "UPSTREAM_CORE_URLS": f"http://127.0.0.1:{port},{upstreams.url('core')}"}
    try:
        async with proxy(env) as client:
            response = await client.post("/bank-lines", json={"amount": "1.00"})
    finally:
        server.close()
    assert_problem(response, 502, "upstream_unavailable")
    assert upstreams.seen == []


async def wait_for(condition: Callable[[], Awaitable[bool]], within_s: float, what: str) -> float:
    started = time.monotonic()
    while time.monotonic() - started < within_s:
        if await condition():
            return time.monotonic() - started
        await asyncio.sleep(0.02)
    pytest.fail(f"{what} did not happen within {within_s}s")


async def test_one_unready_pod_behind_a_service_does_not_eject_the_service(upstreams: Upstreams) -> None:
    """Given one Service URL (a balancer of connections, here apgms.replicas's), the proxy's checks open a new
    connection each time: a kept-alive check would stay on the first pod it reached, and that pod failing /ready
    (while the Service still lists it) would eject the whole service though the other pod is ready."""
    unready, ready = upstreams.ports["compliance"], upstreams.ports["core"]  # two pods of one service
    # Both ready at its first probe (from another thread: the pods are served by this loop, which must keep running).
    balancer = await asyncio.to_thread(ConnectionBalancer.start, "core", [unready, ready], 60)
    upstreams.ready_status["compliance"] = 503  # the first pod a connection reaches now fails /ready
    env = {
        **upstreams.env(),
        "UPSTREAM_CORE_URLS": balancer.url,
        "PROXY_HEALTH_INTERVAL_S": "0.05",
        "PROXY_UNHEALTHY_THRESHOLD": "2",
    }
    labels = {"service": "core", "instance": f"127.0.0.1:{balancer.port}"}
    try:
        async with proxy(env) as client:
            await asyncio.sleep(1.0)  # 20 checks
            up = REGISTRY.get_sample_value("apgms_proxy_upstream_up", labels)
            response = await client.get("/bank-lines")
    finally:
        await asyncio.to_thread(balancer.close)
    assert up == 1.0
    assert response.status_code == 200
    assert sum(backend.connections for backend in balancer.backends) >= 10  # the checks reached both pods
    assert all(backend.connections > 0 for backend in balancer.backends)


async def test_active_checks_eject_and_readmit_an_instance(upstreams: Upstreams) -> None:
    env = {
        **upstreams.env(),
        "PROXY_HEALTH_INTERVAL_S": "0.05",
        "PROXY_UNHEALTHY_THRESHOLD": "2",
        "PROXY_HEALTHY_THRESHOLD": "2",
    }
    labels = {"service": "core", "instance": f"127.0.0.1:{upstreams.ports['core']}"}

    def core_up() -> float | None:
        return REGISTRY.get_sample_value("apgms_proxy_upstream_up", labels)

    async with proxy(env) as client:

        async def proxy_ready() -> bool:
            return (await client.get("/ready")).status_code == 200

        async def core_ejected() -> bool:
            return core_up() == 0.0

        async def core_admitted() -> bool:
            return core_up() == 1.0

        await wait_for(proxy_ready, 5, "proxy /ready 200")
        assert (await client.get("/bank-lines")).status_code == 200

        upstreams.ready_status["core"] = 503  # a draining instance
        await wait_for(core_ejected, 5, "core ejected by active checks")
        assert_problem(await client.get("/bank-lines"), 503, "service_unavailable")
        not_ready = await client.get("/ready")
        assert not_ready.status_code == 503
        assert not_ready.json()["checks"]["core"]["status"] == "fail"
        assert (await client.get("/auth/me")).status_code == 200

        upstreams.ready_status["core"] = 200
        await wait_for(core_admitted, 5, "core re-admitted by active checks")
        assert (await client.get("/bank-lines")).status_code == 200
        await wait_for(proxy_ready, 5, "proxy /ready 200 again")


async def test_the_regulator_route_sheds_load_past_its_concurrency_limit(upstreams: Upstreams) -> None:
    async with proxy({**upstreams.env(), "REGULATOR_MAX_CONCURRENCY": "1"}) as client:
        slow = asyncio.create_task(client.get("/regulator/evidence?sleep=0.5"))
        await asyncio.sleep(0.2)
        shed = await client.get("/regulator/alerts")
        other = await client.get("/alerts")
        first = await slow
    assert first.status_code == 200
    assert_problem(shed, 503, "regulator_busy")
    assert shed.headers["retry-after"] == "1"
    assert other.status_code == 200


class ConnectTimeoutSession:
    """Stands in for an aiohttp session whose every connection attempt times out (a black-holed instance)."""

    def __init__(self) -> None:
        self.urls: list[str] = []

    async def request(self, method: str, url: str, **_: Any) -> aiohttp.ClientResponse:
        self.urls.append(url)
        raise aiohttp.ConnectionTimeoutError(f"Connection timeout to host {url}")


async def test_a_connect_timeout_is_a_connection_failure_retried_elsewhere() -> None:
    # SPEC/issue 3: connect failure -> 502 and idempotent retry on another instance; "too slow" (no response
    # headers in time) is 504. An instance that never completes the TCP handshake has not been slow to answer.
    service = f"svc-{uuid.uuid4().hex[:8]}"
    upstreams = build_upstreams({service: ["http://a.test:1", "http://b.test:2"]})
    policy = HealthPolicy(eject_after_failures=1)
    session = ConnectTimeoutSession()
    forwarder = Forwarder(
        routes=build_route_table([("/things", service)]),
        upstreams=upstreams,
        sessions={service: session},  # type: ignore[dict-item]
        policy=policy,
        trusted_hops=0,
        regulator_slots=asyncio.Semaphore(1),
        connect_timeout_s=0.1,
        pool_gates={service: PoolGate(1)},
        pool_wait_s=0.1,
        clients=ClientCap(1),
        body=BodyPolicy(),
    )
    app = RequestContextMiddleware(forwarder)
    transport = httpx2.ASGITransport(app)
    async with httpx2.AsyncClient(transport=transport, base_url="http://api.example") as client:
        response = await client.get("/things/1")
    assert response.status_code == 502, response.text
    assert response.json()["code"] == "upstream_unavailable"
    assert session.urls == ["http://a.test:1/things/1", "http://b.test:2/things/1"]
    assert not any(instance.healthy for instance in upstreams[service].instances)


# --- federation and metrics -----------------------------------------------------------------------------------------


async def test_federate_needs_a_match(upstreams: Upstreams) -> None:
    async with proxy(upstreams.env()) as client:
        missing = await client.get("/federate")
        malformed = await client.get("/federate", params={"match[]": '{a=~".*"}'})
    assert_problem(missing, 400, "invalid_query")
    body = assert_problem(malformed, 400, "invalid_query")
    assert body["errors"][0]["path"] == "match[].0"
    assert upstreams.seen == []


async def test_federate_returns_every_services_selected_series_labelled(upstreams: Upstreams) -> None:
    async with proxy(upstreams.env()) as client:
        await client.get("/auth/me")
        response = await client.get(
            "/federate", params=[("match[]", "upstream_jobs_total"), ("match[]", "apgms_proxy_upstream_requests_total")]
        )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    lines = response.text.splitlines()
    jobs = sorted(line for line in lines if line.startswith("upstream_jobs_total{"))
    assert jobs == sorted(
        f'upstream_jobs_total{{exported_service="worker",service="{service}",instance="127.0.0.1:{port}"}} 4.0'
        for service, port in upstreams.ports.items()
    )
    # The proxy's own series come too, labelled as the proxy; their `service` label is kept as exported_service.
    own = 'apgms_proxy_upstream_requests_total{exported_service="auth",status="200",service="api-gateway",instance="'
    assert any(line.startswith(own) for line in lines)
    assert [line for line in lines if line.startswith("# TYPE upstream_jobs_total")] == [
        "# TYPE upstream_jobs_total counter"
    ]


async def test_proxy_metrics_count_upstream_requests(upstreams: Upstreams) -> None:
    async with proxy(upstreams.env()) as client:
        await client.get("/users")
        response = await client.get("/metrics")
    assert response.status_code == 200
    assert 'apgms_proxy_upstream_requests_total{service="auth",status="200"}' in response.text
    assert 'apgms_proxy_upstream_duration_seconds_bucket{le="0.5",service="auth"}' in response.text
    assert "apgms_proxy_upstream_up{" in response.text
    assert upstreams.requests("/metrics") == []


def body_messages(
    *chunks: bytes, complete: bool = True, then: Message | None = None
) -> Callable[[], Awaitable[Message]]:
    """An ASGI receive that yields `chunks` as a body (its last says more_body unless `complete`), then `then`,
    then waits forever, like a client that went quiet."""
    queue: list[Message] = [
        {"type": "http.request", "body": chunk, "more_body": not complete or index < len(chunks) - 1}
        for index, chunk in enumerate(chunks)
    ]
    if then is not None:
        queue.append(then)
    taken: list[Message] = []

    async def receive() -> Message:
        if not queue:
            await asyncio.Event().wait()
        taken.append(queue.pop(0))
        return taken[-1]

    receive.taken = taken  # type: ignore[attr-defined]
    return receive


async def test_discard_body_reads_the_rest_of_a_refused_body_and_stops_at_its_end() -> None:
    receive = body_messages(b"a" * 10, b"b" * 10, b"", then={"type": "http.disconnect"})
    await asyncio.wait_for(discard_body(receive), 1)
    assert len(receive.taken) == 3  # type: ignore[attr-defined]


async def test_discard_body_gives_up_past_its_byte_limit() -> None:
    endless = body_messages(*[b"x" * 1000] * 100, complete=False)
    await asyncio.wait_for(discard_body(endless, limit_bytes=5000), 1)
    assert len(endless.taken) == 5  # type: ignore[attr-defined]


async def test_discard_body_gives_up_past_its_time_limit() -> None:
    stalled = body_messages(b"x", complete=False)
    started = time.monotonic()
    await asyncio.wait_for(discard_body(stalled, limit_s=0.2), 2)
    assert 0.15 < time.monotonic() - started < 1


async def test_discard_body_stops_when_the_client_is_gone() -> None:
    gone = body_messages(then={"type": "http.disconnect"})
    await asyncio.wait_for(discard_body(gone), 1)
    assert len(gone.taken) == 1  # type: ignore[attr-defined]


async def oversized_upload(app: ASGIApp, path: str, sent: list[Message]) -> None:
    """An upload declaring 100 MB whose client then sends nothing (it waits for the answer)."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"api.example"), (b"content-length", b"100000000")],
        "client": ("203.0.113.8", 1),
        "server": ("127.0.0.1", 3000),
    }

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, body_messages(complete=False), send)


async def test_a_refused_upload_holds_no_regulator_slot_and_its_client_is_left_once_idle(
    upstreams: Upstreams,
) -> None:
    settings = load_proxy_settings(
        environ={"APGMS_ENV": "test", **QUIET_HEALTH, **upstreams.env(), "REGULATOR_MAX_CONCURRENCY": "1"}
    )
    app = create_app(settings)
    fast = {"method": "POST", "route": "/regulator", "le": "0.5"}
    fast_before = REGISTRY.get_sample_value("apgms_api_request_duration_seconds_bucket", fast) or 0
    async with lifespan(app):
        sent: list[Message] = []
        started = time.monotonic()
        upload = asyncio.create_task(oversized_upload(app, "/regulator/evidence", sent))
        await asyncio.sleep(0.2)
        assert sent and sent[0]["status"] == 413  # answered; now lingering for the rest of the body
        transport = httpx2.ASGITransport(app, client=("203.0.113.7", 50000))
        async with httpx2.AsyncClient(transport=transport, base_url="http://api.example") as client:
            response = await client.get("/regulator/alerts")
        assert response.status_code == 200, response.text  # the slot was not held by the lingering upload
        await asyncio.wait_for(upload, 5)
    assert time.monotonic() - started < 2  # the client sent nothing for a second: left, not held for 5 s
    # Its duration is the response's, not the linger's.
    assert REGISTRY.get_sample_value("apgms_api_request_duration_seconds_bucket", fast) == fast_before + 1


async def test_a_draining_proxy_does_not_linger_after_a_413(upstreams: Upstreams) -> None:
    settings = load_proxy_settings(environ={"APGMS_ENV": "test", **QUIET_HEALTH, **upstreams.env()})
    app = create_app(settings)
    async with lifespan(app):
        app.state.runtime.health.draining = True
        sent: list[Message] = []
        started = time.monotonic()
        await asyncio.wait_for(oversized_upload(app, "/bank-lines", sent), 5)
    assert sent[0]["status"] == 413
    assert time.monotonic() - started < 0.5
