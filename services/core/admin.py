"""An admin's export and deletion of their own org (issue #12). Both need a recent step-up; another org's id, a
malformed one or a deleted org's is 404, like an org that does not exist.

`GET /admin/export/{org}` answers one JSON document, streamed:

    {"org_id", "exported_at", "users": [{id, email, role}], "bank_lines": [...decrypted...], "bas_cycles": [...],
     "payment_plans": [...], "designated_accounts": [...], "designated_sources": [...],
     "designated_transfers": [...], "alerts": [...]}

The users come from auth's internal API (`GET /internal/orgs/{org}/users`, core's service token, the caller's
request ID) before anything is sent: auth unreachable is a 502 `upstream_unavailable`, not a cut document. The
`admin.export` audit record (the row counts, no PII) commits before the first byte is streamed, so an export
that began is on record even when the client goes away mid-way. The rest is read a page at a time
(EXPORT_PAGE_ROWS, each page on a connection taken and given back, PII opened with the connection released), so
memory and pool use stay bounded however large the org and however slow the client. Pages are separate reads:
rows written during a long export may or may not be in it. A failure mid-stream cuts the document (invalid JSON),
never passes it off as complete.

`DELETE /admin/delete/{org}` with `{"confirm": "<org id>"}` (anything else is 400 `invalid_body`), in one core
transaction: the org's deletion lock exclusive (first, so the writers holding it shared finish and later ones find
the tombstone: `store.orgs.hold_org`), destroy the org's data key, delete every row of the org, write the tombstone
(who, when, counts), and append `admin.org.delete` to the audit chain, which is never deleted. After the commit,
auth is asked to disable the org's users and clients and erase their addresses (`POST /internal/orgs/{org}/erase`).
Core's part comes first because it is what cannot wait: if auth fails the data is gone anyway, and the answer is a
502 `upstream_unavailable` saying so; the same DELETE again (the caller's token still works, since auth did not
revoke it; it is the one route a deleted org's token still reaches) does only auth's part.
A tombstone whose `auth_erased_at` is null names an org whose auth part is still to be done.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import aiohttp
import asyncpg
import orjson
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from services.core import store
from services.core.bank_lines import open_page
from services.core.deps import core_deps
from services.core.models import BankLine
from services.core.store import BANK_LINES_TABLE, LineKey, PageFilters, orgs
from shared import audit
from shared.app import Runtime
from shared.authz import guard
from shared.errors import ApiError, FieldError
from shared.log import get_logger
from shared.negotiation import JSON_MEDIA_TYPE
from shared.openapi import documented
from shared.pii import PiiCipher
from shared.roles import Role
from shared.service_client import ServiceAuthError, ServiceCallError
from shared.tokens import Principal
from shared.validation import parse_body

__all__ = ["ADMINS", "EXPORT_PAGE_ROWS", "DeleteOrg", "OrgDeleted", "delete_org", "export_org"]

ADMINS: tuple[Role, ...] = ("admin",)
# Rows read, opened and sent per page of an export: a page's PII is opened with one key lookup.
EXPORT_PAGE_ROWS = 500
# Users read from auth per call, and at most this many calls: an org's users fit in memory many times over.
USERS_PAGE_ROWS = 200
MAX_USER_PAGES = 100
log = get_logger(__name__)


class DeleteOrg(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    confirm: str = Field(max_length=64, description="The org id again, to confirm")


class OrgDeleted(BaseModel):
    org_id: str
    deleted_at: datetime
    deleted_by: str
    counts: dict[str, int]
    auth_erased: bool


def _own_org(request: Request, principal: Principal) -> uuid.UUID:
    """The path's org when it is the caller's own; 404 for anything else, so no other org's existence shows."""
    text = request.path_params["org"]
    if text.lower() != principal.org_id.lower():
        raise ApiError("not_found")
    return uuid.UUID(principal.org_id)


def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def _pool(runtime: Runtime) -> asyncpg.Pool:
    if runtime.db is None:
        raise RuntimeError("core runs with a database")
    return runtime.db.pool


# --- export ------------------------------------------------------------------------------------------------------


async def _org_users(runtime: Runtime, org_id: uuid.UUID) -> list[dict[str, Any]]:
    client = runtime.require_service_client()
    url = f"{runtime.settings.auth_url}/internal/orgs/{org_id}/users"
    users: list[dict[str, Any]] = []
    params = {"limit": str(USERS_PAGE_ROWS)}
    try:
        for _ in range(MAX_USER_PAGES):
            page = await client.get_json(url, params=params)
            users += [{"id": u["id"], "email": u["email"], "role": u["role"]} for u in page["items"]]
            if page["next_cursor"] is None:
                return users
            params["cursor"] = page["next_cursor"]
    except (ServiceAuthError, ServiceCallError, aiohttp.ClientError, TimeoutError, KeyError, TypeError) as error:
        log.warning("admin.export.users_failed", org_id=str(org_id), error=type(error).__name__)
        raise ApiError("upstream_unavailable", "The org's users could not be read from the auth service") from None
    raise ApiError("upstream_unavailable", "The org has more users than an export reads")


def _exact(value: object) -> str:
    # Numbers the export reads are numeric columns (money), parsed as Decimal: written as strings, like the API's.
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not exported")


async def _bank_lines(runtime: Runtime, cipher: PiiCipher, org_id: uuid.UUID) -> AsyncIterator[bytes]:
    after: LineKey | None = None
    separator = b""
    while True:
        async with _pool(runtime).acquire() as conn:
            lines = await store.page_lines(conn, org_id, PageFilters(), after, EXPORT_PAGE_ROWS)
        if not lines:
            return
        payees, descriptions, _ = await open_page(cipher, org_id, lines)
        items = [
            BankLine.of(line, p, d).model_dump_json().encode()
            for line, p, d in zip(lines, payees, descriptions, strict=True)
        ]
        yield separator + b",".join(items)
        separator = b","
        after = LineKey(lines[-1].date, lines[-1].id)


async def _rows(runtime: Runtime, org_id: uuid.UUID, table: orgs.OrgTable) -> AsyncIterator[bytes]:
    after = None
    separator = b""
    while True:
        async with _pool(runtime).acquire() as conn:
            rows = await orgs.export_rows(conn, org_id, table, after, EXPORT_PAGE_ROWS)
        if not rows:
            return
        yield separator + b",".join(orjson.dumps(row.document, default=_exact) for row in rows)
        separator = b","
        after = rows[-1].key


async def _document(
    runtime: Runtime, cipher: PiiCipher, org_id: uuid.UUID, users: list[dict[str, Any]], exported_at: datetime
) -> AsyncIterator[bytes]:
    head = {"org_id": str(org_id), "exported_at": exported_at.isoformat(), "users": users}
    yield orjson.dumps(head)[:-1] + b',"bank_lines":['
    async for chunk in _bank_lines(runtime, cipher, org_id):
        yield chunk
    yield b"]"
    for table in orgs.EXPORTED_TABLES:
        yield b',"' + table.name.encode() + b'":['
        async for chunk in _rows(runtime, org_id, table):
            yield chunk
        yield b"]"
    yield b"}"


@documented("Export the caller's org as one JSON document, streamed (admin, step-up)", tags=["admin"])
@guard(roles=ADMINS, step_up=True)
async def export_org(request: Request, principal: Principal) -> Response:
    org_id = _own_org(request, principal)
    runtime = _runtime(request)
    cipher = core_deps(request).cipher
    async with _pool(runtime).acquire() as conn:
        if await orgs.tombstone(conn, org_id) is not None:
            raise ApiError("not_found")
    users = await _org_users(runtime, org_id)
    # The key before a connection is held (a cold lookup takes a connection of its own).
    await cipher.decrypt_many(org_id, BANK_LINES_TABLE, "payee", [])
    exported_at = datetime.now(UTC)
    async with _pool(runtime).acquire() as conn, conn.transaction():
        counts = await orgs.count_org_rows(conn, org_id)
        await audit.append(
            conn,
            org_id=org_id,
            actor=audit.actor_of(principal),
            action="admin.export",
            target=f"org:{org_id}",
            detail={"counts": counts, "users": len(users)},
        )
    return StreamingResponse(
        _document(runtime, cipher, org_id, users, exported_at),
        media_type=JSON_MEDIA_TYPE,
        headers={"content-disposition": f'attachment; filename="apgms-export-{org_id}.json"'},
    )


# --- deletion ----------------------------------------------------------------------------------------------------


async def _erase_in_auth(runtime: Runtime, org_id: uuid.UUID) -> bool:
    """Whether auth disabled the org's users and clients (an org auth does not know has none to disable)."""
    client = runtime.require_service_client()
    try:
        response = await client.request("POST", f"{runtime.settings.auth_url}/internal/orgs/{org_id}/erase")
    except (ServiceAuthError, aiohttp.ClientError, TimeoutError) as error:
        log.warning("admin.delete.auth_failed", org_id=str(org_id), error=type(error).__name__)
        return False
    if response.ok or response.status == 404:
        return True
    log.warning("admin.delete.auth_failed", org_id=str(org_id), status=response.status)
    return False


@documented(
    "Delete the caller's org: its rows, its data key, then its users and clients at auth (admin, step-up)",
    request=DeleteOrg,
    response=OrgDeleted,
    tags=["admin"],
)
@guard(roles=ADMINS, step_up=True)
async def delete_org(request: Request, principal: Principal) -> Response:
    org_id = _own_org(request, principal)
    body = await parse_body(request, DeleteOrg)
    if body.confirm.lower() != str(org_id):
        raise ApiError(
            "invalid_body",
            "Confirm the deletion with the org's id in `confirm`",
            errors=[FieldError("confirm", "must equal the org id in the path")],
        )
    runtime = _runtime(request)
    actor = audit.actor_of(principal)
    cipher = core_deps(request).cipher
    async with _pool(runtime).acquire() as conn:
        try:
            async with conn.transaction():
                # The org's deletion lock first (store/orgs.py says why): writers holding it finish, later ones
                # and a concurrent deletion wait here, then find the tombstone.
                await orgs.begin_deletion(conn, org_id)
                destroyed = await cipher.destroy(org_id, conn=conn)
                stone = await orgs.tombstone(conn, org_id)
                if stone is None:
                    counts = await orgs.delete_org_rows(conn, org_id)
                    stone = await orgs.insert_tombstone(conn, org_id, actor, counts)
                    await audit.append(
                        conn,
                        org_id=org_id,
                        actor=actor,
                        action="admin.org.delete",
                        target=f"org:{org_id}",
                        detail={"counts": counts, "data_keys_destroyed": destroyed},
                    )
        finally:
            cipher.forget(org_id)
    core_deps(request).deleted_orgs.remember(org_id)
    if stone.auth_erased_at is None and await _erase_in_auth(runtime, org_id):
        async with _pool(runtime).acquire() as conn:
            stone = await orgs.mark_auth_erased(conn, org_id) or stone
    answer = OrgDeleted(
        org_id=str(org_id),
        deleted_at=stone.deleted_at,
        deleted_by=stone.deleted_by,
        counts=stone.counts,
        auth_erased=stone.auth_erased_at is not None,
    )
    if not answer.auth_erased:
        raise ApiError(
            "upstream_unavailable",
            "The org's data was deleted, but its users and API clients could not be disabled at the auth service "
            "yet: send the same request again",
            extra={"deleted": orjson.loads(answer.model_dump_json())},
        )
    return JSONResponse(orjson.loads(answer.model_dump_json()))
