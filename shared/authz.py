"""Authentication and authorization for routes: bearer token → `Principal` → role, scope and step-up checks.

    @guard(roles={"admin"}, step_up=True)
    async def create_user(request: Request, principal: Principal) -> Response: ...

    @guard(audience=SERVICE_AUDIENCE)      # an internal route: service tokens only
    async def org_summary(request: Request, principal: Principal) -> Response: ...

A guard accepts the tokens of one audience: user routes (the default) `USER_AUDIENCE`, internal routes
`SERVICE_AUDIENCE`, so a service token opens no user route and a user's token no internal one, whatever the kinds.

Scopes are checked for the tokens that carry them, an org API client's and a service's (a user's rights are its
role): `guard(audience=SERVICE_AUDIENCE, scopes=("core:read",))` admits only services given `core:read`.

Missing token → 401 `unauthorized`; bad token → 401 `invalid_token`; wrong kind, role or scope → 403
`forbidden`; no `otp` step-up within 10 minutes → 401 `mfa_required` (counted as
`security_events_total{event="mfa.denied"}`), for users with and without MFA enrolled.

Then a service's own checks of an authorized principal run, `runtime.principal_checks` in order (async callables
`(request, principal) -> None` that raise an ApiError to refuse): core registers one answering 410 `gone` for every
route of a deleted org. They run after authorization, so a refused token learns nothing from them.
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
from shared.tokens import SERVICE_AUDIENCE, USER_AUDIENCE, JwksCache, JwksFetcher, Principal, TokenError, Verifier

__all__ = [
    "BEARER_CHALLENGE",
    "JWKS_PATH",
    "Endpoint",
    "PrincipalCheck",
    "authenticate",
    "authorize",
    "bearer_token",
    "guard",
    "http_jwks_fetcher",
    "new_verifiers",
]

JWKS_PATH = "/auth/.well-known/jwks.json"
JWKS_FETCH_TIMEOUT_S = 2.0
BEARER_CHALLENGE = {"www-authenticate": 'Bearer realm="apgms"'}
# The principal kinds a guard admits unless told otherwise: what each audience's tokens are issued to.
DEFAULT_KINDS = {USER_AUDIENCE: ("user",), SERVICE_AUDIENCE: ("service",)}
# The kinds whose tokens carry scopes (an org's API client's, a service's): a user's rights are its role.
SCOPED_KINDS = ("client", "service")

Endpoint = Callable[[Request, Principal], Awaitable[Response]]
# A service's own check of an authorized principal (`Runtime.principal_checks`): raises an ApiError to refuse.
PrincipalCheck = Callable[[Request, Principal], Awaitable[None]]


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
    if scopes is not None and principal.kind in SCOPED_KINDS and not set(scopes) <= principal.scopes:
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
    kinds: Collection[str] | None = None,
    audience: str = USER_AUDIENCE,
) -> Callable[[Endpoint], Callable[[Request], Awaitable[Response]]]:
    """Wrap an endpoint so it runs only for an authorized principal, which it receives as second argument: a token
    for `audience` (verified by `runtime.verifier_for(audience)`) of one of `kinds` (by default the audience's
    own: users for USER_AUDIENCE, services for SERVICE_AUDIENCE)."""
    admitted = DEFAULT_KINDS.get(audience, ()) if kinds is None else tuple(kinds)

    def wrap(endpoint: Endpoint) -> Callable[[Request], Awaitable[Response]]:
        @functools.wraps(endpoint)
        async def guarded(request: Request) -> Response:
            runtime = request.app.state.runtime
            principal = await authenticate(request, runtime.verifier_for(audience))
            authorize(principal, kinds=admitted, roles=roles, scopes=scopes, step_up=step_up, now=time.time())
            for check in runtime.principal_checks:
                await check(request, principal)
            return await endpoint(request, principal)

        return guarded

    return wrap


def new_verifiers(
    fetch: JwksFetcher, issuer: str, revoked: Callable[[Principal], bool] | None = None
) -> dict[str, Verifier]:
    """A verifier for user tokens and one for service tokens, sharing one JWKS cache (keyed by audience)."""
    keys = JwksCache(fetch)
    return {
        audience: Verifier(keys, issuer=issuer, audience=audience, revoked=revoked)
        for audience in (USER_AUDIENCE, SERVICE_AUDIENCE)
    }
