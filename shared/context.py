"""Request context: request ID, W3C traceparent and client address, bound for the life of one request.

The pure functions decide what to accept; `RequestContextMiddleware` is the thin ASGI adapter that applies them,
binds the values to contextvars (so every log line and every outgoing call carries them) and echoes
`x-request-id` on every response, errors included.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass

from shared.types import ASGIApp, Message, Receive, Scope, Send

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


def new_request_id() -> str:
    """A random UUID4 in its canonical form (`uuid.uuid4()` spelled out: a third of its cost per request)."""
    random = bytearray(os.urandom(16))
    random[6] = random[6] & 0x0F | 0x40  # version 4
    random[8] = random[8] & 0x3F | 0x80  # RFC 4122 variant
    h = random.hex()
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
    h = os.urandom(24).hex()
    return f"00-{h[:32]}-{h[32:]}-01"


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


def header(scope: Scope, name: bytes) -> str | None:
    """The first value of a request header, decoded as latin-1 (ASGI headers are bytes)."""
    for key, value in scope.get("headers", ()):
        if key == name:
            return str(value.decode("latin-1"))
    return None


def build_context(scope: Scope, trusted_hops: int) -> RequestContext:
    peer = scope.get("client")
    return RequestContext(
        request_id=accept_request_id(header(scope, b"x-request-id")),
        traceparent=accept_traceparent(header(scope, b"traceparent")),
        client=client_address(peer[0] if peer else None, header(scope, b"x-forwarded-for"), trusted_hops),
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
        self.count += 1
        self.idle.clear()
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
        scope.setdefault("state", {})["context"] = context
        id_token = current_request_id.set(context.request_id)
        trace_token = current_traceparent.set(context.traceparent)
        echo = (REQUEST_ID_HEADER.encode(), context.request_id.encode())

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", ()) if k.lower() != echo[0]]
                extra = [echo, CONNECTION_CLOSE] if self.is_draining() else [echo]
                message = {**message, "headers": [*headers, *extra]}
            await send(message)

        task = self.in_flight.enter()
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            self.in_flight.leave(task)
            current_request_id.reset(id_token)
            current_traceparent.reset(trace_token)


def request_context(scope: Scope) -> RequestContext:
    """The context bound by `RequestContextMiddleware` for this request."""
    context: RequestContext = scope["state"]["context"]
    return context
