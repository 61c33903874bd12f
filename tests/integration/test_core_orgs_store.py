"""An org's export pages and deletion in PostgreSQL (services/core/store/orgs.py): pages walk every row once in key
order; deletion removes every row of the org from every table (a new table with an org_id must be listed), leaves
other orgs alone, writes a tombstone, and refuses later inserts; a writer in flight is waited for, then deleted."""

from __future__ import annotations

import asyncio
import uuid
from datetime import date
from decimal import Decimal
from typing import Any

import asyncpg
import pytest

from services.core.store import orgs

ORG = uuid.UUID("0b9e1c52-3f4d-4e2a-8a61-6f0d8c2b9a11")
OTHER = uuid.UUID("6a2f7e94-1d0c-4b8e-9f35-2c7a5e1b0d22")


async def seed(conn: asyncpg.Connection, org_id: uuid.UUID, transfers: int = 5) -> dict[str, Any]:
    """Rows of the org in every table: a cycle, a plan, two accounts, a source, transfers, two alerts, two lines."""
    cycle, paygw, gst = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    await conn.execute(
        "INSERT INTO core.bas_cycles (id, org_id, period_start, period_end, due_date, status) "
        "VALUES ($1, $2, '2025-07-01', '2025-09-30', '2025-10-28', 'BLOCKED')",
        cycle,
        org_id,
    )
    await conn.execute(
        "INSERT INTO core.payment_plans (id, org_id, cycle_id, reason, weekly_amount, start_date, requested_by) "
        "VALUES ($1, $2, $3, 'cash flow', 125.50, '2025-11-03', 'user:x')",
        uuid.uuid4(),
        org_id,
        cycle,
    )
    for account, tax in ((paygw, "PAYGW"), (gst, "GST")):
        await conn.execute(
            "INSERT INTO core.designated_accounts (id, org_id, tax) VALUES ($1, $2, $3)", account, org_id, tax
        )
    await conn.execute(
        "INSERT INTO core.designated_sources (account_id, org_id, source, added_by) VALUES ($1, $2, 'payroll', 'x')",
        paygw,
        org_id,
    )
    for n in range(transfers):
        await conn.execute(
            "INSERT INTO core.designated_transfers (id, org_id, account_id, amount, source, reference, created_by) "
            "VALUES ($1, $2, $3, $4, 'payroll', $5, 'user:x')",
            uuid.uuid4(),
            org_id,
            paygw,
            Decimal("10.05") + n,
            f"ref-{n}",
        )
    for severity in ("HIGH", "LOW"):
        await conn.execute(
            "INSERT INTO core.alerts (id, org_id, type, severity, message, detail, created_by) "
            "VALUES ($1, $2, 'X', $3, 'm', '{\"amount\": \"1.00\"}', 'system')",
            uuid.uuid4(),
            org_id,
            severity,
        )
    for _ in range(2):
        await conn.execute(
            "INSERT INTO core.bank_lines (id, org_id, date, amount, gst_amount, paygw_amount, payee, description, "
            "created_by) VALUES ($1, $2, $3, -1.00, 0.00, 0.00, '\\x00', '\\x00', 'user:x')",
            uuid.uuid4(),
            org_id,
            date(2025, 7, 2),
        )
    await conn.execute(
        "INSERT INTO core.cycle_totals (org_id, period_start, lines, paygw, gst) VALUES ($1, '2025-07-01', 2, 0, 0)",
        org_id,
    )
    await conn.execute(
        "INSERT INTO idempotency.records (org_id, route, key, fingerprint, status, expires_at) "
        "VALUES ($1, 'POST /bank-lines', 'k', $2, 'pending', now() + interval '1 day')",
        org_id,
        bytes(32),
    )
    return {"cycle": cycle, "paygw": paygw}


EXPECTED = {
    "payment_plans": 1,
    "designated_transfers": 5,
    "designated_sources": 1,
    "designated_accounts": 2,
    "alerts": 2,
    "bas_cycles": 1,
    "cycle_totals": 1,
    "bank_lines": 2,
}


@pytest.fixture
async def conn(database_url: str) -> Any:
    connection = await asyncpg.connect(database_url)
    try:
        yield connection
    finally:
        await connection.close()


async def test_export_pages_walk_every_row_once_in_key_order(conn: asyncpg.Connection) -> None:
    await seed(conn, ORG)
    await seed(conn, OTHER)
    table = next(t for t in orgs.EXPORTED_TABLES if t.name == "designated_transfers")
    seen: list[dict[str, Any]] = []
    after = None
    while page := await orgs.export_rows(conn, ORG, table, after, 2):
        seen += [row.document for row in page]
        after = page[-1].key
    assert len(seen) == 5
    assert sorted(d["amount"] for d in seen) == [Decimal("10.05") + n for n in range(5)]
    assert all(isinstance(d["amount"], Decimal) and "org_id" not in d for d in seen)
    assert len({d["id"] for d in seen}) == 5
    for table in orgs.EXPORTED_TABLES:
        rows = await orgs.export_rows(conn, ORG, table, None, 100)
        assert len(rows) == EXPECTED[table.name], table.name
    alert = (await orgs.export_rows(conn, ORG, orgs.EXPORTED_TABLES[-1], None, 1))[0].document
    assert alert["detail"] == {"amount": "1.00"}
    assert await orgs.count_org_rows(conn, ORG) == EXPECTED


async def test_deletion_removes_every_row_of_the_org_and_only_its(conn: asyncpg.Connection) -> None:
    await seed(conn, ORG)
    await seed(conn, OTHER)
    async with conn.transaction():
        await orgs.begin_deletion(conn, ORG)
        counts = await orgs.delete_org_rows(conn, ORG)
        stone = await orgs.insert_tombstone(conn, ORG, "user:admin", counts)
    assert counts == {**EXPECTED, "idempotency_records": 1}
    assert await orgs.count_org_rows(conn, ORG) == dict.fromkeys(EXPECTED, 0)
    assert await orgs.count_org_rows(conn, OTHER) == EXPECTED
    assert not await conn.fetchval("SELECT count(*) FROM idempotency.records WHERE org_id = $1", ORG)
    assert await orgs.tombstone(conn, ORG) == stone
    assert (stone.deleted_by, stone.counts, stone.auth_erased_at) == ("user:admin", counts, None)
    assert await orgs.tombstone(conn, OTHER) is None
    marked = await orgs.mark_auth_erased(conn, ORG)
    assert marked is not None and marked.auth_erased_at is not None
    assert (await orgs.mark_auth_erased(conn, ORG)) == marked


async def test_every_core_table_with_an_org_is_deleted(conn: asyncpg.Connection) -> None:
    tables = await conn.fetch(
        "SELECT table_name FROM information_schema.columns WHERE table_schema = 'core' AND column_name = 'org_id'"
    )
    assert {r["table_name"] for r in tables} - {"org_tombstones"} == set(orgs.DELETION_ORDER)


async def test_money_rows_cannot_be_deleted_outside_a_deletion(conn: asyncpg.Connection) -> None:
    await seed(conn, ORG)
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await conn.execute("DELETE FROM core.designated_transfers WHERE org_id = $1", ORG)
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        async with conn.transaction():
            await orgs.begin_deletion(conn, OTHER)  # another org's deletion allows nothing of this one
            await orgs.delete_org_rows(conn, ORG)


async def test_a_deleted_org_gets_no_new_rows(conn: asyncpg.Connection) -> None:
    async with conn.transaction():
        await orgs.begin_deletion(conn, ORG)
        await orgs.insert_tombstone(conn, ORG, "user:admin", await orgs.delete_org_rows(conn, ORG))
    with pytest.raises(asyncpg.PostgresError) as refused:
        await seed(conn, ORG)
    assert refused.value.sqlstate == orgs.ORG_DELETED_SQLSTATE
    await seed(conn, OTHER)


async def test_a_writer_in_flight_finishes_first_and_its_rows_are_deleted(database_url: str) -> None:
    writer, deleter = await asyncpg.connect(database_url), await asyncpg.connect(database_url)
    try:
        await seed(writer, ORG, transfers=0)
        account = await writer.fetchval("SELECT id FROM core.designated_accounts WHERE org_id = $1 LIMIT 1", ORG)
        write = writer.transaction()
        await write.start()
        await writer.execute(
            "INSERT INTO core.designated_transfers (id, org_id, account_id, amount, source, reference, created_by) "
            "VALUES ($1, $2, $3, 5.00, 'payroll', 'late', 'user:x')",
            uuid.uuid4(),
            ORG,
            account,
        )

        async def delete() -> dict[str, int]:
            async with deleter.transaction():
                await orgs.begin_deletion(deleter, ORG)
                return await orgs.delete_org_rows(deleter, ORG)

        deletion = asyncio.ensure_future(delete())
        await asyncio.sleep(0.3)
        assert not deletion.done(), "the deletion waits for the writer"
        await write.commit()
        counts = await asyncio.wait_for(deletion, 10)
        assert counts["designated_transfers"] == 1
        assert await orgs.count_org_rows(writer, ORG) == dict.fromkeys(EXPECTED, 0)
    finally:
        await writer.close()
        await deleter.close()
