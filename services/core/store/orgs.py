"""An org's export and deletion, and the tombstone it leaves (services/core/admin.py is the caller).

Export reads every table of the org a page at a time with a keyset over two columns (`OrgTable.key`), never
OFFSET and never the whole table: a row comes back as its key (to ask for the next page) and its document, the row
as PostgreSQL renders it to JSON (`to_jsonb`, without `org_id`), so a column a later migration adds is exported
without a change here. Bank lines are read with `bank_lines.page_lines` (their PII is opened by the caller).

The org's deletion lock (advisory, class ORG_DELETION_LOCK_CLASS) orders every write of an org against its
deletion. Every write transaction of an org takes it shared with `hold_org` as its FIRST statement, before any row
lock, key lock or idempotency claim, and `hold_org` then refuses an org already deleted (`OrgGone`, a 410); the
deletion takes it exclusive first. So every transaction takes the locks in one order (the org's deletion lock, the
data key row, the org's rows, the money lock, the audit lock) and none waits for a lock held by one that waits
for it: a writer that locked an account row and only then met the deletion lock in 0008's insert trigger used to
deadlock with a deletion waiting to delete that row. 0008's triggers stay as the backstop of a writer that forgot.

Deletion runs in the caller's transaction, in this order (core/0008_org_deletion.sql says why):

    begin_deletion     SET LOCAL apgms.deleting_org (the money tables' triggers then allow DELETE), then the
                       org's deletion lock exclusive: writers already holding it finish first, later ones wait and
                       then find the tombstone. The caller then destroys the org's data key.
    delete_org_rows    every table in DELETION_ORDER, then the org's idempotency records (their stored answers
                       can hold PII, such as a created line's payee); returns how many rows went from each
    insert_tombstone   org, when, by whom, those counts; no PII

The audit chain (`audit.records`) is never deleted: the caller appends `admin.org.delete` to it last.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import asyncpg
import orjson

__all__ = [
    "DELETION_ORDER",
    "EXPORTED_TABLES",
    "ORG_DELETED_SQLSTATE",
    "ORG_DELETION_LOCK_CLASS",
    "ExportRow",
    "OrgGone",
    "OrgTable",
    "Tombstone",
    "begin_deletion",
    "count_org_rows",
    "delete_org_rows",
    "export_rows",
    "hold_org",
    "insert_tombstone",
    "is_deleted",
    "mark_auth_erased",
    "tombstone",
]

# core/0008_org_deletion.sql: the advisory lock class of an org's deletion ('ORGD'), and the SQLSTATE its trigger
# raises for an insert into a deleted org.
ORG_DELETION_LOCK_CLASS = 0x4F_52_47_44
ORG_DELETED_SQLSTATE = "AP410"
IDEMPOTENCY_RECORDS = "idempotency_records"


class OrgGone(Exception):
    """The org was deleted: nothing of it may be written (core's app answers 410 `gone`)."""

    def __init__(self, org_id: uuid.UUID) -> None:
        self.org_id = org_id
        super().__init__(f"org {org_id} was deleted")


@dataclass(frozen=True)
class OrgTable:
    """A table of core that holds an org's rows, and the two columns that order them uniquely (ascending)."""

    name: str
    key: tuple[str, str]


# What an export holds besides bank lines, in its order.
EXPORTED_TABLES: tuple[OrgTable, ...] = (
    OrgTable("bas_cycles", ("period_start", "id")),
    OrgTable("payment_plans", ("requested_at", "id")),
    OrgTable("designated_accounts", ("tax", "id")),
    OrgTable("designated_sources", ("account_id", "source")),
    OrgTable("designated_transfers", ("created_at", "id")),
    OrgTable("alerts", ("created_at", "id")),
)
# Every table of the org, children before the parents their foreign keys name.
DELETION_ORDER: tuple[str, ...] = (
    "payment_plans",
    "designated_transfers",
    "designated_sources",
    "designated_accounts",
    "alerts",
    "bas_cycles",
    "cycle_totals",
    "bank_lines",
)


@dataclass(frozen=True)
class ExportRow:
    key: tuple[Any, Any]
    # The row without org_id; numbers are Decimals (exact: parsed from PostgreSQL's text, never through float).
    document: dict[str, Any]


@dataclass(frozen=True)
class Tombstone:
    org_id: uuid.UUID
    deleted_at: datetime
    deleted_by: str
    counts: dict[str, int]
    auth_erased_at: datetime | None


async def export_rows(
    conn: asyncpg.Connection, org_id: uuid.UUID, table: OrgTable, after: tuple[Any, Any] | None, limit: int
) -> list[ExportRow]:
    """At most `limit` of the org's rows of `table` in key order, after the key `after`."""
    if table not in EXPORTED_TABLES:
        raise ValueError(f"{table.name} is not an exported table")
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise ValueError(f"a page limit is a positive int, not {limit!r}")
    first, second = table.key
    where = "org_id = $1" if after is None else f"org_id = $1 AND ({first}, {second}) > ($2, $3)"
    rows = await conn.fetch(
        f"SELECT {first} AS k1, {second} AS k2, (to_jsonb(t) - 'org_id')::text AS document "
        f"FROM core.{table.name} t WHERE {where} ORDER BY {first}, {second} LIMIT {limit}",
        org_id,
        *(after or ()),
    )
    return [ExportRow((row["k1"], row["k2"]), json.loads(row["document"], parse_float=Decimal)) for row in rows]


async def count_org_rows(conn: asyncpg.Connection, org_id: uuid.UUID) -> dict[str, int]:
    """How many rows the org has in each of its tables (DELETION_ORDER's names)."""
    counts = {}
    for name in DELETION_ORDER:
        counts[name] = int(await conn.fetchval(f"SELECT count(*) FROM core.{name} WHERE org_id = $1", org_id))
    return counts


async def hold_org(conn: asyncpg.Connection, org_id: uuid.UUID) -> None:
    """The first statement of every write transaction of the org: hold its deletion lock shared until the
    transaction ends, then `OrgGone` if it was deleted (read after the lock, so a deletion that committed while this
    waited is seen)."""
    await conn.execute(
        "SELECT pg_advisory_xact_lock_shared($1, hashtext($2::uuid::text))", ORG_DELETION_LOCK_CLASS, org_id
    )
    if await is_deleted(conn, org_id):
        raise OrgGone(org_id)


async def is_deleted(conn: asyncpg.Connection, org_id: uuid.UUID) -> bool:
    """Whether the org has a tombstone (one primary-key probe)."""
    return bool(await conn.fetchval("SELECT EXISTS (SELECT 1 FROM core.org_tombstones WHERE org_id = $1)", org_id))


async def begin_deletion(conn: asyncpg.Connection, org_id: uuid.UUID) -> None:
    """Allow this transaction to delete the org's money rows, and hold the org's deletion lock until it ends."""
    await conn.execute("SELECT set_config('apgms.deleting_org', $1, true)", str(org_id))
    await conn.execute("SELECT pg_advisory_xact_lock($1, hashtext($2::uuid::text))", ORG_DELETION_LOCK_CLASS, org_id)


async def delete_org_rows(conn: asyncpg.Connection, org_id: uuid.UUID) -> dict[str, int]:
    """Delete every row of the org (after `begin_deletion` in the same transaction); how many went from each table,
    the idempotency records as `idempotency_records`."""
    counts = {}
    for name in DELETION_ORDER:
        result: str = await conn.execute(f"DELETE FROM core.{name} WHERE org_id = $1", org_id)
        counts[name] = int(result.split()[-1])
    result = await conn.execute("DELETE FROM idempotency.records WHERE org_id = $1", org_id)
    counts[IDEMPOTENCY_RECORDS] = int(result.split()[-1])
    return counts


_TOMBSTONE_COLUMNS = "org_id, deleted_at, deleted_by, counts::text AS counts, auth_erased_at"


def _tombstone(row: asyncpg.Record) -> Tombstone:
    return Tombstone(**{**dict(row), "counts": orjson.loads(row["counts"])})


async def insert_tombstone(
    conn: asyncpg.Connection, org_id: uuid.UUID, deleted_by: str, counts: dict[str, int]
) -> Tombstone:
    row = await conn.fetchrow(
        f"INSERT INTO core.org_tombstones (org_id, deleted_by, counts) VALUES ($1, $2, $3::text::jsonb) "
        f"RETURNING {_TOMBSTONE_COLUMNS}",
        org_id,
        deleted_by,
        orjson.dumps(counts).decode(),
    )
    return _tombstone(row)


async def tombstone(conn: asyncpg.Connection, org_id: uuid.UUID) -> Tombstone | None:
    """The org's tombstone; None while it is not deleted."""
    row = await conn.fetchrow(f"SELECT {_TOMBSTONE_COLUMNS} FROM core.org_tombstones WHERE org_id = $1", org_id)
    return None if row is None else _tombstone(row)


async def mark_auth_erased(conn: asyncpg.Connection, org_id: uuid.UUID) -> Tombstone | None:
    """Record that auth disabled the deleted org's users and clients (the first time only)."""
    row = await conn.fetchrow(
        f"UPDATE core.org_tombstones SET auth_erased_at = coalesce(auth_erased_at, now()) WHERE org_id = $1 "
        f"RETURNING {_TOMBSTONE_COLUMNS}",
        org_id,
    )
    return None if row is None else _tombstone(row)
