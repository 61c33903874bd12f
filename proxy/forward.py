"""The forwarding handler: one request in, one upstream attempt (or a retry), the response streamed back.

Bodies are streamed both ways, never buffered; content encodings pass through untouched (the client sessions
are created with `auto_decompress=False` and add no `Accept-Encoding` of their own).

Failures, each an RFC 9457 problem with the request ID:
    400 bad_request           the path cannot be normalised safely, or Content-Length is malformed
    404 not_found             no prefix matches, or the path is under /internal
    413 payload_too_large     Content-Length over the route's limit (upstream never touched), or a streamed
                              body that grows past it
    502 upstream_unavailable  connection to the instance failed (idempotent methods were retried elsewhere)
    503 service_unavailable   no healthy instance, or the regulator route is at its concurrency limit
    504 upstream_timeout      no response headers within the route's timeout
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import hdrs
from aiohttp.typedefs import LooseHeaders
from multidict import CIMultiDict

from proxy.headers import Headers, downstream_response_headers, upstream_request_headers
from proxy.routing import BadPath, ProxyRoute, RouteTable, encode_path, normalise_path
from proxy.upstreams import HealthPolicy, Instance, Upstream
from shared.context import request_context
from shared.errors import problem_response
from shared.log import get_logger
from shared.metrics import LATENCY_BUCKETS_S, RequestCounter, RequestHistogram
from shared.types import Receive, Scope, Send

# After a 413, how much of the rest of the body is still read (and dropped), and for how long: see discard_body.
LINGER_BYTES = 64 * 1024 * 1024
LINGER_S = 5.0
LINGER_IDLE_S = 1.0
# A body this small whose length the upstream declared is read whole and sent in one message.
SMALL_BODY_BYTES = 64 * 1024
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
# Auto-headers aiohttp would otherwise invent; only what the client sent goes upstream.
SKIP_AUTO_HEADERS = frozenset({"Accept", "Accept-Encoding", "User-Agent", "Content-Type"})
_SKIPPED = CIMultiDict[None]((name, None) for name in sorted(SKIP_AUTO_HEADERS))


# The headers of the request being forwarded, for ForwardedRequest. Given to `session.request`, aiohttp would
# copy them twice in Python loops (ClientSession._prepare_headers, ClientRequest.update_headers): 4% of the proxy's
# instructions per request (bench/proxy_instructions.py).
_forwarded_headers: ContextVar[Headers | None] = ContextVar("forwarded_headers", default=None)


class ForwardedRequest(aiohttp.ClientRequest):
    """aiohttp's request, for what the proxy forwards:

    - its headers are `_forwarded_headers` (set around `session.request` by the forwarder), after the Host aiohttp
      derives from the URL, as aiohttp orders them; a request of the proxy's own (health checks, federation)
      keeps aiohttp's handling;
    - no headers of aiohttp's own invention (see SKIP_AUTO_HEADERS), with the skip set built once where aiohttp
      rebuilds it per request (a sort and two multidicts).

    The sessions are created with it (`proxy.app.new_session`); tests/unit/test_proxy_forward.py checks that the
    upstream receives exactly the forwarded headers and nothing invented."""

    def update_headers(self, headers: LooseHeaders | None) -> None:
        forwarded = _forwarded_headers.get()
        if not forwarded:
            super().update_headers(headers)
            return
        self.headers = CIMultiDict(((hdrs.HOST, str(self.url.host_port_subcomponent)),))
        self.headers.extend(forwarded)

    def update_auto_headers(self, skip_auto_headers: Iterable[str] | None) -> None:
        self._skip_auto_headers = _SKIPPED


UPSTREAM_REQUESTS = RequestCounter(
    "apgms_proxy_upstream_requests_total",
    "Requests sent upstream, by service and upstream status (connect_error and timeout when none came back).",
    ["service", "status"],
)
UPSTREAM_DURATION = RequestHistogram(
    "apgms_proxy_upstream_duration_seconds",
    "Time from sending upstream to the response headers.",
    ["service"],
    buckets=LATENCY_BUCKETS_S,
)

log = get_logger(__name__)


@functools.lru_cache(maxsize=64)
def client_timeout(connect_s: float, read_s: float) -> aiohttp.ClientTimeout:
    # sock_read bounds the wait for the response headers (and each later read): no extra timer per request.
    return aiohttp.ClientTimeout(total=None, sock_connect=connect_s, sock_read=read_s)


async def discard_body(
    receive: Receive, limit_bytes: int = LINGER_BYTES, limit_s: float = LINGER_S, idle_s: float = LINGER_IDLE_S
) -> None:
    """Read and drop what is left of a refused request body, within limits. A client usually sends its whole
    body before it reads the answer; closing on it mid-upload resets the connection and it never sees the 413
    (nginx's lingering close does the same). A client that sends nothing for `idle_s` is not uploading: it is
    left at once."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    dropped = 0
    while dropped < limit_bytes and (left := deadline - loop.time()) > 0:
        try:
            message = await asyncio.wait_for(receive(), min(idle_s, left))
        except TimeoutError:
            return
        if message["type"] != "http.request":
            return
        dropped += len(message.get("body", b""))
        if not message.get("more_body", False):
            return


class BodyTooLarge(Exception):
    pass


class ClientDisconnected(Exception):
    pass


@dataclass
class BodyReader:
    """Streams the ASGI request body upstream, counting bytes against the route's limit."""

    receive: Receive
    limit: int
    received: int = 0
    started: bool = False
    too_large: bool = False
    disconnected: bool = False

    async def chunks(self) -> AsyncIterator[bytes]:
        self.started = True
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                # The client went away, or the server gave up on a malformed body (bad chunked encoding).
                self.disconnected = True
                raise ClientDisconnected
            chunk = message.get("body", b"")
            self.received += len(chunk)
            if self.received > self.limit:
                self.too_large = True
                # The exception ends up in a reference cycle with this frame: keep the chunk out of it.
                del message, chunk
                raise BodyTooLarge
            if chunk:
                yield chunk
            if not message.get("more_body", False):
                return


@dataclass
class Forwarder:
    """The innermost handler of the proxy's stack (`proxy.app`). Calling it returns the coroutine that answers
    the request rather than being one, so servers that tell ASGI 2 from 3 by introspection would misread it:
    it is always served inside the shared middleware."""

    routes: RouteTable
    upstreams: Mapping[str, Upstream]
    sessions: Mapping[str, aiohttp.ClientSession]
    policy: HealthPolicy
    trusted_hops: int
    regulator_slots: asyncio.Semaphore
    connect_timeout_s: float
    is_draining: Callable[[], bool] = lambda: False

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Coroutine[Any, Any, None]:
        """The coroutine that answers this request. Routing needs no waiting, so it is done here, before any
        coroutine exists: the one returned is the forwarding itself (one frame less on every resumption)."""
        raw_path = scope.get("raw_path") or scope["path"].encode()
        try:
            path = normalise_path(raw_path.decode("latin-1"))
        except BadPath as exc:
            return problem_response("bad_request", f"Unacceptable path: {exc}")(scope, receive, send)
        route = self.routes.match(path)
        if route is None:
            return problem_response("not_found", "No service serves this path")(scope, receive, send)
        state = scope.setdefault("state", {})
        state["route_label"] = route.prefix
        if not route.is_regulator:
            return self._forward(scope, receive, send, route, path)
        state["log_fields"] = {"traffic": "regulator"}
        if self.regulator_slots.locked():
            return problem_response(
                "service_unavailable",
                "The regulator route is at its concurrency limit",
                headers={"retry-after": "1"},
            )(scope, receive, send)
        return self._forward_regulator(scope, receive, send, route, path)

    async def _forward_regulator(
        self, scope: Scope, receive: Receive, send: Send, route: ProxyRoute, path: str
    ) -> None:
        async with self.regulator_slots:
            await self._forward(scope, receive, send, route, path)
        if scope["state"].get("refused_body"):
            await discard_body(receive)  # with the slot released: a refused upload must not hold one

    async def _refuse_body(self, scope: Scope, receive: Receive, send: Send, route: ProxyRoute) -> None:
        """413, with the connection closed after it (the unread body is still on the wire). The rest of the body
        is dropped first (see discard_body) unless the process is draining, as that would hold the shutdown up;
        on the regulator route only once its concurrency slot is released (`_forward_regulator`)."""
        await problem_response(
            "payload_too_large",
            f"The body exceeds {route.max_body_bytes} bytes for {route.prefix}",
            headers={"connection": "close"},
        )(scope, receive, send)
        if self.is_draining():
            return
        if route.is_regulator:
            scope["state"]["refused_body"] = True
        else:
            await discard_body(receive)

    async def _forward(self, scope: Scope, receive: Receive, send: Send, route: ProxyRoute, path: str) -> None:
        context = request_context(scope)
        peer = scope.get("client")
        headers, declared, chunked = upstream_request_headers(
            scope["headers"],
            peer=peer[0] if peer else None,
            scheme=scope.get("scheme", "http"),
            request_id=context.request_id,
            traceparent=context.traceparent,
            trusted_hops=self.trusted_hops,
        )
        if declared is not None and not declared.strip().isdigit():
            await problem_response("bad_request", "Content-Length must be a number")(scope, receive, send)
            return
        length = int(declared) if declared is not None else None
        if length is not None and length > route.max_body_bytes:
            await self._refuse_body(scope, receive, send, route)
            return
        if length:
            headers.append(("content-length", str(length)))
        has_body = bool(length) or chunked
        body = BodyReader(receive, route.max_body_bytes)
        method = scope["method"]
        query = scope.get("query_string", b"").decode("latin-1")
        target = encode_path(path) + (f"?{query}" if query else "")
        upstream = self.upstreams[route.service]
        session = self.sessions[route.service]
        timeout = client_timeout(self.connect_timeout_s, route.timeout_s)

        tried: list[Instance] = []
        while True:
            instance = upstream.pick(exclude=tried)
            if instance is None:
                code = "upstream_unavailable" if tried else "service_unavailable"
                detail = f"No healthy instance of {route.service}" if not tried else f"{route.service} is unreachable"
                await problem_response(code, detail)(scope, receive, send)
                return
            tried.append(instance)
            started = time.perf_counter()
            try:
                forwarding = _forwarded_headers.set(headers)
                try:
                    response = await session.request(
                        method,
                        instance.url + target,
                        data=body.chunks() if has_body else None,
                        allow_redirects=False,
                        timeout=timeout,
                    )
                finally:
                    _forwarded_headers.reset(forwarding)
            except TimeoutError as exc:
                if isinstance(exc, aiohttp.ConnectionTimeoutError):
                    # The handshake never completed: a connection failure (retry, eject), not a slow upstream.
                    instance.record_connect_failure(self.policy)
                    UPSTREAM_REQUESTS.inc((route.service, "connect_error"))
                    log.warning(
                        "upstream_error", upstream=route.service, instance=instance.label, error="connect timeout"
                    )
                    if method in IDEMPOTENT_METHODS and not body.started:
                        continue
                    await problem_response("upstream_unavailable", f"{route.service} is unreachable")(
                        scope, receive, send
                    )
                    return
                UPSTREAM_REQUESTS.inc((route.service, "timeout"))
                await problem_response(
                    "upstream_timeout", f"{route.service} did not answer within {route.timeout_s:g}s"
                )(scope, receive, send)
                return
            except (aiohttp.ClientError, BodyTooLarge, ClientDisconnected) as exc:
                if body.too_large:
                    await self._refuse_body(scope, receive, send, route)
                    return
                if body.disconnected:
                    # aiohttp may wrap our exception; either way the upstream is not to blame. If the client is
                    # still there (its body was malformed), it is told so.
                    await problem_response("bad_request", "The request body ended before it was complete")(
                        scope, receive, send
                    )
                    return
                UPSTREAM_REQUESTS.inc((route.service, "connect_error"))
                if isinstance(exc, aiohttp.ClientConnectorError):
                    instance.record_connect_failure(self.policy)
                log.warning("upstream_error", upstream=route.service, instance=instance.label, error=type(exc).__name__)
                if method in IDEMPOTENT_METHODS and not body.started:
                    continue
                await problem_response("upstream_unavailable", f"{route.service} is unreachable")(scope, receive, send)
                return
            break

        instance.record_success()
        UPSTREAM_DURATION.observe((route.service,), time.perf_counter() - started)
        UPSTREAM_REQUESTS.inc((route.service, str(response.status)))
        async with response:
            await send(
                {
                    "type": "http.response.start",
                    "status": response.status,
                    "headers": downstream_response_headers(response.raw_headers),
                }
            )
            if response.content_length is not None and response.content_length <= SMALL_BODY_BYTES:
                # Most API answers: one body message instead of a chunk plus an empty final one.
                await send({"type": "http.response.body", "body": await response.read(), "more_body": False})
                return
            async for chunk in response.content.iter_any():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
