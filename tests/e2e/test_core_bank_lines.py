"""GET and POST /bank-lines through real auth and core processes: PII sealed at rest and plain through the API,
idempotent creates under concurrency, keyset pages with cursors bound to org and filters, the org walls, the roles
of SPEC's table, every bad input refused naming its field with nothing written, and the audit chain."""

from __future__ import annotations

import asyncio
import re
import uuid
from typing import Any

import aiohttp
import pytest
from auth_support import Org, call
from core_support import (
    SESSION_KEK,
    CoreStack,
    StartService,
    connect,
    get_lines,
    line_count,
    new_line,
    pii_cipher,
    post_line,
    raw_lines,
    role_tokens,
    start_core,
    walk_pages,
)
from test_proxy import start_proxy

from shared.audit import records, verify_org
from shared.pii import CiphertextInvalid, KeyDestroyed

pytestmark = pytest.mark.e2e

CONCURRENT_POSTS = 50


@pytest.fixture
def stack(start_service: StartService, database_url: str) -> CoreStack:
    return start_core(start_service, database_url)


async def create_lines(http: aiohttp.ClientSession, stack: CoreStack, token: str, count: int) -> list[dict[str, Any]]:
    """`count` lines over a few dates (so ids break ties), amounts 1.00, 2.00, ..., count.00."""
    created = []
    for n in range(1, count + 1):
        body = new_line(date=f"2025-0{1 + n % 3}-1{n % 2}", amount=f"{n}.00", gst_amount="0.00", payee=f"Payee {n}")
        status, line, _ = await post_line(http, stack, token, body)
        assert status == 201, line
        created.append(line)
    return created


def newest_first(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(lines, key=lambda line: (line["date"], uuid.UUID(line["id"])), reverse=True)


async def test_a_posted_line_is_listed_and_read_with_its_payee(
    stack: CoreStack, org: Org, http: aiohttp.ClientSession
) -> None:
    tokens = await role_tokens(http, stack, org)
    status, created, headers = await post_line(http, stack, tokens["finance"], new_line())
    assert status == 201, created
    assert headers["location"] == f"/bank-lines/{created['id']}"
    assert created["payee"] == "Bunnings Warehouse" and created["amount"] == "-110.00"
    assert created["gst_amount"] == "-10.00" and created["paygw_amount"] == "0.00"
    assert created["date"] == "2025-07-01"
    assert created["created_by"] == f"user:{org.users['finance'].id}"
    status, page, _ = await get_lines(http, stack, tokens["analyst"])
    assert status == 200, page
    assert page == {"items": [created], "next_cursor": None, "pii_destroyed": False}
    status, one, _ = await call(http, "GET", f"{stack.core.url}{headers['location']}", token=tokens["admin"])
    assert (status, one) == (200, created)


async def test_payee_and_description_are_ciphertext_in_the_table_and_open_only_for_their_org(
    stack: CoreStack, org: Org, other_org: Org, http: aiohttp.ClientSession, start_service: StartService
) -> None:
    tokens = await role_tokens(http, stack, org)
    status, created, _ = await post_line(
        http, stack, tokens["admin"], new_line(payee="Acme Pty Ltd", description="Rent")
    )
    assert status == 201, created
    (row,) = await raw_lines(stack.database_url, org.id)
    assert str(row.id) == created["id"]
    assert b"Acme" not in row.payee and b"Rent" not in row.description
    async with pii_cipher(stack.database_url) as cipher:
        assert await cipher.decrypt(org.id, "bank_lines", "payee", row.payee, row_id=str(row.id)) == "Acme Pty Ltd"
        assert await cipher.decrypt(org.id, "bank_lines", "description", row.description, row_id=str(row.id)) == "Rent"
        with pytest.raises(CiphertextInvalid):  # another org's key, or another row's binding
            await cipher.decrypt(other_org.id, "bank_lines", "payee", row.payee, row_id=str(row.id))
        with pytest.raises(CiphertextInvalid):
            await cipher.decrypt(org.id, "bank_lines", "payee", row.payee, row_id=str(uuid.uuid4()))

        # Crypto-shredding: once the org's data key is destroyed, nothing opens its payees, here or in core.
        assert await cipher.destroy(org.id) == 1
        with pytest.raises(KeyDestroyed):
            await cipher.decrypt(org.id, "bank_lines", "payee", row.payee, row_id=str(row.id))
    # A core process that never cached the key (the first may keep it for up to shared.pii.DEK_CACHE_TTL_S).
    fresh = start_service("core", {"AUTH_URL": stack.auth.url, "APGMS_KEK": SESSION_KEK})
    status, page, _ = await call(http, "GET", f"{fresh.url}/bank-lines", token=tokens["analyst"])
    assert status == 200, page
    assert page["pii_destroyed"] is True
    (item,) = page["items"]
    assert (item["id"], item["payee"], item["description"], item["amount"]) == (created["id"], None, None, "-110.00")
    status, one, _ = await call(http, "GET", f"{fresh.url}/bank-lines/{created['id']}", token=tokens["analyst"])
    assert (status, one["payee"], one["description"]) == (200, None, None)
    status, problem, _ = await call(http, "POST", f"{fresh.url}/bank-lines", token=tokens["admin"], json=new_line())
    assert (status, problem["code"]) == (409, "conflict"), problem
    assert await line_count(stack.database_url) == 1
    assert not [line for line in fresh.output() if "unhandled_error" in line or "Traceback" in line]


async def test_concurrent_identical_posts_with_one_key_create_one_line_and_identical_answers(
    stack: CoreStack, org: Org, http: aiohttp.ClientSession
) -> None:
    token = (await role_tokens(http, stack, org))["finance"]
    body = new_line(payee="Telstra", amount="-88.00", gst_amount="-8.00")
    answers = await asyncio.gather(
        *(post_line(http, stack, token, body, key="one-key-for-all") for _ in range(CONCURRENT_POSTS))
    )
    statuses = {status for status, _, _ in answers}
    assert statuses == {201}, [problem for status, problem, _ in answers if status != 201][:3]
    assert len({str(line) for _, line, _ in answers}) == 1
    assert len({headers["location"] for _, _, headers in answers}) == 1
    assert sum(headers.get("idempotent-replay") == "true" for _, _, headers in answers) == CONCURRENT_POSTS - 1
    assert await line_count(stack.database_url) == 1
    status, problem, _ = await post_line(http, stack, token, {**body, "amount": "-89.00"}, key="one-key-for-all")
    assert (status, problem["code"]) == (409, "idempotency_conflict")
    assert await line_count(stack.database_url) == 1


async def test_walking_the_pages_returns_every_line_once_newest_first_within_the_filters(
    stack: CoreStack, org: Org, http: aiohttp.ClientSession
) -> None:
    token = (await role_tokens(http, stack, org))["finance"]
    created = await create_lines(http, stack, token, 23)
    assert await walk_pages(http, stack, token, {"limit": "5"}) == newest_first(created)
    filters = {"from": "2025-02-10", "to": "2025-03-10", "min_amount": "3.00", "max_amount": "20.00", "limit": "2"}
    expected = [
        line
        for line in newest_first(created)
        if "2025-02-10" <= line["date"] <= "2025-03-10" and 3 <= float(line["amount"]) <= 20  # test-only comparison
    ]
    assert 2 < len(expected) < len(created)
    assert await walk_pages(http, stack, token, filters) == expected

    status, first, _ = await get_lines(http, stack, token, filters)
    assert status == 200 and first["next_cursor"]
    # The cursor holds the filters it was made for: with others it is refused, as garbage is.
    for changed in ({**filters, "min_amount": "2.00"}, {**filters, "from": "2025-02-09"}, {"limit": "2"}):
        status, problem, _ = await get_lines(http, stack, token, {**changed, "cursor": first["next_cursor"]})
        assert (status, problem["code"], problem["errors"][0]["path"]) == (400, "invalid_query", "cursor"), problem
    # ...but the limit may change from page to page.
    status, page, _ = await get_lines(http, stack, token, {**filters, "limit": "50", "cursor": first["next_cursor"]})
    assert status == 200 and page["items"] == expected[2:]


async def test_a_user_of_one_org_never_sees_or_detects_another_orgs_lines(
    stack: CoreStack, org: Org, other_org: Org, http: aiohttp.ClientSession
) -> None:
    ours, theirs = await role_tokens(http, stack, org), await role_tokens(http, stack, other_org)
    their_lines = await create_lines(http, stack, theirs["finance"], 4)
    _, mine, _ = await post_line(http, stack, ours["finance"], new_line())
    status, their_page, _ = await get_lines(http, stack, theirs["finance"], {"limit": "2"})
    assert status == 200 and their_page["next_cursor"]
    their_ids = {line["id"] for line in their_lines}

    # Every filter, alone and together, shows our line only.
    for params in (
        {},
        {"from": "1900-01-01"},
        {"to": "2027-12-31"},
        {"min_amount": "-999999999999.99"},
        {"max_amount": "999999999999.99"},
        {"from": "1900-01-01", "to": "2027-12-31", "min_amount": "-999999999999.99", "max_amount": "999999999999.99"},
        {"limit": "200"},
    ):
        for role in ("admin", "finance", "analyst"):
            status, page, _ = await get_lines(http, stack, ours[role], params)
            assert status == 200, page
            assert [item["id"] for item in page["items"]] == [mine["id"]], params

    # Their cursor is refused exactly like garbage: same status, code and body but the request id.
    status, theirs_cursor, _ = await get_lines(
        http, stack, ours["finance"], {"cursor": their_page["next_cursor"], "limit": "2"}
    )
    status_garbage, garbage, _ = await get_lines(http, stack, ours["finance"], {"cursor": "A" * 50, "limit": "2"})
    assert (status, status_garbage) == (400, 400)
    assert {**theirs_cursor, "request_id": None} == {**garbage, "request_id": None}

    # Their line's id is 404 exactly like an id that does not exist.
    for line_id in (their_lines[0]["id"], str(uuid.uuid4())):
        status, problem, _ = await call(http, "GET", f"{stack.lines_url}/{line_id}", token=ours["analyst"])
        assert (status, problem["code"]) == (404, "not_found")
    status, problem, _ = await call(http, "GET", f"{stack.lines_url}/not-a-uuid", token=ours["analyst"])
    assert (status, problem["code"]) == (404, "not_found")

    # An org id in the body or the query is refused, never followed.
    status, problem, _ = await post_line(http, stack, ours["finance"], new_line(org_id=str(other_org.id)))
    assert (status, problem["errors"][0]["path"]) == (400, "org_id")
    status, problem, _ = await get_lines(http, stack, ours["finance"], {"org_id": str(other_org.id)})
    assert (status, problem["errors"][0]["path"]) == (400, "org_id")

    # Reusing their idempotency key is our own key: it creates our line, it does not replay theirs.
    _, theirs_created, _ = await post_line(http, stack, theirs["finance"], new_line(payee="Theirs"), key="shared-key")
    status, ours_created, headers = await post_line(
        http, stack, ours["finance"], new_line(payee="Ours"), key="shared-key"
    )
    assert status == 201 and "idempotent-replay" not in headers
    assert ours_created["payee"] == "Ours" and ours_created["id"] != theirs_created["id"]
    assert not their_ids & {item["id"] for item in await walk_pages(http, stack, ours["finance"])}


async def test_roles_outside_the_table_are_forbidden(stack: CoreStack, org: Org, http: aiohttp.ClientSession) -> None:
    tokens = await role_tokens(http, stack, org)
    _, line, _ = await post_line(http, stack, tokens["admin"], new_line())
    status, problem, _ = await get_lines(http, stack, tokens["auditor"])
    assert (status, problem["code"]) == (403, "forbidden")
    status, problem, _ = await call(http, "GET", f"{stack.lines_url}/{line['id']}", token=tokens["auditor"])
    assert (status, problem["code"]) == (403, "forbidden")
    for role in ("analyst", "auditor"):
        status, problem, _ = await post_line(http, stack, tokens[role], new_line())
        assert (status, problem["code"]) == (403, "forbidden"), role
    status, problem, _ = await get_lines(http, stack, "")
    assert (status, problem["code"]) == (401, "unauthorized")
    assert await line_count(stack.database_url) == 1


BAD_BODIES: list[tuple[Any, str]] = [
    (new_line(amount="1.005"), "amount"),
    ('{"date": "2025-07-01", "amount": 12.5, "payee": "P", "description": ""}', "amount"),
    (new_line(amount="NaN"), "amount"),
    (new_line(amount="1e309"), "amount"),
    (new_line(amount="1e3"), "amount"),
    (new_line(amount=110), "amount"),
    (new_line(payee=""), "payee"),
    (new_line(payee="x" * 10_240), "payee"),
    (new_line(payee=7), "payee"),
    (new_line(description="d" * 501), "description"),
    (new_line(date="2025-02-30"), "date"),
    (new_line(date="1899-12-31"), "date"),
    (new_line(date="2999-01-01"), "date"),
    (new_line(date="01/07/2025"), "date"),
    (new_line(gst_amount="10.00"), "gst_amount"),
    (new_line(paygw_amount="-1.00"), "paygw_amount"),
    (new_line(extra="field"), "extra"),
    (new_line(payee=None), "payee"),
]


async def test_each_bad_body_is_a_problem_naming_its_field_and_writes_nothing(
    stack: CoreStack, org: Org, http: aiohttp.ClientSession
) -> None:
    token = (await role_tokens(http, stack, org))["finance"]
    for body, field in BAD_BODIES:
        status, problem, headers = await post_line(http, stack, token, body, key=f"bad-{field}")
        assert (status, problem["code"]) == (400, "invalid_body"), (body, problem)
        assert headers["content-type"] == "application/problem+json"
        assert field in [error["path"] for error in problem["errors"]], (field, problem)
    # Bodies that are not a JSON object of the line.
    for body in ("{not json", "[]"):
        status, problem, _ = await post_line(http, stack, token, body)
        assert (status, problem["code"]) == (400, "invalid_body"), problem
    # Numbers JSON parsers cannot hold (orjson refuses the document): the problem still names the field.
    for number in ("1e309", "NaN", "-Infinity", "123456789012345678901234567890"):
        body = f'{{"date": "2025-07-01", "amount": {number}, "payee": "P", "description": ""}}'
        status, problem, _ = await post_line(http, stack, token, body)
        assert (status, problem["code"]) == (400, "invalid_body"), problem
        assert [error["path"] for error in problem["errors"]] == ["amount"], problem
    status, problem, _ = await call(
        http, "POST", stack.lines_url, token=token, data="date=2025-07-01", headers={"content-type": "text/plain"}
    )
    assert (status, problem["code"]) == (415, "unsupported_media_type")
    assert await line_count(stack.database_url) == 0
    async with connect(stack.database_url) as conn:
        assert await conn.fetchval("SELECT count(*) FROM audit.records WHERE org_id = $1", org.id) == 0
        assert await conn.fetchval("SELECT count(*) FROM idempotency.records WHERE org_id = $1", org.id) == 0
    # A refused body left its key free: the corrected request under it goes through.
    status, created, _ = await post_line(http, stack, token, new_line(), key="bad-amount")
    assert status == 201, created


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "201"}, "limit"),
        ({"limit": "abc"}, "limit"),
        ({"limit": "+5"}, "limit"),
        ({"limit": " 5"}, "limit"),
        ({"limit": "1_0"}, "limit"),
        ({"limit": "5.0"}, "limit"),
        ({"from": "2025-02-30"}, "from"),
        ({"to": "1899-12-31"}, "to"),
        ({"min_amount": "1.5"}, "min_amount"),
        ({"max_amount": "NaN"}, "max_amount"),
        ({"cursor": "x"}, "cursor"),
        ({"sort": "amount"}, "sort"),
    ],
)
async def test_each_bad_query_is_a_problem_naming_its_parameter_and_audits_nothing(
    stack: CoreStack, org: Org, http: aiohttp.ClientSession, params: dict[str, str], field: str
) -> None:
    token = (await role_tokens(http, stack, org))["analyst"]
    status, problem, _ = await get_lines(http, stack, token, params)
    assert (status, problem["code"]) == (400, "invalid_query"), problem
    assert [error["path"] for error in problem["errors"]] == [field]
    async with connect(stack.database_url) as conn:
        assert await conn.fetchval("SELECT count(*) FROM audit.records WHERE org_id = $1", org.id) == 0


async def test_one_audit_record_per_page_read_and_per_create_and_the_chain_verifies(
    stack: CoreStack, org: Org, http: aiohttp.ClientSession
) -> None:
    tokens = await role_tokens(http, stack, org)
    created = await create_lines(http, stack, tokens["finance"], 3)
    pages = await walk_pages(http, stack, tokens["analyst"], {"limit": "2", "min_amount": "1.00"})
    assert len(pages) == 3
    status, read, _ = await call(http, "GET", f"{stack.lines_url}/{created[0]['id']}", token=tokens["admin"])
    assert (status, read["id"]) == (200, created[0]["id"]), read
    async with connect(stack.database_url) as conn:
        chain = [record async for record in records(conn, org.id)]
        assert (await verify_org(conn, org.id)).ok
    assert [record.action for record in chain] == [
        *["bank_line.create"] * 3,
        *["bank_lines.read"] * 2,
        "bank_line.read",
    ]
    for record, line in zip(chain[: len(created)], created, strict=True):
        assert record.target == f"bank_line:{line['id']}"
        assert record.actor == f"user:{org.users['finance'].id}"
        assert record.detail == {
            "id": line["id"],
            "date": line["date"],
            "amount": line["amount"],
            "gst_amount": "0.00",
            "paygw_amount": "0.00",
        }
    first, second = chain[3].detail, chain[4].detail
    assert first == {"count": 2, "filters": {"min_amount": "1.00"}, "first_page": True, "pii_destroyed": False}
    assert second == {"count": 1, "filters": {"min_amount": "1.00"}, "first_page": False, "pii_destroyed": False}
    assert chain[3].actor == f"user:{org.users['analyst'].id}"
    text = str([record.detail for record in chain])
    assert "Payee" not in text and "Timber" not in text


async def test_the_bank_lines_route_has_its_latency_histogram_in_cores_metrics(
    stack: CoreStack, org: Org, http: aiohttp.ClientSession
) -> None:
    token = (await role_tokens(http, stack, org))["analyst"]
    assert (await get_lines(http, stack, token))[0] == 200
    async with http.get(f"{stack.core.url}/metrics") as response:
        text = await response.text()
    pattern = r'^apgms_api_request_duration_seconds_count\{[^}]*route="/bank-lines"[^}]*\} ([0-9.]+)$'
    counts = re.findall(pattern, text, re.MULTILINE)
    assert counts and float(counts[0]) >= 1, text[:2000]
    assert re.search(r'^apgms_api_request_duration_seconds_bucket\{[^}]*route="/bank-lines"', text, re.MULTILINE)


async def test_through_the_proxy_lines_are_created_and_listed_and_the_proxy_times_the_route(
    start_service: StartService, stack: CoreStack, org: Org, http: aiohttp.ClientSession
) -> None:
    proxy = start_proxy(start_service, {"auth": [stack.auth.url], "core": [stack.core.url]})
    token = (await role_tokens(http, stack, org))["finance"]
    status, created, headers = await call(
        http, "POST", f"{proxy.url}/bank-lines", token=token, json=new_line(), headers={"idempotency-key": "via-proxy"}
    )
    assert status == 201, created
    assert headers["location"] == f"/bank-lines/{created['id']}"
    status, page, _ = await call(http, "GET", f"{proxy.url}/bank-lines", token=token, params={"limit": "1"})
    assert (status, page["items"]) == (200, [created])
    async with http.get(f"{proxy.url}/metrics") as response:
        text = await response.text()
    assert re.search(r'^apgms_api_request_duration_seconds_bucket\{[^}]*route="/bank-lines"', text, re.MULTILINE), [
        line for line in text.splitlines() if "duration" in line
    ][:10]
