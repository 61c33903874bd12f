"""Bounded upstream reads: `ServiceClient` reads at most `max_bytes` of an answer (MAX_RESPONSE_BYTES unless the
client or the call says otherwise) and fails past it with `ResponseTooLarge` (an aiohttp.ClientError, like any
unreadable answer), whether the size is declared or only seen as the body arrives; `shared.upstream.read_model`
turns that into a 502 upstream_unavailable. A stand-in server plays the token endpoint and the routes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import SimpleNamespace
from typing import cast

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from pydantic import BaseModel
from starlette.requests import Request

from shared.errors import ApiError
from shared.log import capture_logs
from shared.service_client import MAX_RESPONSE_BYTES, ResponseTooLarge, ServiceClient
from shared.upstream import read_model

CHUNK = b"x" * (64 * 1024)
STREAMED_BYTES = 64 * 1024 * 1024  # far more than any socket buffer holds


@dataclass
class Sent:
    streamed: int = 0
    finished: bool = False


class Small(BaseModel):
    size: int
    fill: str


@dataclass
class Stand:
    url: str
    sent: Sent
    session: aiohttp.ClientSession


@pytest_asyncio.fixture
async def stand() -> AsyncIterator[Stand]:
    sent = Sent()

    async def token(_: web.Request) -> web.Response:
        return web.json_response({"access_token": "t", "token_type": "Bearer", "expires_in": 900})

    async def sized(request: web.Request) -> web.Response:
        size = int(request.match_info["size"])
        return web.json_response({"size": size, "fill": "x" * size})

    async def streamed(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"content-type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        try:
            while sent.streamed < STREAMED_BYTES:
                await response.write(CHUNK)
                sent.streamed += len(CHUNK)
            await response.write_eof()
            sent.finished = True
        except (ConnectionResetError, ConnectionError, asyncio.CancelledError):
            pass
        return response

    app = web.Application()
    app.router.add_post("/auth/oauth/token", token)
    app.router.add_get("/sized/{size}", sized)
    app.router.add_get("/streamed", streamed)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
        yield Stand(f"http://127.0.0.1:{port}", sent, session)
    await runner.cleanup()


def fake_request(client: ServiceClient) -> Request:
    runtime = SimpleNamespace(require_service_client=lambda: client)
    return cast(Request, SimpleNamespace(app=SimpleNamespace(state=SimpleNamespace(runtime=runtime))))


async def test_the_default_bound_is_8_mib_and_a_call_may_pass_its_own(stand: Stand) -> None:
    assert MAX_RESPONSE_BYTES == 8 * 1024 * 1024
    client = ServiceClient(stand.url, "c", "s", stand.session)
    assert client.max_response_bytes == MAX_RESPONSE_BYTES
    assert (await client.get_json(f"{stand.url}/sized/1000"))["size"] == 1000
    # Declared larger than the bound (Content-Length): refused before the body is read.
    with pytest.raises(ResponseTooLarge) as caught:
        await client.get_json(f"{stand.url}/sized/{MAX_RESPONSE_BYTES}")
    assert isinstance(caught.value, aiohttp.ClientError) and caught.value.max_bytes == MAX_RESPONSE_BYTES
    with pytest.raises(ResponseTooLarge):
        await client.get_json(f"{stand.url}/sized/2000", max_bytes=1000)
    assert (await client.get_json(f"{stand.url}/sized/2000", max_bytes=4000))["size"] == 2000


async def test_an_undeclared_length_is_cut_off_at_the_bound(stand: Stand) -> None:
    client = ServiceClient(stand.url, "c", "s", stand.session, max_response_bytes=256 * 1024)
    with pytest.raises(ResponseTooLarge):
        await client.get_msgpack(f"{stand.url}/streamed")
    await asyncio.sleep(0.2)
    # The client stopped reading at the bound and dropped the connection: the server never got to send it all.
    assert not stand.sent.finished and stand.sent.streamed < STREAMED_BYTES // 2, stand.sent


async def test_read_model_answers_a_too_large_answer_with_a_502(stand: Stand) -> None:
    client = ServiceClient(stand.url, "c", "s", stand.session)
    request = fake_request(client)
    small = await read_model(request, "core", stand.url, "/sized/10", Small, deadline_s=5)
    assert small.size == 10
    with capture_logs() as logs, pytest.raises(ApiError) as caught:
        await read_model(request, "core", stand.url, "/sized/5000", Small, deadline_s=5, max_bytes=4096)
    assert (caught.value.code, caught.value.kind.status) == ("upstream_unavailable", 502)
    assert "4096 bytes" in caught.value.detail
    [line] = [entry for entry in logs if entry["event"] == "core_call_failed"]
    assert line["error"] == "too_large"
    with capture_logs(), pytest.raises(ApiError) as caught:
        await read_model(request, "core", stand.url, "/streamed", Small, deadline_s=10)
    assert caught.value.code == "upstream_unavailable"
