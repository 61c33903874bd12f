"""The regulator portal over plain HTTP (aiohttp, no browser), through the proxy in front of real auth, core,
compliance and regulator processes: the security headers of every page, the cookie attributes, the CSRF check on
every form, a refused sign-in, org isolation of evidence packs by URL, and logout."""

from __future__ import annotations

import hashlib
import re
import uuid
from http.cookies import SimpleCookie
from typing import Any

import aiohttp
from auth_support import Org, call
from core_support import StartService, role_tokens
from portal_support import CSRF_COOKIE, SESSION_COOKIE, start_proxy
from regulator_support import create_credential, start_regulator

PORTAL = "/regulator/portal"
CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
TOKEN_FIELD = re.compile(r'name="csrf_token" value="([^"]+)"')


def browser() -> aiohttp.ClientSession:
    """A client with its own cookie jar, like one browser (unsafe=True: the proxy is at 127.0.0.1)."""
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True), timeout=aiohttp.ClientTimeout(total=20))


async def get(client: aiohttp.ClientSession, url: str) -> tuple[int, str, Any]:
    async with client.get(url, allow_redirects=False) as response:
        return response.status, await response.text(), response.headers.copy()


async def post(client: aiohttp.ClientSession, url: str, form: dict[str, str]) -> tuple[int, str, Any]:
    async with client.post(url, data=form, allow_redirects=False) as response:
        return response.status, await response.text(), response.headers.copy()


def set_cookies(headers: Any) -> SimpleCookie:
    jar: SimpleCookie = SimpleCookie()
    for line in headers.getall("set-cookie", []):
        jar.load(line)
    return jar


def assert_portal_headers(headers: Any, *, cache: str = "no-store") -> None:
    assert headers["content-security-policy"] == CSP
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["referrer-policy"] == "same-origin"
    assert headers["cache-control"] == cache


def assert_strict_cookie(jar: SimpleCookie, name: str) -> None:
    morsel = jar[name]
    assert morsel["httponly"] is True
    assert morsel["samesite"].lower() == "strict"
    assert morsel["path"] == "/"
    assert not morsel["secure"]  # plain HTTP in test (RegulatorSettings.secure_cookies is False)


async def form_token(client: aiohttp.ClientSession, url: str) -> str:
    status, html, headers = await get(client, url)
    assert status == 200, html
    assert_portal_headers(headers)
    match = TOKEN_FIELD.search(html)
    assert match is not None, html
    return match.group(1)


async def new_pack(http: aiohttp.ClientSession, proxy: str, token: str, tag: str) -> dict[str, Any]:
    status, pack, _ = await call(http, "POST", f"{proxy}/compliance/evidence", token=token, json={"tag": tag})
    assert status == 201, pack
    return dict(pack)


async def test_portal_headers_cookies_csrf_and_org_isolation(
    start_service: StartService, database_url: str, org: Org, other_org: Org, http: aiohttp.ClientSession
) -> None:
    stack = start_regulator(start_service, database_url)
    proxy = start_proxy(start_service, stack)
    pack = await new_pack(http, proxy, (await role_tokens(http, stack.core_stack, org))["admin"], "quarter close")
    other = await new_pack(http, proxy, (await role_tokens(http, stack.core_stack, other_org))["admin"], "theirs")
    code = await create_credential(database_url, [org.id, other_org.id])
    login_url = f"{proxy}{PORTAL}/login"

    async with browser() as client, browser() as intruder:
        # No session: the portal's root and every page go to the sign-in page.
        status, _, headers = await get(client, f"{proxy}{PORTAL}/")
        assert (status, headers["location"]) == (303, f"{PORTAL}/login")
        assert_portal_headers(headers)
        status, _, headers = await get(client, f"{proxy}{PORTAL}/dashboard")
        assert (status, headers["location"]) == (303, f"{PORTAL}/login")

        # The sign-in page sets the CSRF cookie, strict; its form carries the token.
        async with client.get(login_url) as response:
            html = await response.text()
            assert response.status == 200
            assert response.headers["content-type"].startswith("text/html")
            assert_portal_headers(response.headers)
            assert_strict_cookie(set_cookies(response.headers), CSRF_COOKIE)
        assert '<html lang="en">' in html and html.count("<h1>") == 1
        assert '<label for="access_code">' in html and '<label for="org_id">' in html
        assert "style=" not in html and "<script" not in html
        token = TOKEN_FIELD.search(html)
        assert token is not None
        good = {"access_code": code, "org_id": str(org.id), "csrf_token": token.group(1)}

        # Without the token, and with another browser's token: 403 csrf_failed, no session.
        status, html, headers = await post(client, login_url, {k: v for k, v in good.items() if k != "csrf_token"})
        assert status == 403 and "The form could not be verified" in html
        assert_portal_headers(headers)
        assert SESSION_COOKIE not in set_cookies(headers)
        foreign = await form_token(intruder, login_url)
        status, html, headers = await post(client, login_url, {**good, "csrf_token": foreign})
        assert status == 403 and "The form could not be verified" in html
        assert SESSION_COOKIE not in set_cookies(headers)
        # The intruder's own cookie with the victim's token is refused the same way.
        status, _, _ = await post(intruder, login_url, good)
        assert status == 403

        # A wrong code: the sign-in page again with the error, 401, no session cookie; the same for an org outside
        # the credential (the page never says which part was wrong).
        status, html, headers = await post(client, login_url, {**good, "access_code": code[:-2] + "xx"})
        assert status == 401 and "was not accepted" in html
        assert SESSION_COOKIE not in set_cookies(headers)
        assert_portal_headers(headers)
        status, html_other_org, _ = await post(client, login_url, {**good, "org_id": str(uuid.uuid4())})
        assert status == 401 and "was not accepted" in html_other_org

        # The right code: the session cookie, strict, for the session's lifetime; then the dashboard.
        status, _, headers = await post(client, login_url, good)
        assert (status, headers["location"]) == (303, f"{PORTAL}/dashboard")
        cookies = set_cookies(headers)
        assert_strict_cookie(cookies, SESSION_COOKIE)
        assert 3500 <= int(cookies[SESSION_COOKIE]["max-age"]) <= 3600
        assert_strict_cookie(cookies, CSRF_COOKIE)  # a new CSRF id at sign-in
        session_token = cookies[SESSION_COOKIE].value

        for path in ("/", "/dashboard", "/alerts", "/alerts?status=open", "/bank-lines", "/evidence"):
            status, html, headers = await get(client, f"{proxy}{PORTAL}{path}")
            if path == "/":
                assert (status, headers["location"]) == (303, f"{PORTAL}/dashboard")
                continue
            assert status == 200, (path, html)
            assert_portal_headers(headers)
            assert html.count("<h1>") == 1 and "style=" not in html and "<script" not in html
        status, html, headers = await get(client, f"{proxy}{PORTAL}/evidence/{pack['id']}")
        assert status == 200 and pack["sha256"] in html and ">verified<" in html
        assert_portal_headers(headers)
        async with client.get(f"{proxy}{PORTAL}/evidence/{pack['id']}/payload") as response:
            assert response.status == 200
            assert "attachment" in response.headers["content-disposition"]
            assert_portal_headers(response.headers)
            assert hashlib.sha256(await response.read()).hexdigest() == pack["sha256"]

        # The stylesheet: a year's cache, the same CSP.
        css = re.search(r'href="(/regulator/portal/static/portal\.css\?v=[0-9a-f]+)"', html)
        assert css is not None
        status, _, headers = await get(client, f"{proxy}{css.group(1)}")
        assert status == 200 and headers["content-type"].startswith("text/css")
        assert_portal_headers(headers, cache="public, max-age=31536000, immutable")

        # Org B's pack (the credential may view B too, but this session is A's): 404 page, by any of its URLs.
        for suffix in ("", "/payload", "/export"):
            status, html, headers = await get(client, f"{proxy}{PORTAL}/evidence/{other['id']}{suffix}")
            assert status == 404, html
            assert headers["content-type"].startswith("text/html")
            assert other["sha256"] not in html
        status, _, _ = await get(client, f"{proxy}{PORTAL}/evidence/not-a-uuid")
        assert status == 404
        status, _, _ = await get(client, f"{proxy}{PORTAL}/no-such-page")
        assert status == 404

        # Logout without the token is refused and the session lives on; with it, the session ends.
        logout_url = f"{proxy}{PORTAL}/logout"
        status, _, _ = await post(client, logout_url, {})
        assert status == 403
        status, _, _ = await get(client, f"{proxy}{PORTAL}/dashboard")
        assert status == 200
        token_now = await form_token(client, f"{proxy}{PORTAL}/alerts")
        status, _, headers = await post(client, logout_url, {"csrf_token": token_now})
        assert (status, headers["location"]) == (303, f"{PORTAL}/login?signed_out=1")
        assert set_cookies(headers)[SESSION_COOKIE].value == ""
        status, _, headers = await get(client, f"{proxy}{PORTAL}/dashboard")
        assert (status, headers["location"]) == (303, f"{PORTAL}/login")

    # The old cookie replayed: the portal sends it to sign-in, the API refuses it.
    async with aiohttp.ClientSession(cookies={SESSION_COOKIE: session_token}) as replay:
        status, _, headers = await get(replay, f"{proxy}{PORTAL}/dashboard")
        assert (status, headers["location"]) == (303, f"{PORTAL}/login")
        async with replay.get(f"{proxy}/regulator/compliance/report") as response:
            assert response.status == 401
