"""What the front door adds to every response: security headers (HSTS too in production), the CORS allowlist, and
in production the Host allowlist."""

from __future__ import annotations

from collections.abc import Callable

from proxy.headers import requested_host
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
# A refused Origin is logged cut to this length: it is the client's to choose.
LOGGED_ORIGIN_CHARS = 200
# The proxy's own endpoints, which the Host allowlist does not apply to: load balancer and Kubernetes probes send
# the instance's address as Host, Prometheus the target's name. Nothing there builds a link from the host or
# carries it to a service, and `/metrics` and `/federate` need the scrape credential in production.
HOST_EXEMPT_PATHS = frozenset({"/health", "/ready", "/metrics", "/federate"})


# Two years with subdomains, the preload list's requirement; production only: TLS ends in front of the proxy there,
# and a developer's browser must not remember it for localhost.
HSTS = (b"strict-transport-security", b"max-age=63072000; includeSubDomains")
PRODUCTION_SECURITY_HEADERS = (*SECURITY_HEADERS, HSTS)
RawHeaders = list[tuple[bytes, bytes]]


def security_headers(defaults: tuple[tuple[bytes, bytes], ...]) -> Callable[[RawHeaders], RawHeaders]:
    """A header hook adding `defaults` (and a CSP for HTML); an upstream's own value for one of them is kept."""
    names = frozenset(name for name, _ in defaults)

    def add(headers: RawHeaders) -> RawHeaders:
        # One pass over the headers: this runs for every response.
        present: set[bytes] = set()
        content_type: bytes | None = None
        for name, value in headers:  # ASGI header names are lowercase (Starlette's and the forwarder's are)
            if name in names or name == b"content-security-policy":
                present.add(name)
            elif name == b"content-type" and content_type is None:
                content_type = value
        if present:
            headers.extend(item for item in defaults if item[0] not in present)
        else:
            headers.extend(defaults)
        if (
            content_type is not None
            and content_type.startswith(b"text/html")
            and b"content-security-policy" not in present
        ):
            headers.append((b"content-security-policy", HTML_CSP))
        return headers

    return add


with_security_headers = security_headers(SECURITY_HEADERS)


def merge_vary(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """One `Vary` listing every value (an upstream's `Vary: Accept-Encoding` must survive our `Vary: Origin`)."""
    values: list[bytes] = []
    for name, value in headers:
        if name.lower() == b"vary":
            values.extend(v.strip() for v in value.split(b",") if v.strip() and v.strip() not in values)
    others = [(name, value) for name, value in headers if name.lower() != b"vary"]
    return [*others, (b"vary", b", ".join(values))] if values else others


def with_cors(
    extra: list[tuple[bytes, bytes]], secure: Callable[[RawHeaders], RawHeaders] = with_security_headers
) -> Callable[[RawHeaders], RawHeaders]:
    """A header hook: the CORS headers `extra` (replacing an upstream's own), then the security headers."""
    replaced = {name for name, _ in extra if name != b"vary"}

    def decorate(headers: RawHeaders) -> RawHeaders:
        headers = merge_vary([*((k, v) for k, v in headers if k.lower() not in replaced), *extra])
        return secure(headers)

    return decorate


def is_same_origin(origin: str, host: str | None, scheme: str) -> bool:
    return host is not None and origin == f"{scheme}://{host}"


class EdgeMiddleware:
    """Refuses cross-origin requests from origins not on the allowlist (403 `cors_forbidden`), answers
    preflights, and adds CORS and security headers to every response.

    With `public_hosts` (production), a request for any other host is 400 `bad_host` (issue #9, finding 11: the
    `X-Forwarded-Host` the services see, and build links from, is never attacker-chosen), except on
    `HOST_EXEMPT_PATHS`; the host is the trusted `X-Forwarded-Host` when `trusted_hops` > 0 and a proxy of ours
    sent one, else `Host`. With `hsts`, every response says `Strict-Transport-Security`."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        allowed_origins: frozenset[str],
        public_hosts: frozenset[bytes] | None = None,
        trusted_hops: int = 0,
        hsts: bool = False,
    ) -> None:
        self.app = app
        self.allowed_origins = allowed_origins
        self.public_hosts = public_hosts
        self.trusted_hops = trusted_hops
        self.secure = security_headers(PRODUCTION_SECURITY_HEADERS) if hsts else with_security_headers

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
            hooks.append(self.secure)
            response = problem_response("bad_request", "An HTTP/1.1 request needs exactly one Host header")
            await response(scope, receive, send)
            return
        if (
            self.public_hosts is not None
            and self.public_host(scope) not in self.public_hosts
            and scope["path"] not in HOST_EXEMPT_PATHS
        ):
            hooks.append(self.secure)
            await problem_response("bad_host", "This host is not served here")(scope, receive, send)
            return
        if origin is None:  # most requests: API clients and integrations send no Origin
            hooks.append(self.secure)
            await self.app(scope, receive, send)
            return
        await self._cross_origin(
            scope, receive, send, hooks, origin.decode("latin-1"), host.decode("latin-1") if host else None
        )

    def public_host(self, scope: Scope) -> bytes:
        """The host checked is the `X-Forwarded-Host` the forwarder will send (`proxy.headers.requested_host`)."""
        return requested_host(scope["headers"], self.trusted_hops).lower().encode("latin-1")

    async def _cross_origin(
        self, scope: Scope, receive: Receive, send: Send, hooks: list[HeaderHook], origin: str, host: str | None
    ) -> None:
        if is_same_origin(origin, host, scope.get("scheme", "http")):
            hooks.append(self.secure)
            await self.app(scope, receive, send)
            return
        if origin not in self.allowed_origins:
            record_security_event("cors.reject", origin=origin[:LOGGED_ORIGIN_CHARS], path=scope["path"])
            hooks.append(self.secure)
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
            hooks.append(with_cors(preflight, self.secure))
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        hooks.append(with_cors(cors, self.secure))
        await self.app(scope, receive, send)
