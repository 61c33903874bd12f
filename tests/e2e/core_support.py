"""Helpers for end-to-end tests of the core service: a real auth and a real core process over one test database,
tokens for each role of an org, valid bank lines, and reads of the raw rows.

    stack = start_core(start_service, database_url)   # auth, then core with AUTH_URL and the session's KEK
    tokens = await role_tokens(http, stack, org)      # {"admin": "...", "finance": ..., "analyst": ..., "auditor": ...}
    status, body, headers = await post_line(http, stack, tokens["finance"], new_line(amount="-12.50"))
    cipher = await pii_cipher(stack.database_url)     # the same KEK as the core process, to open raw rows

Core gets an explicit APGMS_KEK (random per test session) so a test can open what the process sealed, and never
depends on the dev-only default. `org`/`other_org`/`http` fixtures are in tests/e2e/conftest.py.
"""

from __future__ import annotations

import base64
import os
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import asyncpg
from auth_support import Org, call, login

from services.core.store import SEALED_LINE_COLUMNS, SealedLine
from shared.kek import KekProvider, kek_provider_from_env
from shared.pii import PiiCipher
from shared.roles import ROLES

StartService = Callable[..., Any]  # tests/conftest.py: start_service(name, env_overrides) -> ServiceProcess

# One KEK for the whole session: core processes seal with it, tests open with it.
SESSION_KEK = base64.b64encode(os.urandom(32)).decode()


@dataclass(frozen=True)
class CoreStack:
    auth: Any  # ServiceProcess
    core: Any  # ServiceProcess
    database_url: str

    @property
    def lines_url(self) -> str:
        return f"{self.core.url}/bank-lines"


def kek_provider() -> KekProvider:
    return kek_provider_from_env({"APGMS_KEK": SESSION_KEK})


def start_core(
    start_service: StartService, database_url: str, env: Mapping[str, str | None] | None = None
) -> CoreStack:
    """A real auth process, then a real core process that verifies auth's tokens and seals with SESSION_KEK; both
    on the test's database (the `database_url` fixture, which start_service uses too)."""
    auth = start_service("auth")
    core = start_service("core", {"AUTH_URL": auth.url, "APGMS_KEK": SESSION_KEK, **(env or {})})
    return CoreStack(auth=auth, core=core, database_url=database_url)


async def role_tokens(http: aiohttp.ClientSession, stack: CoreStack, org: Org) -> dict[str, str]:
    """An access token of the org's user of each role (logged in at the real auth process)."""
    return {role: str((await login(http, stack.auth.url, org.email(role)))["access_token"]) for role in ROLES}


def new_line(**overrides: Any) -> dict[str, Any]:
    """A valid POST /bank-lines body; an override of None removes the field."""
    body: dict[str, Any] = {
        "date": "2025-07-01",
        "amount": "-110.00",
        "payee": "Bunnings Warehouse",
        "description": "Timber and screws",
        "gst_amount": "-10.00",
        "paygw_amount": "0.00",
    }
    body.update(overrides)
    return {name: value for name, value in body.items() if value is not None}


async def post_line(
    http: aiohttp.ClientSession,
    stack: CoreStack,
    token: str,
    body: Any,
    *,
    key: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> tuple[int, Any, Any]:
    """POST /bank-lines with `body` as JSON (a str or bytes body is sent as it is, as application/json)."""
    sent = {**({"idempotency-key": key} if key else {}), **(headers or {})}
    if isinstance(body, str | bytes):
        sent.setdefault("content-type", "application/json")
        return await call(http, "POST", stack.lines_url, token=token, data=body, headers=sent)
    return await call(http, "POST", stack.lines_url, token=token, json=body, headers=sent)


async def get_lines(
    http: aiohttp.ClientSession, stack: CoreStack, token: str, params: Mapping[str, str] | None = None
) -> tuple[int, Any, Any]:
    return await call(http, "GET", stack.lines_url, token=token, params=dict(params or {}))


async def walk_pages(
    http: aiohttp.ClientSession, stack: CoreStack, token: str, params: Mapping[str, str] | None = None
) -> list[dict[str, Any]]:
    """Every item of every page, following next_cursor from the first page."""
    items: list[dict[str, Any]] = []
    query = dict(params or {})
    while True:
        status, page, _ = await get_lines(http, stack, token, query)
        assert status == 200, page
        items += page["items"]
        if page["next_cursor"] is None:
            return items
        query["cursor"] = page["next_cursor"]


@asynccontextmanager
async def connect(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(database_url)
    try:
        yield connection
    finally:
        await connection.close()


async def raw_lines(database_url: str, org_id: uuid.UUID | None = None) -> list[SealedLine]:
    """The stored rows (payee and description as ciphertext), newest first; all orgs' when `org_id` is None."""
    async with connect(database_url) as conn:
        rows = await conn.fetch(
            f"SELECT {', '.join(SEALED_LINE_COLUMNS)} FROM core.bank_lines "  # noqa: S608 (column names, not input)
            "WHERE $1::uuid IS NULL OR org_id = $1 ORDER BY date DESC, id DESC",
            org_id,
        )
    return [SealedLine(*row) for row in rows]


async def line_count(database_url: str) -> int:
    async with connect(database_url) as conn:
        return int(await conn.fetchval("SELECT count(*) FROM core.bank_lines"))


@asynccontextmanager
async def pii_cipher(database_url: str) -> AsyncIterator[PiiCipher]:
    """A PiiCipher over the test database with the core processes' KEK."""
    pool = await asyncpg.create_pool(database_url, min_size=0, max_size=2)
    try:
        yield PiiCipher(pool, kek_provider())
    finally:
        await pool.close()
