"""The proxy's front door: CORS allowlist, preflights and security headers, over a tiny ASGI app."""

from __future__ import annotations

from collections.abc import Iterator

import httpx2
import pytest
from prometheus_client import REGISTRY
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient
from starlette.types import Message

from proxy.edge import HOST_EXEMPT_PATHS, HTML_CSP, EdgeMiddleware
from shared.context import RequestContextMiddleware
from shared.errors import ErrorBoundaryMiddleware
from shared.types import Receive, Scope, Send

ALLOWED = "https://app.example"
SECURITY = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
}


async def data(request: Request) -> Response:
    return JSONResponse({"method": request.method}, headers={"vary": "Accept-Encoding"})


async def page(_: Request) -> Response:
    return HTMLResponse("<p>hi</p>")


async def strict_page(_: Request) -> Response:
    return HTMLResponse("<p>portal</p>", headers={"content-security-policy": "default-src 'none'"})


async def framed(_: Request) -> Response:
    return Response("x", headers={"x-frame-options": "SAMEORIGIN"})


inner = Starlette(
    routes=[
        Route("/data", data, methods=["GET", "POST", "OPTIONS"]),
        Route("/page", page),
        Route("/strict", strict_page),
        Route("/framed", framed),
    ]
)


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with TestClient(EdgeMiddleware(inner, allowed_origins=frozenset({ALLOWED}))) as client:
        yield client


def cors_rejections() -> float:
    return REGISTRY.get_sample_value("security_events_total", {"event": "cors.reject"}) or 0.0


def assert_security_headers(response) -> None:
    for name, value in SECURITY.items():
        assert response.headers.get(name) == value, name


def test_no_origin_passes_without_cors_headers(client: TestClient) -> None:
    response = client.get("/data")
    assert response.status_code == 200
    assert "access-control-allow-origin" not in response.headers
    assert_security_headers(response)


def test_same_origin_passes_without_cors_headers(client: TestClient) -> None:
    response = client.get("/data", headers={"origin": "http://testserver"})
    assert response.status_code == 200
    assert response.json() == {"method": "GET"}
    assert "access-control-allow-origin" not in response.headers


def test_allowed_origin_gets_cors_headers(client: TestClient) -> None:
    response = client.post("/data", headers={"origin": ALLOWED})
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == ALLOWED
    assert response.headers["access-control-allow-credentials"] == "true"
    assert "x-request-id" in response.headers["access-control-expose-headers"]
    assert_security_headers(response)


def test_allowed_origin_keeps_the_upstreams_vary(client: TestClient) -> None:
    # The upstream varies on Accept-Encoding (gzip passes through); replacing its Vary with `Origin` lets a shared
    # cache hand a gzip body to a client that never asked for one.
    response = client.get("/data", headers={"origin": ALLOWED})
    vary = {token.strip().lower() for value in response.headers.get_list("vary") for token in value.split(",")}
    assert vary >= {"origin", "accept-encoding"}


@pytest.mark.parametrize(
    "origin",
    ["https://evil.example", "http://app.example", "https://app.example.evil", "null", "http://testserver:81"],
)
def test_disallowed_origin_is_refused_and_counted(client: TestClient, origin: str) -> None:
    before = cors_rejections()
    response = client.post("/data", headers={"origin": origin}, json={"a": 1})
    assert response.status_code == 403
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert (body["code"], body["status"]) == ("cors_forbidden", 403)
    assert "access-control-allow-origin" not in response.headers
    assert_security_headers(response)
    assert cors_rejections() == before + 1


def test_disallowed_preflight_is_refused(client: TestClient) -> None:
    before = cors_rejections()
    response = client.options(
        "/data", headers={"origin": "https://evil.example", "access-control-request-method": "POST"}
    )
    assert response.status_code == 403
    assert cors_rejections() == before + 1


def test_preflight_from_an_allowed_origin_is_answered_here(client: TestClient) -> None:
    response = client.options(
        "/data",
        headers={
            "origin": ALLOWED,
            "access-control-request-method": "POST",
            "access-control-request-headers": "content-type, idempotency-key",
        },
    )
    assert response.status_code == 204
    assert response.content == b""
    assert response.headers["access-control-allow-origin"] == ALLOWED
    methods = {m.strip() for m in response.headers["access-control-allow-methods"].split(",")}
    assert {"GET", "POST", "DELETE"} <= methods
    allowed_headers = {h.strip() for h in response.headers["access-control-allow-headers"].split(",")}
    assert {"authorization", "content-type", "idempotency-key"} <= allowed_headers
    assert int(response.headers["access-control-max-age"]) > 0
    assert_security_headers(response)


def test_options_without_request_method_is_not_a_preflight(client: TestClient) -> None:
    response = client.options("/data", headers={"origin": ALLOWED})
    assert response.status_code == 200
    assert response.json() == {"method": "OPTIONS"}
    assert response.headers["access-control-allow-origin"] == ALLOWED


def test_csp_only_on_html(client: TestClient) -> None:
    html = client.get("/page")
    assert html.headers["content-security-policy"] == HTML_CSP.decode()
    assert "frame-ancestors 'none'" in html.headers["content-security-policy"]
    assert_security_headers(html)
    assert "content-security-policy" not in client.get("/data").headers


def test_an_upstream_csp_and_security_header_are_kept(client: TestClient) -> None:
    strict = client.get("/strict")
    assert strict.headers.get_list("content-security-policy") == ["default-src 'none'"]
    framed = client.get("/framed")
    assert framed.headers.get_list("x-frame-options") == ["SAMEORIGIN"]
    assert framed.headers["x-content-type-options"] == "nosniff"


def test_not_found_from_the_app_still_gets_security_headers(client: TestClient) -> None:
    response = client.get("/nope")
    assert response.status_code == 404
    assert_security_headers(response)


async def call_raw(headers: list[tuple[bytes, bytes]], http_version: str = "1.1") -> tuple[int, list[Message]]:
    """The edge called directly: TestClient always sends one Host header."""
    sent: list[Message] = []
    scope = {
        "type": "http",
        "http_version": http_version,
        "method": "GET",
        "scheme": "http",
        "path": "/data",
        "raw_path": b"/data",
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("203.0.113.9", 5000),
    }

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    await EdgeMiddleware(inner, allowed_origins=frozenset())(scope, receive, send)
    return sent[0]["status"], sent


@pytest.mark.parametrize(
    ("headers", "http_version"),
    [
        ([], "1.1"),
        ([(b"host", b"")], "1.1"),
        ([(b"host", b"api.example"), (b"host", b"evil.example")], "1.1"),
        ([(b"host", b"api.example"), (b"host", b"api.example")], "1.0"),
    ],
)
async def test_a_request_without_exactly_one_host_is_400(headers: list[tuple[bytes, bytes]], http_version: str) -> None:
    status, sent = await call_raw(headers, http_version)
    assert status == 400
    assert b'"code":"bad_request"' in sent[1]["body"]
    assert (b"x-content-type-options", b"nosniff") in sent[0]["headers"]


async def test_http_1_0_without_host_and_http_1_1_with_one_pass() -> None:
    assert (await call_raw([], "1.0"))[0] == 200
    assert (await call_raw([(b"host", b"api.example")], "1.1"))[0] == 200


async def test_a_500_from_the_error_boundary_carries_the_edge_headers_and_the_request_id() -> None:
    async def broken(scope: Scope, receive: Receive, send: Send) -> None:
        raise RuntimeError("boom")

    app = RequestContextMiddleware(
        ErrorBoundaryMiddleware(EdgeMiddleware(broken, allowed_origins=frozenset({ALLOWED})))
    )
    transport = httpx2.ASGITransport(app)
    async with httpx2.AsyncClient(transport=transport, base_url="http://api.example") as client:
        response = await client.get("/x", headers={"origin": ALLOWED, "x-request-id": "rid-500"})
    assert response.status_code == 500
    assert response.json()["code"] == "internal_error"
    assert response.headers.get_list("x-request-id") == ["rid-500"]
    assert {name: response.headers[name] for name in SECURITY} == SECURITY
    assert response.headers["access-control-allow-origin"] == ALLOWED  # a browser may read why it failed


def production_edge(trusted_hops: int = 0) -> TestClient:
    edge = EdgeMiddleware(
        inner,
        allowed_origins=frozenset({ALLOWED}),
        public_hosts=frozenset({b"api.example", b"api.example:8443"}),
        trusted_hops=trusted_hops,
        hsts=True,
    )
    return TestClient(edge, base_url="http://api.example")


@pytest.mark.parametrize("host", ["api.example", "API.Example", "api.example:8443"])
def test_a_public_host_passes_with_hsts(host: str) -> None:
    with production_edge() as client:
        response = client.get("/data", headers={"host": host})
    assert response.status_code == 200
    assert response.headers["strict-transport-security"] == "max-age=63072000; includeSubDomains"
    assert_security_headers(response)


@pytest.mark.parametrize("host", ["evil.example", "api.example:80", "api.example.evil.example"])
def test_any_other_host_is_400_bad_host(host: str) -> None:
    with production_edge() as client:
        response = client.get("/data", headers={"host": host})
    assert (response.status_code, response.json()["code"]) == (400, "bad_host")
    assert response.headers["strict-transport-security"].startswith("max-age=")


def test_behind_a_trusted_hop_its_forwarded_host_is_the_one_checked() -> None:
    with production_edge(trusted_hops=1) as client:
        internal = {"host": "proxy.internal"}
        assert (
            client.get("/data", headers={**internal, "x-forwarded-host": "x.example, api.example"}).status_code == 200
        )
        refused = client.get("/data", headers={**internal, "x-forwarded-host": "api.example, evil.example"})
        assert refused.status_code == 400
        assert client.get("/data", headers={"host": "api.example"}).status_code == 200, "no header: the Host"
    with production_edge(trusted_hops=0) as client:
        forged = client.get("/data", headers={"host": "evil.example", "x-forwarded-host": "api.example"})
        assert forged.status_code == 400, "untrusted: the client's X-Forwarded-Host is not looked at"


def test_no_hsts_outside_production(client: TestClient) -> None:
    assert "strict-transport-security" not in client.get("/data").headers


@pytest.mark.parametrize("path", sorted(HOST_EXEMPT_PATHS))
def test_the_proxys_own_endpoints_answer_any_host(path: str) -> None:
    """Load balancer and Kubernetes probes send the instance's address as Host, Prometheus the target's name."""
    with production_edge() as client:
        passed = client.get(path, headers={"host": "10.0.0.7:3000"})
        assert passed.status_code == 404, "reached the app behind the edge (which has no such route)"
        assert passed.headers["strict-transport-security"].startswith("max-age=")
        assert client.get(f"{path}/x", headers={"host": "10.0.0.7:3000"}).status_code == 400, "exact paths only"
