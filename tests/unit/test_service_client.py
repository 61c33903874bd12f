"""`ServiceClient` against an in-process aiohttp server playing token endpoint and protected route."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from multidict import CIMultiDict

from shared.context import current_request_id, current_traceparent
from shared.service_client import (
    TOKEN_REFRESH_EARLY_S,
    ServiceAuthError,
    ServiceCallError,
    ServiceClient,
    refresh_time,
)

CLIENT_ID = "apgms-client-test"
SECRET = "s3cret/with:odd+chars"
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@dataclass
class FakeAuth:
    """Issues `token-1`, `token-2`, ...; the protected route accepts only tokens in `valid`."""

    expires_in: int = 900
    issued: int = 0
    valid: set[str] = field(default_factory=set)
    token_delay_s: float = 0.0
    reject_all: bool = False
    token_requests: list[dict[str, str]] = field(default_factory=list)
    calls: list[CIMultiDict[str]] = field(default_factory=list)

    async def token(self, request: web.Request) -> web.Response:
        form = await request.post()
        self.token_requests.append({"authorization": request.headers.get("authorization", ""), **form})
        await asyncio.sleep(self.token_delay_s)
        expected = "Basic " + base64.b64encode(b"apgms-client-test:s3cret%2Fwith%3Aodd%2Bchars").decode()
        if request.headers.get("authorization") != expected or form.get("grant_type") != "client_credentials":
            return web.json_response({"error": "invalid_client"}, status=401)
        self.issued += 1
        token = f"token-{self.issued}"
        self.valid.add(token)
        return web.json_response({"access_token": token, "token_type": "Bearer", "expires_in": self.expires_in})

    async def protected(self, request: web.Request) -> web.Response:
        self.calls.append(request.headers.copy())
        token = request.headers.get("authorization", "").removeprefix("Bearer ")
        if token not in self.valid or self.reject_all:
            return web.json_response({"code": "invalid_token"}, status=401)
        if request.match_info["what"] == "missing":
            return web.json_response({"code": "not_found"}, status=404)
        return web.json_response({"token": token, "what": request.match_info["what"]})


@dataclass
class Server:
    auth: FakeAuth
    url: str
    session: aiohttp.ClientSession


@pytest_asyncio.fixture
async def server() -> AsyncIterator[Server]:
    auth = FakeAuth()
    app = web.Application()
    app.router.add_post("/auth/oauth/token", auth.token)
    app.router.add_get("/data/{what}", auth.protected)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    async with aiohttp.ClientSession() as session:
        yield Server(auth, f"http://127.0.0.1:{port}", session)
    await runner.cleanup()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def client_for(server: Server, clock: Clock | None = None, secret: str = SECRET) -> ServiceClient:
    return ServiceClient(server.url + "/", CLIENT_ID, secret, server.session, clock=clock or Clock())


async def test_token_is_fetched_once_and_sent_as_bearer(server: Server) -> None:
    client = client_for(server)
    assert await client.get_json(server.url + "/data/a") == {"token": "token-1", "what": "a"}
    assert await client.get_json(server.url + "/data/b") == {"token": "token-1", "what": "b"}
    assert len(server.auth.token_requests) == 1
    assert server.auth.token_requests[0]["grant_type"] == "client_credentials"


async def test_concurrent_callers_share_one_token_fetch(server: Server) -> None:
    server.auth.token_delay_s = 0.05
    client = client_for(server)
    results = await asyncio.gather(*(client.get_json(f"{server.url}/data/{i}") for i in range(20)))
    assert {result["token"] for result in results} == {"token-1"}
    assert len(server.auth.token_requests) == 1


async def test_token_is_refreshed_shortly_before_it_expires(server: Server) -> None:
    clock = Clock()
    client = client_for(server, clock)
    await client.get_json(server.url + "/data/a")
    clock.now += 900 - TOKEN_REFRESH_EARLY_S - 1
    assert (await client.get_json(server.url + "/data/a"))["token"] == "token-1"
    clock.now += 2
    assert (await client.get_json(server.url + "/data/a"))["token"] == "token-2"
    assert len(server.auth.token_requests) == 2


async def test_a_401_refetches_the_token_and_retries_once(server: Server) -> None:
    client = client_for(server)
    await client.get_json(server.url + "/data/a")
    server.auth.valid.clear()  # e.g. the auth service's keys rotated past what the target knows
    assert (await client.get_json(server.url + "/data/a"))["token"] == "token-2"
    assert [call["Authorization"] for call in server.auth.calls] == [
        "Bearer token-1",
        "Bearer token-1",
        "Bearer token-2",
    ]


async def test_a_second_401_is_returned_not_retried_forever(server: Server) -> None:
    client = client_for(server)
    server.auth.reject_all = True
    response = await client.request("GET", server.url + "/data/a")
    assert response.status == 401
    assert [call["Authorization"] for call in server.auth.calls] == ["Bearer token-1", "Bearer token-2"]


async def test_request_id_and_traceparent_are_propagated(server: Server) -> None:
    client = client_for(server)
    request_token = current_request_id.set("req-123")
    trace_token = current_traceparent.set(TRACEPARENT)
    try:
        await client.get_json(server.url + "/data/a")
    finally:
        current_request_id.reset(request_token)
        current_traceparent.reset(trace_token)
    call = server.auth.calls[0]
    assert (call["X-Request-Id"], call["Traceparent"]) == ("req-123", TRACEPARENT)
    await client.get_json(server.url + "/data/a")
    assert "X-Request-Id" not in server.auth.calls[1], "outside a request nothing is invented"


async def test_error_statuses_raise_with_the_status(server: Server) -> None:
    client = client_for(server)
    with pytest.raises(ServiceCallError) as error:
        await client.get_json(server.url + "/data/missing")
    assert error.value.status == 404
    response = await client.request("GET", server.url + "/data/missing")
    assert (response.status, response.json()) == (404, {"code": "not_found"})


async def test_refused_credentials_raise_service_auth_error(server: Server) -> None:
    client = client_for(server, secret="wrong")
    with pytest.raises(ServiceAuthError, match="401 invalid_client"):
        await client.get_json(server.url + "/data/a")
    assert "wrong" not in repr(client.__dict__), "the secret never shows in a repr"


async def test_unreachable_auth_service_raises_service_auth_error(server: Server) -> None:
    client = ServiceClient("http://127.0.0.1:9", CLIENT_ID, SECRET, server.session)
    with pytest.raises(ServiceAuthError, match="failed"):
        await client.access_token()


def test_refresh_time_is_early_but_never_past_half_the_lifetime() -> None:
    assert refresh_time(0.0, 900) == 900 - TOKEN_REFRESH_EARLY_S
    assert refresh_time(0.0, 60) == 30
    assert refresh_time(10.0, 0) == 10.0
