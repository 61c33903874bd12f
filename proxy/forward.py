"""The forwarding handler: one request in, one upstream attempt (or a retry), the response streamed back.

A request body is read whole, within the route's limit and the body deadlines, before an upstream connection
(or a regulator slot) is taken, as nginx's request buffering does: a client trickling its body holds nothing of
the upstream's. Only routes whose limit is above `BodyPolicy.buffer_max_bytes` (bulk import) stream their body,
under the same deadlines. Responses stream back; content encodings pass through untouched (the client sessions
are created with `auto_decompress=False` and add no `Accept-Encoding` of their own).

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
    502 upstream_unavailable  connection to the instance failed (idempotent methods were retried elsewhere)
    503 service_unavailable   no healthy instance, or the regulator route is at its concurrency limit
    503 upstream_busy         no pooled connection to the service came free within the pool wait
    504 upstream_timeout      no response headers within the route's timeout
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import hdrs
from aiohttp.typedefs import LooseHeaders
from multidict import CIMultiDict

from proxy.headers import Headers, downstream_response_headers, upstream_request_headers
from proxy.routing import BadPath, MiB, ProxyRoute, RouteTable, encode_path, normalise_path
from proxy.upstreams import HealthPolicy, Instance, Upstream
from shared.context import request_context, watch_response
from shared.errors import client_closed_request, problem_response
from shared.log import get_logger
from shared.metrics import LATENCY_BUCKETS_S, RequestCounter, RequestHistogram, record_security_event
from shared.types import Message, Receive, Scope, Send

# After a 413, how much of the rest of the body is still read (and dropped), and for how long: see discard_body.
LINGER_BYTES = 64 * 1024 * 1024
LINGER_S = 5.0
LINGER_IDLE_S = 1.0
# Routes whose body limit is at most this read the body whole before taking an upstream connection; the others
# (bulk import, 20 MiB) stream it. nginx buffers request bodies the same way.
BUFFER_MAX_BYTES = 1 * MiB
# 408 after this long without a byte of the body, or when the whole body has not arrived within the total.
BODY_IDLE_TIMEOUT_S = 10.0
BODY_TIMEOUT_S = 60.0
# How long a request may wait for a pooled upstream connection (503 upstream_busy after it).
POOL_WAIT_S = 2.0
# Requests in flight per client address (429 past it); see ClientCap.
MAX_REQUESTS_PER_CLIENT = 64
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


class BodyError(Exception):
    """A request body that could not be read whole; `BodyReader.failure` says which way."""


class BodyTooLarge(BodyError):
    pass


class BodyTimedOut(BodyError):
    pass


class ClientDisconnected(BodyError):
    pass


@dataclass(frozen=True)
class BodyPolicy:
    """How request bodies are read: whole up to `buffer_max_bytes` of route limit (streamed above it), and within
    two deadlines, per read and for the whole body (408 past either)."""

    buffer_max_bytes: int = BUFFER_MAX_BYTES
    idle_timeout_s: float = BODY_IDLE_TIMEOUT_S
    total_timeout_s: float = BODY_TIMEOUT_S


@dataclass
class BodyReader:
    """Reads the ASGI request body within the route's limit and the body deadlines: whole (`read`), or streamed
    upstream (`chunks`). A failure is kept in `failure`: aiohttp wraps what the body iterator raises, so the
    forwarder asks the reader rather than the exception. No frame that holds body data is part of a raised
    exception's traceback (see `shared.runner.tune_gc`)."""

    receive: Receive
    limit: int
    idle_s: float
    deadline: float  # the event loop's time by which the whole body must have arrived
    received: int = 0
    started: bool = False
    failure: type[BodyError] | None = None

    async def _next(self) -> Message | None:
        """The next body message, or None once the body has failed."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout_at(min(loop.time() + self.idle_s, self.deadline)):
                message = await self.receive()
        except TimeoutError:
            self.failure = BodyTimedOut
            return None
        if message["type"] == "http.disconnect":
            # The client went away, or the server gave up on a malformed body (bad chunked encoding).
            self.failure = ClientDisconnected
            return None
        self.received += len(message.get("body", b""))
        if self.received > self.limit:
            self.failure = BodyTooLarge
            return None
        return message

    async def read(self) -> bytes | None:
        """The whole body, or None when it failed."""
        message = await self._next()
        if message is None:
            return None
        if not message.get("more_body", False):
            body: bytes = message.get("body", b"")  # most bodies arrive in one message
            return body
        parts = [message.get("body", b"")]
        while more := await self._next():
            parts.append(more.get("body", b""))
            if not more.get("more_body", False):
                return b"".join(parts)
        return None

    async def chunks(self) -> AsyncIterator[bytes]:
        self.started = True
        while message := await self._next():
            if chunk := message.get("body", b""):
                yield chunk
            if not message.get("more_body", False):
                return
        assert self.failure is not None
        raise self.failure


class ClientCap:
    """Requests in flight per client address, at most `limit` each. An address is forgotten when its count
    returns to zero, so the table never holds more entries than there are requests in flight."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_flight: dict[str | None, int] = {}

    def enter(self, address: str | None) -> bool:
        count = self.in_flight.get(address, 0)
        if count >= self.limit:
            return False
        self.in_flight[address] = count + 1
        return True

    def leave(self, address: str | None) -> None:
        count = self.in_flight.pop(address) - 1
        if count:
            self.in_flight[address] = count


class PoolGate:
    """The connections of one service's pool, counted before aiohttp is asked for one: a request takes one at once
    when one is free (`try_take`, no coroutine: this runs for every request) or waits for one at most `wait_s`
    (`wait`), and gives it back with `release`, which hands it straight to the longest waiter. aiohttp's own wait
    for a pooled connection has no bound apart from `ClientTimeout.connect`, which also covers the TCP handshake
    and raises the same error: a full pool would look like a dead instance. An asyncio.Semaphore costs 8k
    instructions per request here (bench/proxy_instructions.py); this, under 1k."""

    def __init__(self, size: int) -> None:
        self.free = size
        self._waiters: deque[asyncio.Future[None]] = deque()

    def try_take(self) -> bool:
        if self.free:  # never free while others wait: `release` hands a connection to a waiter first
            self.free -= 1
            return True
        return False

    async def wait(self, wait_s: float) -> bool:
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)  # a waiter that gave up stays until a release skips it: no O(n) removal
        try:
            async with asyncio.timeout(wait_s):
                await waiter
        except TimeoutError:
            pass
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # handed one as this request was cancelled: it goes to the next
            raise
        if waiter.done() and not waiter.cancelled():
            return True  # possibly handed one just as the time ran out
        waiter.cancel()
        return False

    def release(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.free += 1


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
    # One per service, sized like its session's pool, so that aiohttp never waits for a connection itself.
    pool_gates: Mapping[str, PoolGate]
    pool_wait_s: float
    clients: ClientCap
    body: BodyPolicy
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
        if route.is_regulator:
            state["log_fields"] = {"traffic": "regulator"}
        return self._forward(scope, receive, send, route, path)

    async def _forward(self, scope: Scope, receive: Receive, send: Send, route: ProxyRoute, path: str) -> None:
        """Counts the request against its client address's cap while it runs; checks the head; reads a body
        within the buffer size whole; then takes a regulator slot (on that route) and a pooled connection, in that
        order, so that a slow client holds neither."""
        context = request_context(scope)
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
            data: bytes | None = None
            stream: BodyReader | None = None
            if length or chunked:  # GETs and other bodiless requests skip all of this
                deadline = asyncio.get_running_loop().time() + self.body.total_timeout_s
                reader = BodyReader(receive, route.max_body_bytes, self.body.idle_timeout_s, deadline)
                if route.max_body_bytes > self.body.buffer_max_bytes:
                    stream = reader
                elif (data := await reader.read()) is None:
                    await self._body_failed(scope, receive, send, route, reader, declared is not None)
                    return
            query = scope.get("query_string", b"").decode("latin-1")
            target = encode_path(path) + (f"?{query}" if query else "")

            slots = self.regulator_slots if route.is_regulator else None
            if slots is not None:
                if slots.locked():
                    await problem_response(
                        "service_unavailable",
                        "The regulator route is at its concurrency limit",
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
                    await self._exchange(scope, receive, send, route, target, headers, data, stream, declared)
                finally:
                    gate.release()
            finally:
                if slots is not None:
                    slots.release()
            if scope["state"].get("refused_body"):  # a streamed body refused while the upstream was held
                await self._discard_rest(receive)
        finally:
            self.clients.leave(client)

    async def _refuse_body(
        self, scope: Scope, receive: Receive, send: Send, route: ProxyRoute, *, holding: bool = False
    ) -> None:
        """413, with the connection closed after it (the unread body is still on the wire). The rest of the body
        is then dropped (see discard_body); by `_forward` once it holds nothing of the upstream's when `holding`
        (a pooled connection, a regulator slot)."""
        await problem_response(
            "payload_too_large",
            f"The body exceeds {route.max_body_bytes} bytes for {route.prefix}",
            headers={"connection": "close"},
        )(scope, receive, send)
        if holding:
            scope["state"]["refused_body"] = True
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

    async def _exchange(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        route: ProxyRoute,
        target: str,
        headers: Headers,
        data: bytes | None,
        stream: BodyReader | None,
        declared: str | None,
    ) -> None:
        """Sends the request to an instance (another after a connection failure, when that is safe) and streams
        its answer back."""
        method = scope["method"]
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
                        data=stream.chunks() if stream is not None else data,
                        allow_redirects=False,
                        timeout=timeout,
                    )
                finally:
                    _forwarded_headers.reset(forwarding)
            except (aiohttp.ClientError, TimeoutError, BodyError) as exc:
                if stream is not None and stream.failure is not None:
                    # aiohttp may wrap our exception; either way the upstream is not to blame.
                    await self._body_failed(scope, receive, send, route, stream, declared is not None, holding=True)
                    return
                connect_timeout = isinstance(exc, aiohttp.ConnectionTimeoutError)
                if isinstance(exc, TimeoutError) and not connect_timeout:
                    UPSTREAM_REQUESTS.inc((route.service, "timeout"))
                    await problem_response(
                        "upstream_timeout", f"{route.service} did not answer within {route.timeout_s:g}s"
                    )(scope, receive, send)
                    return
                # A handshake that never completed is a connection failure (retry, eject), not a slow upstream.
                UPSTREAM_REQUESTS.inc((route.service, "connect_error"))
                if connect_timeout or isinstance(exc, aiohttp.ClientConnectorError):
                    instance.record_connect_failure(self.policy)
                error = "connect timeout" if connect_timeout else type(exc).__name__
                log.warning("upstream_error", upstream=route.service, instance=instance.label, error=error)
                if method in IDEMPOTENT_METHODS and (stream is None or not stream.started):
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
