"""compliance.evidence_packs: signed packs, stored as signed (the payload bytes as they are)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime

import asyncpg

from services.compliance.store.checkpoints import ANCHOR_BATCH_ROWS

__all__ = [
    "PACK_COLUMNS",
    "Pack",
    "PackSummary",
    "get_pack",
    "insert_pack",
    "page_packs",
    "page_signed_packs",
    "signed_packs",
]

SUMMARY_COLUMNS = "id, org_id, created_at, created_by, tag, sha256, key_id"
PACK_COLUMNS = f"{SUMMARY_COLUMNS}, payload, signature"


@dataclass(frozen=True)
class PackSummary:
    """A pack without its payload (listings)."""

    id: uuid.UUID
    org_id: uuid.UUID
    created_at: datetime
    created_by: str
    tag: str | None
    sha256: str
    key_id: str


@dataclass(frozen=True)
class Pack(PackSummary):
    payload: bytes = field(repr=False)
    signature: str


def _summary(row: asyncpg.Record) -> PackSummary:
    return PackSummary(**{name: row[name] for name in SUMMARY_COLUMNS.split(", ")})


def _pack(row: asyncpg.Record) -> Pack:
    return Pack(**{name: row[name] for name in PACK_COLUMNS.split(", ")})


async def insert_pack(conn: asyncpg.Connection, pack: Pack) -> None:
    await conn.execute(
        "INSERT INTO compliance.evidence_packs (id, org_id, created_at, created_by, tag, sha256, key_id, payload, "
        "signature) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        pack.id,
        pack.org_id,
        pack.created_at,
        pack.created_by,
        pack.tag,
        pack.sha256,
        pack.key_id,
        pack.payload,
        pack.signature,
    )


async def get_pack(conn: asyncpg.Connection, org_id: uuid.UUID, pack_id: uuid.UUID) -> Pack | None:
    """The org's pack `pack_id`; None when there is none or it is another org's."""
    row = await conn.fetchrow(
        f"SELECT {PACK_COLUMNS} FROM compliance.evidence_packs WHERE id = $1 AND org_id = $2", pack_id, org_id
    )
    return None if row is None else _pack(row)


async def page_packs(
    conn: asyncpg.Connection, org_id: uuid.UUID, after: tuple[datetime, uuid.UUID] | None, limit: int
) -> list[PackSummary]:
    """The org's packs newest first, after the (created_at, id) `after`, at most `limit`."""
    return [_summary(row) for row in await _page_rows(conn, SUMMARY_COLUMNS, org_id, after, limit)]


async def page_signed_packs(
    conn: asyncpg.Connection, org_id: uuid.UUID, after: tuple[datetime, uuid.UUID] | None, limit: int
) -> list[Pack]:
    """As `page_packs`, with each pack's payload and signature (a listing that verifies every pack it shows)."""
    return [_pack(row) for row in await _page_rows(conn, PACK_COLUMNS, org_id, after, limit)]


async def _page_rows(
    conn: asyncpg.Connection,
    columns: str,
    org_id: uuid.UUID,
    after: tuple[datetime, uuid.UUID] | None,
    limit: int,
) -> list[asyncpg.Record]:
    if after is None:
        return list(
            await conn.fetch(
                f"SELECT {columns} FROM compliance.evidence_packs WHERE org_id = $1 "
                "ORDER BY created_at DESC, id DESC LIMIT $2",
                org_id,
                limit,
            )
        )
    return list(
        await conn.fetch(
            f"SELECT {columns} FROM compliance.evidence_packs WHERE org_id = $1 "
            "AND (created_at, id) < ($2, $3) ORDER BY created_at DESC, id DESC LIMIT $4",
            org_id,
            after[0],
            after[1],
            limit,
        )
    )


async def signed_packs(
    conn: asyncpg.Connection, org_id: uuid.UUID, batch_rows: int = ANCHOR_BATCH_ROWS
) -> AsyncIterator[Pack]:
    """Every pack of the org, oldest first (the audit verification reads the chain heads they recorded), read
    `batch_rows` at a time (a keyset on (created_at, id)), so a caller that keeps only what it needs of each holds
    one batch of payloads at most."""
    after: tuple[datetime, uuid.UUID] | None = None
    while True:
        rows = await conn.fetch(
            f"SELECT {PACK_COLUMNS} FROM compliance.evidence_packs WHERE org_id = $1 "
            "AND ($2::timestamptz IS NULL OR (created_at, id) > ($2, $3)) ORDER BY created_at, id LIMIT $4",
            org_id,
            None if after is None else after[0],
            None if after is None else after[1],
            batch_rows,
        )
        for row in rows:
            yield _pack(row)
        if len(rows) < batch_rows:
            return
        after = (rows[-1]["created_at"], rows[-1]["id"])
