"""compliance.audit_checkpoints: signed heads of each org's audit chain."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime

import asyncpg

__all__ = [
    "ANCHOR_BATCH_ROWS",
    "CHECKPOINT_COLUMNS",
    "Checkpoint",
    "checkpoint_at",
    "insert_checkpoint",
    "latest_checkpoint",
    "org_checkpoints",
    "org_key_ids",
    "page_checkpoints",
]

# Signed documents (checkpoints here, packs in store.packs) are read this many at a time when every one of an org's
# is wanted: a checkpoint's payload is up to ~90 kB, a pack's a few hundred kB, and an org may hold thousands.
ANCHOR_BATCH_ROWS = 100
CHECKPOINT_COLUMNS = "id, org_id, created_at, created_by, seq, hash, payload, sha256, signature, key_id"


@dataclass(frozen=True)
class Checkpoint:
    id: uuid.UUID
    org_id: uuid.UUID
    created_at: datetime
    created_by: str
    seq: int
    hash: str
    payload: bytes = field(repr=False)
    sha256: str
    signature: str
    key_id: str


def _checkpoint(row: asyncpg.Record) -> Checkpoint:
    return Checkpoint(**{name: row[name] for name in CHECKPOINT_COLUMNS.split(", ")})


async def insert_checkpoint(conn: asyncpg.Connection, checkpoint: Checkpoint) -> bool:
    """Insert it; False (nothing written) when the org already has a checkpoint of that seq."""
    status: str = await conn.execute(
        f"INSERT INTO compliance.audit_checkpoints ({CHECKPOINT_COLUMNS}) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (org_id, seq) DO NOTHING",
        checkpoint.id,
        checkpoint.org_id,
        checkpoint.created_at,
        checkpoint.created_by,
        checkpoint.seq,
        checkpoint.hash,
        checkpoint.payload,
        checkpoint.sha256,
        checkpoint.signature,
        checkpoint.key_id,
    )
    return status.endswith(" 1")


async def latest_checkpoint(conn: asyncpg.Connection, org_id: uuid.UUID) -> Checkpoint | None:
    row = await conn.fetchrow(
        f"SELECT {CHECKPOINT_COLUMNS} FROM compliance.audit_checkpoints WHERE org_id = $1 ORDER BY seq DESC LIMIT 1",
        org_id,
    )
    return None if row is None else _checkpoint(row)


async def checkpoint_at(conn: asyncpg.Connection, org_id: uuid.UUID, seq: int) -> Checkpoint | None:
    """The org's checkpoint of `seq`, if one was taken."""
    row = await conn.fetchrow(
        f"SELECT {CHECKPOINT_COLUMNS} FROM compliance.audit_checkpoints WHERE org_id = $1 AND seq = $2",
        org_id,
        seq,
    )
    return None if row is None else _checkpoint(row)


async def page_checkpoints(
    conn: asyncpg.Connection, org_id: uuid.UUID, before_seq: int | None, limit: int
) -> list[Checkpoint]:
    """The org's checkpoints newest head first, below `before_seq` (None: from the newest), at most `limit`."""
    rows = await conn.fetch(
        f"SELECT {CHECKPOINT_COLUMNS} FROM compliance.audit_checkpoints "
        "WHERE org_id = $1 AND ($2::bigint IS NULL OR seq < $2) ORDER BY seq DESC LIMIT $3",
        org_id,
        before_seq,
        limit,
    )
    return [_checkpoint(row) for row in rows]


async def org_checkpoints(
    conn: asyncpg.Connection, org_id: uuid.UUID, batch_rows: int = ANCHOR_BATCH_ROWS
) -> AsyncIterator[Checkpoint]:
    """Every checkpoint of the org, lowest seq first, read `batch_rows` at a time (a keyset on seq), so a caller
    that keeps only what it needs of each holds one batch of payloads at most."""
    after = -1
    while True:
        rows = await conn.fetch(
            f"SELECT {CHECKPOINT_COLUMNS} FROM compliance.audit_checkpoints WHERE org_id = $1 AND seq > $2 "
            "ORDER BY seq LIMIT $3",
            org_id,
            after,
            batch_rows,
        )
        for row in rows:
            yield _checkpoint(row)
        if len(rows) < batch_rows:
            return
        after = rows[-1]["seq"]


async def org_key_ids(conn: asyncpg.Connection, org_id: uuid.UUID) -> set[str]:
    """The kids that signed the org's checkpoints and packs (so a verifier can load every key it will need first)."""
    rows = await conn.fetch(
        "SELECT key_id FROM compliance.audit_checkpoints WHERE org_id = $1 "
        "UNION SELECT key_id FROM compliance.evidence_packs WHERE org_id = $1",
        org_id,
    )
    return {row["key_id"] for row in rows}
