"""Service-to-service HTTP calls with a client-credentials token from the auth service.

    client = request.app.state.runtime.service_client   # built from SERVICE_CLIENT_SECRET (shared.app)
    users = await client.get_json(f"{settings.auth_url}/internal/orgs/{org_id}/users")
    summary = await client.get_msgpack(f"{settings.core_url}/internal/orgs/{org_id}/bank-lines/summary?...")

The token is fetched on first use, cached, and refreshed `TOKEN_REFRESH_EARLY_S` before it expires; concurrent
callers share one fetch. Every call carries `Authorization: Bearer`, and the current request's `x-request-id`
and `traceparent` so one request can be followed across services. A 401 (a key rotation the cache has not seen,
a revoked token) fetches a new token and retries once. Without a session of the caller's, the client opens its
own on first use (bounded, every call with a deadline) and `close()` closes it.

`get_msgpack` asks an internal route for `application/msgpack` (shared.negotiation) and decodes whichever of
msgpack or JSON the answer is in, so the caller gets the same document either way.

Every answer is read into memory, so at most `max_bytes` of it (MAX_RESPONSE_BYTES unless the client or the call
says otherwise): a larger one (by its Content-Length, or as it arrives) is abandoned there and the call raises
`ResponseTooLarge`, an `aiohttp.ClientError` like any answer that could not be read.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson
from multidict import CIMultiDictProxy

from shared.config import Secret
from shared.context import REQUEST_ID_HEADER, TRACEPARENT_HEADER, current_request_id, current_traceparent
from shared.negotiation import JSON_MEDIA_TYPE, MSGPACK_MEDIA_TYPE, decode

__all__ = [
    "MAX_RESPONSE_BYTES",
    "ResponseTooLarge",
    "ServiceAuthError",
    "ServiceCallError",
    "ServiceClient",
    "ServiceResponse",
    "basic_credentials",
    "context_headers",
    "read_bounded",
    "refresh_time",
]

TOKEN_PATH = "/auth/oauth/token"  # noqa: S105 (a path, not a secret)
TOKEN_REFRESH_EARLY_S = 60.0
TOKEN_REQUEST_TIMEOUT_S = 5.0
ERROR_BODY_PREVIEW_CHARS = 200
# The session a client opens for itself: at most this many connections, each call done within the timeout.
SERVICE_CALL_POOL_SIZE = 50
SERVICE_CALL_TIMEOUT_S = 10.0
# The most of one answer held in memory. The largest internal answers are an evidence pack's export (its payload in
# base64, hundreds of kB) and a page of at most MAX_PAGE_SIZE items; 8 MiB is ten times that, and a few dozen such
# reads at once still fit a service's memory, where an unbounded one (a bug upstream) need not.
MAX_RESPONSE_BYTES = 8 * 1024 * 1024
# A token answer is a few hundred bytes.
TOKEN_RESPONSE_MAX_BYTES = 64 * 1024


class ResponseTooLarge(aiohttp.ClientPayloadError):
    """An answer longer than the call's bound; it was not read past the bound."""

    def __init__(self, url: str, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        super().__init__(f"the answer of {url} is larger than {max_bytes} bytes")


async def read_bounded(response: aiohttp.ClientResponse, max_bytes: int) -> bytes:
    """The body of `response`, or `ResponseTooLarge` as soon as it (or its Content-Length) exceeds `max_bytes`."""
    url = str(response.url)
    if response.content_length is not None and response.content_length > max_bytes:
        raise ResponseTooLarge(url, max_bytes)
    body = bytearray()
    async for chunk in response.content.iter_chunked(64 * 1024):
        body += chunk
        if len(body) > max_bytes:
            raise ResponseTooLarge(url, max_bytes)
    return bytes(body)


class ServiceAuthError(Exception):
    """The auth service did not issue a token (bad credentials, unreachable, malformed answer)."""


class ServiceCallError(Exception):
    """A service answered with a non-2xx status where a successful JSON answer was expected."""

    def __init__(self, method: str, url: str, status: int, body: bytes) -> None:
        self.status = status
        self.body = body
        preview = body[:ERROR_BODY_PREVIEW_CHARS].decode(errors="replace")
        super().__init__(f"{method} {url} answered {status}: {preview}")


@dataclass(frozen=True)
class ServiceResponse:
    """A fully read response (the connection is already back in the pool)."""

    status: int
    headers: CIMultiDictProxy[str]
    body: bytes

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def json(self) -> Any:
        return orjson.loads(self.body)

    def document(self) -> Any:
        """The body decoded by its Content-Type: msgpack for `application/msgpack`, else JSON."""
        media_type = self.headers.get("content-type", "").partition(";")[0].strip().lower()
        return decode(self.body, MSGPACK_MEDIA_TYPE if media_type == MSGPACK_MEDIA_TYPE else JSON_MEDIA_TYPE)


@dataclass(frozen=True)
class CachedToken:
    value: str
    refresh_at: float


def refresh_time(now: float, expires_in_s: float, early_s: float = TOKEN_REFRESH_EARLY_S) -> float:
    """When to fetch a new token: `early_s` before it expires, or half-way through a lifetime shorter than that."""
    return now + max(expires_in_s - early_s, expires_in_s / 2, 0.0)


def context_headers() -> dict[str, str]:
    """The current request's ID and trace context, for an outgoing call."""
    headers = {}
    if (request_id := current_request_id.get()) is not None:
        headers[REQUEST_ID_HEADER] = request_id
    if (traceparent := current_traceparent.get()) is not None:
        headers[TRACEPARENT_HEADER] = traceparent
    return headers


def basic_credentials(client_id: str, client_secret: str) -> str:
    """RFC 6749 section 2.3.1: id and secret are form-encoded before they go into HTTP Basic."""
    return aiohttp.encode_basic_auth(quote(client_id, safe=""), quote(client_secret, safe=""))


class ServiceClient:
    """Calls other services as the API client `client_id`; one per process, on the caller's session or its own."""

    def __init__(
        self,
        auth_url: str,
        client_id: str,
        client_secret: str | Secret,
        session: aiohttp.ClientSession | None = None,
        *,
        scopes: Sequence[str] = (),
        clock: Callable[[], float] = time.monotonic,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
    ) -> None:
        self.token_url = auth_url.rstrip("/") + TOKEN_PATH
        self.client_id = client_id
        self._secret = client_secret if isinstance(client_secret, Secret) else Secret(client_secret)
        self._session = session
        self._owns_session = session is None
        self.scopes = tuple(scopes)
        self._clock = clock
        self.max_response_bytes = max_response_bytes
        self._token: CachedToken | None = None
        self._lock = asyncio.Lock()

    @property
    def session(self) -> aiohttp.ClientSession:
        """The caller's session, or the client's own, opened on first use (inside the running event loop)."""
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=SERVICE_CALL_POOL_SIZE),
                timeout=aiohttp.ClientTimeout(total=SERVICE_CALL_TIMEOUT_S),
            )
        return self._session

    async def close(self) -> None:
        """Close the session the client opened for itself (a caller's stays open)."""
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    async def access_token(self) -> str:
        """A valid token, from the cache or fetched (one fetch at a time, shared by everyone waiting)."""
        cached = self._token
        if cached is not None and self._clock() < cached.refresh_at:
            return cached.value
        async with self._lock:
            cached = self._token
            if cached is not None and self._clock() < cached.refresh_at:
                return cached.value
            self._token = await self._fetch_token()
            return self._token.value

    def forget_token(self, token: str) -> None:
        """Drop `token` from the cache (it was refused); a newer token fetched meanwhile is kept."""
        if self._token is not None and self._token.value == token:
            self._token = None

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        max_bytes: int | None = None,
        **kwargs: Any,
    ) -> ServiceResponse:
        """One call with the token and the request context; on a 401 a new token is fetched and the call retried
        once. The answer is read up to `max_bytes` (the client's `max_response_bytes` when None)."""
        limit = self.max_response_bytes if max_bytes is None else max_bytes
        token = await self.access_token()
        response = await self._send(method, url, token, headers, limit, kwargs)
        if response.status == 401:
            self.forget_token(token)
            response = await self._send(method, url, await self.access_token(), headers, limit, kwargs)
        return response

    async def get_json(self, url: str, *, max_bytes: int | None = None, **kwargs: Any) -> Any:
        """The JSON body of a GET; `ServiceCallError` for any non-2xx answer."""
        response = await self.request("GET", url, max_bytes=max_bytes, **kwargs)
        if not response.ok:
            raise ServiceCallError("GET", url, response.status, response.body)
        return response.json()

    async def get_msgpack(
        self, url: str, *, headers: Mapping[str, str] | None = None, max_bytes: int | None = None, **kwargs: Any
    ) -> Any:
        """The body of a GET asked for as msgpack, decoded (from JSON if that is what came); `ServiceCallError` for
        any non-2xx answer."""
        response = await self.request(
            "GET", url, headers={**(headers or {}), "accept": MSGPACK_MEDIA_TYPE}, max_bytes=max_bytes, **kwargs
        )
        if not response.ok:
            raise ServiceCallError("GET", url, response.status, response.body)
        return response.document()

    async def _send(
        self,
        method: str,
        url: str,
        token: str,
        headers: Mapping[str, str] | None,
        max_bytes: int,
        kwargs: Mapping[str, Any],
    ) -> ServiceResponse:
        outgoing = {**context_headers(), **(headers or {}), "authorization": f"Bearer {token}"}
        async with self.session.request(method, url, headers=outgoing, **kwargs) as response:
            body = await read_bounded(response, max_bytes)
            return ServiceResponse(response.status, response.headers, body)

    async def _fetch_token(self) -> CachedToken:
        form = {"grant_type": "client_credentials"}
        if self.scopes:
            form["scope"] = " ".join(self.scopes)
        headers = {**context_headers(), "authorization": basic_credentials(self.client_id, self._secret.reveal())}
        try:
            async with self.session.post(
                self.token_url,
                data=form,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=TOKEN_REQUEST_TIMEOUT_S),
            ) as response:
                body = await read_bounded(response, TOKEN_RESPONSE_MAX_BYTES)
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as error:
            raise ServiceAuthError(f"token request to {self.token_url} failed: {type(error).__name__}") from error
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError:
            document = None
        if status != 200 or not isinstance(document, dict):
            code = document.get("error") if isinstance(document, dict) else None
            raise ServiceAuthError(f"token request for client {self.client_id} refused: {status} {code or ''}".strip())
        value, expires_in = document.get("access_token"), document.get("expires_in")
        if not isinstance(value, str) or not isinstance(expires_in, int | float) or isinstance(expires_in, bool):
            raise ServiceAuthError("token response lacks access_token or expires_in")
        return CachedToken(value, refresh_time(self._clock(), float(expires_in)))
