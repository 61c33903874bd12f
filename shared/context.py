"""Request context: request ID, W3C traceparent and client address, bound for the life of one request.

The pure functions decide what to accept; `RequestContextMiddleware` is the thin ASGI adapter that applies them,
binds the values to contextvars (so every log line and every outgoing call carries them) and echoes
`x-request-id` on every response, errors included.

It is also the one middleware that wraps `send`: the others learn the response status from the request's
`Exchange` after the app returned, and add response headers by registering a hook on it (`watch_response`).
One wrapper instead of one per middleware: each was a coroutine per message on every request.

What the modules serving one request tell each other (the context, the exchange, the route label a handler that
routes by itself chose, extra fields for the access line, the authenticated principal, a refused body still on the
wire) is one typed object, `RequestState`, reached with `request_state(scope)`: not keys in `scope["state"]`,
which stays Starlette's (`request.state`, and the lifespan state servers copy into it).
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import time
from collections.abc import Callable, Iterable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from shared.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:  # shared.tokens logs, and shared.log imports this module
    from shared.tokens import Principal

__all__ = [
    "CONNECTION_CLOSE",
    "GRACE_PERIOD_OVER",
    "REQUEST_ID_HEADER",
    "REQUEST_STATE_KEY",
    "TRACEPARENT_HEADER",
    "Exchange",
    "HeaderHook",
    "InFlight",
    "RawHeaders",
    "RequestContext",
    "RequestContextMiddleware",
    "RequestState",
    "accept_request_id",
    "accept_traceparent",
    "believed_scheme",
    "build_context",
    "client_address",
    "current_request_id",
    "current_traceparent",
    "forwarded_scheme",
    "header",
    "is_valid_traceparent",
    "nearest_forwarded",
    "new_request_id",
    "new_traceparent",
    "request_context",
    "request_state",
    "watch_response",
]

REQUEST_ID_HEADER = "x-request-id"
TRACEPARENT_HEADER = "traceparent"
REQUEST_ID_PATTERN = re.compile(r"[A-Za-z0-9._:-]{1,128}")
TRACEPARENT_PATTERN = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")

current_request_id: ContextVar[str | None] = ContextVar("current_request_id", default=None)
current_traceparent: ContextVar[str | None] = ContextVar("current_traceparent", default=None)


@dataclass(frozen=True)
class RequestContext:
    request_id: str
    traceparent: str
    client: str | None


# The version (4) and variant (RFC 4122) bits of a UUID4, over a 128-bit random number.
_UUID4_CLEAR = ~((0xF << 76) | (0x3 << 62))
_UUID4_SET = (0x4 << 76) | (0x2 << 62)


# Request IDs and trace IDs come from a generator of their own, seeded from the OS and reseeded in a forked child,
# not from `os.urandom`: neither is a secret (clients may choose their own), and the system call per request cost
# more than the rest of the request context. Not the module's shared `random` either, whose state what we hand
# out would reveal to anyone collecting enough IDs.
_ids = random.Random()
os.register_at_fork(after_in_child=_ids.seed)


def new_request_id() -> str:
    """A random UUID4 in its canonical form (from `_ids`)."""
    h = f"{_ids.getrandbits(128) & _UUID4_CLEAR | _UUID4_SET:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def accept_request_id(value: str | None) -> str:
    """The incoming ID when it is 1-128 chars of `[A-Za-z0-9._:-]`, else a fresh UUID4."""
    if value is not None and REQUEST_ID_PATTERN.fullmatch(value):
        return value
    return new_request_id()


def is_valid_traceparent(value: str) -> bool:
    match = TRACEPARENT_PATTERN.fullmatch(value)
    if match is None:
        return False
    version, trace_id, parent_id, _ = match.groups()
    return version != "ff" and trace_id != "0" * 32 and parent_id != "0" * 16


def new_traceparent() -> str:
    """A new sampled W3C traceparent (random ids from `_ids`, never the all-zero ones)."""
    return f"00-{_ids.getrandbits(128) or 1:032x}-{_ids.getrandbits(64) or 1:016x}-01"


def accept_traceparent(value: str | None) -> str:
    """The incoming W3C traceparent when valid (version 00 shape, non-zero ids), else a new sampled one."""
    if value is not None and is_valid_traceparent(value):
        return value
    return new_traceparent()


def client_address(peer: str | None, forwarded_for: str | None, trusted_hops: int) -> str | None:
    """The client address, taking `X-Forwarded-For` into account only through `trusted_hops` proxies."""
    if trusted_hops <= 0 or not forwarded_for:
        return peer
    hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
    if not hops:
        return peer
    return hops[-min(trusted_hops, len(hops))]


def nearest_forwarded(lines: Iterable[str]) -> str | None:
    """The right-most entry of a forwarding header (`X-Forwarded-Proto`, `-Host`; its lines form one list, RFC 9110
    section 5.3): the value the nearest proxy set. The entries to its left are whatever the client sent, so only
    this one may be believed, and only when that proxy is trusted."""
    nearest = None
    for line in lines:
        for entry in line.split(","):
            if entry.strip():
                nearest = entry.strip()
    return nearest


def forwarded_scheme(scope: Scope, trusted_hops: int) -> str:
    """The scheme the client used: what the nearest trusted proxy said in `X-Forwarded-Proto` when there is one
    (`http` or `https`), else the scheme of this connection."""
    own = str(scope.get("scheme", "http"))
    if trusted_hops <= 0:
        return own
    return believed_scheme((v.decode("latin-1") for k, v in scope.get("headers", ()) if k == b"x-forwarded-proto"), own)


def believed_scheme(lines: Iterable[str], own: str) -> str:
    """The scheme the nearest proxy said in these `X-Forwarded-Proto` lines (`http` or `https`), else `own`: the
    one rule for the services' HTTPS checks and the proxy's forwarded headers."""
    said = (nearest_forwarded(lines) or "").lower()
    return said if said in ("http", "https") else own


def header(scope: Scope, name: bytes) -> str | None:
    """The first value of a request header, decoded as latin-1 (ASGI headers are bytes)."""
    for key, value in scope.get("headers", ()):
        if key == name:
            return str(value.decode("latin-1"))
    return None


def build_context(scope: Scope, trusted_hops: int) -> RequestContext:
    request_id = traceparent = forwarded_for = None
    for name, value in scope.get("headers", ()):  # one pass: this runs for every request
        if name == b"x-request-id":
            request_id = value.decode("latin-1") if request_id is None else request_id
        elif name == b"traceparent":
            traceparent = value.decode("latin-1") if traceparent is None else traceparent
        elif name == b"x-forwarded-for":
            # Every line: a proxy may add its entry as a line of its own (RFC 9110 section 5.3: one list).
            line = value.decode("latin-1")
            forwarded_for = line if forwarded_for is None else f"{forwarded_for}, {line}"
    peer = scope.get("client")
    return RequestContext(
        request_id=accept_request_id(request_id),
        traceparent=accept_traceparent(traceparent),
        client=client_address(peer[0] if peer else None, forwarded_for, trusted_hops),
    )


# The cancellation message of requests still running when the shutdown grace period ends.
GRACE_PERIOD_OVER = "shutdown grace period over"


class InFlight:
    """The requests being served, so shutdown can wait for them (and cancel what outlives the grace period)."""

    def __init__(self) -> None:
        self.count = 0
        self.idle = asyncio.Event()
        self.idle.set()
        self.tasks: set[asyncio.Task[object]] = set()

    def enter(self) -> asyncio.Task[object] | None:
        """Count the request served by the current task; pass what this returns to `leave`."""
        if self.count == 0:
            self.idle.clear()
        self.count += 1
        task = asyncio.current_task()
        if task is not None:
            self.tasks.add(task)
        return task

    def leave(self, task: asyncio.Task[object] | None) -> None:
        self.count -= 1
        if self.count == 0:
            self.idle.set()
        self.tasks.discard(task)

    def cancel_all(self) -> int:
        """Cancel every request still being served (each answers 503 if it has not started its response, see
        `shared.errors.ErrorBoundaryMiddleware`); how many there were."""
        for task in self.tasks:
            task.cancel(GRACE_PERIOD_OVER)
        return len(self.tasks)


CONNECTION_CLOSE = (b"connection", b"close")
RawHeaders = list[tuple[bytes, bytes]]
HeaderHook = Callable[[RawHeaders], RawHeaders]


@dataclass(slots=True)
class Exchange:
    """One request's response as the middleware sees it: its status once it has started, and the hooks that
    rewrite its headers on the way out (the last registered runs first, as nested `send` wrappers would)."""

    status: int | None = None
    header_hooks: list[HeaderHook] = field(default_factory=list)
    # `time.perf_counter()` when the last body message went out; the request may go on after it (a 413 that
    # drops the rest of the upload), but the response is done.
    finished: float | None = None

    @property
    def started(self) -> bool:
        return self.status is not None

    def observe(self, send: Send) -> Send:
        async def observed(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.status = message["status"]
                if self.header_hooks:
                    headers = list(message.get("headers", ()))
                    for hook in reversed(self.header_hooks):
                        headers = hook(headers)
                    message = {**message, "headers": headers}
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                self.finished = time.perf_counter()
            await send(message)

        return observed


# The scope key of the request's `RequestState` (an extension key of ours, beside Starlette's `route`, `app`).
REQUEST_STATE_KEY = "apgms.request_state"


@dataclass(slots=True)
class RequestState:
    """What the modules serving one request tell each other, set up by `RequestContextMiddleware` (which fills
    `context` and `exchange`). Each field has one writer:

    - `context`, `exchange`: `RequestContextMiddleware`;
    - `route_label`: a handler that routes by itself (the proxy's forwarder), read by the metrics middleware in
      place of the matched Starlette route;
    - `log_fields`: extra fields of the request's access line (`traffic`), never replacing the line's own;
    - `principal`: `shared.authz.authenticate`, read by the anomaly middleware after the response;
    - `refused_body`: the forwarder, when it answered 413 while holding an upstream connection and the rest of
      the body is still to be dropped.
    """

    context: RequestContext | None = None
    exchange: Exchange | None = None
    route_label: str | None = None
    log_fields: dict[str, Any] = field(default_factory=dict)
    principal: Principal | None = None
    refused_body: bool = False


def request_state(scope: Scope) -> RequestState:
    """The request's state: the one `RequestContextMiddleware` set up, or, for code running without it (unit tests
    of one middleware), an empty one kept in the scope, so that what one module writes the next one reads."""
    state: RequestState | None = scope.get(REQUEST_STATE_KEY)
    if state is None:
        state = scope[REQUEST_STATE_KEY] = RequestState()
    return state


def watch_response(scope: Scope, send: Send) -> tuple[Exchange, Send]:
    """The request's `Exchange`, and the `send` to pass on: the one `RequestContextMiddleware` set up, or, for a
    middleware running without it (unit tests), a new one that observes `send` itself."""
    state: RequestState | None = scope.get(REQUEST_STATE_KEY)  # request_state's, inline: every middleware asks
    if state is not None and state.exchange is not None:
        return state.exchange, send
    exchange = Exchange()
    return exchange, exchange.observe(send)


class RequestContextMiddleware:
    """Binds the request context; while the process drains, every response also says `Connection: close`, so
    keep-alive clients (the proxy's pools) reconnect elsewhere instead of reusing a socket about to be closed."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        trusted_hops: int = 0,
        in_flight: InFlight | None = None,
        is_draining: Callable[[], bool] = lambda: False,
    ) -> None:
        self.app = app
        self.trusted_hops = trusted_hops
        self.in_flight = in_flight or InFlight()
        self.is_draining = is_draining

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        context = build_context(scope, self.trusted_hops)
        echo = (REQUEST_ID_HEADER.encode(), context.request_id.encode())

        def add_request_id(headers: RawHeaders) -> RawHeaders:
            headers = [(name, value) for name, value in headers if name != echo[0]]  # ASGI names are lowercase
            headers.append(echo)
            if self.is_draining():
                headers.append(CONNECTION_CLOSE)
            return headers

        exchange = Exchange(header_hooks=[add_request_id])
        scope[REQUEST_STATE_KEY] = RequestState(context, exchange)
        id_token = current_request_id.set(context.request_id)
        trace_token = current_traceparent.set(context.traceparent)
        send_with_id = exchange.observe(send)

        task = self.in_flight.enter()
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            self.in_flight.leave(task)
            current_request_id.reset(id_token)
            current_traceparent.reset(trace_token)


def request_context(scope: Scope) -> RequestContext:
    """The context bound by `RequestContextMiddleware` for this request; LookupError without that middleware (a
    stack built wrongly)."""
    context = request_state(scope).context
    if context is None:
        raise LookupError("no request context: RequestContextMiddleware is not in this stack")
    return context
