"""Reads of `audit.records` for the audit listing and the packs (the chain is written by `shared.audit` only)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from shared.audit import AuditRecord, record_of_row

__all__ = ["AuditFilters", "page_records"]


@dataclass(frozen=True)
class AuditFilters:
    action: str | None = None
    actor: str | None = None
    since: datetime | None = None  # at >= since
    until: datetime | None = None  # at < until


async def page_records(
    conn: asyncpg.Connection,
    org_id: uuid.UUID,
    filters: AuditFilters,
    before_seq: int | None,
    limit: int,
) -> list[AuditRecord]:
    """The org's records newest first (highest seq first) that match `filters`, below `before_seq`, at most
    `limit`; keyset on the primary key (org_id, seq)."""
    rows = await conn.fetch(
        "SELECT org_id, seq, at, actor, action, target, request_id, detail::text AS detail, prev_hash, hash "
        "FROM audit.records WHERE org_id = $1 AND ($2::bigint IS NULL OR seq < $2) "
        "AND ($3::text IS NULL OR action = $3) AND ($4::text IS NULL OR actor = $4) "
        "AND ($5::timestamptz IS NULL OR at >= $5) AND ($6::timestamptz IS NULL OR at < $6) "
        "ORDER BY seq DESC LIMIT $7",
        org_id,
        before_seq,
        filters.action,
        filters.actor,
        filters.since,
        filters.until,
        limit,
    )
    return [record_of_row(row) for row in rows]
