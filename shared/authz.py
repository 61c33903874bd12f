"""Authentication and authorization for routes: bearer token → `Principal` → role, scope and step-up checks.

    @guard(roles={"admin"}, step_up=True)
    async def create_user(request: Request, principal: Principal) -> Response: ...

Missing token → 401 `unauthorized`; bad token → 401 `invalid_token`; wrong kind, role or scope → 403
`forbidden`; no `otp` step-up within 10 minutes → 401 `mfa_required` (counted as
`security_events_total{event="mfa.denied"}`), for users with and without MFA enrolled.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import Any

import aiohttp
from starlette.requests import Request
from starlette.responses import Response

from shared.context import request_state
from shared.errors import ApiError
from shared.metrics import record_security_event
from shared.tokens import JwksCache, Principal, TokenError, Verifier

JWKS_PATH = "/auth/.well-known/jwks.json"
JWKS_FETCH_TIMEOUT_S = 2.0
BEARER_CHALLENGE = {"www-authenticate": 'Bearer realm="apgms"'}

Endpoint = Callable[[Request, Principal], Awaitable[Response]]


def bearer_token(request: Request) -> str | None:
    value = request.headers.get("authorization", "")
    scheme, _, token = value.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def http_jwks_fetcher(
    auth_url: str,
) -> tuple[Callable[[], Awaitable[Mapping[str, Any]]], Callable[[], Awaitable[None]]]:
    """A JWKS fetcher over HTTP from the auth service, and the function that closes its session."""
    session: aiohttp.ClientSession | None = None

    async def fetch() -> Mapping[str, Any]:
        nonlocal session
        if session is None:
            session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=JWKS_FETCH_TIMEOUT_S))
        async with session.get(auth_url + JWKS_PATH) as response:
            response.raise_for_status()
            body: Mapping[str, Any] = await response.json()
            return body

    async def close() -> None:
        if session is not None:
            await session.close()

    return fetch, close


async def authenticate(request: Request, verifier: Verifier) -> Principal:
    token = bearer_token(request)
    if token is None:
        raise ApiError("unauthorized", "Send an access token: Authorization: Bearer <token>", headers=BEARER_CHALLENGE)
    try:
        principal = await verifier.principal(token)
    except TokenError as exc:
        record_security_event("token.invalid", reason=str(exc), path=request.url.path)
        raise ApiError("invalid_token", headers=BEARER_CHALLENGE) from None
    request_state(request.scope).principal = principal
    return principal


def authorize(
    principal: Principal,
    *,
    kinds: Collection[str],
    roles: Collection[str] | None,
    scopes: Collection[str] | None,
    step_up: bool,
    now: float,
) -> None:
    """Raise the right ApiError when `principal` may not proceed; a pure function of its inputs."""
    if principal.kind not in kinds:
        raise ApiError("forbidden", f"This route is not for {principal.kind} tokens")
    if roles is not None and principal.kind == "user" and principal.role not in roles:
        raise ApiError("forbidden", f"Requires one of the roles: {', '.join(sorted(roles))}")
    if scopes is not None and principal.kind == "client" and not set(scopes) <= principal.scopes:
        raise ApiError("forbidden", f"Requires the scopes: {' '.join(sorted(scopes))}")
    if step_up and not principal.stepped_up(now):
        record_security_event("mfa.denied", org_id=principal.org_id, principal=principal.subject)
        raise ApiError(
            "mfa_required",
            "Confirm with a one-time code: POST /auth/mfa/step-up (enrol first at /auth/mfa/totp/begin "
            "if you have no authenticator yet)",
        )


def guard(
    *,
    roles: Collection[str] | None = None,
    scopes: Collection[str] | None = None,
    step_up: bool = False,
    kinds: Collection[str] = ("user",),
) -> Callable[[Endpoint], Callable[[Request], Awaitable[Response]]]:
    """Wrap an endpoint so it runs only for an authorized principal, which it receives as second argument."""

    def wrap(endpoint: Endpoint) -> Callable[[Request], Awaitable[Response]]:
        @functools.wraps(endpoint)
        async def guarded(request: Request) -> Response:
            principal = await authenticate(request, request.app.state.runtime.verifier)
            authorize(principal, kinds=kinds, roles=roles, scopes=scopes, step_up=step_up, now=time.time())
            return await endpoint(request, principal)

        return guarded

    return wrap


def new_verifier(
    fetch: Callable[[], Awaitable[Mapping[str, Any]]],
    issuer: str,
    audience: str,
    revoked: Callable[[Principal], bool] | None = None,
) -> Verifier:
    return Verifier(JwksCache(fetch), issuer=issuer, audience=audience, revoked=revoked)
