"""POST /bank-lines/import through real auth and core processes (and the proxy): all or nothing, per-row errors,
roles, idempotency, and the 5 MiB and 10,000-row limits."""

from __future__ import annotations

import asyncio
import io
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
from auth_support import Org, call
from core_support import (
    CoreStack,
    StartService,
    connect,
    get_lines,
    line_count,
    new_line,
    pii_cipher,
    raw_lines,
    role_tokens,
    start_core,
)

from services.core.imports import MAX_BODY_BYTES, MAX_ROWS
from services.core.store import BANK_LINES_TABLE
from shared.audit import verify_org

pytestmark = pytest.mark.e2e

HEADER = "date,amount,payee,description,gst_amount,paygw_amount\n"
CSV = {"content-type": "text/csv"}
# A test-only trigger that refuses one amount: COPY fires row triggers, so the row carrying it fails mid-import.
POISON_AMOUNT = "7777777.77"
REFUSE_POISON_ROWS = f"""
CREATE FUNCTION core.test_refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.amount = {POISON_AMOUNT} THEN RAISE EXCEPTION 'poison row refused by the test'; END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER test_refuse_poison BEFORE INSERT ON core.bank_lines
    FOR EACH ROW EXECUTE FUNCTION core.test_refuse_poison();
"""


def csv_row(index: int, *, amount: str | None = None, description: str = "") -> str:
    """Row `index` (0-based) of a generated file: dates spread over 2024-2025, amounts unique per row."""
    day = f"{2024 + index % 2}-{1 + index % 12:02d}-{1 + index % 28:02d}"
    cents = 100 + index
    shown = amount or f"{cents // 100}.{cents % 100:02d}"
    return f'{day},{shown},"Payee {index}, Pty Ltd",{description or f"Invoice {index}"},0.00,0.00\r\n'


def csv_file(rows: int, poison: dict[int, str] | None = None) -> bytes:
    """`rows` rows; `poison={index: amount}` puts `amount` on the rows at those indexes."""
    bad = poison or {}
    return (HEADER + "".join(csv_row(i, amount=bad.get(i)) for i in range(rows))).encode()


async def post_import(
    http: aiohttp.ClientSession,
    url: str,
    token: str,
    body: bytes,
    *,
    headers: dict[str, str] | None = None,
    key: str | None = None,
) -> tuple[int, Any, Any]:
    sent = {**CSV, **(headers or {}), **({"idempotency-key": key} if key else {})}
    # A file object: aiohttp warns (an error here) when it is given more than 1 MiB of bytes at once.
    return await call(http, "POST", f"{url}/bank-lines/import", token=token, data=io.BytesIO(body), headers=sent)


async def import_records(database_url: str, org_id: uuid.UUID) -> list[dict[str, Any]]:
    async with connect(database_url) as conn:
        rows = await conn.fetch(
            "SELECT actor, target, detail::text AS detail FROM audit.records "
            "WHERE org_id = $1 AND action = 'bank_lines.import' ORDER BY seq",
            org_id,
        )
    return [{"actor": r["actor"], "target": r["target"], "detail": orjson.loads(r["detail"])} for r in rows]


async def started(
    start_service: StartService, database_url: str, http: aiohttp.ClientSession, org: Org
) -> tuple[CoreStack, dict[str, str]]:
    stack = start_core(start_service, database_url)
    return stack, await role_tokens(http, stack, org)


async def test_ten_thousand_csv_rows_import_in_one_request_and_read_back(
    start_service: StartService, database_url: str, org: Org, http: aiohttp.ClientSession
) -> None:
    stack, tokens = await started(start_service, database_url, http, org)
    body = csv_file(MAX_ROWS)
    began = time.perf_counter()
    status, answer, _ = await post_import(http, stack.core.url, tokens["finance"], body)
    elapsed = time.perf_counter() - began
    print(f"\n10,000-row CSV import ({len(body)} bytes): {elapsed:.2f} s")
    assert status == 201, answer
    cents = sum(100 + i for i in range(MAX_ROWS))
    totals = {"amount": f"{cents // 100}.{cents % 100:02d}", "gst_amount": "0.00", "paygw_amount": "0.00"}
    assert answer == {
        "import_id": answer["import_id"],
        "imported": MAX_ROWS,
        "totals": totals,
        "first_date": "2024-01-01",
        "last_date": "2025-12-28",
    }
    assert await line_count(database_url) == MAX_ROWS

    # Readable through the API: the newest page holds the newest dates, decrypted.
    status, page, _ = await get_lines(http, stack, tokens["analyst"], {"limit": "200"})
    assert status == 200, page
    assert len(page["items"]) == 200 and page["next_cursor"] is not None
    newest = page["items"][0]
    assert newest["date"] == "2025-12-28"
    index = int(newest["payee"].removeprefix("Payee ").removesuffix(", Pty Ltd"))
    assert csv_row(index).startswith(f"2025-12-28,{newest['amount']},")
    assert newest["description"] == f"Invoice {index}"
    assert newest["created_by"] == f"user:{org.users['finance'].id}"

    # Stored sealed, each value bound to its own row.
    stored = await raw_lines(database_url, org.id)
    assert len(stored) == MAX_ROWS and len({line.id for line in stored}) == MAX_ROWS
    async with pii_cipher(database_url) as cipher:
        sample = stored[:50]
        payees = await cipher.decrypt_many(
            org.id, BANK_LINES_TABLE, "payee", [s.payee for s in sample], row_ids=[str(s.id) for s in sample]
        )
    assert all(p.startswith("Payee ") for p in payees)
    assert all(b"Payee" not in line.payee for line in stored)

    # One audit record for the whole import, with no PII, and the chain holds.
    (record,) = await import_records(database_url, org.id)
    assert record["actor"] == f"user:{org.users['finance'].id}"
    assert record["target"] == f"bank_line_import:{answer['import_id']}"
    assert record["detail"] == {k: v for k, v in answer.items() if k not in ("import_id", "imported")} | {
        "count": MAX_ROWS
    }
    async with connect(database_url) as conn:
        assert (await verify_org(conn, org.id)).ok


async def test_json_lines_import_too(
    start_service: StartService, database_url: str, org: Org, http: aiohttp.ClientSession
) -> None:
    stack, tokens = await started(start_service, database_url, http, org)
    lines = [
        {"date": "2025-03-01", "amount": "-55.00", "payee": "Telstra", "description": "Phone", "gst_amount": "-5.00"},
        {"date": "2025-03-02", "amount": "1000.00", "payee": "Payroll", "description": "", "paygw_amount": "200.00"},
    ]
    body = b"\n".join(orjson.dumps(line) for line in lines)
    status, answer, _ = await post_import(
        http, stack.core.url, tokens["admin"], body, headers={"content-type": "application/x-ndjson"}
    )
    assert status == 201, answer
    assert answer["imported"] == 2
    assert answer["totals"] == {"amount": "945.00", "gst_amount": "-5.00", "paygw_amount": "200.00"}
    status, page, _ = await get_lines(http, stack, tokens["admin"])
    assert [(i["payee"], i["amount"]) for i in page["items"]] == [("Payroll", "1000.00"), ("Telstra", "-55.00")]


async def test_a_bad_row_is_422_with_its_row_field_and_code_and_nothing_is_written(
    start_service: StartService, database_url: str, org: Org, http: aiohttp.ClientSession
) -> None:
    stack, tokens = await started(start_service, database_url, http, org)
    body = csv_file(500, poison={41: "12.345", 299: "NaN"}).replace(b"Payee 7, Pty Ltd", b"")
    status, problem, headers = await post_import(http, stack.core.url, tokens["finance"], body)
    assert status == 422, problem
    assert headers["content-type"] == "application/problem+json"
    assert problem["code"] == "invalid_rows" and problem["error_count"] == 3
    assert [(e["row"], e["field"], e["code"]) for e in problem["errors"]] == [
        (8, "payee", "empty"),
        (42, "amount", "invalid_money"),
        (300, "amount", "invalid_money"),
    ]
    assert all(e["message"] for e in problem["errors"])
    assert await line_count(database_url) == 0
    assert await import_records(database_url, org.id) == []


async def test_a_file_refused_as_a_whole_names_the_column(
    start_service: StartService, database_url: str, org: Org, http: aiohttp.ClientSession
) -> None:
    stack, tokens = await started(start_service, database_url, http, org)
    url, token = stack.core.url, tokens["finance"]
    missing = b"date,amount,payee\n2025-01-01,1.00,ATO\n"
    status, problem, _ = await post_import(http, url, token, missing)
    assert status == 422, problem
    assert (status, problem["errors"]) == (
        422,
        [{"row": 0, "field": "description", "code": "missing_column", "message": problem["errors"][0]["message"]}],
    )
    status, problem, _ = await post_import(http, url, token, b"\xef\xbb\xbf" + csv_file(1))
    assert (status, [e["code"] for e in problem["errors"]]) == (422, ["bom"])
    status, problem, _ = await post_import(http, url, token, csv_file(1), headers={"content-type": "application/json"})
    assert (status, problem["code"]) == (415, "unsupported_media_type")
    assert await line_count(database_url) == 0


async def test_a_failure_at_row_9999_leaves_no_row_and_no_audit_record(
    start_service: StartService, database_url: str, org: Org, http: aiohttp.ClientSession
) -> None:
    async with connect(database_url) as conn:
        await conn.execute(REFUSE_POISON_ROWS)
    stack, tokens = await started(start_service, database_url, http, org)
    body = csv_file(MAX_ROWS, poison={9_998: POISON_AMOUNT})  # the 9,999th row
    status, problem, _ = await post_import(http, stack.core.url, tokens["finance"], body, key="poisoned-import")
    assert status == 500, problem
    assert problem["code"] == "internal_error"
    assert "poison" not in orjson.dumps(problem).decode()
    assert await line_count(database_url) == 0
    assert await import_records(database_url, org.id) == []
    async with connect(database_url) as conn:
        # Nothing of the request's transaction is left: no audit record at all, no idempotency record.
        assert await conn.fetchval("SELECT count(*) FROM audit.records WHERE org_id = $1", org.id) == 0
        assert await conn.fetchval("SELECT count(*) FROM idempotency.records WHERE key = 'poisoned-import'") == 0
    # The same file without the poisoned row goes in whole.
    status, answer, _ = await post_import(http, stack.core.url, tokens["finance"], csv_file(MAX_ROWS))
    assert (status, answer["imported"]) == (201, MAX_ROWS)
    assert await line_count(database_url) == MAX_ROWS


@pytest.mark.parametrize("role", ["analyst", "auditor"])
async def test_roles_outside_admin_and_finance_are_403(
    start_service: StartService, database_url: str, org: Org, http: aiohttp.ClientSession, role: str
) -> None:
    stack, tokens = await started(start_service, database_url, http, org)
    status, problem, _ = await post_import(http, stack.core.url, tokens[role], csv_file(3))
    assert (status, problem["code"]) == (403, "forbidden")
    status, _, _ = await post_import(http, stack.core.url, "", csv_file(3))
    assert status == 401
    assert await line_count(database_url) == 0


async def test_a_replay_with_the_same_key_imports_once(
    start_service: StartService, database_url: str, org: Org, http: aiohttp.ClientSession
) -> None:
    stack, tokens = await started(start_service, database_url, http, org)
    url, token, body = stack.core.url, tokens["finance"], csv_file(250)
    first = await post_import(http, url, token, body, key="import-2025-07")
    again = await post_import(http, url, token, body, key="import-2025-07")
    assert first[0] == again[0] == 201
    assert first[1] == again[1]
    assert "idempotent-replay" not in first[2] and again[2]["idempotent-replay"] == "true"
    assert await line_count(database_url) == 250
    assert len(await import_records(database_url, org.id)) == 1
    # Another file under the same key is a conflict, not a replay.
    status, problem, _ = await post_import(http, url, token, csv_file(251), key="import-2025-07")
    assert (status, problem["code"]) == (409, "idempotency_conflict")
    assert await line_count(database_url) == 250


async def test_more_than_ten_thousand_rows_or_five_mib_is_413(
    start_service: StartService, database_url: str, org: Org, http: aiohttp.ClientSession
) -> None:
    stack, tokens = await started(start_service, database_url, http, org)
    url, token = stack.core.url, tokens["finance"]
    status, problem, _ = await post_import(http, url, token, csv_file(MAX_ROWS + 1))
    assert (status, problem["code"]) == (413, "payload_too_large")
    assert "10000 rows" in problem["detail"]
    status, problem, _ = await post_import(http, url, token, padded_csv(MAX_BODY_BYTES + 1))
    assert (status, problem["code"]) == (413, "payload_too_large")
    assert await line_count(database_url) == 0


def padded_csv(size: int, rows: int = MAX_ROWS) -> bytes:
    """A valid CSV of exactly `size` bytes (the descriptions padded), `rows` rows."""
    plain = [csv_row(i) for i in range(rows)]
    extra = size - len(HEADER) - sum(len(r) for r in plain)
    each, rest = divmod(extra, rows)
    body = HEADER + "".join(
        csv_row(i, description=f"Invoice {i} " + "x" * (each + (1 if i < rest else 0) - 1)) for i in range(rows)
    )
    encoded = body.encode()
    assert len(encoded) == size
    return encoded


async def test_through_the_proxy_five_mib_is_accepted_and_one_byte_more_is_413(
    start_service: StartService, database_url: str, org: Org, http: aiohttp.ClientSession
) -> None:
    stack, tokens = await started(start_service, database_url, http, org)
    proxy = start_service(
        "api-gateway",
        {"UPSTREAM_CORE_URLS": stack.core.url, "UPSTREAM_AUTH_URLS": stack.auth.url},
        module="proxy",
    )
    token = tokens["finance"]
    status, problem, _ = await post_import(http, proxy.url, token, padded_csv(MAX_BODY_BYTES + 1))
    assert (status, problem["code"]) == (413, "payload_too_large")
    assert "/bank-lines/import" in problem["detail"]  # the proxy's answer: core never saw the body
    status, answer, _ = await post_import(http, proxy.url, token, padded_csv(MAX_BODY_BYTES))
    assert status == 201, answer
    assert answer["imported"] == MAX_ROWS
    assert await line_count(database_url) == MAX_ROWS


async def test_an_org_whose_key_was_destroyed_cannot_import(
    start_service: StartService, database_url: str, org: Org, http: aiohttp.ClientSession
) -> None:
    async with pii_cipher(database_url) as cipher:
        await cipher.encrypt(org.id, BANK_LINES_TABLE, "payee", "make the key")
        assert await cipher.destroy(org.id) == 1
    stack, tokens = await started(start_service, database_url, http, org)
    status, problem, _ = await post_import(http, stack.core.url, tokens["admin"], csv_file(3))
    assert (status, problem["code"]) == (409, "conflict")
    assert await line_count(database_url) == 0
    assert await import_records(database_url, org.id) == []


async def test_totals_past_twelve_integer_digits_import_with_the_exact_sum(
    start_service: StartService, database_url: str, org: Org, http: aiohttp.ClientSession
) -> None:
    """Each line is within the amount's twelve integer digits; their sum need not be, and is still written."""
    stack, tokens = await started(start_service, database_url, http, org)
    largest = "999999999999.99"
    body = (HEADER + "".join(f"2025-01-0{day},{largest},ATO,Big,0.00,{largest}\n" for day in (1, 2))).encode()
    status, answer, _ = await post_import(http, stack.core.url, tokens["finance"], body)
    assert status == 201, answer
    totals = {"amount": "1999999999999.98", "gst_amount": "0.00", "paygw_amount": "1999999999999.98"}
    assert (answer["imported"], answer["totals"]) == (2, totals)
    (record,) = await import_records(database_url, org.id)
    assert record["detail"]["totals"] == totals
    assert await line_count(database_url) == 2


async def test_a_key_destroyed_by_another_process_while_core_has_it_cached_refuses_post_and_import(
    start_service: StartService, database_url: str, org: Org, http: aiohttp.ClientSession
) -> None:
    """Core caches the org's data key after its first line; another process (a PiiCipher of the test's own) then
    destroys it. The next POST and import still seal under the cached key, and are refused (409) by the key's
    share lock in their transaction: nothing is stored under a key nobody can open."""
    stack, tokens = await started(start_service, database_url, http, org)
    token = tokens["finance"]
    status, created, _ = await call(http, "POST", stack.lines_url, token=token, json=new_line())
    assert status == 201, created  # core now holds the org's key in its cache
    async with pii_cipher(database_url) as other_process:
        assert await other_process.destroy(org.id) == 1
    status, problem, _ = await call(http, "POST", stack.lines_url, token=token, json=new_line())
    assert (status, problem["code"]) == (409, "conflict"), problem
    status, problem, _ = await post_import(http, stack.core.url, token, csv_file(3), key="after-destroy")
    assert (status, problem["code"]) == (409, "conflict"), problem
    assert await line_count(database_url) == 1
    assert await import_records(database_url, org.id) == []
    async with connect(database_url) as conn:
        actions = await conn.fetch("SELECT action FROM audit.records WHERE org_id = $1 ORDER BY seq", org.id)
        assert [row["action"] for row in actions] == ["bank_line.create"]
        assert await conn.fetchval("SELECT count(*) FROM idempotency.records WHERE key = 'after-destroy'") == 0
    # Core forgot the key when the write was refused: the list says the PII is gone at once.
    status, page, _ = await get_lines(http, stack, tokens["analyst"])
    assert (status, page["pii_destroyed"]) == (200, True), page


async def test_imports_past_the_concurrency_bound_are_503_with_retry_after_and_write_nothing(
    start_service: StartService, database_url: str, org: Org, http: aiohttp.ClientSession
) -> None:
    """With 2 slots and a short wait: two imports whose bodies are still arriving hold both slots (a slot is taken
    before the body is read), so a third is refused with 503 and Retry-After once the wait is over, having read and
    written nothing; the two finish with 201, and the third goes in when retried."""
    slots, wait_s = 2, 0.3
    stack = start_core(
        start_service,
        database_url,
        env={"CORE_MAX_CONCURRENT_IMPORTS": str(slots), "CORE_IMPORT_WAIT_S": str(wait_s)},
    )
    token = (await role_tokens(http, stack, org))["finance"]
    url = f"{stack.core.url}/bank-lines/import"
    body = csv_file(1_000)
    release = asyncio.Event()

    async def held_open() -> AsyncIterator[bytes]:
        yield body[:100]
        await release.wait()
        yield body[100:]

    async def slow_import() -> tuple[int, Any, Any]:
        headers = {**CSV, "authorization": f"Bearer {token}"}
        async with http.post(url, data=held_open(), headers=headers) as response:
            return response.status, await response.json(content_type=None), response.headers.copy()

    holders = [asyncio.create_task(slow_import()) for _ in range(slots)]
    await asyncio.sleep(1.0)  # both requests are in core, each holding a slot while it reads its body
    status, problem, headers = await post_import(http, stack.core.url, token, csv_file(3), key="while-busy")
    assert (status, problem["code"]) == (503, "service_unavailable"), problem
    assert headers["retry-after"] == "1"
    assert "imports in progress" in problem["detail"]
    assert await line_count(database_url) == 0
    release.set()
    for status, answer, _ in await asyncio.gather(*holders):
        assert (status, answer["imported"]) == (201, 1_000), answer
    assert await line_count(database_url) == 2 * 1_000
    async with connect(database_url) as conn:
        assert await conn.fetchval("SELECT count(*) FROM idempotency.records WHERE key = 'while-busy'") == 0
    status, answer, _ = await post_import(http, stack.core.url, token, csv_file(3), key="while-busy")
    assert (status, answer["imported"]) == (201, 3), answer
    assert await line_count(database_url) == 2 * 1_000 + 3
    assert len(await import_records(database_url, org.id)) == 3


async def test_an_import_that_finds_the_slots_taken_waits_for_one_within_the_wait(
    start_service: StartService, database_url: str, org: Org, http: aiohttp.ClientSession
) -> None:
    stack = start_core(
        start_service, database_url, env={"CORE_MAX_CONCURRENT_IMPORTS": "1", "CORE_IMPORT_WAIT_S": "30"}
    )
    token = (await role_tokens(http, stack, org))["finance"]
    results = await asyncio.gather(*(post_import(http, stack.core.url, token, csv_file(2_000)) for _ in range(3)))
    assert [status for status, _, _ in results] == [201, 201, 201]
    assert await line_count(database_url) == 3 * 2_000
