"""Designated accounts in PostgreSQL: balances are sums of transfers (0.00 with no row), transfers are append-only
(the trigger refuses UPDATE and DELETE outside an org's deletion), only positive amounts are stored, the newest
transfers per account, the whitelist replaced in place, and (over random sequences of attempts, through the same
rules the route uses) a balance that equals the sum of accepted deposits and never falls."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal

import asyncpg
import pytest
import pytest_asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.core.designated import Attempt, account_id, account_ids, refusal
from services.core.store import accounts

ACTOR = "user:3f1b9a52-6c0e-4d7a-8e21-5b4c3d2a1f00"


@pytest_asyncio.fixture
async def conn(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(database_url)
    try:
        yield connection
    finally:
        await connection.close()


async def deposit(conn: asyncpg.Connection, org: uuid.UUID, amount: str, source: str = "payroll") -> None:
    account = account_id(org, "PAYGW")
    await accounts.ensure_account(conn, org, account, "PAYGW")
    await accounts.insert_transfer(
        conn, org_id=org, account_id=account, amount=Decimal(amount), source=source, reference="R1", actor=ACTOR
    )


async def test_balances_are_zero_without_rows_and_sums_of_transfers_after(conn: asyncpg.Connection) -> None:
    org = uuid.uuid4()
    ids = list(account_ids(org).values())
    assert await accounts.balances(conn, org, ids) == {account: Decimal("0.00") for account in ids}
    for amount in ("9.99", "0.01", "999999999999.99", "0.01"):
        await deposit(conn, org, amount)
    found = await accounts.balances(conn, org, ids)
    assert found[account_id(org, "PAYGW")] == Decimal("1000000000010.00")
    assert found[account_id(org, "GST")] == Decimal("0.00")
    assert await accounts.balances(conn, uuid.uuid4(), ids) == {account: Decimal("0.00") for account in ids}


async def test_transfers_are_append_only(conn: asyncpg.Connection) -> None:
    org = uuid.uuid4()
    await deposit(conn, org, "50.00")
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
        await conn.execute("UPDATE core.designated_transfers SET amount = 1.00 WHERE org_id = $1", org)
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
        await conn.execute("DELETE FROM core.designated_transfers WHERE org_id = $1", org)
    async with conn.transaction():
        # Another org's deletion does not open this org's transfers.
        await conn.execute("SELECT set_config('apgms.deleting_org', $1, true)", str(uuid.uuid4()))
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("DELETE FROM core.designated_transfers WHERE org_id = $1", org)
    assert await conn.fetchval("SELECT sum(amount) FROM core.designated_transfers WHERE org_id = $1", org) == Decimal(
        "50.00"
    )


@pytest.mark.parametrize("amount", ["0.00", "-0.01", "-100.00"])
async def test_the_table_refuses_what_is_not_a_deposit(conn: asyncpg.Connection, amount: str) -> None:
    with pytest.raises(asyncpg.CheckViolationError):
        await deposit(conn, uuid.uuid4(), amount)


async def test_newest_transfers_per_account(conn: asyncpg.Connection) -> None:
    org = uuid.uuid4()
    ids = account_ids(org)
    for cents in range(1, 8):
        async with conn.transaction():  # a transaction each, so each has its own created_at
            await deposit(conn, org, f"{cents}.00")
    newest = await accounts.newest_transfers(conn, org, list(ids.values()), 5)
    assert [t.amount for t in newest[ids["PAYGW"]]] == [Decimal(f"{c}.00") for c in (7, 6, 5, 4, 3)]
    assert newest[ids["GST"]] == []
    first = newest[ids["PAYGW"]][0]
    assert (first.org_id, first.source, first.reference, first.created_by) == (org, "payroll", "R1", ACTOR)
    assert await accounts.newest_transfers(conn, uuid.uuid4(), list(ids.values()), 5) == {
        account: [] for account in ids.values()
    }


async def test_lock_account_reports_a_missing_row(conn: asyncpg.Connection) -> None:
    org = uuid.uuid4()
    account = account_id(org, "GST")
    async with conn.transaction():
        assert not await accounts.lock_account(conn, org, account)
        await accounts.ensure_account(conn, org, account, "GST")
        await accounts.ensure_account(conn, org, account, "GST")
        assert await accounts.lock_account(conn, org, account)
        assert not await accounts.lock_account(conn, uuid.uuid4(), account)


async def test_replace_sources_keeps_what_stays(conn: asyncpg.Connection) -> None:
    org = uuid.uuid4()
    account = account_id(org, "PAYGW")
    await accounts.ensure_account(conn, org, account, "PAYGW")
    change = await accounts.replace_sources(conn, org, account, ["b", "a"], "user:first")
    assert (change.added, change.removed) == (("a", "b"), ())
    change = await accounts.replace_sources(conn, org, account, ["b", "c"], "user:second")
    assert (change.added, change.removed) == (("c",), ("a",))
    listed = await accounts.sources(conn, org, account)
    assert [(s.source, s.added_by) for s in listed] == [("b", "user:first"), ("c", "user:second")]
    assert await accounts.add_sources(conn, org, account, ["c", "d"], "system:seed") == ("d",)
    assert [s.source for s in await accounts.sources(conn, org, account)] == ["b", "c", "d"]
    change = await accounts.replace_sources(conn, org, account, [], "user:third")
    assert (change.added, change.removed) == ((), ("b", "c", "d"))
    assert await accounts.sources(conn, org, account) == []


async def test_a_deposit_waits_for_a_whitelist_change_holding_the_account(database_url: str) -> None:
    org = uuid.uuid4()
    account = account_id(org, "PAYGW")
    first, second = await asyncpg.connect(database_url), await asyncpg.connect(database_url)
    try:
        await accounts.ensure_account(first, org, account, "PAYGW")
        await accounts.replace_sources(first, org, account, ["payroll"], ACTOR)
        changing = first.transaction()
        await changing.start()
        assert await accounts.lock_account(first, org, account)
        await accounts.replace_sources(first, org, account, [], ACTOR)

        async def depositor() -> list[str]:
            async with second.transaction():
                await accounts.lock_account(second, org, account)
                return [s.source for s in await accounts.sources(second, org, account)]

        waiting = asyncio.create_task(depositor())
        await asyncio.sleep(0.2)
        assert not waiting.done()
        await changing.commit()
        assert await asyncio.wait_for(waiting, 5) == []
    finally:
        await first.close()
        await second.close()


LISTED = ("payroll", "gst-clearing")
attempt_lists = st.lists(
    st.builds(
        Attempt,
        amount=st.decimals(min_value=Decimal("-5000.00"), max_value=Decimal("5000.00"), places=2),
        source=st.sampled_from([*LISTED, "elsewhere"]),
        direction=st.sampled_from(["in", "in", "in", "out"]),
    ),
    max_size=25,
)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sequence=attempt_lists)
async def test_balance_is_the_sum_of_accepted_deposits_and_never_falls(
    database_url: str, sequence: list[Attempt]
) -> None:
    org = uuid.uuid4()
    account = account_id(org, "PAYGW")
    conn = await asyncpg.connect(database_url)
    try:
        await accounts.ensure_account(conn, org, account, "PAYGW")
        await accounts.replace_sources(conn, org, account, LISTED, ACTOR)
        accepted = Decimal("0.00")
        balance = Decimal("0.00")
        for attempt in sequence:
            listed = [s.source for s in await accounts.sources(conn, org, account)]
            if refusal(attempt, listed) is None:
                await accounts.insert_transfer(
                    conn,
                    org_id=org,
                    account_id=account,
                    amount=attempt.amount,
                    source=attempt.source,
                    reference="R",
                    actor=ACTOR,
                )
                accepted += attempt.amount
            now = (await accounts.balances(conn, org, [account]))[account]
            assert now >= balance
            assert now == accepted
            balance = now
    finally:
        await conn.close()
