"""Regulator login, logout and the session guard against real processes (issue #14)."""

from __future__ import annotations

import aiohttp
import asyncpg
from auth_support import Org, call
from core_support import StartService
from regulator_support import create_credential, regulator_login, start_regulator


async def test_login_opens_an_audited_session_and_logout_ends_it(
    start_service: StartService, database_url: str, http: aiohttp.ClientSession, org: Org
) -> None:
    stack = start_regulator(start_service, database_url)
    code = await create_credential(database_url, [org.id], name="asic.team-1")
    answer = await regulator_login(http, stack, code, org.id)
    assert answer["token_type"] == "Bearer"
    assert set(answer) == {"token", "token_type", "session"}
    assert answer["session"]["org_id"] == str(org.id)
    assert answer["session"]["credential"] == "asic.team-1"
    token = answer["token"]

    connection = await asyncpg.connect(database_url)
    try:
        stored = await connection.fetchval(
            "SELECT count(*) FROM regulator.sessions WHERE token_hash = sha256($1)", token.encode()
        )
        assert stored == 1, "the token is stored as its SHA-256 only"
        row = await connection.fetchrow(
            "SELECT actor, target FROM audit.records WHERE org_id = $1 AND action = 'regulator.login'",
            org.id,
        )
        assert row["actor"] == "regulator:asic.team-1"
        assert row["target"] == f"regulator_session:{answer['session']['id']}"

        status, body, _ = await call(http, "POST", f"{stack.url}/regulator/logout", token=token)
        assert status == 204, body
        status, body, _ = await call(http, "POST", f"{stack.url}/regulator/logout", token=token)
        assert (status, body["code"]) == (401, "invalid_token")
        actions = await connection.fetch(
            "SELECT action FROM audit.records WHERE org_id = $1 AND actor = 'regulator:asic.team-1' ORDER BY seq",
            org.id,
        )
        assert [a["action"] for a in actions] == ["regulator.login", "regulator.logout"]
    finally:
        await connection.close()
