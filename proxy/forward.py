"""The forwarding handler: one request in, one upstream attempt (or a retry), the response streamed back. Three
steps after routing: `_prepare` (headers, target, body), `_send` (to an instance, retried elsewhere when safe),
`_stream_back`.

A request body is read whole, within the route's limit and the body deadlines, before an upstream connection
(or a regulator slot) is taken, as nginx's request buffering does: a client trickling its body holds nothing of
the upstream's. Only routes whose limit is above `BodyPolicy.buffer_max_bytes` (bulk import) stream their body,
under the same deadlines (`proxy.limits` has these rules, the pool gate and the per-address cap). Responses
stream back; content encodings pass through untouched (the client sessions are created with
`auto_decompress=False` and add no `Accept-Encoding` of their own).

Failures, each an RFC 9457 problem with the request ID:
    400 bad_request           the path cannot be normalised safely, Content-Length is malformed, or a chunked
                              body ended before its last chunk (malformed, or cut off: granian reports both alike)
    404 not_found             no prefix matches, or the path is under /internal
    408 request_timeout       the body stalled (nothing for `idle_timeout_s`) or was not complete within
                              `total_timeout_s`; the connection is closed
    413 payload_too_large     Content-Length over the route's limit (upstream never touched), or a body that
                              grows past it
    429 rate_limited          the client address already has `max_per_client` requests in flight
    499 (logged, not sent)    the client closed the connection before its declared Content-Length arrived
    502 upstream_unavailable  connection to the instance failed (retried elsewhere first: any method when it never
                              connected, idempotent ones also when the connection broke before an answer)
    503 service_unavailable   no healthy instance
    503 regulator_busy        the regulator route is at its concurrency limit (Retry-After: 1)
    503 service_unavailable   buffering the body would take the process past `buffer_total_bytes`; the
                              connection is closed
    503 upstream_busy         no pooled connection to the service came free within the pool wait
    504 upstream_timeout      no response headers within the route's timeout
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Iterable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field

import aiohttp
from aiohttp import hdrs
from aiohttp.typedefs import LooseHeaders
from multidict import CIMultiDict

from proxy.headers import Headers, downstream_response_headers, upstream_request_headers
from proxy.limits import (
    BodyError,
    BodyPolicy,
    BodyReader,
    BodyTimedOut,
    BodyTooLarge,
    BufferBudget,
    BuffersFull,
    ClientCap,
    PoolGate,
    discard_body,
)
from proxy.routing import BadPath, ProxyRoute, RouteTable, encode_path, normalise_path
from proxy.upstreams import HealthPolicy, Instance, Upstream
from shared.context import RequestContext, request_context, request_state, watch_response
from shared.errors import client_closed_request, problem_response
from shared.log import get_logger
from shared.metrics import LATENCY_BUCKETS_S, RequestCounter, RequestHistogram, record_security_event
from shared.types import Receive, Scope, Send

RETRY_AFTER_S = "1"
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


# Timeouts are per route (a handful) and per connect timeout (one): a small cache holds every pair.
CLIENT_TIMEOUTS_CACHED = 64


@functools.lru_cache(maxsize=CLIENT_TIMEOUTS_CACHED)
def client_timeout(connect_s: float, read_s: float) -> aiohttp.ClientTimeout:
    # sock_read bounds the wait for the response headers (and each later read): no extra timer per request.
    return aiohttp.ClientTimeout(total=None, sock_connect=connect_s, sock_read=read_s)


@dataclass(slots=True)
class Outgoing:
    """A request ready to go upstream, as `Forwarder._prepare` made it: the target (path and query), the
    forwarded headers, and the body: read whole (`data`), or to be streamed from `reader` (`streamed`)."""

    target: str
    headers: Headers
    data: bytes | None = None
    # The body's reader (None without a body): what a streamed body is read from, and what holds a buffered
    # body's bytes against the process-wide budget until the request is over (`release`).
    reader: BodyReader | None = None
    streamed: bool = False
    # Whether the client declared a Content-Length (a body that stops short of it is the client closing).
    declared: bool = False

    def release(self) -> None:
        if self.reader is not None:
            self.reader.release()


@dataclass
class Forwarder:
    """The innermost handler of the proxy's stack (`proxy.app`): routes the request, then prepares it
    (`_prepare`), sends it with retries (`_send`) and streams the answer back (`_stream_back`)."""

    routes: RouteTable
    upstreams: Mapping[str, Upstream]
    sessions: Mapping[str, aiohttp.ClientSession]
    policy: HealthPolicy
    trusted_hops: int
    regulator_slots: asyncio.Semaphore
    connect_timeout_s: float
    # One per service, sized like its session's pool, so that aiohttp never waits for a connection itself.
    pool_gates: Mapping[str, PoolGate]
    pool_wait_s: float
    clients: ClientCap
    body: BodyPolicy
    is_draining: Callable[[], bool] = lambda: False
    # The bytes of bodies being buffered, process-wide (sized by `body.buffer_total_bytes` in `__post_init__`).
    buffers: BufferBudget = field(init=False)

    def __post_init__(self) -> None:
        self.buffers = BufferBudget(self.body.buffer_total_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Counts the request against its client address's cap while it runs; prepares it (the head checked, a
        body within the buffer size read whole); then takes a regulator slot (on that route) and a pooled
        connection, in that order, so that a slow client holds neither; sends it and streams the answer back."""
        raw_path = scope.get("raw_path") or scope["path"].encode()
        try:
            path = normalise_path(raw_path.decode("latin-1"))
        except BadPath as exc:
            await problem_response("bad_request", f"Unacceptable path: {exc}")(scope, receive, send)
            return
        route = self.routes.match(path)
        if route is None:
            await problem_response("not_found", "No service serves this path")(scope, receive, send)
            return
        state = request_state(scope)
        state.route_label = route.prefix
        if route.is_regulator:
            state.log_fields["traffic"] = "regulator"
        context = state.context or request_context(scope)  # which raises: no RequestContextMiddleware
        client = context.client
        if not self.clients.enter(client):
            record_security_event("rate_limited", limiter="proxy_in_flight", address=client)
            await problem_response(
                "rate_limited",
                f"This address already has {self.clients.limit} requests in flight",
                headers={"retry-after": RETRY_AFTER_S, "connection": "close"},
            )(scope, receive, send)
            return
        try:
            outgoing = await self._prepare(scope, receive, send, route, path, context)
            if outgoing is None:
                return
            try:
                slots = self.regulator_slots if route.is_regulator else None
                if slots is not None:
                    if slots.locked():
                        await problem_response(
                            "regulator_busy",
                            "The regulator route is at its concurrency limit; retry in a moment",
                            headers={"retry-after": RETRY_AFTER_S},
                        )(scope, receive, send)
                        return
                    await slots.acquire()
                try:
                    gate = self.pool_gates[route.service]
                    if not gate.try_take() and not await gate.wait(self.pool_wait_s):
                        log.warning("upstream_busy", upstream=route.service, wait_s=self.pool_wait_s)
                        await problem_response(
                            "upstream_busy",
                            f"Every connection to {route.service} is in use",
                            headers={"retry-after": RETRY_AFTER_S},
                        )(scope, receive, send)
                        return
                    try:
                        response = await self._send(scope, receive, send, route, outgoing)
                        if response is not None:
                            await self._stream_back(send, response)
                    finally:
                        gate.release()
                finally:
                    if slots is not None:
                        slots.release()
            finally:
                outgoing.release()
            if state.refused_body:  # a streamed body refused while the upstream was held
                await self._discard_rest(receive)
        finally:
            self.clients.leave(client)

    async def _prepare(
        self, scope: Scope, receive: Receive, send: Send, route: ProxyRoute, path: str, context: RequestContext
    ) -> Outgoing | None:
        """The request as it goes upstream: its headers, target and body (read whole within the buffer size, or
        to be streamed). None when the request was answered here instead (a malformed or oversized head, a body
        that failed); it then holds nothing of the buffer budget."""
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
            return None
        length = int(declared) if declared is not None else None
        if length is not None and length > route.max_body_bytes:
            await self._refuse_body(scope, receive, send, route)
            return None
        if length:
            headers.append(("content-length", str(length)))
        query = scope.get("query_string", b"").decode("latin-1")
        target = encode_path(path) + (f"?{query}" if query else "")
        if not (length or chunked):  # GETs and other bodiless requests
            return Outgoing(target, headers)
        deadline = asyncio.get_running_loop().time() + self.body.total_timeout_s
        reader = BodyReader(receive, route.max_body_bytes, self.body.idle_timeout_s, deadline, self.buffers)
        if route.max_body_bytes > self.body.buffer_max_bytes:
            return Outgoing(target, headers, reader=reader, streamed=True, declared=declared is not None)
        data = None
        try:
            data = await reader.read()
        finally:
            if data is None:  # failed, or cancelled: nothing of it is kept
                reader.release()
        if data is None:
            await self._body_failed(scope, receive, send, route, reader, declared is not None)
            return None
        return Outgoing(target, headers, data=data, reader=reader, declared=declared is not None)

    async def _refuse_body(
        self, scope: Scope, receive: Receive, send: Send, route: ProxyRoute, *, holding: bool = False
    ) -> None:
        """413, with the connection closed after it (the unread body is still on the wire). The rest of the body
        is then dropped (see discard_body); by `__call__` once it holds nothing of the upstream's when `holding`
        (a pooled connection, a regulator slot)."""
        await problem_response(
            "payload_too_large",
            f"The body exceeds {route.max_body_bytes} bytes for {route.prefix}",
            headers={"connection": "close"},
        )(scope, receive, send)
        if holding:
            request_state(scope).refused_body = True
        else:
            await self._discard_rest(receive)

    async def _discard_rest(self, receive: Receive) -> None:
        if not self.is_draining():  # a draining process would be held up by it
            await discard_body(receive)

    async def _body_failed(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        route: ProxyRoute,
        reader: BodyReader,
        declared: bool,
        *,
        holding: bool = False,
    ) -> None:
        if reader.failure is BodyTooLarge:
            await self._refuse_body(scope, receive, send, route, holding=holding)
        elif reader.failure is BuffersFull:
            log.warning("request_buffers_full", limit_bytes=self.buffers.limit_bytes)
            await problem_response(
                "service_unavailable",
                "The gateway is holding too many request bodies; retry",
                headers={"retry-after": RETRY_AFTER_S, "connection": "close"},
            )(scope, receive, send)
        elif reader.failure is BodyTimedOut:
            await problem_response(
                "request_timeout",
                f"The body did not arrive within {self.body.idle_timeout_s:g}s of silence "
                f"or {self.body.total_timeout_s:g}s in all",
                headers={"connection": "close"},
            )(scope, receive, send)
        elif declared:
            # The body stopped short of its Content-Length: the client closed its side.
            client_closed_request(scope, watch_response(scope, send)[0])
        else:
            # A chunked body cut off by its client and a malformed one look alike; one still listening is told.
            await problem_response("bad_request", "The request body ended before it was complete")(scope, receive, send)

    async def _send(
        self, scope: Scope, receive: Receive, send: Send, route: ProxyRoute, outgoing: Outgoing
    ) -> aiohttp.ClientResponse | None:
        """The upstream's response (headers received) from an instance, another one after a connection failure
        when that is safe; None when the request was answered here instead (no instance, a timeout, a body that
        failed while streaming)."""
        method = scope["method"]
        upstream = self.upstreams[route.service]
        session = self.sessions[route.service]
        timeout = client_timeout(self.connect_timeout_s, route.timeout_s)
        stream = outgoing.reader if outgoing.streamed else None

        tried: list[Instance] = []
        while True:
            instance = upstream.pick(exclude=tried)
            if instance is None:
                code = "upstream_unavailable" if tried else "service_unavailable"
                detail = f"No healthy instance of {route.service}" if not tried else f"{route.service} is unreachable"
                await problem_response(code, detail)(scope, receive, send)
                return None
            tried.append(instance)
            started = time.perf_counter()
            try:
                forwarding = _forwarded_headers.set(outgoing.headers)
                try:
                    response = await session.request(
                        method,
                        instance.url + outgoing.target,
                        data=stream.chunks() if stream is not None else outgoing.data,
                        allow_redirects=False,
                        timeout=timeout,
                    )
                finally:
                    _forwarded_headers.reset(forwarding)
            except (aiohttp.ClientError, TimeoutError, BodyError) as exc:
                if stream is not None and stream.failure is not None:
                    # aiohttp may wrap our exception; either way the upstream is not to blame.
                    await self._body_failed(scope, receive, send, route, stream, outgoing.declared, holding=True)
                    return None
                connect_timeout = isinstance(exc, aiohttp.ConnectionTimeoutError)
                if isinstance(exc, TimeoutError) and not connect_timeout:
                    UPSTREAM_REQUESTS.inc((route.service, "timeout"))
                    await problem_response(
                        "upstream_timeout", f"{route.service} did not answer within {route.timeout_s:g}s"
                    )(scope, receive, send)
                    return None
                # A handshake that never completed is a connection failure (retry, eject), not a slow upstream.
                UPSTREAM_REQUESTS.inc((route.service, "connect_error"))
                # No connection, so not a byte of the request reached the instance: another may take any method
                # (nginx's proxy_next_upstream `error`, Envoy's connect-failure retry). A replica that crashed
                # refuses connections until two failures eject it; a POST then must not be a 502.
                never_sent = connect_timeout or isinstance(exc, aiohttp.ClientConnectorError)
                if never_sent:
                    instance.record_connect_failure(self.policy)
                error = "connect timeout" if connect_timeout else type(exc).__name__
                log.warning("upstream_error", upstream=route.service, instance=instance.label, error=error)
                if (never_sent or method in IDEMPOTENT_METHODS) and (stream is None or not stream.started):
                    continue
                await problem_response("upstream_unavailable", f"{route.service} is unreachable")(scope, receive, send)
                return None
            instance.record_success()
            UPSTREAM_DURATION.observe((route.service,), time.perf_counter() - started)
            UPSTREAM_REQUESTS.inc((route.service, str(response.status)))
            return response

    async def _stream_back(self, send: Send, response: aiohttp.ClientResponse) -> None:
        """The upstream's response to the client: its head (hop-by-hop headers dropped), then its body as it
        comes, and the upstream connection back to the pool."""
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
