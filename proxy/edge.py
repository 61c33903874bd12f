"""What the front door adds to every response: security headers, and the CORS allowlist."""

from __future__ import annotations

from collections.abc import Callable

from shared.context import HeaderHook, header, watch_response
from shared.errors import problem_response
from shared.metrics import record_security_event
from shared.types import ASGIApp, Receive, Scope, Send

SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
)
HTML_CSP = (
    b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    b"frame-ancestors 'none'; form-action 'self'; base-uri 'none'; object-src 'none'"
)
CORS_ALLOW_METHODS = "GET, POST, PUT, PATCH, DELETE, OPTIONS"
CORS_ALLOW_HEADERS = "authorization, content-type, idempotency-key, x-request-id, traceparent"
CORS_EXPOSE_HEADERS = "x-request-id, idempotent-replay, retry-after"
CORS_MAX_AGE_S = 600


SECURITY_HEADER_NAMES = frozenset(name for name, _ in SECURITY_HEADERS)


def with_security_headers(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The response headers plus ours (a CSP for HTML); an upstream's own value for one of them is kept.
    One pass over the headers: this runs for every response."""
    present: set[bytes] = set()
    content_type: bytes | None = None
    for name, value in headers:  # ASGI header names are lowercase (Starlette's and the forwarder's are)
        if name in SECURITY_HEADER_NAMES or name == b"content-security-policy":
            present.add(name)
        elif name == b"content-type" and content_type is None:
            content_type = value
    if present:
        headers.extend(item for item in SECURITY_HEADERS if item[0] not in present)
    else:
        headers.extend(SECURITY_HEADERS)
    if content_type is not None and content_type.startswith(b"text/html") and b"content-security-policy" not in present:
        headers.append((b"content-security-policy", HTML_CSP))
    return headers


def merge_vary(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """One `Vary` listing every value (an upstream's `Vary: Accept-Encoding` must survive our `Vary: Origin`)."""
    values: list[bytes] = []
    for name, value in headers:
        if name.lower() == b"vary":
            values.extend(v.strip() for v in value.split(b",") if v.strip() and v.strip() not in values)
    others = [(name, value) for name, value in headers if name.lower() != b"vary"]
    return [*others, (b"vary", b", ".join(values))] if values else others


def with_cors(extra: list[tuple[bytes, bytes]]) -> Callable[[list[tuple[bytes, bytes]]], list[tuple[bytes, bytes]]]:
    """A header hook: the CORS headers `extra` (replacing an upstream's own), then the security headers."""
    replaced = {name for name, _ in extra if name != b"vary"}

    def decorate(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        headers = merge_vary([*((k, v) for k, v in headers if k.lower() not in replaced), *extra])
        return with_security_headers(headers)

    return decorate


def is_same_origin(origin: str, host: str | None, scheme: str) -> bool:
    return host is not None and origin == f"{scheme}://{host}"


class EdgeMiddleware:
    """Refuses cross-origin requests from origins not on the allowlist (403 `cors_forbidden`), answers
    preflights, and adds CORS and security headers to every response."""

    def __init__(self, app: ASGIApp, *, allowed_origins: frozenset[str]) -> None:
        self.app = app
        self.allowed_origins = allowed_origins

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        exchange, send = watch_response(scope, send)
        hooks = exchange.header_hooks
        origin = host = None
        hosts = 0
        for name, value in scope["headers"]:
            if name == b"host":
                hosts += 1
                host = value
            elif name == b"origin":
                origin = value
        if hosts > 1 or (not host and scope.get("http_version") == "1.1"):
            # RFC 9112 section 3.2: the server must refuse it. Two hosts would let us route, forward and log
            # different ones. (granian hands a missing Host over as an empty one.)
            hooks.append(with_security_headers)
            response = problem_response("bad_request", "An HTTP/1.1 request needs exactly one Host header")
            await response(scope, receive, send)
            return
        if origin is None:  # most requests: API clients and integrations send no Origin
            hooks.append(with_security_headers)
            await self.app(scope, receive, send)
            return
        await self._cross_origin(
            scope, receive, send, hooks, origin.decode("latin-1"), host.decode("latin-1") if host else None
        )

    async def _cross_origin(
        self, scope: Scope, receive: Receive, send: Send, hooks: list[HeaderHook], origin: str, host: str | None
    ) -> None:
        if is_same_origin(origin, host, scope.get("scheme", "http")):
            hooks.append(with_security_headers)
            await self.app(scope, receive, send)
            return
        if origin not in self.allowed_origins:
            record_security_event("cors.reject", origin=origin[:200], path=scope["path"])
            hooks.append(with_security_headers)
            await problem_response("cors_forbidden", "This origin is not allowed to call the API")(scope, receive, send)
            return
        cors = [
            (b"access-control-allow-origin", origin.encode("latin-1")),
            (b"access-control-allow-credentials", b"true"),
            (b"access-control-expose-headers", CORS_EXPOSE_HEADERS.encode()),
            (b"vary", b"Origin"),
        ]
        if scope["method"] == "OPTIONS" and header(scope, b"access-control-request-method"):
            preflight = [
                *cors,
                (b"access-control-allow-methods", CORS_ALLOW_METHODS.encode()),
                (b"access-control-allow-headers", CORS_ALLOW_HEADERS.encode()),
                (b"access-control-max-age", str(CORS_MAX_AGE_S).encode()),
            ]
            hooks.append(with_cors(preflight))
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        hooks.append(with_cors(cors))
        await self.app(scope, receive, send)
