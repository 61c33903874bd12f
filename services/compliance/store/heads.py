"""Reads of the orgs' audit chain heads for the scheduled checkpoints: which orgs have a chain, and whose head no
checkpoint covers yet (`store.checkpoints` reads and writes the checkpoints themselves)."""

from __future__ import annotations

import uuid

import asyncpg

__all__ = ["ORG_BATCH", "org_ids_after", "uncovered_heads"]

# Orgs read per round trip of the scheduled checkpoints: a batch of skip-scan steps, each an index probe.
ORG_BATCH = 200
READ_TIMEOUT_S = 30.0

# The distinct orgs of audit.records after `$1`, at most `$2`, by a "loose index scan" on the primary key
# (org_id, seq): each step is one index probe for the next org, so a batch costs `$2` probes however many records
# each org has (a SELECT DISTINCT would read every record).
_ORGS_AFTER = """
WITH RECURSIVE orgs (org_id, n) AS (
    (SELECT org_id, 1 FROM audit.records WHERE org_id > $1 ORDER BY org_id LIMIT 1)
    UNION ALL
    SELECT (SELECT r.org_id FROM audit.records r WHERE r.org_id > orgs.org_id ORDER BY r.org_id LIMIT 1), n + 1
    FROM orgs WHERE orgs.org_id IS NOT NULL AND n < $2
)
SELECT org_id FROM orgs WHERE org_id IS NOT NULL
"""
_UNCOVERED = """
SELECT o.org_id FROM unnest($1::uuid[]) AS o (org_id)
CROSS JOIN LATERAL (SELECT seq FROM audit.records r WHERE r.org_id = o.org_id ORDER BY seq DESC LIMIT 1) head
WHERE NOT EXISTS (
    SELECT 1 FROM compliance.audit_checkpoints c WHERE c.org_id = o.org_id AND c.seq = head.seq
)
ORDER BY o.org_id
"""
# The lowest UUID: the skip scan's start.
NIL_ORG = uuid.UUID(int=0)


async def org_ids_after(conn: asyncpg.Connection, after: uuid.UUID | None, limit: int = ORG_BATCH) -> list[uuid.UUID]:
    """Up to `limit` orgs with audit records, in id order, after `after` (None: from the first)."""
    rows = await conn.fetch(_ORGS_AFTER, after or NIL_ORG, limit, timeout=READ_TIMEOUT_S)
    return [row["org_id"] for row in rows]


async def uncovered_heads(conn: asyncpg.Connection, org_ids: list[uuid.UUID]) -> list[uuid.UUID]:
    """Those of `org_ids` whose last audit record has no checkpoint of its seq (the head moved since the last)."""
    rows = await conn.fetch(_UNCOVERED, org_ids, timeout=READ_TIMEOUT_S)
    return [row["org_id"] for row in rows]
