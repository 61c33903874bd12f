"""Forwarding headers, HSTS and the Host allowlist at the front door (issue #9, finding 11), through the real proxy
in front of the real auth service (or an echo service that shows what reached it)."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from auth_support import Org
from test_auth_oauth import basic, new_client
from test_proxy import header_map, start_echo, start_proxy

from apgms.devservers import free_port

pytestmark = pytest.mark.e2e

PRODUCTION_KEY = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
HSTS = "max-age=63072000; includeSubDomains"
TOKEN_FORM = {"grant_type": "client_credentials"}
SCRAPE_TOKEN = "forwarding-test-scrape-credential-0123456789"


def production_proxy(start_service: Any, upstreams: dict[str, list[str]], trusted_hops: int, **env: str) -> Any:
    port = free_port()
    return start_proxy(
        start_service,
        upstreams,
        APGMS_ENV="production",
        APGMS_MASTER_KEY=PRODUCTION_KEY,
        PORT=str(port),
        PUBLIC_HOSTS=f"127.0.0.1:{port},api.example",
        TRUSTED_PROXY_HOPS=str(trusted_hops),
        **env,
    )


async def token_status(http: aiohttp.ClientSession, url: str, credentials: dict[str, str], proto: str) -> tuple:
    headers = {**credentials, "x-forwarded-proto": proto}
    async with http.post(f"{url}/auth/oauth/token", data=TOKEN_FORM, headers=headers) as response:
        body = await response.json(content_type=None)
    return response.status, body.get("error")


@pytest.mark.parametrize(
    ("trusted_hops", "claimed"),
    # Straight to the proxy, the client's header is replaced. Behind a load balancer (one trusted hop), the
    # balancer appends what it saw after what the client sent: the client's `https` is first, and was believed.
    [(0, "https"), (1, "https, http"), (1, "https,http")],
)
async def test_a_client_claiming_https_cannot_pass_the_production_https_check(
    start_service: Any, database_url: str, org: Org, http: aiohttp.ClientSession, trusted_hops: int, claimed: str
) -> None:
    auth = start_service(
        "auth", {"APGMS_ENV": "production", "APGMS_MASTER_KEY": PRODUCTION_KEY, "TRUSTED_PROXY_HOPS": "1"}
    )
    proxy = production_proxy(start_service, {"auth": [auth.url]}, trusted_hops)
    client_id, secret = await new_client(database_url, org.id, ["users:read"])

    assert await token_status(http, proxy.url, basic(client_id, secret), claimed) == (400, "insecure_transport")
    if trusted_hops:
        # What the trusted balancer itself says is believed: TLS ended there.
        assert await token_status(http, proxy.url, basic(client_id, secret), "http, https") == (200, None)


async def test_hsts_in_production_only(start_service: Any, http: aiohttp.ClientSession) -> None:
    core = start_echo(start_service, "core")
    production = production_proxy(start_service, {"core": [core.url]}, 0)
    development = start_proxy(start_service, {"core": [core.url]})
    for path in ("/bank-lines", "/health", "/no-such-route"):
        async with http.get(f"{production.url}{path}") as response:
            assert response.headers.get("strict-transport-security") == HSTS, path
        async with http.get(f"{development.url}{path}") as response:
            assert "strict-transport-security" not in response.headers, path


async def test_in_production_a_foreign_host_is_400_and_never_reaches_a_service(
    start_service: Any, http: aiohttp.ClientSession
) -> None:
    core = start_echo(start_service, "core")
    proxy = production_proxy(start_service, {"core": [core.url]}, 0)

    async with http.get(f"{proxy.url}/bank-lines", headers={"host": "evil.example"}) as response:
        body = await response.json(content_type=None)
    assert (response.status, body["code"]) == (400, "bad_host")
    assert response.headers["strict-transport-security"] == HSTS
    # Untrusted, a client's X-Forwarded-Host is neither checked nor passed on: the Host is.
    async with http.get(
        f"{proxy.url}/bank-lines", headers={"host": "API.example", "x-forwarded-host": "evil.example"}
    ) as response:
        echo = await response.json(content_type=None)
    assert response.status == 200
    assert header_map(echo)["x-forwarded-host"] == "API.example"
    core.wait_for_log(lambda r: r.get("event") == "echo")
    assert len([r for r in core.log_lines() if r.get("event") == "echo"]) == 1, "the refused request never got there"


async def test_behind_a_trusted_balancer_the_forwarded_host_it_set_must_be_public(
    start_service: Any, http: aiohttp.ClientSession
) -> None:
    core = start_echo(start_service, "core")
    proxy = production_proxy(start_service, {"core": [core.url]}, 1)

    async def get(forwarded_host: str) -> tuple[int, Any]:
        headers = {"host": "proxy.internal:3000", "x-forwarded-host": forwarded_host}
        async with http.get(f"{proxy.url}/bank-lines", headers=headers) as response:
            return response.status, await response.json(content_type=None)

    status, body = await get("evil.example")
    assert (status, body["code"]) == (400, "bad_host")
    status, body = await get("api.example, evil.example")
    assert (status, body["code"]) == (400, "bad_host"), "the balancer's entry is the last one"
    status, echo = await get("evil.example, api.example")
    assert status == 200
    upstream = header_map(echo)
    assert upstream["x-forwarded-host"] == "api.example"
    assert upstream["x-forwarded-proto"] == "http"


async def test_in_production_probes_and_scrapes_answer_any_host_and_proxied_routes_do_not(
    start_service: Any, http: aiohttp.ClientSession
) -> None:
    """The review of the Host allowlist: load balancer and Kubernetes probes (Host: the instance's address) got 400
    from /health and /ready, and Prometheus's scrape of apgms-proxy:3000 got 400 from /metrics. (Waiting for the
    proxy to start probes /health with Host 127.0.0.1:<port>, which PUBLIC_HOSTS does not list either.)"""
    core = start_echo(start_service, "core")
    port = free_port()
    proxy = start_proxy(
        start_service,
        {"core": [core.url]},
        APGMS_ENV="production",
        APGMS_MASTER_KEY=PRODUCTION_KEY,
        PORT=str(port),
        PUBLIC_HOSTS="api.example.com",
        METRICS_BEARER_TOKEN=SCRAPE_TOKEN,
    )

    async def status(path: str, host: str, **headers: str) -> int:
        async with http.get(f"{proxy.url}{path}", headers={"host": host, **headers}) as response:
            await response.read()
            return response.status

    for path in ("/health", "/ready"):
        assert await status(path, "10.0.0.7:3000") in (200, 503), path
    assert await status("/health", "10.0.0.7:3000") == 200
    scrape = {"authorization": f"Bearer {SCRAPE_TOKEN}"}
    assert await status("/metrics", "apgms-proxy:3000", **scrape) == 200
    assert await status('/federate?match[]={__name__="apgms_api_requests_total"}', "apgms-proxy:3000", **scrape) == 200
    assert await status("/metrics", "apgms-proxy:3000") == 401, "exempt from the host check, not from the credential"
    assert await status("/bank-lines", "10.0.0.7:3000") == 400
    assert await status("/bank-lines", "api.example.com") == 200


async def test_a_forwarded_host_named_in_connection_is_neither_checked_nor_sent(
    start_service: Any, http: aiohttp.ClientSession
) -> None:
    """The review: behind a trusted hop, `X-Forwarded-Host: api.example` passed the allowlist, the forwarder then
    dropped it as named by `Connection` and sent the client's `Host: evil.example` upstream as X-Forwarded-Host."""
    core = start_echo(start_service, "core")
    proxy = production_proxy(start_service, {"core": [core.url]}, 1)

    async def get(host: str, forwarded_host: str) -> tuple[int, Any]:
        headers = {"host": host, "x-forwarded-host": forwarded_host, "connection": "x-forwarded-host"}
        async with http.get(f"{proxy.url}/bank-lines", headers=headers) as response:
            return response.status, await response.json(content_type=None)

    status, body = await get("evil.example", "api.example")
    assert (status, body.get("code")) == (400, "bad_host"), body
    status, echo = await get("api.example", "evil.example")
    assert status == 200
    assert header_map(echo)["x-forwarded-host"] == "api.example", "the Host, checked, is what the service sees"
    core.wait_for_log(lambda r: r.get("event") == "echo")
    assert len([r for r in core.log_lines() if r.get("event") == "echo"]) == 1, "the refused request never got there"
