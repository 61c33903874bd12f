"""With Redis unreachable, logins still answer as usual (the limiter counts in memory, see
shared.ratelimit.FallbackBackend) while the regulator's health says Redis is down; and an unexpected error inside
the portal is an HTML page with the portal's headers, not a JSON problem."""

from __future__ import annotations

import aiohttp
import asyncpg
from auth_support import PASSWORD, Org, call
from core_support import StartService
from portal_support import SESSION_COOKIE
from regulator_support import create_credential, regulator_login, start_regulator
from test_regulator_portal_http import TOKEN_FIELD, assert_portal_headers, browser, get, post

DEAD_REDIS = {"REDIS_URL": "redis://127.0.0.1:1/0"}
PORTAL = "/regulator/portal"


async def test_logins_answer_as_usual_with_redis_down(
    start_service: StartService, database_url: str, org: Org, http: aiohttp.ClientSession
) -> None:
    stack = start_regulator(start_service, database_url, DEAD_REDIS)
    base = stack.url
    code = await create_credential(database_url, [org.id])

    status, body, _ = await call(http, "GET", f"{base}/regulator/health")
    assert status == 503, body
    assert body["checks"]["login_throttle"]["status"] == "fail", body

    status, body, _ = await call(
        http, "POST", f"{base}/regulator/login", json={"access_code": code, "org_id": str(org.id)}
    )
    assert status == 200, body
    token = body["token"]
    status, body, _ = await call(
        http, "POST", f"{base}/regulator/login", json={"access_code": code + "0", "org_id": str(org.id)}
    )
    assert (status, body["code"]) == (401, "access_denied"), body
    status, body, _ = await call(http, "GET", f"{base}/regulator/compliance/report", token=token)
    assert status == 200, body

    # The portal's form sign-in too.
    async with browser() as client:
        status, html, _ = await get(client, f"{base}{PORTAL}/login")
        match = TOKEN_FIELD.search(html)
        assert status == 200 and match is not None, html
        form = {"csrf_token": match.group(1), "access_code": code, "org_id": str(org.id)}
        status, html, headers = await post(client, f"{base}{PORTAL}/login", form)
        assert (status, headers.get("location")) == (303, f"{PORTAL}/dashboard"), html
        assert_portal_headers(headers)

    # User login in auth, with the same dead Redis: 200 for the right password, 401 for a wrong one.
    auth = start_service("auth", DEAD_REDIS)
    email = org.email("admin")
    status, body, _ = await call(http, "POST", f"{auth.url}/auth/login", json={"email": email, "password": PASSWORD})
    assert status == 200, body
    status, body, _ = await call(http, "POST", f"{auth.url}/auth/login", json={"email": email, "password": "wrong"})
    assert status == 401, body


async def test_an_unexpected_error_in_the_portal_is_an_html_page_with_its_headers(
    start_service: StartService, database_url: str, org: Org, http: aiohttp.ClientSession
) -> None:
    stack = start_regulator(start_service, database_url)
    session = await regulator_login(http, stack, await create_credential(database_url, [org.id]), org.id)
    connection = await asyncpg.connect(database_url)
    try:
        # The session guard's table gone: every page that looks up a session now fails unexpectedly.
        await connection.execute("ALTER TABLE regulator.sessions RENAME TO sessions_gone")
    finally:
        await connection.close()
    async with http.get(
        f"{stack.url}{PORTAL}/dashboard", headers={"cookie": f"{SESSION_COOKIE}={session['token']}"}
    ) as response:
        status, html, headers = response.status, await response.text(), response.headers
    assert status == 500, html
    assert headers["content-type"].startswith("text/html"), headers
    assert_portal_headers(headers)
    assert "<h1" in html and "Traceback" not in html
    assert headers["x-request-id"] in html  # the reference the page gives to quote
