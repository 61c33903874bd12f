"""OAuth2 client credentials (RFC 6749 section 4.4) at `POST /auth/oauth/token`, for API clients and services.

authlib's generic `AuthorizationServer` does the protocol (parameter and client-authentication rules, RFC 6749
error bodies); this module is the thin Starlette adapter around it. authlib is synchronous, so everything that
waits happens first: the form is read, the client row loaded and its argon2id secret hash checked (~70 ms of CPU,
in a thread), the signing key fetched. authlib's callbacks then only look at that in-request state.

The token is our normal access token (`kind: client`, subject the client id, the client's org); its scopes are
the requested ones the client is allowed, or all it is allowed when it asks for none. Our own services are clients
too (`service-core`, ...; their secrets are configuration, services/auth/config.py): theirs is a service token,
`kind: service`, audience `SERVICE_AUDIENCE`, no org, with the scopes `SERVICE_SCOPES` gives that service (or those
of them it asks for), which only internal routes accept.
"""

from __future__ import annotations

import asyncio
import hmac
import re
import secrets
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson
from authlib.oauth2.rfc6749 import AuthorizationServer, ClientCredentialsGrant  # type: ignore[import-untyped]
from authlib.oauth2.rfc6749.errors import (  # type: ignore[import-untyped]
    InsecureTransportError,
    InvalidClientError,
    InvalidRequestError,
    InvalidScopeError,
    OAuth2Error,
)
from authlib.oauth2.rfc6749.requests import BasicOAuth2Payload, OAuth2Request  # type: ignore[import-untyped]
from authlib.oauth2.rfc6749.util import extract_basic_authorization  # type: ignore[import-untyped]
from joserfc.jwk import OKPKey
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import Response

from services.auth import store
from services.auth.config import SERVICE_CLIENT_SCOPES, AuthSettings
from services.auth.passwords import hash_password, verify_password
from shared.context import current_request_id, forwarded_scheme, request_context
from shared.metrics import record_security_event
from shared.openapi import documented
from shared.ratelimit import LoginGuard, rate_limited_error
from shared.tokens import ACCESS_TOKEN_TTL_S, SERVICE_AUDIENCE, USER_AUDIENCE, access_claims, sign

GRANT_TYPE = "client_credentials"
AUTH_METHODS = ("client_secret_basic", "client_secret_post")
FORM_MEDIA_TYPE = "application/x-www-form-urlencoded"
CLIENT_ID_PREFIX = "apgms-client-"
CLIENT_ID_RANDOM_BYTES = 9
CLIENT_SECRET_BYTES = 32
# RFC 6749 section 3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")
MAX_CLIENT_NAME_CHARS = 200


# --- pure parts ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Grantee:
    """Whom a token is issued to: an org's API client (a row of `auth.oauth_clients`) or one of our services (no
    org, the scopes of `SERVICE_CLIENT_SCOPES`)."""

    client_id: str
    org_id: uuid.UUID | None
    scopes: list[str]

    @classmethod
    def of_row(cls, row: store.OAuthClient) -> Grantee:
        return cls(row.client_id, row.org_id, row.scopes)

    @classmethod
    def service(cls, client_id: str) -> Grantee:
        return cls(client_id, None, list(SERVICE_CLIENT_SCOPES.get(client_id, ())))

    @property
    def is_service(self) -> bool:
        return self.org_id is None


def granted_scopes(requested: str | None, allowed: Sequence[str]) -> list[str] | None:
    """Requested ∩ allowed (in the allowed order), all of `allowed` when nothing is requested; None when the
    request names scopes and the client may have none of them (`invalid_scope`)."""
    wanted = set((requested or "").split())
    if not wanted:
        return list(allowed)
    granted = [scope for scope in allowed if scope in wanted]
    return granted or None


def valid_scope(scope: str) -> bool:
    return SCOPE_TOKEN.fullmatch(scope) is not None


def token_response(client: Grantee, scopes: Sequence[str], key: OKPKey, issuer: str, now: float) -> dict[str, Any]:
    """The RFC 6749 section 5.1 body for a client token: our access token (a service token for a service), no
    refresh token."""
    claims = access_claims(
        issuer=issuer,
        audience=SERVICE_AUDIENCE if client.is_service else USER_AUDIENCE,
        subject=client.client_id,
        kind="service" if client.is_service else "client",
        org_id=None if client.org_id is None else str(client.org_id),
        role=None,
        scopes=scopes,
        amr=[],
        auth_time=None,
        now=now,
    )
    return {
        "access_token": sign(claims, key),
        "token_type": "Bearer",
        "expires_in": ACCESS_TOKEN_TTL_S,
        "scope": " ".join(scopes),
    }


class MalformedBasicCredentials(Exception):
    pass


def basic_credentials(headers: Mapping[str, str]) -> tuple[str | None, str | None]:
    """HTTP Basic credentials, (None, None) when absent; raises `MalformedBasicCredentials` for a header authlib's
    parser would choke on (bytes that are not UTF-8), so the endpoint answers 401 `invalid_client`, not 500."""
    try:
        client_id, secret = extract_basic_authorization(headers)
    except (ValueError, UnicodeDecodeError):
        raise MalformedBasicCredentials from None
    return client_id, secret


def presented_credentials(headers: Mapping[str, str], form: Mapping[str, str]) -> tuple[str | None, str | None]:
    """The (client id, secret) the request authenticates with: HTTP Basic, else the form fields."""
    basic_id, basic_secret = basic_credentials(headers)
    client_id, secret = (
        (basic_id, basic_secret)
        if basic_id and basic_secret
        else (
            form.get("client_id"),
            form.get("client_secret"),
        )
    )
    # A NUL cannot be in any client id we issued, and PostgreSQL refuses it in a query: no such client.
    if client_id and "\x00" in client_id:
        return None, None
    return client_id, secret


def request_uri(url: str, client_scheme: str | None, *, production: bool) -> str:
    """The URL handed to authlib. TLS ends at the edge, so the https requirement is judged here, on the scheme the
    client used as our trusted proxy reported it (`shared.context.forwarded_scheme`): in production anything else
    raises `InsecureTransportError`. Not left to authlib, whose check passes any loopback host, and behind the
    proxy the services are called on 127.0.0.1 by default. In dev and test any scheme is accepted (what
    `AUTHLIB_INSECURE_TRANSPORT` would do, without changing the process environment)."""
    if production and (client_scheme or url.partition(":")[0]).lower() != "https":
        raise InsecureTransportError()
    return "https" + url[url.index(":") :]


# --- the authlib adapter ---------------------------------------------------------------------------------------


class _Client:
    """authlib's ClientMixin over a row whose secret was already checked (or a stand-in that never authenticates,
    so an unknown client id answers exactly like a wrong secret)."""

    def __init__(self, client_id: str, row: Grantee | None, verified_secret: str | None) -> None:
        self.client_id = client_id
        self.row = row
        self.verified_secret = verified_secret

    def get_client_id(self) -> str:
        return self.client_id

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return endpoint == "token" and method in AUTH_METHODS

    def check_client_secret(self, client_secret: str) -> bool:
        return self.verified_secret is not None and hmac.compare_digest(
            client_secret.encode(), self.verified_secret.encode()
        )

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type == GRANT_TYPE and self.row is not None


class _ClientCredentialsGrant(ClientCredentialsGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = list(AUTH_METHODS)

    def validate_requested_scope(self) -> None:
        if granted_scopes(self.request.payload.scope, self.client.row.scopes) is None:
            raise InvalidScopeError("The client may have none of the requested scopes.")


class _FormRequest(OAuth2Request):  # type: ignore[misc]
    def __init__(self, method: str, uri: str, headers: Mapping[str, str], form: dict[str, str]) -> None:
        super().__init__(method, uri, headers=headers)
        self.payload = BasicOAuth2Payload(form)
        self._form = form

    @property
    def form(self) -> dict[str, str]:
        return self._form

    @property
    def args(self) -> dict[str, str]:
        return {}


class _TokenServer(AuthorizationServer):  # type: ignore[misc]
    """One per request: it holds that request's pre-loaded client and signing key, so no callback does I/O."""

    def __init__(self, client: _Client | None, key: OKPKey, issuer: str) -> None:
        super().__init__()
        self.client = client
        self.key = key
        self.issuer = issuer
        self.register_grant(_ClientCredentialsGrant)

    def query_client(self, client_id: str) -> _Client:
        if self.client is not None and self.client.client_id == client_id:
            return self.client
        return _Client(client_id, None, None)

    def generate_token(self, grant_type: str, client: _Client, scope: str | None = None, **_: Any) -> dict[str, Any]:
        assert client.row is not None
        scopes = granted_scopes(scope, client.row.scopes) or []
        return token_response(client.row, scopes, self.key, self.issuer, time.time())

    def save_token(self, token: dict[str, Any], request: OAuth2Request) -> None:
        """Access tokens are self-contained JWTs: nothing to store."""

    def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
        """No signal system."""

    def create_oauth2_request(self, request: OAuth2Request) -> OAuth2Request:
        return request

    def handle_response(self, status: int, body: dict[str, Any], headers: list[tuple[str, str]]) -> Response:
        return _json(status, body, headers)


def _json(status: int, body: dict[str, Any], headers: Sequence[tuple[str, str]]) -> Response:
    if "error" in body:
        # RFC 6749 error bodies stay as the standard has them (clients parse `error`); the ID is an extra member.
        body = {**body, "request_id": current_request_id.get()}
    plain = {name: value for name, value in headers if name.lower() != "content-type"}
    return Response(orjson.dumps(body), status_code=status, headers=plain, media_type="application/json")


def _error(error: OAuth2Error) -> Response:
    status, body, headers = error()
    return _json(status, body, headers)


def _single_valued(form: FormData) -> dict[str, str] | None:
    """The form as a dict; None when a parameter repeats (RFC 6749 section 3.2) or is a file."""
    values: dict[str, str] = {}
    for name, value in form.multi_items():
        if name in values or not isinstance(value, str):
            return None
        values[name] = value
    return values


@documented("OAuth2 client credentials grant (form-encoded, RFC 6749)", tags=["auth"])
async def token(request: Request) -> Response:
    settings: AuthSettings = request.app.state.runtime.settings
    if request.headers.get("content-type", "").partition(";")[0].strip().lower() != FORM_MEDIA_TYPE:
        return _error(InvalidRequestError(f"Send the parameters as {FORM_MEDIA_TYPE}."))
    form = _single_valued(await request.form())
    if form is None:
        return _error(InvalidRequestError("A parameter is repeated."))
    if not form.get("grant_type"):
        return _error(InvalidRequestError("Missing 'grant_type' parameter."))
    try:
        basic_secret = basic_credentials(request.headers)[1]
    except MalformedBasicCredentials:
        record_security_event("auth.failure", reason="invalid_client", client=request_context(request.scope).client)
        return _error(InvalidClientError("Malformed HTTP Basic credentials.", status_code=401))
    if basic_secret and form.get("client_secret"):
        return _error(InvalidRequestError("Use one client authentication method, not both."))

    address = request_context(request.scope).client
    client_id, secret = presented_credentials(request.headers, form)
    client: _Client | None = None
    if client_id and secret:
        login_guard: LoginGuard = request.app.state.login_guard
        # Per-address attempt limit only: an account lockout would let anyone who knows a client id lock it out,
        # and 256-bit secrets need no lockout against guessing.
        decision = await login_guard.check_address(address)
        if not decision.allowed:
            raise rate_limited_error(decision)
        service_secret = settings.service_clients.get(client_id)
        if service_secret is not None:
            # 256 random bits, configuration rather than a stored hash: a constant-time comparison is enough.
            verified = hmac.compare_digest(secret.encode(), service_secret.reveal().encode())
            client = _Client(client_id, Grantee.service(client_id), secret if verified else None)
        else:
            async with request.app.state.runtime.db.pool.acquire() as conn:
                row = await store.client_by_id(conn, client_id)
            # An unknown client costs the same argon2 time as a wrong secret.
            verified = await run_in_threadpool(verify_password, row.secret_hash if row else None, secret)
            client = _Client(client_id, Grantee.of_row(row) if row else None, secret if verified else None)
    key = await request.app.state.issuer.keys.signing_key()

    # The last X-Forwarded-Proto entry, and only from a trusted hop: the first is whatever the client sent.
    scheme = forwarded_scheme(request.scope, settings.trusted_hops)
    try:
        uri = request_uri(str(request.url), scheme, production=settings.is_production)
        oauth_request = _FormRequest(request.method, uri, request.headers, form)
    except InsecureTransportError as error:
        return _error(error)
    response: Response = _TokenServer(client, key, settings.token_issuer).create_token_response(oauth_request)
    if response.status_code == 401:
        record_security_event("auth.failure", reason="invalid_client", client=address)
    return response


# --- registering clients (the CLI) ------------------------------------------------------------------------------


class ClientError(ValueError):
    """The client cannot be registered as asked; the message says why."""


async def create_client(
    conn: asyncpg.Connection, org_id: uuid.UUID, name: str, scopes: Sequence[str]
) -> tuple[str, str]:
    """Register an API client of `org_id`; returns (client id, secret). Only the secret's argon2id hash is kept,
    so the secret cannot be shown again."""
    name = name.strip()
    if not name or len(name) > MAX_CLIENT_NAME_CHARS:
        raise ClientError(f"the name must be 1-{MAX_CLIENT_NAME_CHARS} characters")
    if not scopes:
        raise ClientError("give the client at least one scope")
    bad = [scope for scope in scopes if not valid_scope(scope)]
    if bad:
        raise ClientError(f"not a valid OAuth scope: {bad[0]!r}")
    if not await store.org_exists(conn, org_id):
        raise ClientError(f"there is no org {org_id}")
    client_id = CLIENT_ID_PREFIX + secrets.token_hex(CLIENT_ID_RANDOM_BYTES)
    secret = secrets.token_urlsafe(CLIENT_SECRET_BYTES)
    secret_hash = await asyncio.to_thread(hash_password, secret)
    await store.insert_client(conn, client_id, org_id, name, secret_hash, list(dict.fromkeys(scopes)))
    return client_id, secret
