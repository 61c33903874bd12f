"""The evidence library from one read: compliance's internal listing carries each pack's verification verdict
(`verified`, `failed_check`), so the regulator's `GET /regulator/evidence` and the portal's library show every
pack's status with one `regulator.evidence.list` audit row, and only opening a pack is `regulator.evidence.read`."""

from __future__ import annotations

import uuid
from typing import Any

import aiohttp
from auth_support import Org, call
from core_support import connect, role_tokens
from portal_support import SESSION_COOKIE
from regulator_support import create_credential, regulator_login, start_regulator
from test_compliance_internal import make_pack
from test_regulator_reads import audit_rows, last_seq

PORTAL = "/regulator/portal"


async def test_listing_carries_verdicts_and_is_one_audit_row(
    start_service: Any, database_url: str, org: Org, http: aiohttp.ClientSession
) -> None:
    stack = start_regulator(start_service, database_url)
    tokens = await role_tokens(http, stack.core_stack, org)
    good = await make_pack(http, stack.compliance.url, tokens["admin"])
    tampered = await make_pack(http, stack.compliance.url, tokens["admin"])
    async with connect(database_url) as conn:
        # Another pack's signature on this one: its digest still matches, its signature does not.
        await conn.execute(
            "UPDATE compliance.evidence_packs SET signature = (SELECT signature FROM compliance.evidence_packs "
            "WHERE id = $1) WHERE id = $2",
            uuid.UUID(good),
            uuid.UUID(tampered),
        )
    name = f"reg-{uuid.uuid4().hex[:8]}"
    token = (await regulator_login(http, stack, await create_credential(database_url, [org.id], name=name), org.id))[
        "token"
    ]
    actor = f"regulator:{name}"

    # The JSON listing: every pack with its verdict, one list row.
    seq = await last_seq(database_url, org.id)
    status, page, _ = await call(http, "GET", f"{stack.url}/regulator/evidence", token=token)
    assert status == 200, page
    verdicts = {item["id"]: (item["verified"], item["failed_check"]) for item in page["items"]}
    assert verdicts == {good: (True, None), tampered: (False, "signature")}, page
    rows = await audit_rows(database_url, org.id, seq)
    assert [(row["actor"], row["action"], row["target"]) for row in rows] == [
        (actor, "regulator.evidence.list", f"org:{org.id}")
    ]

    # The portal's library: the same statuses, from one read, one list row (no read row per listed pack).
    seq = rows[-1]["seq"]
    cookie = {"cookie": f"{SESSION_COOKIE}={token}"}
    async with http.get(f"{stack.url}{PORTAL}/evidence", headers=cookie) as response:
        html = await response.text()
        assert response.status == 200, html
    assert html.count("status-ok") == 1 and "failed: signature" in html, html
    rows = await audit_rows(database_url, org.id, seq)
    assert [(row["action"], row["target"]) for row in rows] == [("regulator.evidence.list", f"org:{org.id}")]

    # Opening a pack (its page) is the read of that pack.
    seq = rows[-1]["seq"]
    async with http.get(f"{stack.url}{PORTAL}/evidence/{tampered}", headers=cookie) as response:
        assert response.status == 200, await response.text()
    rows = await audit_rows(database_url, org.id, seq)
    assert [(row["action"], row["target"]) for row in rows] == [
        ("regulator.evidence.read", f"evidence_pack:{tampered}")
    ]

    # Compliance's internal listing answers the same verdicts to the regulator's service token only: a user's is 401.
    status, problem, _ = await call(
        http, "GET", f"{stack.compliance.url}/internal/orgs/{org.id}/evidence", token=tokens["admin"]
    )
    assert status == 401, problem
