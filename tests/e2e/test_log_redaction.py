"""What a real auth process writes to its log: no token, TOTP secret, recovery code, password or email, even when a
client puts them where they are logged verbatim (the path of every access line)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import aiohttp
import pyotp
import pytest
from auth_support import PASSWORD, Org, call, login

pytestmark = pytest.mark.e2e

StartService = Callable[..., Any]  # tests/conftest.py: start_service(name) -> ServiceProcess
NON_ASCII_EMAIL = "aud\u0130tor@d\u00e9mo.apgms.example"


async def post(http: aiohttp.ClientSession, url: str, token: str | None, body: Any) -> Any:
    status, answer, _ = await call(http, "POST", url, token=token, json=body)
    assert status == 200, answer
    return answer


async def test_no_credential_reaches_the_log_after_login_refresh_and_totp_enrolment(
    start_service: StartService, http: aiohttp.ClientSession, org: Org
) -> None:
    auth = start_service("auth")
    email = org.email("finance")
    first = await login(http, auth.url, email)
    second = await post(http, f"{auth.url}/auth/refresh", None, {"refresh_token": first["refresh_token"]})
    access = second["access_token"]
    begun = await post(http, f"{auth.url}/auth/mfa/totp/begin", access, {"password": PASSWORD})
    secret = begun["secret"]
    code = pyotp.TOTP(secret).at(time.time())
    recovery_codes = (await post(http, f"{auth.url}/auth/mfa/totp/confirm", access, {"code": code}))["recovery_codes"]

    # A client that puts a credential in a URL (an implicit-flow callback, a confused SDK): the access line of
    # each request logs its path as sent.
    paths = [
        f"/auth/callback/refresh_token={second['refresh_token']}",
        f"/auth/callback/access_token={first['refresh_token']}",
        f"/auth/mfa/totp/{secret}",
        f"/auth/mfa/recovery/{recovery_codes[0]}",
        f"/auth/mfa/recovery/{recovery_codes[1].upper()}",
        f"/users/{NON_ASCII_EMAIL}",
        f"/auth/otpauth/totp/APGMS:{quote(email)}",
    ]
    for path in paths:
        status, _, _ = await call(http, "GET", auth.url + quote(path))
        assert status in (401, 404, 405)
    await auth.wait_for_log_async(
        lambda line: line.get("event") == "request" and line.get("path", "").startswith("/auth/otpauth/")
    )

    logged = "\n".join(auth.output() + auth.stderr_lines())
    credentials = {
        "access token": first["access_token"],
        "second access token": access,
        "refresh token": first["refresh_token"],
        "second refresh token": second["refresh_token"],
        "TOTP secret": secret,
        "password": PASSWORD,
        "email": email,
        "URL-encoded email": quote(email),
        "non-ASCII email": NON_ASCII_EMAIL,
        "non-ASCII email's local part": NON_ASCII_EMAIL.split("@")[0],
        **{f"recovery code {n}": code for n, code in enumerate(recovery_codes)},
        "upper-case recovery code": recovery_codes[1].upper(),
    }
    leaked = [name for name, value in credentials.items() if value in logged]
    assert leaked == [], "\n".join(auth.output()[-20:])
    paths_logged = [line["path"] for line in auth.log_lines() if line.get("event") == "request"]
    assert sum("[REDACTED" in path for path in paths_logged) >= len(paths), paths_logged


async def test_request_ids_and_upper_case_words_are_logged_as_they_are(
    start_service: StartService, http: aiohttp.ClientSession
) -> None:
    """Redaction matches our secrets' formats, not any 4-4-4 group or run of capitals: a hex id, a zone name and
    an upper-case word in a path reach the log whole (they were `[REDACTED:recovery_code]` and
    `[REDACTED:totp_secret]`)."""
    auth = start_service("auth")
    path = "/auth/reports/a9f3-4b2c-8d1e/time-zone-area/ORGANISATIONREPORTGENERATED"
    status, _, _ = await call(http, "GET", auth.url + path, headers={"x-request-id": "abcd-1234-ef56"})
    assert status in (401, 404, 405)
    line = await auth.wait_for_log_async(lambda line: line.get("event") == "request" and "reports" in line["path"])
    assert line["path"] == path
