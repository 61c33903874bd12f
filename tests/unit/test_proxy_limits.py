"""The proxy's protections against slow and greedy clients, without a server: body reading with its deadlines,
the pool gate and the per-address cap (issue #9 finding 2)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest

from proxy.limits import (
    BodyReader,
    BodyTimedOut,
    BodyTooLarge,
    BufferBudget,
    BuffersFull,
    ClientCap,
    ClientDisconnected,
    PoolGate,
)
from shared.types import Message


def receiving(*messages: Message, every_s: float = 0.0) -> Callable[[], Awaitable[Message]]:
    """An ASGI receive giving `messages` one every `every_s`, then waiting forever (a client gone quiet)."""
    queue = list(messages)

    async def receive() -> Message:
        await asyncio.sleep(every_s)
        if not queue:
            await asyncio.Event().wait()
        return queue.pop(0)

    return receive


def body(chunk: bytes, more: bool = False) -> Message:
    return {"type": "http.request", "body": chunk, "more_body": more}


def reader(receive: Callable[[], Awaitable[Message]], limit: int = 100, idle_s: float = 1.0, total_s: float = 5.0):
    return BodyReader(receive, limit, idle_s, asyncio.get_running_loop().time() + total_s)


async def test_a_body_is_read_whole_from_one_message_or_several() -> None:
    assert await reader(receiving(body(b"abc"))).read() == b"abc"
    assert await reader(receiving(body(b"ab", True), body(b"", True), body(b"c"))).read() == b"abc"
    assert await reader(receiving(body(b"a", True), body(b"b", True), body(b"c"))).read() == b"abc"


async def test_a_body_past_the_limit_fails_as_too_large() -> None:
    over = reader(receiving(body(b"x" * 60, True), body(b"x" * 60)), limit=100)
    assert await over.read() is None
    assert over.failure is BodyTooLarge


async def test_a_body_that_goes_quiet_fails_after_the_idle_deadline() -> None:
    quiet = reader(receiving(body(b"x", True)), idle_s=0.2)
    started = time.monotonic()
    assert await quiet.read() is None
    assert quiet.failure is BodyTimedOut
    assert 0.15 < time.monotonic() - started < 1


async def test_a_trickling_body_fails_at_the_total_deadline_though_never_idle() -> None:
    trickle = reader(receiving(*[body(b"x", True)] * 100, every_s=0.05), idle_s=0.2, total_s=0.5)
    started = time.monotonic()
    assert await trickle.read() is None
    assert trickle.failure is BodyTimedOut
    assert 0.45 < time.monotonic() - started < 1.5
    assert 0 < trickle.received < 100


async def test_a_client_that_leaves_mid_body_fails_as_disconnected() -> None:
    gone = reader(receiving(body(b"x", True), {"type": "http.disconnect"}))
    assert await gone.read() is None
    assert gone.failure is ClientDisconnected


async def test_a_streamed_body_raises_its_failure_to_stop_the_upload() -> None:
    streamed = reader(receiving(body(b"ab", True), body(b"c" * 200)), limit=100)
    chunks = []
    with pytest.raises(BodyTooLarge):
        async for chunk in streamed.chunks():
            chunks.append(chunk)
    assert chunks == [b"ab"]
    assert streamed.started and streamed.failure is BodyTooLarge


def test_an_address_gets_at_most_its_cap_and_is_forgotten_at_zero() -> None:
    cap = ClientCap(2)
    assert cap.enter("198.51.100.1") and cap.enter("198.51.100.1")
    assert not cap.enter("198.51.100.1")
    assert cap.enter("198.51.100.2")  # another address has its own share
    cap.leave("198.51.100.1")
    assert cap.enter("198.51.100.1")
    for address in ("198.51.100.1", "198.51.100.1", "198.51.100.2"):
        cap.leave(address)
    assert cap.in_flight == {}  # the table holds only addresses with requests in flight


async def test_the_pool_gate_gives_free_connections_at_once_and_refuses_after_the_wait() -> None:
    gate = PoolGate(2)
    assert gate.try_take() and gate.try_take()
    assert not gate.try_take()
    started = time.monotonic()
    assert not await gate.wait(0.2)
    assert 0.15 < time.monotonic() - started < 1
    gate.release()
    assert gate.try_take()  # the waiter that gave up is not handed the released connection


async def test_a_released_connection_goes_to_the_longest_waiter_first() -> None:
    gate = PoolGate(1)
    assert gate.try_take()
    first = asyncio.ensure_future(gate.wait(5))
    second = asyncio.ensure_future(gate.wait(5))
    await asyncio.sleep(0)
    gate.release()
    assert await asyncio.wait_for(first, 1) is True
    assert not second.done()
    gate.release()
    assert await asyncio.wait_for(second, 1) is True
    assert not gate.try_take()  # the one connection went from waiter to waiter, never counted twice
    gate.release()
    assert gate.try_take() and not gate.try_take()


async def test_a_waiter_cancelled_after_being_handed_a_connection_passes_it_on() -> None:
    gate = PoolGate(1)
    assert gate.try_take()
    cancelled = asyncio.ensure_future(gate.wait(5))
    after = asyncio.ensure_future(gate.wait(5))
    await asyncio.sleep(0)
    gate.release()  # handed to `cancelled`, which is cancelled before it runs
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    assert await asyncio.wait_for(after, 1) is True


# --- the process-wide budget of buffered bodies (review of the issue #9 finding 2 fix) ----------------------------


def budgeted(receive: Callable[[], Awaitable[Message]], budget: BufferBudget, limit: int = 100) -> BodyReader:
    return BodyReader(receive, limit, 1.0, asyncio.get_running_loop().time() + 5.0, budget)


async def test_bodies_buffered_at_once_share_one_budget_and_give_it_back() -> None:
    """Each request may hold its route's limit (1 MiB) for 60 s, and the per-address cap bounds one address only:
    many addresses together are bounded by the budget."""
    budget = BufferBudget(150)
    first = budgeted(receiving(body(b"a" * 100)), budget)
    assert await first.read() == b"a" * 100
    assert budget.used == 100
    second = budgeted(receiving(body(b"b" * 40, True), body(b"b" * 40)), budget)
    assert await second.read() is None
    assert second.failure is BuffersFull
    assert budget.used == 140, "what it had buffered stays taken until its request ends"
    second.release()
    first.release()
    first.release()  # idempotent: the forwarder releases in a finally whatever happened before
    assert budget.used == 0
    third = budgeted(receiving(body(b"c" * 100)), budget)
    assert await third.read() == b"c" * 100


async def test_a_body_that_fails_otherwise_gives_back_what_it_took() -> None:
    budget = BufferBudget(1000)
    quiet = BodyReader(receiving(body(b"x" * 30, True)), 100, 0.05, asyncio.get_running_loop().time() + 5.0, budget)
    assert await quiet.read() is None
    assert (quiet.failure, budget.used) == (BodyTimedOut, 30)
    quiet.release()
    assert budget.used == 0


async def test_a_streamed_body_takes_nothing_from_the_budget() -> None:
    budget = BufferBudget(10)
    streamed = budgeted(receiving(body(b"ab" * 20, True), body(b"c" * 40)), budget)
    assert [chunk async for chunk in streamed.chunks()] == [b"ab" * 20, b"c" * 40]
    assert budget.used == 0
