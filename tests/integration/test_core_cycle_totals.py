"""The money rules in PostgreSQL: running per-quarter totals (core.cycle_totals) equal the sums of the lines after
random writes (some rolled back) and after a seed; the balances shared out oldest first (one deposit secures one
cycle, not two); a line written into a LODGED quarter raises one BAS_AMENDMENT_NEEDED per cycle and never a
SUSPICIOUS_TAX_GAP for it."""

from __future__ import annotations

import dataclasses
import random
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import asyncpg
import pytest_asyncio

from apgms.seed import SeedOrgRef, seed_org_lines
from services.core.bas import cycle_for, cycle_id
from services.core.designated import Tax, account_id
from services.core.evaluation import Evaluation, compute, reevaluate
from services.core.lodgement import LodgementRequest, RecordingGateway
from services.core.obligations import totals_by_quarter
from services.core.store import accounts, alerts, copy_lines, cycles, insert_line
from services.core.store.bank_lines import SealedLine
from shared.kek import kek_provider_from_env, new_kek
from shared.pii import PiiCipher

ORGS = (uuid.UUID("6a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"), uuid.UUID("7b2c3d4e-5f6a-4b7c-9d8e-0f1a2b3c4d5e"))
ORG = ORGS[0]
ACTOR = "user:2b1c4d6e-8f0a-4b2c-9d4e-6f8a0b2c4d6e"
NOW = datetime(2025, 11, 15, 3, 0, tzinfo=UTC)  # Sydney: 15 Nov 2025, in Oct-Dec 2025
THRESHOLD = Decimal("500.00")
FIRST_DAY = date(2024, 10, 1)
DAYS = 800
ROUNDS = 60


@pytest_asyncio.fixture
async def conn(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(database_url)
    yield connection
    await connection.close()


def cents(rng: random.Random, low: int, high: int) -> Decimal:
    return Decimal(rng.randint(low, high)).scaleb(-2)


def line(org: uuid.UUID, day: date, *, paygw: str = "0.00", gst: str = "0.00") -> SealedLine:
    return SealedLine(
        id=uuid.uuid4(),
        org_id=org,
        date=day,
        amount=Decimal("1000.00"),
        gst_amount=Decimal(gst),
        paygw_amount=Decimal(paygw),
        payee=b"sealed",
        description=b"sealed",
        created_by=ACTOR,
        created_at=NOW,
    )


def random_line(rng: random.Random) -> SealedLine:
    return dataclasses.replace(
        line(rng.choice(ORGS), FIRST_DAY + timedelta(days=rng.randrange(DAYS))),
        gst_amount=cents(rng, -50_000, 90_000),
        paygw_amount=cents(rng, 0, 90_000),
    )


async def totals_table(conn: asyncpg.Connection) -> dict[tuple[uuid.UUID, date], tuple[int, Decimal, Decimal]]:
    rows = await conn.fetch("SELECT org_id, period_start, lines, paygw, gst FROM core.cycle_totals")
    return {(r["org_id"], r["period_start"]): (r["lines"], r["paygw"], r["gst"]) for r in rows}


async def sums_of_lines(conn: asyncpg.Connection) -> dict[tuple[uuid.UUID, date], tuple[int, Decimal, Decimal]]:
    rows = await conn.fetch(
        "SELECT org_id, date_trunc('quarter', date)::date AS q, count(*) AS n, sum(paygw_amount) AS p, "
        "sum(gst_amount) AS g FROM core.bank_lines GROUP BY 1, 2"
    )
    return {(r["org_id"], r["q"]): (r["n"], r["p"], r["g"]) for r in rows}


class Rollback(Exception):
    pass


async def test_running_totals_equal_the_sums_of_the_lines_after_random_writes(conn: asyncpg.Connection) -> None:
    rng = random.Random(20251128)
    for _ in range(ROUNDS):
        batch = [random_line(rng) for _ in range(rng.choice((1, 1, 2, 7, 40)))]
        try:
            async with conn.transaction():
                for org in ORGS:
                    mine = [b for b in batch if b.org_id == org]
                    if not mine:
                        continue
                    if len(mine) == 1:
                        await insert_line(conn, mine[0])
                    else:
                        await copy_lines(conn, mine)
                    await reevaluate(conn, org, ACTOR, now=NOW, threshold=THRESHOLD, written=totals_by_quarter(mine))
                if rng.random() < 0.2:
                    raise Rollback
        except Rollback:
            pass
    assert await totals_table(conn) == await sums_of_lines(conn)
    assert len(await totals_table(conn)) > 8  # several quarters of both orgs


async def test_the_migrations_backfill_sums_the_lines_there_were(conn: asyncpg.Connection) -> None:
    """0009's INSERT ... SELECT, run again over lines written without totals, gives the totals of those lines."""
    rng = random.Random(9)
    await copy_lines(conn, [random_line(rng) for _ in range(300)])
    assert await totals_table(conn) == {}
    migration = (Path(__file__).parents[2] / "services/core/migrations/0009_cycle_totals.sql").read_text()
    backfill = migration[migration.index("INSERT INTO core.cycle_totals") :].split(";")[0]
    await conn.execute(backfill)
    assert await totals_table(conn) == await sums_of_lines(conn)


async def test_the_seed_adds_its_lines_to_the_running_totals(conn: asyncpg.Connection, database_url: str) -> None:
    await conn.execute("INSERT INTO core.cycle_totals VALUES ($1, '2025-07-01', 1, 5.00, 1.00)", ORG)
    await conn.execute(
        "INSERT INTO core.bank_lines (id, org_id, date, amount, gst_amount, paygw_amount, payee, description, "
        "created_by) VALUES ($1, $2, '2025-08-01', 1.00, 1.00, 5.00, '\\x00', '\\x00', 'x')",
        uuid.uuid4(),
        ORG,
    )
    async with asyncpg.create_pool(database_url, min_size=1, max_size=2) as pool:
        cipher = PiiCipher(pool, kek_provider_from_env({"APGMS_KEK": new_kek()}))
        result = await seed_org_lines(
            conn, cipher, SeedOrgRef(ORG, "Seed"), 3_000, add=True, batch_rows=700, today=date(2025, 11, 1)
        )
    assert result.added == 3_000
    table = await totals_table(conn)
    assert table == await sums_of_lines(conn)
    assert sum(n for n, _, _ in table.values()) == 3_001
    assert len(table) > 1  # the generated lines span quarters


async def deposit(conn: asyncpg.Connection, org: uuid.UUID, tax: Tax, amount: str) -> None:
    account = account_id(org, tax)
    await accounts.ensure_account(conn, org, account, tax)
    await accounts.insert_transfer(
        conn, org_id=org, account_id=account, amount=Decimal(amount), source="bank", reference="r", actor=ACTOR
    )


async def write(conn: asyncpg.Connection, *lines: SealedLine, now: datetime = NOW) -> Evaluation:
    async with conn.transaction():
        for sealed in lines:
            await insert_line(conn, sealed)
        return await reevaluate(conn, ORG, ACTOR, now=now, threshold=THRESHOLD, written=totals_by_quarter(lines))


async def test_one_deposit_secures_the_older_cycle_not_both(conn: asyncpg.Connection) -> None:
    await write(conn, line(ORG, date(2025, 8, 1), paygw="300.00"), line(ORG, date(2025, 11, 1), paygw="300.00"))
    async with conn.transaction():
        await deposit(conn, ORG, "PAYGW", "300.00")
        found = await reevaluate(conn, ORG, ACTOR, now=NOW, threshold=THRESHOLD)
    older, current = found.allocation.of(date(2025, 7, 1)), found.allocation.of(date(2025, 10, 1))
    assert (older.status, older.paygw.secured) == ("READY", Decimal("300.00"))
    assert (current.status, current.paygw.secured, current.paygw.shortfall) == (
        "BLOCKED",
        Decimal("0.00"),
        Decimal("300.00"),
    )
    assert found.obligations == current and found.status == "BLOCKED"
    # The Jul-Sep row exists only once a write needed it; statuses go on rows that exist.
    row = await cycles.get_cycle(conn, ORG, cycle_id(ORG, date(2025, 10, 1)))
    assert row is not None and row.status == "BLOCKED"


async def lodge(conn: asyncpg.Connection, start: date) -> None:
    cycle = cycle_for(start)
    async with conn.transaction():
        await cycles.lock_org_money(conn, ORG)
        row_id = await cycles.ensure_cycle(conn, ORG, cycle)
        obligations = await compute(conn, ORG, cycle)
        assert obligations.status == "READY"
        receipt = await RecordingGateway().lodge(
            LodgementRequest(ORG, row_id, cycle.period_start, cycle.period_end, obligations)
        )
        await cycles.lodge_cycle(
            conn,
            row_id,
            cycles.Lodged(obligations, NOW, ACTOR, receipt.gateway, receipt.reference, receipt.payload.decode()),
        )


async def test_a_line_in_a_lodged_quarter_raises_one_amendment_alert_and_no_gap(conn: asyncpg.Connection) -> None:
    await write(conn, line(ORG, date(2025, 8, 1), paygw="300.00"))
    async with conn.transaction():
        await deposit(conn, ORG, "PAYGW", "300.00")
        await reevaluate(conn, ORG, ACTOR, now=NOW, threshold=THRESHOLD)
    await lodge(conn, date(2025, 7, 1))
    # 10,000.00 more PAYGW in the lodged quarter: not a gap (the lodged BAS's figures are frozen), an amendment.
    first = await write(conn, line(ORG, date(2025, 9, 1), paygw="10000.00"))
    assert first.alert is None and len(first.amendments) == 1
    amendment = first.amendments[0]
    assert (amendment.type, amendment.severity) == (alerts.BAS_AMENDMENT_NEEDED, "MEDIUM")
    assert amendment.detail == {
        "cycle_id": str(cycle_id(ORG, date(2025, 7, 1))),
        "period_start": "2025-07-01",
        "period_end": "2025-09-30",
    }
    again = await write(conn, line(ORG, date(2025, 9, 2), paygw="1.00"))
    assert again.amendments == () and again.alert is None
    assert first.allocation.unlodged_shortfall == Decimal("0.00")
    # The lodged cycle's 300.00 is spoken for: a current-quarter line of 600.00 is short by all of it.
    current = await write(conn, line(ORG, date(2025, 11, 2), paygw="600.00"))
    assert current.alert is not None and current.alert.detail["total_shortfall"] == "600.00"
    assert current.alert.detail["periods_short"] == ["2025-10-01"]
    counts = await conn.fetch("SELECT type, count(*) FROM core.alerts GROUP BY type ORDER BY type")
    assert [tuple(r) for r in counts] == [("BAS_AMENDMENT_NEEDED", 1), ("SUSPICIOUS_TAX_GAP", 1)]
