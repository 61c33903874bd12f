"""`GET /users` (the admin's org, emails masked) and `POST /users` (high-risk: needs a recent step-up)."""

from __future__ import annotations

import uuid

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from services.auth import store
from services.auth.models import CreateUserRequest, PageQuery, UserListItem, UserPage
from services.auth.passwords import hash_password
from shared.authz import guard
from shared.errors import ApiError
from shared.openapi import documented
from shared.pagination import decode_cursor, encode_cursor
from shared.tokens import Principal
from shared.validation import parse_body, parse_query


def mask_email(email: str) -> str:
    """`jane.citizen@example.com` → `j***n@example.com`: enough to recognise, not enough to harvest."""
    local, _, domain = email.partition("@")
    shown = local[0] + "***" + (local[-1] if len(local) > 2 else "")
    return f"{shown}@{domain}"


@documented("List the users of the caller's org", response=UserPage, tags=["users"])
@guard(roles={"admin"})
async def list_users(request: Request, principal: Principal) -> Response:
    query = parse_query(request.query_params, PageQuery)
    after = decode_cursor(query.cursor) if query.cursor else None
    async with request.app.state.runtime.db.pool.acquire() as conn:
        users = await store.list_users(conn, uuid.UUID(principal.org_id), after, query.limit + 1)
    page, more = users[: query.limit], len(users) > query.limit
    body = UserPage(
        items=[
            UserListItem(
                id=str(u.id),
                email=mask_email(u.email),
                role=u.role,  # type: ignore[arg-type]
                mfa_enrolled=u.mfa_enrolled,
                created_at=u.created_at.isoformat(),
            )
            for u in page
        ],
        next_cursor=encode_cursor(page[-1].created_at, page[-1].id) if more else None,
    )
    return JSONResponse(body.model_dump())


@documented(
    "Create a user in the caller's org (needs a recent step-up)", request=CreateUserRequest, status=201, tags=["users"]
)
@guard(roles={"admin"}, step_up=True)
async def create_user(request: Request, principal: Principal) -> Response:
    body = await parse_body(request, CreateUserRequest)
    pool = request.app.state.runtime.db.pool
    async with pool.acquire() as conn:
        same_address = await store.password_hash_of_address(conn, body.email)
    # With the salt of the address's other accounts (in other orgs), so that a login checks all of them with one
    # argon2 computation and its time does not tell how many orgs the address is in (docs/decisions.md).
    password_hash = await run_in_threadpool(hash_password, body.password, salt_of=same_address)
    async with pool.acquire() as conn:
        user = await store.create_user(conn, uuid.UUID(principal.org_id), body.email, password_hash, body.role)
    if user is None:
        # Only the admin's own org is looked at (they see its users in GET /users anyway): an address with an
        # account in another org is created here as if it were new, so this answer tells nothing about other orgs.
        raise ApiError("conflict", "A user with this email already exists in your org")
    return JSONResponse(
        {"id": str(user.id), "org_id": str(user.org_id), "email": user.email, "role": user.role, "mfa_enrolled": False},
        status_code=201,
    )
