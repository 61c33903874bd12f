"""What one request or one client may hold of the proxy: a request body read within its route's limit and two
deadlines (whole, or streamed for routes above the buffer size), the rest of a refused body dropped within
limits, a bounded wait for one of a service's pooled connections, and a cap on requests in flight per client
address. No I/O of their own beyond the ASGI `receive` they are given; `proxy.forward` applies them."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass

from proxy.routing import MiB
from shared.types import Message, Receive

# After a 413, how much of the rest of the body is still read (and dropped), and for how long: see discard_body.
LINGER_BYTES = 64 * 1024 * 1024
LINGER_S = 5.0
LINGER_IDLE_S = 1.0
# Routes whose body limit is at most this read the body whole before taking an upstream connection; the others
# (bulk import, 5 MiB) stream it. nginx buffers request bodies the same way.
BUFFER_MAX_BYTES = 1 * MiB
# Bytes of request bodies the whole process may hold while buffering them (503 past it): the per-address cap
# bounds one address (64 x 1 MiB), not many.
BUFFER_TOTAL_BYTES = 256 * MiB
# 408 after this long without a byte of the body, or when the whole body has not arrived within the total.
BODY_IDLE_TIMEOUT_S = 10.0
BODY_TIMEOUT_S = 60.0
# How long a request may wait for a pooled upstream connection (503 upstream_busy after it).
POOL_WAIT_S = 2.0
# Requests in flight per client address (429 past it); see ClientCap.
MAX_REQUESTS_PER_CLIENT = 64


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


class BuffersFull(BodyError):
    """Buffering this body would take the process past its `BufferBudget`."""


class BufferBudget:
    """The bytes of request bodies being buffered by the whole process, at most `limit_bytes`. A reader takes its
    bytes as they arrive, so a client pays for what it has sent, not what it declared, and the request gives them
    back when it ends (`BodyReader.release`)."""

    def __init__(self, limit_bytes: int) -> None:
        self.limit_bytes = limit_bytes
        self.used = 0

    def take(self, size: int) -> bool:
        if self.used + size > self.limit_bytes:
            return False
        self.used += size
        return True

    def give_back(self, size: int) -> None:
        self.used -= size


@dataclass(frozen=True)
class BodyPolicy:
    """How request bodies are read: whole up to `buffer_max_bytes` of route limit (streamed above it), and within
    two deadlines, per read and for the whole body (408 past either); at most `buffer_total_bytes` buffered by
    the process at once (503 past it)."""

    buffer_max_bytes: int = BUFFER_MAX_BYTES
    buffer_total_bytes: int = BUFFER_TOTAL_BYTES
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
    budget: BufferBudget | None = None  # taken from by `read`, not by `chunks` (a streamed body is not held)
    received: int = 0
    reserved: int = 0  # bytes taken from the budget
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
        size = len(message.get("body", b""))
        self.received += size
        if self.received > self.limit:
            self.failure = BodyTooLarge
            return None
        if self.budget is not None and not self.started:
            if not self.budget.take(size):
                self.failure = BuffersFull
                return None
            self.reserved += size
        return message

    def release(self) -> None:
        """Gives the buffered bytes back to the budget (the request is over); idempotent."""
        if self.budget is not None and self.reserved:
            self.budget.give_back(self.reserved)
            self.reserved = 0

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
