"""Regulator login and logout, and the session guard of every regulator route.

    @regulator_guard
    async def report(request: Request, session: RegulatorSession) -> Response: ...

A session is one credential and one org for a fixed lifetime (REGULATOR_SESSION_TTL_S, 60 minutes). Its token is
opaque (`rgs_` and 32 random bytes), sent as `Authorization: Bearer <token>` (or in the portal's cookie, which
only the portal's pages read: see `current_session`), and stored as its SHA-256 only; every request checks it
against the session row with one query (`store.live_session`), so a logout, a revocation or an org taken off the
credential refuses the very next request on every replica.

Login checks the access code with exactly one argon2 verification whatever happens (a dummy hash when no credential
has the code's lookup), and answers every refusal — wrong code, unknown lookup, revoked or expired credential, an
org outside the credential — with the same 401 `access_denied`. Attempts are throttled per credential lookup and
per client address with `shared.ratelimit.LoginGuard`, as user login is.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import asyncpg
from pydantic import BaseModel, ConfigDict, Field, StrictStr
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from services.regulator import codes, store
from services.regulator.deps import DEV_SESSION_COOKIE, POOL_ACQUIRE_TIMEOUT_S, SECURE_SESSION_COOKIE, regulator_deps
from services.regulator.models import Credential, RegulatorSession
from shared import audit
from shared.authz import BEARER_CHALLENGE, bearer_token
from shared.context import request_context
from shared.errors import ApiError
from shared.metrics import record_security_event
from shared.openapi import documented
from shared.passwords import token_hash, verify_secret
from shared.ratelimit import rate_limited_error
from shared.validation import parse_body

__all__ = [
    "DEV_SESSION_COOKIE",
    "SESSION_COOKIE",
    "LoginRequest",
    "LoginResponse",
    "SessionEndpoint",
    "current_session",
    "end_session",
    "login",
    "logout",
    "open_session",
    "regulator_guard",
]

# The cookie's name outside dev and test (`__Host-apgms_regulator`; DEV_SESSION_COOKIE in dev and test):
# `regulator_deps(request).session_cookie` is the one this process reads and the portal sets.
SESSION_COOKIE = SECURE_SESSION_COOKIE

SessionEndpoint = Callable[[Request, RegulatorSession], Awaitable[Response]]


class LoginRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    access_code: StrictStr = Field(max_length=codes.MAX_ACCESS_CODE_CHARS)
    org_id: uuid.UUID


class SessionView(BaseModel):
    id: str
    org_id: str
    credential: str
    expires_at: datetime


class LoginResponse(BaseModel):
    token: str
    token_type: str = "Bearer"  # noqa: S105 (the scheme's name)
    session: SessionView


def _access_denied() -> ApiError:
    return ApiError("access_denied", "The access code, credential or org was not accepted")


async def current_session(request: Request, *, cookie: bool = False) -> RegulatorSession:
    """The live session of the request's bearer token (with `cookie`, or else the portal's cookie); 401
    `unauthorized` without one, `invalid_token` for anything that is not a live session's token (a user's JWT
    included).

    Only the portal passes `cookie=True`: its forms carry a CSRF token. The JSON API and `POST /regulator/logout`
    read the bearer token alone, so a browser's cookie (sent by the browser on its own) never authenticates them.
    """
    deps = regulator_deps(request)
    token = bearer_token(request) or (request.cookies.get(deps.session_cookie) if cookie else None)
    if not token:
        raise ApiError(
            "unauthorized",
            "Log in: POST /regulator/login, then Authorization: Bearer <token>",
            headers=BEARER_CHALLENGE,
        )
    session = None
    if codes.is_session_token(token):
        async with deps.pool.acquire(timeout=POOL_ACQUIRE_TIMEOUT_S) as conn:
            session = await store.live_session(conn, token_hash(token))
    if session is None:
        record_security_event("token.invalid", reason="no live regulator session", path=request.url.path)
        raise ApiError("invalid_token", "The session is invalid, ended or expired", headers=BEARER_CHALLENGE)
    return session


def regulator_guard(endpoint: SessionEndpoint) -> Callable[[Request], Awaitable[Response]]:
    """Run `endpoint` only for a live regulator session, which it receives as second argument."""

    @functools.wraps(endpoint)
    async def guarded(request: Request) -> Response:
        return await endpoint(request, await current_session(request))

    return guarded


def _admits(credential: Credential | None, verified: bool, org_id: uuid.UUID, now: datetime) -> bool:
    return (
        credential is not None
        and verified
        and credential.revoked_at is None
        and credential.expires_at > now
        and org_id in credential.org_ids
    )


async def open_session(request: Request, access_code: str, org_id: uuid.UUID) -> tuple[str, RegulatorSession]:
    """Log in: a new session token (shown once) and its session, audited as `regulator.login` in the org's chain
    in the transaction that stores it. 429 `rate_limited` while throttled or locked; 401 `access_denied` for every
    refusal, after one argon2 verification."""
    deps = regulator_deps(request)
    address = request_context(request.scope).client
    lookup = codes.parse_lookup(access_code)
    # A malformed code has no lookup: it is throttled by address only (its own text never repeats a lock key).
    account = f"lookup:{lookup}" if lookup is not None else f"malformed:{access_code}"
    decision = await deps.login_guard.check(account, address)
    if not decision.allowed:
        raise rate_limited_error(decision)
    credential = None
    if lookup is not None:
        async with deps.pool.acquire(timeout=POOL_ACQUIRE_TIMEOUT_S) as conn:
            credential = await store.credential_by_lookup(conn, lookup)
    # argon2 takes ~70 ms of CPU: off the event loop; always exactly one verification.
    verified = await run_in_threadpool(verify_secret, credential.code_hash if credential else None, access_code)
    if not _admits(credential, verified, org_id, datetime.now(UTC)):
        await deps.login_guard.record_failure(account, address)
        record_security_event("auth.failure", reason="access_denied", kind="regulator", client=address)
        raise _access_denied()
    assert credential is not None
    await deps.login_guard.record_success(account)
    token = codes.new_session_token()
    expires_at = datetime.now(UTC) + timedelta(seconds=deps.settings.session_ttl_s)
    async with deps.pool.acquire(timeout=POOL_ACQUIRE_TIMEOUT_S) as conn, conn.transaction():
        if await store.credential_for_session(conn, credential.id, org_id) is None:
            raise _access_denied()  # revoked (or the org removed) while the code was being checked
        session = await store.insert_session(
            conn, credential=credential, org_id=org_id, token_hash=token_hash(token), expires_at=expires_at
        )
        await _audit(conn, session, "regulator.login")
    return token, session


async def end_session(request: Request, session: RegulatorSession) -> None:
    """Log out: end the session, audited as `regulator.logout`; 401 `invalid_token` when it ended meanwhile."""
    deps = regulator_deps(request)
    async with deps.pool.acquire(timeout=POOL_ACQUIRE_TIMEOUT_S) as conn, conn.transaction():
        if not await store.end_session(conn, session.id):
            raise ApiError("invalid_token", "The session has already ended", headers=BEARER_CHALLENGE)
        await _audit(conn, session, "regulator.logout")


async def _audit(conn: asyncpg.Connection, session: RegulatorSession, action: str) -> None:
    await audit.append(
        conn,
        org_id=session.org_id,
        actor=session.actor,
        action=action,
        target=f"regulator_session:{session.id}",
        detail={"session_id": str(session.id), "credential_id": str(session.credential_id)},
    )


@documented(
    "Log in with a regulator access code for one org", request=LoginRequest, response=LoginResponse, tags=["regulator"]
)
async def login(request: Request) -> Response:
    body = await parse_body(request, LoginRequest)
    token, session = await open_session(request, body.access_code, body.org_id)
    view = SessionView(
        id=str(session.id),
        org_id=str(session.org_id),
        credential=session.credential_name,
        expires_at=session.expires_at,
    )
    return JSONResponse(
        LoginResponse(token=token, session=view).model_dump(mode="json"), headers={"cache-control": "no-store"}
    )


@documented("End the regulator session", status=204, tags=["regulator"])
@regulator_guard
async def logout(request: Request, session: RegulatorSession) -> Response:
    await end_session(request, session)
    return Response(status_code=204)
