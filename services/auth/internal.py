"""Routes for the other services only (the proxy never forwards `/internal/...`), called with service tokens
(audience SERVICE_AUDIENCE, from `runtime.service_client`):

    GET  /internal/orgs/{org_id}/users   an org's users (id, email, role), for core's admin export (`auth:read`)
    POST /internal/orgs/{org_id}/erase   core's admin deletion of the org (`auth:admin`): every user disabled and
                                         their address, password hash, authenticator and recovery codes erased,
                                         their refresh tokens and access tokens revoked, the org's API clients
                                         revoked; ids and roles stay. Audited `org.erase` (counts) in the org's
                                         chain; calling it again does nothing new and answers the same counts.

A service token carries no org: a calling service acts for whichever org its own request is about, so it may name
any org here. It needs the route's scope, AUTH_READ_SCOPE or AUTH_ADMIN_SCOPE, which only core's token carries
(services/auth/config.py SERVICE_SCOPES); another service's token is 403 `forbidden`. User and org API-client
tokens are for the user audience and are refused by the guard as 401 `invalid_token`, like any token for another
audience: a service of ours is the only caller these routes have."""

from __future__ import annotations

import uuid

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from services.auth import store
from shared import audit
from shared.authz import guard
from shared.errors import ApiError
from shared.openapi import documented
from shared.pagination import PageQuery, decode_cursor, encode_cursor
from shared.tokens import SERVICE_AUDIENCE, Principal
from shared.validation import parse_query

# The scope of the service tokens that may read auth's data (core's: SERVICE_SCOPES in services/auth/config.py).
AUTH_READ_SCOPE = "auth:read"
# The scope of the service tokens that may erase an org's users and clients (core's, for its admin deletion).
AUTH_ADMIN_SCOPE = "auth:admin"


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


class OrgErased(BaseModel):
    org_id: str
    users_disabled: int
    clients_revoked: int
    refresh_tokens_revoked: int


@documented(
    "Disable an org's users and API clients and erase their personal data, for core's admin deletion",
    response=OrgErased,
    tags=["internal"],
)
@guard(audience=SERVICE_AUDIENCE, scopes={AUTH_ADMIN_SCOPE})
async def erase_org(request: Request, principal: Principal) -> Response:
    org_id = path_org(request.path_params["org_id"])
    async with request.app.state.runtime.db.pool.acquire() as conn, conn.transaction():
        erased = await store.erase_org(conn, org_id)
        if erased is None:
            raise ApiError("not_found")
        body = OrgErased(
            org_id=str(org_id),
            users_disabled=len(erased.user_ids),
            clients_revoked=len(erased.client_ids),
            refresh_tokens_revoked=erased.refresh_tokens_revoked,
        )
        await audit.append(
            conn,
            org_id=org_id,
            actor=audit.actor_of(principal),
            action="org.erase",
            target=f"org:{org_id}",
            detail=body.model_dump(exclude={"org_id"}),
        )
    # Access tokens carry no state auth can change: their subjects are refused everywhere within seconds.
    revocations = request.app.state.runtime.revocations
    for subject in [*map(str, erased.user_ids), *erased.client_ids]:
        await revocations.revoke(user_id=subject)
    return JSONResponse(body.model_dump())
