"""`apgms smoke regulator` as the runbook runs it: a subprocess against a proxy in front of real auth, core,
compliance and regulator processes. With a credential's code it prints one [ok] line per step with the org's
figures and exits 0, leaving one audit row per read and the session ended; a wrong code is `[fail] login` (exit 1)
and an unreachable URL a `[fail] health` line without a traceback."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
from auth_support import Org, call
from core2_support import insert_alert
from core_support import connect, new_line, post_line, role_tokens
from regulator_support import create_credential, start_proxy_for, start_regulator
from test_compliance_internal import make_pack

from apgms.devservers import free_port

pytestmark = pytest.mark.e2e

SMOKE_TIMEOUT_S = 60


async def smoke(*args: str, code: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "APGMS_REGULATOR_ACCESS_CODE": code or ""}
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "apgms", "smoke", "regulator", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=SMOKE_TIMEOUT_S,
        check=False,
    )


async def test_the_smoke_passes_with_a_code_and_fails_at_login_without_one(
    start_service: Any, database_url: str, org: Org, http: aiohttp.ClientSession
) -> None:
    stack = start_regulator(start_service, database_url)
    proxy = start_proxy_for(start_service, stack)
    tokens = await role_tokens(http, stack.core_stack, org)
    today = datetime.now(UTC).date().isoformat()
    for _ in range(3):
        status, body, _ = await post_line(http, stack.core_stack, tokens["finance"], new_line(date=today))
        assert status == 201, body
    await insert_alert(database_url, org.id, severity="HIGH")
    await insert_alert(database_url, org.id, severity="LOW")
    for _ in range(2):
        await make_pack(http, stack.compliance.url, tokens["admin"])
    status, _, _ = await call(http, "POST", f"{stack.compliance.url}/monitoring/snapshots", token=tokens["admin"])
    assert status == 201
    code = await create_credential(database_url, [org.id], name="smoke-test")

    result = await smoke("--base-url", proxy.url, "--org", str(org.id), code=code)
    assert result.returncode == 0, (result.stdout, result.stderr)
    lines = result.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == [
        "[ok] health",
        "[ok] login",
        "[ok] report",
        "[ok] alerts",
        "[ok] snapshots",
        "[ok] bank-lines summary",
        "[ok] evidence",
        "[ok] logout",
    ], lines
    assert "1 open HIGH alert" in lines[2] and "BAS " in lines[2]
    assert lines[3] == "[ok] alerts: 2 open, 1 HIGH"
    assert lines[5] == "[ok] bank-lines summary: 12 months, 3 lines"
    assert lines[6] == "[ok] evidence: 2 packs, newest verified"
    async with connect(database_url) as conn:
        reads = await conn.fetchval(
            "SELECT count(*) FROM audit.records WHERE org_id = $1 AND actor = 'regulator:smoke-test' "
            "AND action LIKE 'regulator.%.%' AND action NOT LIKE 'regulator.session.%'",
            org.id,
        )
        live = await conn.fetchval("SELECT count(*) FROM regulator.sessions WHERE ended_at IS NULL")
    assert (reads, live) == (6, 0)

    wrong = await smoke("--base-url", proxy.url, "--org", str(org.id), code=code[:-2] + "xx")
    assert wrong.returncode == 1
    assert wrong.stdout.splitlines()[-1].startswith("[fail] login: POST /regulator/login answered 401 (access_denied")
    outside = await smoke("--base-url", proxy.url, "--org", str(uuid.uuid4()), code=code)
    assert outside.returncode == 1 and "[fail] login:" in outside.stdout

    nowhere = await smoke("--base-url", f"http://127.0.0.1:{free_port()}", "--org", str(org.id), code=code)
    assert nowhere.returncode == 1
    assert nowhere.stdout.startswith("[fail] health: cannot reach"), nowhere.stdout
    assert "Traceback" not in nowhere.stdout + nowhere.stderr
