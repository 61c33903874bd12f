"""Login, refresh, logout, `/auth/me` and the JWKS.

Refresh tokens are opaque, stored as SHA-256 hashes, and rotated on every use. Each login starts a family;
presenting a token that was already rotated means it leaked (or was replayed), so the whole family is revoked.
"""

from __future__ import annotations

import dataclasses
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from services.auth import store
from services.auth.emails import email_key
from services.auth.keys import SigningKeys
from services.auth.models import LoginRequest, Me, RefreshRequest, TokenResponse, UserSummary
from services.auth.passwords import passwords_match, token_hash
from shared.authz import guard
from shared.config import Settings
from shared.context import request_context
from shared.errors import ApiError
from shared.metrics import record_security_event
from shared.openapi import documented
from shared.ratelimit import LoginGuard, rate_limited_error
from shared.tokens import ACCESS_TOKEN_TTL_S, USER_AUDIENCE, Principal, access_claims, sign
from shared.validation import parse_body

REFRESH_TOKEN_TTL = timedelta(days=30)
# However often it is rotated, a family ends this long after its login: a stolen refresh token cannot be kept
# alive for ever by refreshing it before it expires (issue #9, finding 12).
REFRESH_FAMILY_MAX_AGE = timedelta(days=30)
JWKS_MAX_AGE_S = 60


@dataclass
class Issuer:
    """Mints access and refresh tokens for users."""

    settings: Settings
    keys: SigningKeys

    async def access_token(
        self, user: store.User, amr: Sequence[str], auth_time: int, session_id: str | None = None
    ) -> str:
        """An access token for `user`; `session_id` (the refresh family) lets a logout revoke it."""
        claims = access_claims(
            issuer=self.settings.token_issuer,
            audience=USER_AUDIENCE,
            subject=str(user.id),
            kind="user",
            org_id=str(user.org_id),
            role=user.role,
            scopes=(),
            amr=amr,
            auth_time=auth_time,
            now=time.time(),
            session_id=session_id,
        )
        return sign(claims, await self.keys.signing_key())

    async def stepped_up_token(
        self, conn: asyncpg.Connection, user: store.User, auth_time: int, session_id: str | None
    ) -> str:
        """An access token with `otp` in `amr` for `user`, once a code was accepted. Must run in a transaction:
        like `session`, it reads the role when it signs, under a share lock, and refuses a disabled user or a
        session that was ended, so a demotion, disable or logout that committed while the code was being checked
        (up to ten PBKDF2 checks for a recovery code) is not outlived by the token (issue #9, finding 7)."""
        role = await store.role_for_new_tokens(conn, user.id)
        if role is None:
            raise ApiError("invalid_token", "The account is disabled")
        if session_id is not None and not await store.session_is_live(conn, _family_id(session_id)):
            raise ApiError("invalid_token", "The session has ended")
        user = dataclasses.replace(user, role=role)
        return await self.access_token(user, ["pwd", "otp"], auth_time, session_id=session_id)

    async def session(
        self,
        conn: asyncpg.Connection,
        user: store.User,
        amr: Sequence[str],
        auth_time: int,
        family: store.RefreshToken | None,
    ) -> dict[str, Any]:
        """A new access and refresh token pair: a new family at login, else the next token of `family` (the token
        being rotated), which never outlives the family's `REFRESH_FAMILY_MAX_AGE`. Must run in a transaction:
        the user's row stays share-locked until it commits."""
        role = await store.role_for_new_tokens(conn, user.id)
        if role is None:
            raise ApiError("invalid_token", "The account is disabled")
        user = dataclasses.replace(user, role=role)
        refresh = secrets.token_urlsafe(32)
        now = datetime.now(UTC)
        started = family.family_started_at if family else now
        family_id = family.family_id if family else uuid.uuid4()
        await store.insert_refresh_token(
            conn,
            family_id=family_id,
            user_id=user.id,
            token_hash=token_hash(refresh),
            amr=amr,
            auth_time=auth_time,
            expires_at=min(now + REFRESH_TOKEN_TTL, started + REFRESH_FAMILY_MAX_AGE),
            family_started_at=started,
        )
        return TokenResponse(
            access_token=await self.access_token(user, amr, auth_time, session_id=str(family_id)),
            refresh_token=refresh,
            expires_in=ACCESS_TOKEN_TTL_S,
            user=UserSummary.model_validate(
                {"id": str(user.id), "org_id": str(user.org_id), "role": user.role, "mfa_enrolled": user.mfa_enrolled}
            ),
        ).model_dump(exclude_none=True)


def _family_id(session_id: str) -> uuid.UUID:
    try:
        return uuid.UUID(session_id)
    except ValueError:
        raise ApiError("invalid_token") from None


async def current_user(conn: asyncpg.Connection, principal: Principal) -> store.User:
    """The caller's user row; a token for a deleted, disabled or moved user is no longer valid."""
    user = await store.user_by_id(conn, uuid.UUID(principal.subject))
    if user is None or str(user.org_id) != principal.org_id:
        raise ApiError("invalid_token")
    return user


def live_family(row: store.RefreshToken, now: datetime) -> bool:
    """Whether the token is within its own lifetime and its family's, whatever `expires_at` an older release
    stored."""
    return row.expires_at > now and row.family_started_at + REFRESH_FAMILY_MAX_AGE > now


def _deps(request: Request) -> tuple[asyncpg.Pool, Issuer, LoginGuard]:
    state = request.app.state
    return state.runtime.db.pool, state.issuer, state.login_guard


def users_with_password(candidates: Sequence[store.User], password: str) -> list[store.User]:
    """The candidates whose password `password` is. The accounts of one address share a salt (see `create_user`),
    so this costs one argon2 computation whether the address has no account, one, or one in each of several orgs."""
    matches = passwords_match([user.password_hash for user in candidates], password)
    return [user for user, matched in zip(candidates, matches, strict=True) if matched]


async def guarded_password_check(
    request: Request, account: str, candidates: Callable[[], Awaitable[Sequence[store.User]]], password: str
) -> list[store.User]:
    """`users_with_password` under the login guard of `account` (an email key): 429 while it is locked (before
    `candidates` is awaited), 401 `bad_credentials` counted as a failure when none matches; else the matches."""
    login_guard: LoginGuard = request.app.state.login_guard
    address = request_context(request.scope).client
    decision = await login_guard.check(account, address)
    if not decision.allowed:
        raise rate_limited_error(decision)
    loaded = await candidates()
    # argon2 takes ~70 ms of CPU per check: off the event loop.
    matched = await run_in_threadpool(users_with_password, loaded, password)
    if not matched:
        await login_guard.record_failure(account, address)
        record_security_event("auth.failure", reason="bad_credentials", client=address)
        raise ApiError("bad_credentials")
    await login_guard.record_success(account)
    return matched


@documented("Log in with email and password", request=LoginRequest, response=TokenResponse, tags=["auth"])
async def login(request: Request) -> Response:
    body = await parse_body(request, LoginRequest)
    pool, issuer, _ = _deps(request)

    async def candidates() -> list[store.User]:
        # An address may have an account in several orgs (unique per org: docs/decisions.md); the password picks.
        async with pool.acquire() as conn:
            return await store.users_by_email(conn, body.email, org_id=body.org_id)

    matched = await guarded_password_check(request, email_key(body.email), candidates, body.password)
    if len(matched) > 1:
        # Only someone who knows the password these accounts share gets here, and learns only their orgs.
        async with pool.acquire() as conn:
            names = await store.org_names(conn, [user.org_id for user in matched])
        orgs = [{"id": str(user.org_id), "name": names.get(user.org_id, "")} for user in matched]
        raise ApiError("org_choice_required", "Log in again with one of these org_id values", extra={"orgs": orgs})
    async with pool.acquire() as conn, conn.transaction():
        tokens = await issuer.session(conn, matched[0], ["pwd"], int(time.time()), family=None)
    return JSONResponse(tokens)


@documented("Rotate a refresh token", request=RefreshRequest, response=TokenResponse, tags=["auth"])
async def refresh(request: Request) -> Response:
    body = await parse_body(request, RefreshRequest)
    pool, issuer, _ = _deps(request)
    reused: store.RefreshToken | None = None
    async with pool.acquire() as conn, conn.transaction():
        row = await store.refresh_token_for_update(conn, token_hash(body.refresh_token))
        if row is not None and row.rotated_at is not None and row.revoked_at is None:
            await store.revoke_family(conn, row.family_id)
            reused = row
        elif row is not None and row.revoked_at is None and live_family(row, datetime.now(UTC)):
            user = await store.user_by_id(conn, row.user_id)
            if user is not None:
                await store.mark_rotated(conn, row.id)
                tokens = await issuer.session(conn, user, row.amr, row.auth_time, family=row)
                return JSONResponse(tokens)
    if reused is not None:
        # Whoever holds the family's access tokens, the thief or the user, loses them too.
        await request.app.state.runtime.revocations.revoke(session_id=str(reused.family_id))
        record_security_event("token.invalid", reason="refresh token reused", principal=str(reused.user_id))
    raise ApiError("invalid_token", "The refresh token is invalid, expired or revoked")


@documented("Revoke a refresh token and its family", request=RefreshRequest, status=204, tags=["auth"])
async def logout(request: Request) -> Response:
    body = await parse_body(request, RefreshRequest)
    pool, _, _ = _deps(request)
    async with pool.acquire() as conn, conn.transaction():
        row = await store.refresh_token_for_update(conn, token_hash(body.refresh_token))
        if row is not None:
            await store.revoke_family(conn, row.family_id)
    if row is not None:
        # The session's access tokens stop working on every service within seconds, not at their expiry.
        await request.app.state.runtime.revocations.revoke(session_id=str(row.family_id))
    return Response(status_code=204)


@documented("The caller's profile and MFA status", response=Me, tags=["auth"])
@guard()
async def me(request: Request, principal: Principal) -> Response:
    pool, _, _ = _deps(request)
    async with pool.acquire() as conn:
        user = await current_user(conn, principal)
    return JSONResponse(
        Me(
            id=str(user.id),
            org_id=str(user.org_id),
            role=user.role,  # type: ignore[arg-type]
            mfa_enrolled=user.mfa_enrolled,
            email=user.email,
            amr=list(principal.amr),
            auth_time=principal.auth_time,
        ).model_dump()
    )


@documented("Public keys that verify access tokens", tags=["auth"])
async def jwks(request: Request) -> Response:
    keys: SigningKeys = request.app.state.issuer.keys
    return JSONResponse(await keys.jwks(), headers={"cache-control": f"public, max-age={JWKS_MAX_AGE_S}"})
