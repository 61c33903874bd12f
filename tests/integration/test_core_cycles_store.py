"""BAS cycles in PostgreSQL: the derived row inserted once, the sums a cycle's obligations come from, the
re-evaluation every money write runs (status, one SUSPICIOUS_TAX_GAP however many writers race, its audit row), and
a lodged cycle that nothing can change."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, date, datetime
from decimal import Decimal

import asyncpg
import pytest

from services.core.bas import cycle_for, cycle_id
from services.core.designated import Tax, account_id
from services.core.evaluation import reevaluate
from services.core.lodgement import LodgementRequest, RecordingGateway
from services.core.obligations import totals_by_quarter
from services.core.store import accounts, cycles, insert_line
from services.core.store.bank_lines import SealedLine

ORG = uuid.UUID("5c2d8e4f-1a3b-4c6d-8e9f-0a1b2c3d4e5f")
OTHER = uuid.UUID("9e8d7c6b-5a49-4837-a625-14f3e2d1c0b9")
NOW = datetime(2025, 8, 15, 3, 0, tzinfo=UTC)  # Sydney: 15 Aug 2025, the Jul-Sep 2025 quarter
CYCLE = cycle_for(date(2025, 8, 15))
ACTOR = "user:2b1c4d6e-8f0a-4b2c-9d4e-6f8a0b2c4d6e"
THRESHOLD = Decimal("500.00")
WRITERS = 20


def line(org: uuid.UUID, day: date, *, gst: str = "0.00", paygw: str = "0.00", amount: str = "1000.00") -> SealedLine:
    return SealedLine(
        id=uuid.uuid4(),
        org_id=org,
        date=day,
        amount=Decimal(amount),
        gst_amount=Decimal(gst),
        paygw_amount=Decimal(paygw),
        payee=b"sealed",
        description=b"sealed",
        created_by=ACTOR,
        created_at=NOW,
    )


async def write(conn: asyncpg.Connection, sealed: SealedLine) -> None:
    """A line and what it adds to its quarter's running totals (as every writer of lines does)."""
    await insert_line(conn, sealed)
    await cycles.add_to_totals(conn, sealed.org_id, totals_by_quarter([sealed]))


async def deposit(conn: asyncpg.Connection, org: uuid.UUID, tax: Tax, amount: str) -> None:
    account = account_id(org, tax)
    await accounts.ensure_account(conn, org, account, tax)
    await accounts.insert_transfer(
        conn, org_id=org, account_id=account, amount=Decimal(amount), source="bank", reference="r", actor=ACTOR
    )


@pytest.fixture
async def conn(database_url: str) -> asyncpg.Connection:
    connection = await asyncpg.connect(database_url)
    yield connection
    await connection.close()


async def test_the_cycle_row_is_named_before_it_exists_and_inserted_once(conn: asyncpg.Connection) -> None:
    row_id = cycle_id(ORG, CYCLE.period_start)
    assert await cycles.get_cycle(conn, ORG, row_id) is None
    assert await cycles.ensure_cycle(conn, ORG, CYCLE) == row_id
    assert await cycles.ensure_cycle(conn, ORG, CYCLE) == row_id
    row = await cycles.get_cycle(conn, ORG, row_id)
    assert row is not None and row.status == "OPEN" and row.cycle == CYCLE
    assert row.due_date == date(2025, 10, 28)
    assert await cycles.get_cycle(conn, OTHER, row_id) is None  # another org's id names nothing of this org
    assert await conn.fetchval("SELECT count(*) FROM core.bas_cycles") == 1


async def test_sums_cover_the_period_of_one_org(conn: asyncpg.Connection) -> None:
    for sealed in [
        line(ORG, date(2025, 7, 1), gst="15.00", paygw="100.00"),
        line(ORG, date(2025, 9, 30), gst="10.00", paygw="50.00"),
        line(ORG, date(2025, 8, 2), gst="-4.00", amount="-44.00"),  # a purchase: a GST credit
        line(ORG, date(2025, 6, 30), gst="99.00", paygw="99.00"),  # the previous quarter
        line(ORG, date(2025, 10, 1), gst="99.00", paygw="99.00"),  # the next one
        line(OTHER, date(2025, 8, 1), gst="99.00", paygw="99.00"),
    ]:
        await write(conn, sealed)
    sums = await cycles.line_sums(conn, ORG, CYCLE.period_start)
    assert (sums.lines, sums.sums.paygw, sums.sums.gst) == (3, Decimal("150.00"), Decimal("21.00"))
    empty = await cycles.line_sums(conn, ORG, date(2024, 1, 1))
    assert (empty.lines, str(empty.sums.paygw), str(empty.sums.gst)) == (0, "0.00", "0.00")


async def test_balances_are_the_sums_of_each_accounts_transfers(conn: asyncpg.Connection) -> None:
    balances = await cycles.designated_balances(conn, ORG)
    assert (str(balances.paygw), str(balances.gst)) == ("0.00", "0.00")
    await deposit(conn, ORG, "PAYGW", "100.00")
    await deposit(conn, ORG, "PAYGW", "0.50")
    await deposit(conn, ORG, "GST", "7.25")
    await deposit(conn, OTHER, "GST", "1000.00")
    balances = await cycles.designated_balances(conn, ORG)
    assert (balances.paygw, balances.gst) == (Decimal("100.50"), Decimal("7.25"))


async def audit_actions(conn: asyncpg.Connection, org: uuid.UUID) -> list[str]:
    return [
        r["action"] for r in await conn.fetch("SELECT action FROM audit.records WHERE org_id = $1 ORDER BY seq", org)
    ]


async def test_reevaluate_sets_the_status_and_raises_one_gap_alert(conn: asyncpg.Connection) -> None:
    async with conn.transaction():
        await write(conn, line(ORG, date(2025, 8, 1), paygw="400.00"))
        first = await reevaluate(conn, ORG, ACTOR, now=NOW, threshold=THRESHOLD)
    assert first.status == "BLOCKED" and first.status_changed and first.alert is None  # 400.00 is not above 500.00
    assert first.obligations.blockers == ("PAYGW short by $400.00",)
    async with conn.transaction():
        await write(conn, line(ORG, date(2025, 8, 2), gst="200.00", amount="2200.00"))
        second = await reevaluate(conn, ORG, ACTOR, now=NOW, threshold=THRESHOLD)
    assert second.alert is not None and not second.status_changed
    assert second.alert.severity == "HIGH" and second.alert.type == "SUSPICIOUS_TAX_GAP"
    assert second.alert.message == "2025-07-01 to 2025-09-30: PAYGW short by $400.00, GST short by $200.00"
    assert second.alert.detail["total_shortfall"] == "600.00" and second.alert.created_by == ACTOR
    async with conn.transaction():
        await write(conn, line(ORG, date(2025, 8, 3), paygw="1.00"))
        third = await reevaluate(conn, ORG, ACTOR, now=NOW, threshold=THRESHOLD)
    assert third.alert is None  # one is open already
    async with conn.transaction():
        await deposit(conn, ORG, "PAYGW", "401.00")
        await deposit(conn, ORG, "GST", "200.00")
        ready = await reevaluate(conn, ORG, ACTOR, now=NOW, threshold=THRESHOLD)
    assert ready.status == "READY" and ready.status_changed and ready.obligations.blockers == ()
    row = await cycles.get_cycle(conn, ORG, ready.cycle_id)
    assert row is not None and row.status == "READY"
    assert await conn.fetchval("SELECT count(*) FROM core.alerts WHERE org_id = $1", ORG) == 1
    assert await audit_actions(conn, ORG) == ["alert.raise"]


async def write_and_reevaluate(pool: asyncpg.Pool, n: int) -> bool:
    async with pool.acquire() as conn, conn.transaction():
        await write(conn, line(ORG, date(2025, 7, 1 + n), paygw="100.00"))
        evaluation = await reevaluate(conn, ORG, ACTOR, now=NOW, threshold=THRESHOLD)
        return evaluation.alert is not None


async def test_concurrent_writers_raise_one_alert_and_the_last_status_counts_every_line(database_url: str) -> None:
    pool = await asyncpg.create_pool(database_url, min_size=WRITERS, max_size=WRITERS)
    try:
        raised = await asyncio.gather(*(write_and_reevaluate(pool, n) for n in range(WRITERS)))
        assert sum(raised) == 1
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT count(*) FROM core.alerts") == 1
            assert await conn.fetchval("SELECT count(*) FROM core.bas_cycles") == 1
            assert await audit_actions(conn, ORG) == ["alert.raise"]
            # The sixth writer crossed the threshold: the alert names the total it found then.
            detail = await conn.fetchval("SELECT detail->>'total_shortfall' FROM core.alerts")
            assert detail == "600.00"
    finally:
        await pool.close()


async def lodge(conn: asyncpg.Connection) -> cycles.CycleRow:
    row_id = await cycles.ensure_cycle(conn, ORG, CYCLE)
    async with conn.transaction():
        obligations = (await reevaluate(conn, ORG, ACTOR, now=NOW, threshold=THRESHOLD)).obligations
    receipt = await RecordingGateway().lodge(
        LodgementRequest(ORG, row_id, CYCLE.period_start, CYCLE.period_end, obligations)
    )
    return await cycles.lodge_cycle(
        conn,
        row_id,
        cycles.Lodged(
            obligations=obligations,
            at=NOW,
            by=ACTOR,
            gateway=receipt.gateway,
            reference=receipt.reference,
            payload=receipt.payload.decode(),
        ),
    )


async def test_a_lodged_cycle_is_immutable(conn: asyncpg.Connection) -> None:
    await write(conn, line(ORG, date(2025, 8, 1), paygw="10.00", gst="5.00"))
    await deposit(conn, ORG, "PAYGW", "10.00")
    await deposit(conn, ORG, "GST", "5.00")
    lodged = await lodge(conn)
    assert lodged.status == "LODGED" and lodged.lodged_by == ACTOR and lodged.lodgement_gateway == "recording"
    assert (lodged.paygw_required, lodged.gst_required) == (Decimal("10.00"), Decimal("5.00"))
    assert lodged.lodgement_payload is not None and '"PAYGW":{"required":"10.00"' in lodged.lodgement_payload
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="immutable"):
        await conn.execute("UPDATE core.bas_cycles SET status = 'OPEN' WHERE id = $1", lodged.id)
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="immutable"):
        await conn.execute("UPDATE core.bas_cycles SET paygw_required = 0 WHERE id = $1", lodged.id)
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="never deleted"):
        await conn.execute("DELETE FROM core.bas_cycles WHERE id = $1", lodged.id)
    with pytest.raises(LookupError):
        await lodge(conn)
    # A later write leaves it alone, and says so.
    await write(conn, line(ORG, date(2025, 8, 2), paygw="1000.00"))
    async with conn.transaction():
        again = await reevaluate(conn, ORG, ACTOR, now=NOW, threshold=THRESHOLD)
    assert again.status == "LODGED" and not again.status_changed
    assert not await cycles.set_status(conn, lodged.id, "BLOCKED")
    assert await cycles.get_cycle(conn, ORG, lodged.id) == lodged


async def test_lodged_needs_the_figures_and_the_receipt(conn: asyncpg.Connection) -> None:
    row_id = await cycles.ensure_cycle(conn, ORG, CYCLE)
    with pytest.raises(asyncpg.CheckViolationError):
        await conn.execute(
            "UPDATE core.bas_cycles SET status = 'LODGED', lodged_at = now(), lodged_by = 'x', paygw_required = 0, "
            "gst_required = 0, paygw_secured = 0, gst_secured = 0 WHERE id = $1",
            row_id,
        )
