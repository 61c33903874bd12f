"""GET /alerts and POST /alerts/{id}/resolve through real auth and core processes (issue #12)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from auth_support import Org, call
from core2_support import insert_alert, stepped_up
from core_support import connect

pytestmark = pytest.mark.e2e

StartService = Callable[..., Any]


async def test_the_support_steps_a_user_up_and_writes_alert_rows(
    start_service: StartService, http: aiohttp.ClientSession, org: Org, database_url: str
) -> None:
    auth = start_service("auth")
    stepped = await stepped_up(http, auth.url, org.email("admin"))
    status, profile, _ = await call(http, "GET", f"{auth.url}/auth/me", token=stepped.token)
    assert status == 200, profile
    assert profile["amr"] == ["pwd", "otp"]
    status, profile, _ = await call(http, "GET", f"{auth.url}/auth/me", token=stepped.plain_token)
    assert profile["amr"] == ["pwd"]

    alert_id = await insert_alert(database_url, org.id, severity="LOW", resolved=True)
    async with connect(database_url) as conn:
        row = await conn.fetchrow(
            "SELECT org_id, severity, resolved_at, resolved_by FROM core.alerts WHERE id = $1", alert_id
        )
    assert row is not None
    assert (row["org_id"], row["severity"], row["resolved_by"]) == (org.id, "LOW", "test:fixture")
    assert row["resolved_at"] is not None
