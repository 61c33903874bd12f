"""Core's import admission: at most `limit` at once, a bounded wait, then 503 with Retry-After."""

from __future__ import annotations

import asyncio

import pytest

from services.core.deps import ImportSlots
from shared.errors import ApiError


async def test_a_slot_is_given_while_one_is_free_and_given_back_after() -> None:
    slots = ImportSlots(limit=2, wait_s=0.0)
    async with slots.slot(), slots.slot():
        with pytest.raises(ApiError) as refused:
            async with slots.slot():
                pass
    assert (refused.value.kind.status, refused.value.code) == (503, "service_unavailable")
    assert refused.value.headers == {"retry-after": "1"}
    async with slots.slot(), slots.slot():
        pass  # both were given back, also by the refusal


async def test_a_waiter_gets_the_slot_freed_within_its_wait() -> None:
    slots = ImportSlots(limit=1, wait_s=5.0)
    order: list[str] = []

    async def first() -> None:
        async with slots.slot():
            order.append("first")
            await asyncio.sleep(0.05)

    async def second() -> None:
        await asyncio.sleep(0.01)
        async with slots.slot():
            order.append("second")

    await asyncio.gather(first(), second())
    assert order == ["first", "second"]


async def test_a_slot_is_given_back_when_the_import_fails() -> None:
    slots = ImportSlots(limit=1, wait_s=0.0)
    with pytest.raises(RuntimeError):
        async with slots.slot():
            raise RuntimeError("the import failed")
    async with slots.slot():
        pass


@pytest.mark.parametrize(("wait_s", "retry_after"), [(0.0, 1), (0.3, 1), (2.0, 2), (2.5, 3)])
def test_retry_after_is_the_wait_in_whole_seconds_at_least_one(wait_s: float, retry_after: int) -> None:
    assert ImportSlots(limit=1, wait_s=wait_s).retry_after_s == retry_after


@pytest.mark.parametrize(("limit", "wait_s"), [(0, 1.0), (1, -0.1)])
def test_a_bound_below_one_or_a_negative_wait_is_refused(limit: int, wait_s: float) -> None:
    with pytest.raises(ValueError):
        ImportSlots(limit=limit, wait_s=wait_s)
