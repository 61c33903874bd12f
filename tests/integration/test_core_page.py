"""The keyset page of core's store: walking every page returns each line once, in order, and a page deep in the
list is one bounded range scan of the page index, like the first (no Sort, no OFFSET, no rows filtered away)."""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import pytest_asyncio

from services.core.store import LineKey, PageFilters, SealedLine, copy_lines, page_lines, page_query

ORG = uuid.UUID("5b0c63c2-8f8e-4a52-9df0-2f3a1c6d7e01")
OTHER_ORG = uuid.UUID("0e9c1d2b-7a6f-4e3d-8c5b-4a3f2e1d0c9b")
LINES = 3_000
OTHER_LINES = 2_000
PAGE = 50
AT = datetime(2026, 11, 27, tzinfo=UTC)
FIRST_DAY = date(2024, 1, 1)


def lines(org: uuid.UUID, count: int, rng: random.Random) -> list[SealedLine]:
    # Few distinct dates, so many lines share one: the id must break ties in the order.
    return [
        SealedLine(
            id=uuid.UUID(int=rng.getrandbits(128)),
            org_id=org,
            date=FIRST_DAY + timedelta(days=rng.randrange(300)),
            amount=Decimal(rng.randrange(-100_000, 100_000)) / 100,
            gst_amount=Decimal("0.00"),
            paygw_amount=Decimal("0.00"),
            payee=b"sealed",
            description=b"sealed",
            created_by="system",
            created_at=AT,
        )
        for _ in range(count)
    ]


@pytest_asyncio.fixture
async def conn(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(database_url)
    rng = random.Random(11)
    ours, theirs = lines(ORG, LINES, rng), lines(OTHER_ORG, OTHER_LINES, rng)
    async with connection.transaction():
        await copy_lines(connection, [*ours, *theirs])
    await connection.execute("ANALYZE core.bank_lines")
    try:
        yield connection
    finally:
        await connection.close()


async def walk(conn: asyncpg.Connection, filters: PageFilters) -> list[SealedLine]:
    seen: list[SealedLine] = []
    after = None
    while True:
        page = await page_lines(conn, ORG, filters, after, PAGE)
        seen += page
        if len(page) < PAGE:
            return seen
        after = LineKey(page[-1].date, page[-1].id)


async def test_walking_every_page_returns_each_line_once_newest_first(conn: asyncpg.Connection) -> None:
    seen = await walk(conn, PageFilters())
    assert len(seen) == LINES
    assert len({line.id for line in seen}) == LINES
    assert [(line.date, line.id) for line in seen] == sorted(((line.date, line.id) for line in seen), reverse=True)
    assert {line.org_id for line in seen} == {ORG}


async def test_walking_a_filtered_list_returns_exactly_the_lines_within_the_bounds(conn: asyncpg.Connection) -> None:
    filters = PageFilters(date(2024, 3, 1), date(2024, 6, 30), Decimal("-100.00"), Decimal("250.00"))
    everything = await walk(conn, PageFilters())
    expected = [
        line
        for line in everything
        if date(2024, 3, 1) <= line.date <= date(2024, 6, 30) and Decimal("-100.00") <= line.amount <= Decimal("250.00")
    ]
    assert 0 < len(expected) < LINES
    assert await walk(conn, filters) == expected


def plan_nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    return [plan, *(node for child in plan.get("Plans", []) for node in plan_nodes(child))]


async def explain(conn: asyncpg.Connection, filters: PageFilters, after: LineKey | None) -> list[dict[str, Any]]:
    sql, args = page_query(ORG, filters, after, PAGE + 1)
    # A prepared statement's generic plan is what a busy pool ends up running: force it.
    await conn.execute("SET plan_cache_mode = force_generic_plan")
    try:
        text = await conn.fetchval(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}", *args)
    finally:
        await conn.execute("RESET plan_cache_mode")
    return plan_nodes(json.loads(text)[0]["Plan"])


async def test_a_deep_page_is_one_bounded_range_scan_of_the_page_index(conn: asyncpg.Connection) -> None:
    everything = await walk(conn, PageFilters())
    # Two thirds down: deep, with enough lines after it that a page is a choice between stopping early and sorting.
    # (Near the very end the planner may rightly sort the few lines left: that is cheaper, not dearer, than page 1.)
    deep = everything[2 * LINES // 3]
    for after in (None, LineKey(deep.date, deep.id)):
        nodes = await explain(conn, PageFilters(), after)
        kinds = [node["Node Type"] for node in nodes]
        assert "Sort" not in kinds and "Seq Scan" not in kinds, kinds
        scan = next(node for node in nodes if node["Node Type"] in ("Index Scan", "Index Only Scan"))
        assert scan["Index Name"] == "bank_lines_page_idx"
        assert scan["Actual Rows"] == PAGE + 1
        assert scan.get("Rows Removed by Filter", 0) == 0
        if after is not None:
            assert "ROW(date, id) < ROW(" in scan["Index Cond"], scan["Index Cond"]
    sql, _ = page_query(ORG, PageFilters(), LineKey(deep.date, deep.id), PAGE)
    assert "OFFSET" not in sql.upper()


async def test_date_bounds_are_index_conditions_of_a_deep_filtered_page(conn: asyncpg.Connection) -> None:
    filters = PageFilters(start=date(2024, 2, 1), end=date(2024, 9, 30))
    walked = await walk(conn, filters)
    deep = walked[len(walked) // 2]
    nodes = await explain(conn, filters, LineKey(deep.date, deep.id))
    scan = next(node for node in nodes if node["Node Type"] in ("Index Scan", "Index Only Scan"))
    assert scan["Index Name"] == "bank_lines_page_idx"
    assert "Sort" not in [node["Node Type"] for node in nodes]
    assert scan["Actual Rows"] == PAGE + 1
    assert scan.get("Rows Removed by Filter", 0) == 0
    assert "date >=" in scan["Index Cond"] and "date <=" in scan["Index Cond"], scan["Index Cond"]
