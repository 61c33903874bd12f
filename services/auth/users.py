"""`GET /users` (the admin's org, emails masked), `POST /users` and `PATCH /users/{id}` (high-risk: they need a
recent step-up). Each change writes its audit record (`shared.audit.append`, actor the acting admin, ids and
roles only, never an email) in the change's own transaction, so neither exists without the other."""

from __future__ import annotations

import uuid

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from services.auth import store
from services.auth.models import (
    CreateUserRequest,
    UpdatedUser,
    UpdateUserRequest,
    UserListItem,
    UserPage,
)
from services.auth.passwords import hash_password
from shared import audit
from shared.authz import guard
from shared.errors import ApiError
from shared.openapi import documented
from shared.pagination import PageQuery, decode_cursor, encode_cursor
from shared.tokens import Principal
from shared.validation import parse_body, parse_query, path_uuid


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
    org_id = uuid.UUID(principal.org_id)
    async with pool.acquire() as conn, conn.transaction():
        user = await store.create_user(conn, org_id, body.email, password_hash, body.role)
        if user is not None:
            await audit.append(
                conn,
                org_id=org_id,
                actor=audit.actor_of(principal),
                action="user.create",
                target=f"user:{user.id}",
                detail={"user_id": str(user.id), "role": user.role},
            )
    if user is None:
        # Only the admin's own org is looked at (they see its users in GET /users anyway): an address with an
        # account in another org is created here as if it were new, so this answer tells nothing about other orgs.
        raise ApiError("conflict", "A user with this email already exists in your org")
    return JSONResponse(
        {"id": str(user.id), "org_id": str(user.org_id), "email": user.email, "role": user.role, "mfa_enrolled": False},
        status_code=201,
    )


@documented(
    "Change a user's role or disable them (needs a recent step-up); their access tokens stop working within seconds",
    request=UpdateUserRequest,
    response=UpdatedUser,
    tags=["users"],
)
@guard(roles={"admin"}, step_up=True)
async def update_user(request: Request, principal: Principal) -> Response:
    """`PATCH /users/{user_id}`. An admin cannot change or disable themselves: the org keeps at least one admin
    (the one acting), and nobody locks themselves out by mistake."""
    body = await parse_body(request, UpdateUserRequest)
    user_id = path_uuid(request, "user_id")
    if str(user_id) == principal.subject:
        raise ApiError("conflict", "You cannot change your own role or disable yourself; ask another admin")
    acting_id, org_id = uuid.UUID(principal.subject), uuid.UUID(principal.org_id)
    async with request.app.state.runtime.db.pool.acquire() as conn, conn.transaction():
        # The token says admin, but another admin may be demoting or disabling the actor right now: re-read them
        # under the lock, or two admins demoting each other at once would leave the org with none.
        locked = {state.id: state for state in await store.lock_users(conn, org_id, [acting_id, user_id])}
        acting = locked.get(acting_id)
        if acting is None or acting.role != "admin" or acting.disabled:
            raise ApiError("forbidden", "You are no longer an admin of this org")
        # Another org's user is 404, exactly like a user that does not exist.
        user = await store.update_user(conn, org_id, user_id, body.role, body.disabled)
        if user is None:
            raise ApiError("not_found")
        if body.disabled:
            await store.revoke_user_refresh_tokens(conn, user_id)
        before = locked[user_id]  # update_user found the user, so lock_users locked them
        await audit.append(
            conn,
            org_id=org_id,
            actor=audit.actor_of(principal),
            action="user.update",
            target=f"user:{user_id}",
            detail={
                "user_id": str(user_id),
                "role": {"old": before.role, "new": user.role},
                "disabled": {"old": before.disabled, "new": user.disabled},
            },
        )
    if body.role is not None or body.disabled:
        # Tokens carry the role, and a disabled user keeps none: every service refuses them within seconds.
        await request.app.state.runtime.revocations.revoke(user_id=str(user_id))
    return JSONResponse(
        UpdatedUser(id=str(user.id), org_id=str(user.org_id), role=user.role, disabled=user.disabled).model_dump()  # type: ignore[arg-type]
    )
