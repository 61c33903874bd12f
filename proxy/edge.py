"""What the front door adds to every response: security headers, and the CORS allowlist."""

from __future__ import annotations

from collections.abc import Iterable

from shared.context import header
from shared.errors import problem_response
from shared.metrics import record_security_event
from shared.types import ASGIApp, Message, Receive, Scope, Send

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


def with_security_headers(headers: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The response headers plus ours; an upstream's own value for one of them is kept."""
    out = list(headers)
    present = {name.lower() for name, _ in out}
    out.extend(item for item in SECURITY_HEADERS if item[0] not in present)
    content_type = next((value for name, value in out if name.lower() == b"content-type"), b"")
    if content_type.startswith(b"text/html") and b"content-security-policy" not in present:
        out.append((b"content-security-policy", HTML_CSP))
    return out


def merge_vary(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """One `Vary` listing every value (an upstream's `Vary: Accept-Encoding` must survive our `Vary: Origin`)."""
    values: list[bytes] = []
    for name, value in headers:
        if name.lower() == b"vary":
            values.extend(v.strip() for v in value.split(b",") if v.strip() and v.strip() not in values)
    others = [(name, value) for name, value in headers if name.lower() != b"vary"]
    return [*others, (b"vary", b", ".join(values))] if values else others


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
        origin = host = None
        hosts = 0
        for name, value in scope["headers"]:
            if name == b"host":
                hosts += 1
                host = value.decode("latin-1")
            elif name == b"origin":
                origin = value.decode("latin-1")
        if hosts > 1 or (not host and scope.get("http_version") == "1.1"):
            # RFC 9112 section 3.2: the server must refuse it. Two hosts would let us route, forward and log
            # different ones. (granian hands a missing Host over as an empty one.)
            response = problem_response("bad_request", "An HTTP/1.1 request needs exactly one Host header")
            await response(scope, receive, self._decorating(send, []))
            return
        cors: list[tuple[bytes, bytes]] = []
        if origin is not None and not is_same_origin(origin, host, scope.get("scheme", "http")):
            if origin not in self.allowed_origins:
                record_security_event("cors.reject", origin=origin[:200], path=scope["path"])
                response = problem_response("cors_forbidden", "This origin is not allowed to call the API")
                await response(scope, receive, self._decorating(send, []))
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
                await self._decorating(send, preflight)({"type": "http.response.start", "status": 204, "headers": []})
                await send({"type": "http.response.body", "body": b""})
                return
        await self.app(scope, receive, self._decorating(send, cors))

    @staticmethod
    def _decorating(send: Send, extra: list[tuple[bytes, bytes]]) -> Send:
        async def decorated(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = message.get("headers", ())
                if extra:
                    replaced = {name for name, _ in extra if name != b"vary"}
                    headers = merge_vary([*((k, v) for k, v in headers if k.lower() not in replaced), *extra])
                message = {**message, "headers": with_security_headers(headers)}
            await send(message)

        return decorated
