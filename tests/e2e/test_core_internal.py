"""Core's internal read API through real processes: a real auth issues the service tokens, a real core answers
`GET /internal/orgs/{org_id}/bank-lines/summary` from lines written by core's own store (insert_line and COPY),
in JSON or msgpack, to services with `core:read` only, and the proxy never forwards it."""

from __future__ import annotations

import base64
import os
import uuid
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import aiohttp
import asyncpg
import msgpack
import orjson
import pytest
from auth_support import Org, call, login
from core_support import start_core
from test_proxy import start_proxy

from services.auth.oauth import create_client
from services.core.store import SealedLine, copy_lines, insert_line
from shared.config import service_client_id, service_client_secret_variable
from shared.context import current_request_id
from shared.service_client import ServiceClient

pytestmark = pytest.mark.e2e

MSGPACK = "application/msgpack"
SUMMARY = "/internal/orgs/{org}/bank-lines/summary"
Q3 = {"from": "2025-07-01", "to": "2025-09-30"}


def basic(client_id: str, secret: str) -> dict[str, str]:
    return {"authorization": "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()}


async def token_of(http: aiohttp.ClientSession, auth: Any, client_id: str, secret: str) -> tuple[str, str]:
    """(access token, granted scope) for a client-credentials grant at the real auth process."""
    status, body, _ = await call(
        http,
        "POST",
        f"{auth.url}/auth/oauth/token",
        data={"grant_type": "client_credentials"},
        headers=basic(client_id, secret),
    )
    assert status == 200, body
    return body["access_token"], body["scope"]


async def service_token(http: aiohttp.ClientSession, auth: Any, service: str) -> str:
    secret = os.environ[service_client_secret_variable(service)]
    token, _ = await token_of(http, auth, service_client_id(service), secret)
    return token


def line(org_id: uuid.UUID, day: str, amount: str, gst: str = "0.00", paygw: str = "0.00") -> SealedLine:
    # The summary never reads payee or description: any bytes stand in for their ciphertext.
    return SealedLine(
        id=uuid.uuid4(),
        org_id=org_id,
        date=date.fromisoformat(day),
        amount=Decimal(amount),
        gst_amount=Decimal(gst),
        paygw_amount=Decimal(paygw),
        payee=os.urandom(40),
        description=os.urandom(40),
        created_by="test",
        created_at=datetime.now(UTC),
    )


async def write_lines(database_url: str, org: Org, other: Org) -> None:
    """Org lines in July and September 2025 (none in August), one on each side of Q3, and another org's in Q3."""
    connection = await asyncpg.connect(database_url)
    try:
        async with connection.transaction():
            await insert_line(connection, line(org.id, "2025-07-01", "-110.00", "-10.00"))
            await insert_line(connection, line(org.id, "2025-09-30", "5000.00", "0.00", "1200.00"))
            await copy_lines(
                connection,
                [
                    line(org.id, "2025-07-31", "220.55", "20.05"),
                    line(org.id, "2025-09-01", "-0.55"),
                    line(org.id, "2025-06-30", "999.99"),
                    line(org.id, "2025-10-01", "888.88"),
                    line(other.id, "2025-08-15", "777.77", "70.70", "7.00"),
                ],
            )
    finally:
        await connection.close()


async def get(
    http: aiohttp.ClientSession, url: str, token: str | None, params: dict[str, str], **headers: str
) -> tuple[int, str, bytes, Any]:
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    async with http.get(url, params=params, headers=headers) as response:
        return response.status, response.headers.get("content-type", ""), await response.read(), response.headers


def month(name: str, start: str, end: str, count: int, amount: str, gst: str, paygw: str) -> dict[str, Any]:
    return {
        "month": name,
        "from": start,
        "to": end,
        "count": count,
        "amount": amount,
        "gst_amount": gst,
        "paygw_amount": paygw,
    }


async def test_the_summary_sums_the_orgs_lines_in_json_and_msgpack_alike(
    start_service: Any, database_url: str, org: Org, other_org: Org, http: aiohttp.ClientSession
) -> None:
    stack = start_core(start_service, database_url)
    await write_lines(database_url, org, other_org)
    token = await service_token(http, stack.auth, "compliance")
    url = stack.core.url + SUMMARY.format(org=org.id)

    status, media_type, body, headers = await get(http, url, token, {**Q3, "group": "month"})
    assert (status, media_type) == (200, "application/json"), body
    assert headers["vary"].lower() == "accept"
    as_json = orjson.loads(body)
    assert as_json == {
        "org_id": str(org.id),
        "from": "2025-07-01",
        "to": "2025-09-30",
        "count": 4,
        "amount": "5110.00",
        "gst_amount": "10.05",
        "paygw_amount": "1200.00",
        "months": [
            month("2025-07", "2025-07-01", "2025-07-31", 2, "110.55", "10.05", "0.00"),
            month("2025-08", "2025-08-01", "2025-08-31", 0, "0.00", "0.00", "0.00"),
            month("2025-09", "2025-09-01", "2025-09-30", 2, "4999.45", "0.00", "1200.00"),
        ],
    }

    status, media_type, body, _ = await get(http, url, token, {**Q3, "group": "month"}, accept=MSGPACK)
    assert (status, media_type) == (200, MSGPACK)
    assert msgpack.unpackb(body) == as_json, "msgpack carries the same document, money as strings"

    # Without group=month, the same totals and no months; a range inside one month clips it.
    status, _, body, _ = await get(http, url, token, Q3)
    assert status == 200
    ungrouped = orjson.loads(body)
    assert ungrouped == {**as_json, "months": None}
    status, _, body, _ = await get(http, url, token, {"from": "2025-07-15", "to": "2025-07-31", "group": "month"})
    clipped = orjson.loads(body)
    assert (clipped["count"], clipped["amount"]) == (1, "220.55")
    assert clipped["months"] == [month("2025-07", "2025-07-15", "2025-07-31", 1, "220.55", "20.05", "0.00")]


async def test_an_org_without_lines_sums_to_zero(
    start_service: Any, database_url: str, http: aiohttp.ClientSession
) -> None:
    stack = start_core(start_service, database_url)
    token = await service_token(http, stack.auth, "regulator")
    nobody = uuid.uuid4()
    status, _, body, _ = await get(
        http,
        stack.core.url + SUMMARY.format(org=nobody),
        token,
        {"from": "2025-01-01", "to": "2025-02-28", "group": "month"},
    )
    assert status == 200, body
    summary = orjson.loads(body)
    assert (summary["org_id"], summary["count"], summary["amount"], summary["gst_amount"], summary["paygw_amount"]) == (
        str(nobody),
        0,
        "0.00",
        "0.00",
        "0.00",
    )
    assert [(m["month"], m["count"], m["amount"]) for m in summary["months"]] == [
        ("2025-01", 0, "0.00"),
        ("2025-02", 0, "0.00"),
    ]


async def test_a_calling_service_gets_the_summary_as_msgpack_with_its_request_id(
    start_service: Any, database_url: str, org: Org, other_org: Org, http: aiohttp.ClientSession
) -> None:
    stack = start_core(start_service, database_url)
    await write_lines(database_url, org, other_org)
    client = ServiceClient(
        stack.auth.url, service_client_id("regulator"), os.environ[service_client_secret_variable("regulator")]
    )
    url = stack.core.url + SUMMARY.format(org=other_org.id)
    reset = current_request_id.set("c4-trace.summary-1")
    try:
        summary = await client.get_msgpack(f"{url}?from=2025-07-01&to=2025-09-30")
        as_json = await client.get_json(f"{url}?from=2025-07-01&to=2025-09-30")
    finally:
        current_request_id.reset(reset)
        await client.close()
    assert summary == as_json
    assert (summary["count"], summary["amount"], summary["gst_amount"], summary["paygw_amount"]) == (
        1,
        "777.77",
        "70.70",
        "7.00",
    )
    record = await stack.core.wait_for_log_async(
        lambda r: r.get("request_id") == "c4-trace.summary-1" and r.get("event") == "request"
    )
    assert record.get("status") == 200, record
    # A sum is not PII and reading it changes nothing: no audit row.
    connection = await asyncpg.connect(database_url)
    try:
        assert await connection.fetchval("SELECT count(*) FROM audit.records") == 0
    finally:
        await connection.close()


async def test_only_services_with_core_read_are_admitted(
    start_service: Any, database_url: str, org: Org, http: aiohttp.ClientSession
) -> None:
    stack = start_core(start_service, database_url)
    url = stack.core.url + SUMMARY.format(org=org.id)

    status, _, body, _ = await get(http, url, None, Q3)
    assert (status, orjson.loads(body)["code"]) == (401, "unauthorized")

    user_token = (await login(http, stack.auth.url, org.email("admin")))["access_token"]
    status, _, body, _ = await get(http, url, user_token, Q3)
    assert (status, orjson.loads(body)["code"]) == (401, "invalid_token"), "a user's token is for another audience"

    connection = await asyncpg.connect(database_url)
    try:
        client_id, secret = await create_client(connection, org.id, "integration", ["core:read"])
    finally:
        await connection.close()
    client_token, scope = await token_of(http, stack.auth, client_id, secret)
    assert scope == "core:read"
    status, _, body, _ = await get(http, url, client_token, Q3)
    assert (status, orjson.loads(body)["code"]) == (401, "invalid_token"), "an org API client, even with core:read"

    core_token = await service_token(http, stack.auth, "core")
    status, _, body, _ = await get(http, url, core_token, Q3)
    problem = orjson.loads(body)
    assert (status, problem["code"]) == (403, "forbidden"), "a service token without core:read"
    assert "core:read" in problem["detail"]

    for service in ("compliance", "regulator"):
        status, _, body, _ = await get(http, url, await service_token(http, stack.auth, service), Q3)
        assert status == 200, (service, body)


BAD_REQUESTS = [
    ("not-a-uuid", Q3, "bad_request", "org_id"),
    ("{00000000-0000-4000-8000-000000000000}", Q3, "bad_request", "org_id"),
    ("00000000000040008000000000000000", Q3, "bad_request", "org_id"),
    (None, {"to": "2025-09-30"}, "invalid_query", "from"),
    (None, {"from": "2025-07-01"}, "invalid_query", "to"),
    (None, {"from": "2025-02-30", "to": "2025-09-30"}, "invalid_query", "from"),
    (None, {"from": "2025-7-1", "to": "2025-09-30"}, "invalid_query", "from"),
    (None, {"from": "2025-07-01T00:00:00", "to": "2025-09-30"}, "invalid_query", "from"),
    (None, {"from": "1899-12-31", "to": "2025-09-30"}, "invalid_query", "from"),
    (None, {"from": "2025-07-01", "to": "9999-12-31"}, "invalid_query", "to"),
    (None, {"from": "2025-10-01", "to": "2025-09-30"}, "invalid_query", "to"),
    (None, {**Q3, "group": "week"}, "invalid_query", "group"),
    (None, {**Q3, "org_id": "x"}, "invalid_query", "org_id"),
]


async def test_bad_org_ids_and_dates_are_400_problems_naming_the_field(
    start_service: Any, database_url: str, http: aiohttp.ClientSession
) -> None:
    stack = start_core(start_service, database_url)
    token = await service_token(http, stack.auth, "compliance")
    for org_id, params, code, path in BAD_REQUESTS:
        url = stack.core.url + SUMMARY.format(org=org_id or uuid.uuid4())
        status, media_type, body, _ = await get(http, url, token, params)
        problem = orjson.loads(body)
        assert (status, media_type, problem["code"]) == (400, "application/problem+json", code), (params, problem)
        assert path in [error["path"] for error in problem["errors"]], (params, problem)


async def test_an_accept_admitting_neither_json_nor_msgpack_is_406(
    start_service: Any, database_url: str, org: Org, http: aiohttp.ClientSession
) -> None:
    stack = start_core(start_service, database_url)
    token = await service_token(http, stack.auth, "compliance")
    url = stack.core.url + SUMMARY.format(org=org.id)
    status, _, body, _ = await get(http, url, token, Q3, accept="text/html")
    assert (status, orjson.loads(body)["code"]) == (406, "not_acceptable")
    status, media_type, _, _ = await get(http, url, token, Q3, accept="application/json;q=0, */*")
    assert (status, media_type) == (200, MSGPACK)


async def test_the_proxy_does_not_expose_the_internal_route(
    start_service: Any, database_url: str, org: Org, http: aiohttp.ClientSession
) -> None:
    stack = start_core(start_service, database_url)
    proxy = start_proxy(start_service, {"core": [stack.core.url], "auth": [stack.auth.url]})
    token = await service_token(http, stack.auth, "compliance")
    path = SUMMARY.format(org=org.id)
    for variant in (path, "/bank-lines/../" + path.lstrip("/"), "/bank-lines/%2e%2e" + path):
        status, _, body, _ = await get(http, proxy.url + variant, token, Q3, **{"x-request-id": "c4-proxy.1"})
        assert status == 404, (variant, body)
    status, _, _, _ = await get(http, stack.core.url + path, token, Q3)
    assert status == 200, "the route exists; only the proxy hides it"
    assert not any("c4-proxy.1" in text for text in stack.core.output()), "core never saw the proxied request"
