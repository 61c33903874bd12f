"""The core store's two writers of bank lines: one INSERT and COPY put the same values in the same columns."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime
from decimal import Decimal

import asyncpg

from services.core.store import SealedLine, copy_lines, insert_line

ORG = uuid.UUID("7d7a6b0e-5c1f-4a39-9a57-0f3c2b1e8d44")
AT = datetime(2026, 11, 27, 21, 55, 37, 123456, tzinfo=UTC)


def line(n: int) -> SealedLine:
    return SealedLine(
        id=uuid.uuid4(),
        org_id=ORG,
        date=date(2026, 11, n),
        amount=Decimal(f"{n}00.10"),
        gst_amount=Decimal(f"{n}.01"),
        paygw_amount=Decimal("0.00"),
        payee=bytes([n]) * 3,
        description=b"\x00" + bytes([n]),
        created_by="system",
        created_at=AT,
    )


async def stored(conn: asyncpg.Connection) -> list[SealedLine]:
    rows = await conn.fetch(
        "SELECT id, org_id, date, amount, gst_amount, paygw_amount, payee, description, created_by, created_at "
        "FROM core.bank_lines ORDER BY date"
    )
    return [SealedLine(**dict(row)) for row in rows]


async def test_insert_and_copy_store_every_field_in_its_column(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        one, many = line(1), [line(2), line(3)]
        async with conn.transaction():
            await insert_line(conn, one)
            assert await copy_lines(conn, many) == 2
        assert await stored(conn) == [one, *many]
    finally:
        await conn.close()
