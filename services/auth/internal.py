"""Routes for other services only (the proxy never forwards `/internal/...`), called with client-credential
tokens: `GET /internal/orgs/{org_id}/users` lists an org's users, e.g. for core's admin export."""

from __future__ import annotations

import uuid

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from services.auth import store
from shared.authz import guard
from shared.errors import ApiError
from shared.openapi import documented
from shared.pagination import PageQuery, decode_cursor, encode_cursor
from shared.tokens import Principal
from shared.validation import parse_query

USERS_READ_SCOPE = "users:read"


class OrgUser(BaseModel):
    id: str
    email: str
    role: str


class OrgUserPage(BaseModel):
    items: list[OrgUser]
    next_cursor: str | None


def own_org(principal: Principal, org_id: str) -> uuid.UUID:
    """The org of the path when it is the caller's own; any other (or malformed) id is 404, as if it did not
    exist."""
    try:
        wanted = uuid.UUID(org_id)
    except ValueError:
        raise ApiError("not_found") from None
    if str(wanted) != principal.org_id:
        raise ApiError("not_found")
    return wanted


@documented("An org's users (id, email, role), for services", response=OrgUserPage, tags=["internal"])
@guard(kinds=("client",), scopes={USERS_READ_SCOPE})
async def org_users(request: Request, principal: Principal) -> Response:
    org_id = own_org(principal, request.path_params["org_id"])
    query = parse_query(request.query_params, PageQuery)
    after = decode_cursor(query.cursor) if query.cursor else None
    async with request.app.state.runtime.db.pool.acquire() as conn:
        users = await store.list_users(conn, org_id, after, query.limit + 1)
    page, more = users[: query.limit], len(users) > query.limit
    body = OrgUserPage(
        items=[OrgUser(id=str(u.id), email=u.email, role=u.role) for u in page],
        next_cursor=encode_cursor(page[-1].created_at, page[-1].id) if more else None,
    )
    return JSONResponse(body.model_dump())
