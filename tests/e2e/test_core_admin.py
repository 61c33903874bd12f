"""An admin's export and deletion of their org, against real auth and core processes (services/core/admin.py).

Export: step-up for every admin, another org's id is 404, and the streamed document holds the decrypted lines, the
users auth lists, the other tables' rows, after an `admin.export` audit record. Deletion: a wrong confirmation is
400; afterwards no row of the org is left, no payee, description or address of it is anywhere in the database in
plaintext (every row of every table, and a pg_dump), its ciphertext cannot be opened, its users cannot log in, its
audit chain verifies, and the other org is untouched. With auth unreachable, the data is deleted anyway, the answer
is 502, and the same DELETE again does auth's part."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import uuid
from typing import Any

import aiohttp
import orjson
import pytest
from auth_support import PASSWORD, Org, call
from core2_support import insert_alert, stepped_up
from core_support import (
    CoreStack,
    connect,
    get_lines,
    new_line,
    pii_cipher,
    post_line,
    raw_lines,
    role_tokens,
    start_core,
)

from services.core.designated import account_id
from shared import audit
from shared.pii import KeyDestroyed

pytestmark = pytest.mark.e2e

REVOCATION_POLLS, REVOCATION_POLL_S = 50, 0.1
PAYEES = ("Zelda Quixotic Plumbing", "Yannick Obscure Catering")
DESCRIPTIONS = ("Invoice for the Marrickville job", "Staff lunch at Quokka Cafe")
# A whitelisted deposit source, an unlisted one tried, and a deposit's reference: a person's name and account
# numbers, in the whitelist, the transfer and the alert, and named only by tags in the audit chain.
SOURCE = "Wilhelmina Zed 062-000 87654321"
UNLISTED = "Bartholomew Qux 033-111 11223344"
REFERENCE = "PAYRUN-Zanzibar-0042"


@pytest.fixture
def stack(start_service: Any, database_url: str) -> CoreStack:
    return start_core(start_service, database_url)


async def seed_lines(http: aiohttp.ClientSession, stack: CoreStack, token: str) -> None:
    for payee, description in zip(PAYEES, DESCRIPTIONS, strict=True):
        status, body, _ = await post_line(http, stack, token, new_line(payee=payee, description=description))
        assert status == 201, body


def export_url(stack: CoreStack, org_id: object) -> str:
    return f"{stack.core.url}/admin/export/{org_id}"


def delete_url(stack: CoreStack, org_id: object) -> str:
    return f"{stack.core.url}/admin/delete/{org_id}"


async def chain(database_url: str, org_id: uuid.UUID) -> tuple[list[audit.AuditRecord], bool]:
    async with connect(database_url) as conn:
        rows = [row async for row in audit.records(conn, org_id)]
        return rows, (await audit.verify_org(conn, org_id)).ok


async def test_export_needs_a_stepped_up_admin_of_that_org(
    stack: CoreStack, org: Org, other_org: Org, http: aiohttp.ClientSession
) -> None:
    tokens = await role_tokens(http, stack, org)
    status, problem, _ = await call(http, "GET", export_url(stack, org.id), token=tokens["admin"])
    assert (status, problem["code"]) == (401, "mfa_required")
    for role in ("finance", "analyst", "auditor"):
        status, problem, _ = await call(http, "GET", export_url(stack, org.id), token=tokens[role])
        assert (status, problem["code"]) == (403, "forbidden"), role
    admin = await stepped_up(http, stack.auth.url, org.email("admin"))
    for org_id in (other_org.id, uuid.uuid4(), "not-an-org"):
        status, problem, _ = await call(http, "GET", export_url(stack, org_id), token=admin.token)
        assert (status, problem["code"]) == (404, "not_found"), org_id
    status, problem, _ = await call(
        http, "DELETE", delete_url(stack, org.id), token=admin.plain_token, json={"confirm": str(org.id)}
    )
    assert (status, problem["code"]) == (401, "mfa_required")
    status, problem, _ = await call(
        http, "DELETE", delete_url(stack, other_org.id), token=admin.token, json={"confirm": str(other_org.id)}
    )
    assert (status, problem["code"]) == (404, "not_found")


async def test_the_export_streams_the_orgs_data_and_its_users(
    stack: CoreStack, org: Org, other_org: Org, http: aiohttp.ClientSession
) -> None:
    tokens = await role_tokens(http, stack, org)
    await seed_lines(http, stack, tokens["finance"])
    other = await role_tokens(http, stack, other_org)
    status, _, _ = await post_line(http, stack, other["finance"], new_line(payee="Not In This Export"))
    assert status == 201
    await insert_alert(stack.database_url, org.id, severity="HIGH", detail={"shortfall": "600.00"})
    admin = await stepped_up(http, stack.auth.url, org.email("admin"))

    async with http.get(export_url(stack, org.id), headers={"authorization": f"Bearer {admin.token}"}) as response:
        assert response.status == 200, await response.text()
        assert response.headers["content-type"].startswith("application/json")
        assert "attachment" in response.headers["content-disposition"]
        document = orjson.loads(await response.read())

    assert document["org_id"] == str(org.id)
    assert sorted((u["id"], u["email"], u["role"]) for u in document["users"]) == sorted(
        (str(user.id), user.email, role) for role, user in org.users.items()
    )
    assert sorted(line["payee"] for line in document["bank_lines"]) == sorted(PAYEES)
    assert sorted(line["description"] for line in document["bank_lines"]) == sorted(DESCRIPTIONS)
    assert {line["amount"] for line in document["bank_lines"]} == {"-110.00"}
    assert [(a["severity"], a["detail"]) for a in document["alerts"]] == [("HIGH", {"shortfall": "600.00"})]
    for table in ("bas_cycles", "payment_plans", "designated_accounts", "designated_sources", "designated_transfers"):
        assert isinstance(document[table], list), table

    rows, ok = await chain(stack.database_url, org.id)
    exported = [row for row in rows if row.action == "admin.export"]
    assert ok and len(exported) == 1
    assert exported[0].actor == f"user:{org.users['admin'].id}"
    assert exported[0].detail["counts"]["bank_lines"] == 2 and exported[0].detail["users"] == len(org.users)


async def dump_text(database_url: str) -> str:
    """Every row of every table of every schema as text (bytea as hex), and a pg_dump when the binary exists."""
    parts: list[str] = []
    async with connect(database_url) as conn:
        tables = await conn.fetch(
            "SELECT table_schema, table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE' "
            "AND table_schema NOT IN ('pg_catalog', 'information_schema')"
        )
        for table in tables:
            rows = await conn.fetch(f'SELECT t::text AS row FROM "{table[0]}"."{table[1]}" t')  # noqa: S608
            parts += [row["row"] for row in rows]
    if (pg_dump := shutil.which("pg_dump")) is not None:
        done = subprocess.run([pg_dump, "--dbname", database_url], capture_output=True, check=True, timeout=60)
        parts.append(done.stdout.decode())
    return "\n".join(parts)


def plaintexts(org: Org) -> list[str]:
    return [*PAYEES, *DESCRIPTIONS, *(user.email for user in org.users.values()), SOURCE, UNLISTED, REFERENCE]


async def seed_deposits(http: aiohttp.ClientSession, stack: CoreStack, org: Org, admin: str, finance: str) -> None:
    """The whitelisted SOURCE, a deposit from it with REFERENCE, and a refused one from UNLISTED (an alert)."""
    account = f"{stack.core.url}/org/designated-accounts/{account_id(org.id, 'PAYGW')}"
    status, body, _ = await call(http, "PUT", f"{account}/sources", token=admin, json={"sources": [SOURCE]})
    assert status == 200, body
    for source, expected in ((SOURCE, 201), (UNLISTED, 422)):
        deposit = {"amount": "25.00", "source": source, "reference": REFERENCE}
        status, body, _ = await call(http, "POST", f"{account}/deposits", token=finance, json=deposit)
        assert status == expected, body


async def test_deleting_the_org_leaves_no_pii_no_way_in_and_a_verified_chain(
    stack: CoreStack, org: Org, other_org: Org, http: aiohttp.ClientSession
) -> None:
    tokens = await role_tokens(http, stack, org)
    await seed_lines(http, stack, tokens["finance"])
    other = await role_tokens(http, stack, other_org)
    status, _, _ = await post_line(http, stack, other["finance"], new_line(payee="Kept Payee Pty Ltd"))
    assert status == 201
    await insert_alert(stack.database_url, org.id)
    admin = await stepped_up(http, stack.auth.url, org.email("admin"))
    await seed_deposits(http, stack, org, admin.token, tokens["finance"])
    sealed = await raw_lines(stack.database_url, org.id)
    before = await dump_text(stack.database_url)
    assert all(text in before for text in [*plaintexts(org)[4:]]), "the addresses and sources are there before"

    for confirm in ("", str(other_org.id), "yes"):
        status, problem, _ = await call(
            http, "DELETE", delete_url(stack, org.id), token=admin.token, json={"confirm": confirm}
        )
        assert (status, problem["code"]) == (400, "invalid_body"), confirm
        assert problem["errors"][0]["path"] == "confirm"
    status, problem, _ = await call(http, "DELETE", delete_url(stack, org.id), token=admin.token, json={})
    assert (status, problem["code"]) == (400, "invalid_body")

    status, deleted, _ = await call(
        http, "DELETE", delete_url(stack, org.id), token=admin.token, json={"confirm": str(org.id)}
    )
    assert status == 200, deleted
    assert deleted["org_id"] == str(org.id) and deleted["auth_erased"] is True
    assert deleted["deleted_by"] == f"user:{org.users['admin'].id}"
    assert deleted["counts"]["bank_lines"] == 2 and deleted["counts"]["alerts"] == 2
    assert deleted["counts"]["idempotency_records"] == 0

    async with connect(stack.database_url) as conn:
        stone = await conn.fetchrow("SELECT * FROM core.org_tombstones WHERE org_id = $1", org.id)
        assert stone is not None and stone["auth_erased_at"] is not None
        for table in ("bank_lines", "alerts", "bas_cycles", "designated_accounts", "payment_plans"):
            assert not await conn.fetchval(f"SELECT count(*) FROM core.{table} WHERE org_id = $1", org.id), table  # noqa: S608

    after = await dump_text(stack.database_url)
    for text in plaintexts(org):
        assert text not in after, text
        assert text.encode().hex() not in after, text
    assert b"Kept Payee Pty Ltd".hex() not in after, "the other org's payee is sealed too"

    async with pii_cipher(stack.database_url) as cipher:
        with pytest.raises(KeyDestroyed):
            await cipher.decrypt_many(
                org.id,
                "bank_lines",
                "payee",
                [line.payee for line in sealed],
                row_ids=[str(line.id) for line in sealed],
            )

    for role in org.users:
        status, problem, _ = await call(
            http, "POST", f"{stack.auth.url}/auth/login", json={"email": org.email(role), "password": PASSWORD}
        )
        assert status == 401, (role, problem)
    # Core refuses the deleted org at once (410 gone), and the org's access tokens are revoked: core sees that
    # within its revocation refresh (about a second), after which the same token is simply invalid.
    seen = set()
    for _ in range(REVOCATION_POLLS):
        status, problem, _ = await get_lines(http, stack, tokens["finance"])
        seen.add((status, problem["code"]))
        if status == 401:
            break
        await asyncio.sleep(REVOCATION_POLL_S)
    assert (status, problem["code"]) == (401, "invalid_token")
    assert seen <= {(410, "gone"), (401, "invalid_token")}, seen

    rows, ok = await chain(stack.database_url, org.id)
    assert ok
    actions = [row.action for row in rows]
    assert actions[-2:] == ["admin.org.delete", "org.erase"]
    assert rows[-2].detail["counts"]["bank_lines"] == 2

    status, page, _ = await get_lines(http, stack, other["finance"])
    assert status == 200 and [item["payee"] for item in page["items"]] == ["Kept Payee Pty Ltd"]
    other_chain = await chain(stack.database_url, other_org.id)
    assert other_chain[1]


async def test_with_auth_unreachable_the_data_goes_and_the_same_delete_finishes_later(
    start_service: Any, database_url: str, org: Org, http: aiohttp.ClientSession
) -> None:
    stack = start_core(start_service, database_url, {"SERVICE_CLIENT_SECRET": "not-the-secret-" + "x" * 32})
    tokens = await role_tokens(http, stack, org)
    await seed_lines(http, stack, tokens["finance"])
    admin = await stepped_up(http, stack.auth.url, org.email("admin"))
    body = {"confirm": str(org.id)}

    status, problem, _ = await call(http, "DELETE", delete_url(stack, org.id), token=admin.token, json=body)
    assert (status, problem["code"]) == (502, "upstream_unavailable"), problem
    assert problem["deleted"]["auth_erased"] is False and problem["deleted"]["counts"]["bank_lines"] == 2
    assert "again" in problem["detail"]
    assert not await raw_lines(database_url, org.id)
    # The users can still log in until auth's part is done: it is the retry's.
    status, _, _ = await call(
        http, "POST", f"{stack.auth.url}/auth/login", json={"email": org.email("analyst"), "password": PASSWORD}
    )
    assert status == 200

    healthy = start_core(start_service, database_url)
    status, answer, _ = await call(http, "DELETE", delete_url(healthy, org.id), token=admin.token, json=body)
    assert status == 200, answer
    assert answer["auth_erased"] is True and answer["counts"] == problem["deleted"]["counts"]
    status, _, _ = await call(
        http, "POST", f"{stack.auth.url}/auth/login", json={"email": org.email("analyst"), "password": PASSWORD}
    )
    assert status == 401
    rows, ok = await chain(database_url, org.id)
    assert ok and [row.action for row in rows].count("admin.org.delete") == 1


async def test_internal_alerts_need_core_read_and_page_without_notes(
    stack: CoreStack, org: Org, other_org: Org, http: aiohttp.ClientSession
) -> None:
    from test_auth_internal import service_token

    for n in range(3):
        await insert_alert(stack.database_url, org.id, severity="HIGH", resolved=n == 0, detail={"n": str(n)})
    await insert_alert(stack.database_url, other_org.id)
    url = f"{stack.core.url}/internal/orgs/{org.id}/alerts"
    for service in ("core",):
        token = await service_token(http, stack.auth, service)
        status, problem, _ = await call(http, "GET", url, token=token)
        assert (status, problem["code"]) == (403, "forbidden"), service
    user = (await role_tokens(http, stack, org))["admin"]
    status, problem, _ = await call(http, "GET", url, token=user)
    assert (status, problem["code"]) == (401, "invalid_token")

    token = await service_token(http, stack.auth, "regulator")
    items: list[dict[str, Any]] = []
    params = {"limit": "2"}
    while True:
        status, page, _ = await call(http, "GET", url, token=token, params=params)
        assert status == 200, page
        items += page["items"]
        if page["next_cursor"] is None:
            break
        params["cursor"] = page["next_cursor"]
    assert sorted(item["detail"]["n"] for item in items) == ["0", "1", "2"]
    assert all(item["resolution_note"] is None for item in items)
    status, page, _ = await call(http, "GET", url, token=token, params={"status": "open"})
    assert status == 200 and len(page["items"]) == 2
    other_url = f"{stack.core.url}/internal/orgs/{other_org.id}/alerts"
    status, problem, _ = await call(http, "GET", other_url, token=token, params={"cursor": params["cursor"]})
    assert (status, problem["code"]) == (400, "invalid_query"), "another org's cursor"
