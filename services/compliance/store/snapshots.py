"""compliance.snapshots: point-in-time monitoring snapshots of an org (the body is JSON without floats)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import orjson

__all__ = ["SnapshotRow", "insert_snapshot", "newest_snapshots", "page_snapshots"]

COLUMNS = "id, org_id, taken_at, taken_by, body::text AS body"


@dataclass(frozen=True)
class SnapshotRow:
    id: uuid.UUID
    org_id: uuid.UUID
    taken_at: datetime
    taken_by: str
    body: dict[str, Any]


def _row(row: asyncpg.Record) -> SnapshotRow:
    return SnapshotRow(
        id=row["id"], org_id=row["org_id"], taken_at=row["taken_at"], taken_by=row["taken_by"],
        body=orjson.loads(row["body"]),
    )  # fmt: skip


async def insert_snapshot(conn: asyncpg.Connection, snapshot: SnapshotRow) -> None:
    await conn.execute(
        "INSERT INTO compliance.snapshots (id, org_id, taken_at, taken_by, body) "
        "VALUES ($1, $2, $3, $4, $5::text::jsonb)",
        snapshot.id,
        snapshot.org_id,
        snapshot.taken_at,
        snapshot.taken_by,
        orjson.dumps(snapshot.body).decode(),
    )


async def page_snapshots(
    conn: asyncpg.Connection, org_id: uuid.UUID, after: tuple[datetime, uuid.UUID] | None, limit: int
) -> list[SnapshotRow]:
    """The org's snapshots newest first, after the (taken_at, id) `after`, at most `limit`."""
    if after is None:
        rows = await conn.fetch(
            f"SELECT {COLUMNS} FROM compliance.snapshots WHERE org_id = $1 ORDER BY taken_at DESC, id DESC LIMIT $2",
            org_id,
            limit,
        )
    else:
        rows = await conn.fetch(
            f"SELECT {COLUMNS} FROM compliance.snapshots WHERE org_id = $1 AND (taken_at, id) < ($2, $3) "
            "ORDER BY taken_at DESC, id DESC LIMIT $4",
            org_id,
            after[0],
            after[1],
            limit,
        )
    return [_row(row) for row in rows]


async def newest_snapshots(conn: asyncpg.Connection, org_id: uuid.UUID, limit: int) -> list[SnapshotRow]:
    return await page_snapshots(conn, org_id, None, limit)
