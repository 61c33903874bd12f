"""Routes for the other services only (the proxy never forwards `/internal/...`), called with service tokens
(audience SERVICE_AUDIENCE, from `runtime.service_client`): `GET /internal/orgs/{org_id}/users` lists an org's
users, e.g. for core's admin export.

A service token carries no org: a calling service acts for whichever org its own request is about, so it may name
any org here. It needs the scope AUTH_READ_SCOPE, which only core's token carries (services/auth/config.py
SERVICE_SCOPES); another service's token is 403 `forbidden`. User and org API-client tokens are for the user
audience and are refused by the guard as 401 `invalid_token`, like any token for another audience: a service of
ours is the only caller these routes have."""

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
from shared.tokens import SERVICE_AUDIENCE, Principal
from shared.validation import parse_query

# The scope of the service tokens that may read auth's data (core's: SERVICE_SCOPES in services/auth/config.py).
AUTH_READ_SCOPE = "auth:read"


class OrgUser(BaseModel):
    id: str
    email: str
    role: str


class OrgUserPage(BaseModel):
    items: list[OrgUser]
    next_cursor: str | None


def path_org(org_id: str) -> uuid.UUID:
    """The org of the path; a malformed id is 404, as an org that does not exist."""
    try:
        return uuid.UUID(org_id)
    except ValueError:
        raise ApiError("not_found") from None


@documented("An org's users (id, email, role), for services", response=OrgUserPage, tags=["internal"])
@guard(audience=SERVICE_AUDIENCE, scopes={AUTH_READ_SCOPE})
async def org_users(request: Request, principal: Principal) -> Response:
    org_id = path_org(request.path_params["org_id"])
    query = parse_query(request.query_params, PageQuery)
    after = decode_cursor(query.cursor) if query.cursor else None
    async with request.app.state.runtime.db.pool.acquire() as conn:
        if not await store.org_exists(conn, org_id):
            raise ApiError("not_found")
        users = await store.list_users(conn, org_id, after, query.limit + 1)
    page, more = users[: query.limit], len(users) > query.limit
    body = OrgUserPage(
        items=[OrgUser(id=str(u.id), email=u.email, role=u.role) for u in page],
        next_cursor=encode_cursor(page[-1].created_at, page[-1].id) if more else None,
    )
    return JSONResponse(body.model_dump())
