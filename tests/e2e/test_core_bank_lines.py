"""GET and POST /bank-lines through real auth and core processes."""

from __future__ import annotations

import aiohttp
import pytest
from auth_support import Org
from core_support import StartService, get_lines, new_line, post_line, role_tokens, start_core

pytestmark = pytest.mark.e2e


async def test_a_posted_line_is_listed_with_its_payee(
    start_service: StartService, database_url: str, org: Org, http: aiohttp.ClientSession
) -> None:
    stack = start_core(start_service, database_url)
    tokens = await role_tokens(http, stack, org)
    status, created, headers = await post_line(http, stack, tokens["finance"], new_line())
    assert status == 201, created
    assert headers["location"] == f"/bank-lines/{created['id']}"
    status, page, _ = await get_lines(http, stack, tokens["analyst"])
    assert status == 200, page
    assert page["items"] == [created]
    assert page["next_cursor"] is None
