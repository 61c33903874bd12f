"""Raising alerts in PostgreSQL: at most one open SUSPICIOUS_TAX_GAP per org under concurrent writers, any number
of other alerts, and a new gap alert once the open one is resolved."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg

from services.core.store.alerts import DESIGNATED_WITHDRAWAL_ATTEMPT, SUSPICIOUS_TAX_GAP, raise_alert

ORG = uuid.UUID("7d7a6b0e-5c1f-4a39-9a57-0f3c2b1e8d44")
WRITERS = 20


async def raise_one(pool: asyncpg.Pool, type: str) -> bool:
    async with pool.acquire() as conn, conn.transaction():
        alert = await raise_alert(
            conn,
            org_id=ORG,
            type=type,
            severity="HIGH",
            message="PAYGW short by 600.00",
            detail={"paygw_shortfall": "600.00"},
            actor="system",
        )
        return alert is not None


async def test_concurrent_writers_leave_one_open_tax_gap_and_every_other_alert(database_url: str) -> None:
    pool = await asyncpg.create_pool(database_url, min_size=WRITERS, max_size=WRITERS)
    try:
        gaps = await asyncio.gather(*(raise_one(pool, SUSPICIOUS_TAX_GAP) for _ in range(WRITERS)))
        others = await asyncio.gather(*(raise_one(pool, DESIGNATED_WITHDRAWAL_ATTEMPT) for _ in range(3)))
        assert sum(gaps) == 1
        assert all(others)
        async with pool.acquire() as conn:
            rows = await conn.fetch("SELECT type, detail FROM core.alerts WHERE org_id = $1 ORDER BY type", ORG)
            assert [r["type"] for r in rows] == [DESIGNATED_WITHDRAWAL_ATTEMPT] * 3 + [SUSPICIOUS_TAX_GAP]
            await conn.execute(
                "UPDATE core.alerts SET resolved_at = now(), resolved_by = 'system' WHERE type = $1",
                SUSPICIOUS_TAX_GAP,
            )
        assert await raise_one(pool, SUSPICIOUS_TAX_GAP)
    finally:
        await pool.close()
