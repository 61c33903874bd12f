"""Bank lines' SQL; every function takes a connection, so the caller owns the transaction.

Bank lines are written two ways, both from `SealedLine`s whose payee and description are already ciphertext
(`shared.pii`, bound to org, `bank_lines`, column and the line's id, which is why ids are made by the writer):
`insert_line` for one line, `copy_lines` for many (PostgreSQL COPY, the bulk import's and the seed's path).

They are read a page at a time, newest first: `page_lines` is a keyset query (never OFFSET) whose text is built
from fixed fragments for the filters actually given, so each of its few shapes gets a plan with every bound as an
index condition of `bank_lines_page_idx`, and a page deep in the list costs what the first one does.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, fields
from datetime import date, datetime
from decimal import Decimal

import asyncpg

__all__ = [
    "BANK_LINES_TABLE",
    "SCHEMA",
    "SEALED_LINE_COLUMNS",
    "LineKey",
    "MonthTotals",
    "PageFilters",
    "SealedLine",
    "bank_line_summary",
    "copy_lines",
    "count_lines",
    "cursor_key",
    "get_line",
    "insert_line",
    "page_lines",
    "page_query",
]

# The table name PII ciphertext is bound to (`shared.pii.Binding`), and the one COPY writes.
BANK_LINES_TABLE = "bank_lines"
SCHEMA = "core"


@dataclass(frozen=True, slots=True)
class SealedLine:
    """A bank line ready to store: payee and description are ciphertext. Field order is the COPY column order."""

    id: uuid.UUID
    org_id: uuid.UUID
    date: date
    amount: Decimal
    gst_amount: Decimal
    paygw_amount: Decimal
    payee: bytes
    description: bytes
    created_by: str
    created_at: datetime

    def record(self) -> tuple[object, ...]:
        """The values in column order (not `dataclasses.astuple`, which deep-copies each field: a seed writes
        millions of these)."""
        return (
            self.id,
            self.org_id,
            self.date,
            self.amount,
            self.gst_amount,
            self.paygw_amount,
            self.payee,
            self.description,
            self.created_by,
            self.created_at,
        )


SEALED_LINE_COLUMNS = tuple(f.name for f in fields(SealedLine))


async def insert_line(conn: asyncpg.Connection, line: SealedLine) -> None:
    await conn.execute(
        f"INSERT INTO core.bank_lines ({', '.join(SEALED_LINE_COLUMNS)}) "
        f"VALUES ({', '.join(f'${i}' for i in range(1, len(SEALED_LINE_COLUMNS) + 1))})",
        *line.record(),
    )


async def copy_lines(conn: asyncpg.Connection, lines: Iterable[SealedLine]) -> int:
    """Write `lines` with COPY (binary protocol) in the caller's transaction; returns how many were written."""
    records = [line.record() for line in lines]
    await conn.copy_records_to_table(BANK_LINES_TABLE, schema_name=SCHEMA, columns=SEALED_LINE_COLUMNS, records=records)
    return len(records)


@dataclass(frozen=True, slots=True)
class MonthTotals:
    """One calendar month's bank lines of an org within a summary's dates: how many, and their sums."""

    month: date  # the first day of the month
    count: int
    amount: Decimal
    gst_amount: Decimal
    paygw_amount: Decimal


async def count_lines(conn: asyncpg.Connection, org_id: uuid.UUID) -> int:
    """How many lines the org has (an index-only count over `bank_lines_page_idx`)."""
    count: int = await conn.fetchval("SELECT count(*) FROM core.bank_lines WHERE org_id = $1", org_id)
    return count


async def bank_line_summary(conn: asyncpg.Connection, org_id: uuid.UUID, start: date, end: date) -> list[MonthTotals]:
    """The totals of `org_id`'s lines dated `start`..`end` (inclusive), one row per month that has any, oldest
    first. Reads no PII: a range scan of the page index, sums from the heap."""
    rows = await conn.fetch(
        "SELECT date_trunc('month', date)::date AS month, count(*) AS count, sum(amount) AS amount, "
        "sum(gst_amount) AS gst_amount, sum(paygw_amount) AS paygw_amount "
        "FROM core.bank_lines WHERE org_id = $1 AND date >= $2 AND date <= $3 GROUP BY 1 ORDER BY 1",
        org_id,
        start,
        end,
    )
    return [MonthTotals(**row) for row in rows]


# --- reading lines -----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LineKey:
    """A line's place in the newest-first order: (date, id), both descending."""

    date: date
    id: uuid.UUID


@dataclass(frozen=True, slots=True)
class PageFilters:
    """The optional bounds of a page, all inclusive: dates `start`..`end`, amounts `min_amount`..`max_amount`."""

    start: date | None = None
    end: date | None = None
    min_amount: Decimal | None = None
    max_amount: Decimal | None = None


_SELECT_LINE = f"SELECT {', '.join(SEALED_LINE_COLUMNS)} FROM core.bank_lines"


def page_query(org_id: uuid.UUID, filters: PageFilters, after: LineKey | None, limit: int) -> tuple[str, list[object]]:
    """The SQL text and arguments of one page (pure). Only the given bounds appear, as plain comparisons: a
    catch-all `($2 IS NULL OR date >= $2)` would leave the generic plan of a prepared statement filtering rows
    instead of bounding the index range, and the cost of a page would grow with its depth."""
    args: list[object] = [org_id]
    where = ["org_id = $1"]

    def bound(condition: str, *values: object) -> None:
        placeholders = []
        for value in values:
            args.append(value)
            placeholders.append(f"${len(args)}")
        where.append(condition.format(*placeholders))

    if after is not None:
        # A row comparison over the index's (date DESC, id DESC) columns: one range condition, not an OR.
        bound("(date, id) < ({}, {})", after.date, after.id)
    if filters.start is not None:
        bound("date >= {}", filters.start)
    if filters.end is not None:
        bound("date <= {}", filters.end)
    if filters.min_amount is not None:
        bound("amount >= {}", filters.min_amount)
    if filters.max_amount is not None:
        bound("amount <= {}", filters.max_amount)
    # The limit is written into the text (an int, checked here): as a parameter, a generic plan would not know it
    # and could prefer sorting the org's every line to a range scan that stops after `limit` rows.
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise ValueError(f"a page limit is a positive int, not {limit!r}")
    sql = f"{_SELECT_LINE} WHERE {' AND '.join(where)} ORDER BY date DESC, id DESC LIMIT {limit}"
    return sql, args


async def page_lines(
    conn: asyncpg.Connection, org_id: uuid.UUID, filters: PageFilters, after: LineKey | None, limit: int
) -> list[SealedLine]:
    """At most `limit` of the org's lines within `filters`, newest first, starting after `after`."""
    sql, args = page_query(org_id, filters, after, limit)
    return [SealedLine(*row) for row in await conn.fetch(sql, *args)]


async def get_line(conn: asyncpg.Connection, org_id: uuid.UUID, line_id: uuid.UUID) -> SealedLine | None:
    """The org's line `line_id`; None when there is none, or it is another org's (the caller cannot tell which)."""
    row = await conn.fetchrow(f"{_SELECT_LINE} WHERE id = $1 AND org_id = $2", line_id, org_id)
    return None if row is None else SealedLine(*row)


async def cursor_key(conn: asyncpg.Connection) -> bytes:
    """The key that signs page cursors (core/0003_cursor_key.sql makes it once, at migration)."""
    key: bytes = await conn.fetchval("SELECT key FROM core.cursor_key")
    return bytes(key)
