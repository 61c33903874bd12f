"""compliance.evidence_keys: the Ed25519 keys that sign packs and checkpoints (private keys sealed)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg
import orjson

__all__ = ["KeyRow", "all_keys", "insert_active_key", "retire_active_key"]


@dataclass(frozen=True)
class KeyRow:
    kid: str
    public_jwk: dict[str, Any]
    private_sealed: str = field(repr=False)
    status: str
    created_at: datetime
    retired_at: datetime | None


async def all_keys(conn: asyncpg.Connection) -> list[KeyRow]:
    """Every key, active first, then retired ones newest first (all of them stay published)."""
    rows = await conn.fetch(
        "SELECT kid, public_jwk::text AS public_jwk, private_sealed, status, created_at, retired_at "
        "FROM compliance.evidence_keys ORDER BY status = 'active' DESC, created_at DESC, kid"
    )
    return [
        KeyRow(
            kid=row["kid"],
            public_jwk=orjson.loads(row["public_jwk"]),
            private_sealed=row["private_sealed"],
            status=row["status"],
            created_at=row["created_at"],
            retired_at=row["retired_at"],
        )
        for row in rows
    ]


async def insert_active_key(conn: asyncpg.Connection, kid: str, public_jwk: dict[str, Any], sealed: str) -> None:
    await conn.execute(
        "INSERT INTO compliance.evidence_keys (kid, public_jwk, private_sealed, status) "
        "VALUES ($1, $2::text::jsonb, $3, 'active')",
        kid,
        orjson.dumps(public_jwk).decode(),
        sealed,
    )


async def retire_active_key(conn: asyncpg.Connection) -> str | None:
    """Mark the active key retired (it signs nothing more, and stays published); returns its kid."""
    kid: str | None = await conn.fetchval(
        "UPDATE compliance.evidence_keys SET status = 'retired', retired_at = now() WHERE status = 'active' "
        "RETURNING kid"
    )
    return kid
