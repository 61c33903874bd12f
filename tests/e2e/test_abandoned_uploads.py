"""Issue #9 finding 9: an upload its client abandons is the client's doing, not a server error. Each one is one
info line, status 499 in the access line (nginx's "client closed request") and no 5xx in the metrics: at a
service directly, through the proxy on a buffered route (the service never sees it), and through the proxy on a
streamed route (both see it)."""

from __future__ import annotations

import asyncio
import re

import aiohttp
import pytest
from test_proxy import start_echo, start_proxy

pytestmark = pytest.mark.e2e

SERVER_ERROR_SERIES = re.compile(r'^apgms_api_requests_total\{[^}]*status="5\d\d"[^}]*\}', re.MULTILINE)


async def abandon_upload(port: int, path: str, content_type: str = "application/json") -> None:
    """Declares a 200-byte body, sends 20 bytes of it, and closes the connection."""
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\nContent-Length: 200\r\n\r\n"
    writer.write(head.encode() + b'{"email": "a@b.examp')
    await writer.drain()
    writer.close()
    await writer.wait_closed()


def access_line(process, path: str) -> dict:
    return process.wait_for_log(lambda r: r.get("event") == "request" and r.get("path") == path)


def assert_abandoned(process, path: str) -> None:
    """One info line for the disconnect, a 499 access line, and no traceback or error line."""
    disconnected = process.wait_for_log(lambda r: r.get("event") == "client_disconnected")
    assert (disconnected["level"], disconnected["path"]) == ("info", path)
    line = access_line(process, path)
    assert (line["status"], line["level"]) == (499, "info")
    lines = process.log_lines()
    assert not [r for r in lines if r.get("level") in ("error", "critical") or "exception" in r]
    assert not [r for r in lines if r.get("event") == "unhandled_error"]
    assert "Traceback" not in "\n".join(process.output() + process.stderr_lines())


async def assert_no_server_errors(http: aiohttp.ClientSession, url: str, route: str) -> None:
    async with http.get(f"{url}/metrics") as response:
        text = await response.text()
    assert not SERVER_ERROR_SERIES.findall(text), SERVER_ERROR_SERIES.findall(text)
    assert f'apgms_api_requests_total{{method="POST",route="{route}",status="499"}} 1.0' in text


async def test_an_upload_abandoned_at_a_service_is_499_not_500(start_service) -> None:
    auth = start_service("auth")
    await abandon_upload(auth.port, "/auth/login")
    assert_abandoned(auth, "/auth/login")
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        await assert_no_server_errors(http, auth.url, "/auth/login")


async def test_an_upload_abandoned_at_the_proxy_is_499_and_never_reaches_the_service(start_service) -> None:
    auth = start_service("auth")
    proxy = start_proxy(start_service, {"auth": [auth.url]})
    await abandon_upload(proxy.port, "/auth/login")
    assert_abandoned(proxy, "/auth/login")
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        await assert_no_server_errors(http, proxy.url, "/auth")
    assert not [r for r in auth.log_lines() if r.get("path") == "/auth/login"]  # its body was never complete


async def test_a_streamed_upload_abandoned_is_499_at_the_proxy_and_at_the_service(start_service) -> None:
    core = start_echo(start_service, "core")
    proxy = start_proxy(start_service, {"core": [core.url]})
    await abandon_upload(proxy.port, "/bank-lines/import", content_type="text/csv")
    assert_abandoned(proxy, "/bank-lines/import")
    assert_abandoned(core, "/bank-lines/import")
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        await assert_no_server_errors(http, proxy.url, "/bank-lines/import")
        await assert_no_server_errors(http, core.url, "/:path")
