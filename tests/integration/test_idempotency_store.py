"""Idempotency records on real PostgreSQL: claims in the caller's transaction, replays, conflicts, waits on a
claim still in flight, expiry, and a cleanup that never waits on a row a request holds."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta

import asyncpg
import pytest
import pytest_asyncio

from shared.config import Secret
from shared.db import Database
from shared.idempotency import (
    CLEANUP_BATCH_ROWS,
    RECORD_TTL,
    Conflict,
    Decision,
    InProgress,
    Proceed,
    RecordKey,
    Replay,
    StoredResponse,
    claim,
    complete,
    delete_expired,
    fingerprint,
    run_cleanup,
)

ORG = uuid.UUID("7d7a6b0e-5c1f-4a39-9a57-0f3c2b1e8d44")
USER = "user:3f2c1b0a-9e8d-4c7b-8a69-5f4e3d2c1b0a"
OTHER_USER = "user:0b9f3e2a-1c4d-4e8f-8a6b-2d5c7e9f1a30"
SLOT = RecordKey(ORG, "POST /bank-lines", "key-1")
BODY = {"amount": "12.50", "payee": "ATO"}
FINGERPRINT = fingerprint(BODY, USER, "/bank-lines")
ANSWER = StoredResponse(201, (("content-type", "application/json"), ("location", "/bank-lines/1")), b'{"id":"1"}')
SHORT_WAIT_MS = 300
EXPIRED = timedelta(seconds=-1)

Connect = Callable[[], Awaitable[asyncpg.Connection]]


@pytest_asyncio.fixture
async def connect(database_url: str) -> AsyncIterator[Connect]:
    """Factory of separate connections (one per simulated request), all closed after the test."""
    connections: list[asyncpg.Connection] = []

    async def new_connection() -> asyncpg.Connection:
        connection = await asyncpg.connect(database_url)
        connections.append(connection)
        return connection

    yield new_connection
    for connection in connections:
        await connection.close()


async def claim_and_complete(conn: asyncpg.Connection, slot: RecordKey = SLOT, ttl: timedelta = RECORD_TTL) -> None:
    async with conn.transaction():
        assert await claim(conn, slot, FINGERPRINT, ttl=ttl) == Proceed()
        await complete(conn, slot, ANSWER)


async def claim_in_own_transaction(conn: asyncpg.Connection, fp: bytes = FINGERPRINT) -> Decision:
    async with conn.transaction():
        return await claim(conn, SLOT, fp)


async def count_records(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM idempotency.records"))


async def test_a_completed_claim_is_replayed_with_its_answer(connect: Connect) -> None:
    first, second = await connect(), await connect()
    await claim_and_complete(first)
    assert await claim_in_own_transaction(second) == Replay(ANSWER)
    row = await second.fetchrow("SELECT status, response_status, completed_at FROM idempotency.records")
    assert (row["status"], row["response_status"]) == ("completed", 201)
    assert row["completed_at"] is not None


async def test_another_body_or_actor_under_the_key_conflicts(connect: Connect) -> None:
    conn = await connect()
    await claim_and_complete(conn)
    other_body = fingerprint({**BODY, "amount": "12.51"}, USER, "/bank-lines")
    other_actor = fingerprint(BODY, OTHER_USER, "/bank-lines")
    assert await claim_in_own_transaction(conn, other_body) == Conflict()
    assert await claim_in_own_transaction(conn, other_actor) == Conflict()


async def test_keys_are_scoped_to_org_and_route(connect: Connect) -> None:
    conn = await connect()
    await claim_and_complete(conn)
    await claim_and_complete(conn, RecordKey(uuid.uuid4(), SLOT.route, SLOT.key))
    await claim_and_complete(conn, RecordKey(ORG, "POST /payments", SLOT.key))
    assert await count_records(conn) == 3


async def test_a_failed_request_rolls_its_claim_back(connect: Connect) -> None:
    conn = await connect()
    with pytest.raises(ZeroDivisionError):
        async with conn.transaction():
            assert await claim(conn, SLOT, FINGERPRINT) == Proceed()
            _ = 1 / 0
    assert await count_records(conn) == 0
    await claim_and_complete(conn)


async def test_a_second_claim_waits_for_the_first_and_replays_its_answer(connect: Connect) -> None:
    first, second = await connect(), await connect()
    transaction = first.transaction()
    await transaction.start()
    assert await claim(first, SLOT, FINGERPRINT) == Proceed()
    waiting = asyncio.create_task(claim_in_own_transaction(second))
    await asyncio.sleep(0.3)
    assert not waiting.done()
    await complete(first, SLOT, ANSWER)
    await transaction.commit()
    assert await asyncio.wait_for(waiting, 5) == Replay(ANSWER)


async def test_a_second_claim_proceeds_when_the_first_rolls_back(connect: Connect) -> None:
    first, second = await connect(), await connect()
    transaction = first.transaction()
    await transaction.start()
    assert await claim(first, SLOT, FINGERPRINT) == Proceed()
    waiting = asyncio.create_task(claim_in_own_transaction(second))
    await asyncio.sleep(0.3)
    await transaction.rollback()
    assert await asyncio.wait_for(waiting, 5) == Proceed()


async def test_a_claim_held_past_the_wait_is_in_progress_and_aborts_the_transaction(connect: Connect) -> None:
    first, second = await connect(), await connect()
    async with first.transaction():
        assert await claim(first, SLOT, FINGERPRINT) == Proceed()
        transaction = second.transaction()
        await transaction.start()
        started = asyncio.get_running_loop().time()
        assert await claim(second, SLOT, FINGERPRINT, wait_ms=SHORT_WAIT_MS) == InProgress()
        assert asyncio.get_running_loop().time() - started < 3
        with pytest.raises(asyncpg.exceptions.InFailedSQLTransactionError):
            await second.fetchval("SELECT 1")
        await transaction.rollback()
        await complete(first, SLOT, ANSWER)


async def test_a_committed_pending_record_is_in_progress(connect: Connect) -> None:
    conn = await connect()
    assert await claim_in_own_transaction(conn) == Proceed()
    assert await claim_in_own_transaction(conn) == InProgress()


async def test_the_lock_timeout_is_restored_after_the_claim(connect: Connect) -> None:
    conn = await connect()
    async with conn.transaction():
        await conn.execute("SET LOCAL lock_timeout = '7s'")
        assert await claim(conn, SLOT, FINGERPRINT) == Proceed()
        assert await conn.fetchval("SELECT current_setting('lock_timeout')") == "7s"
    assert await conn.fetchval("SELECT current_setting('lock_timeout')") == "0"


async def test_claim_outside_a_transaction_is_refused(connect: Connect) -> None:
    conn = await connect()
    with pytest.raises(RuntimeError, match="transaction"):
        await claim(conn, SLOT, FINGERPRINT)


@pytest.mark.parametrize("isolation", ["repeatable_read", "serializable"])
async def test_claim_outside_read_committed_is_refused_and_changes_nothing(connect: Connect, isolation: str) -> None:
    conn = await connect()
    async with conn.transaction(isolation=isolation):  # type: ignore[arg-type]
        with pytest.raises(RuntimeError, match=f"read committed transaction, not {isolation.replace('_', ' ')}"):
            await claim(conn, SLOT, FINGERPRINT)
        assert await conn.fetchval("SELECT current_setting('lock_timeout')") == "0"
    assert await count_records(conn) == 0


async def test_claim_in_a_session_defaulting_to_repeatable_read_is_refused(connect: Connect) -> None:
    conn = await connect()
    await conn.execute("SET default_transaction_isolation = 'repeatable read'")
    with pytest.raises(RuntimeError, match="not repeatable read"):
        await claim_in_own_transaction(conn)
    await conn.execute("RESET default_transaction_isolation")
    assert await claim_in_own_transaction(conn) == Proceed()


async def test_a_serialization_failure_during_the_claim_is_in_progress(connect: Connect) -> None:
    # READ COMMITTED gives none of its own; a trigger stands for whatever might (the client's retry is the cure).
    conn = await connect()
    await conn.execute(
        """
        CREATE FUNCTION idempotency.test_serialization_failure() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION 'raised by the test' USING ERRCODE = 'serialization_failure'; END $$;
        CREATE TRIGGER test_serialization_failure BEFORE INSERT ON idempotency.records
            FOR EACH ROW EXECUTE FUNCTION idempotency.test_serialization_failure();
        """
    )
    assert await claim_in_own_transaction(conn) == InProgress()
    assert await count_records(conn) == 0


async def test_an_expired_record_is_taken_over(connect: Connect) -> None:
    conn = await connect()
    await claim_and_complete(conn, ttl=EXPIRED)
    other = fingerprint({**BODY, "amount": "1.00"}, OTHER_USER, "/bank-lines")
    new_answer = StoredResponse(201, (), b"{}")
    async with conn.transaction():
        assert await claim(conn, SLOT, other) == Proceed()
        await complete(conn, SLOT, new_answer)
    assert await claim_in_own_transaction(conn, other) == Replay(new_answer)
    assert await claim_in_own_transaction(conn) == Conflict()
    expires_in = await conn.fetchval("SELECT expires_at - now() FROM idempotency.records")
    assert timedelta(hours=23) < expires_in <= timedelta(hours=24)


async def test_cleanup_deletes_only_expired_records(connect: Connect) -> None:
    conn = await connect()
    for index in range(5):
        await claim_and_complete(conn, RecordKey(ORG, SLOT.route, f"old-{index}"), ttl=EXPIRED)
    for index in range(3):
        await claim_and_complete(conn, RecordKey(ORG, SLOT.route, f"live-{index}"))
    assert await delete_expired(conn, limit=2) == 2
    assert await delete_expired(conn) == 3
    assert await delete_expired(conn) == 0
    keys = await conn.fetch("SELECT key FROM idempotency.records ORDER BY key")
    assert [row["key"] for row in keys] == ["live-0", "live-1", "live-2"]


async def test_cleanup_skips_a_record_a_request_holds(connect: Connect) -> None:
    holder, cleaner = await connect(), await connect()
    await claim_and_complete(holder, RecordKey(ORG, SLOT.route, "held"), ttl=EXPIRED)
    await claim_and_complete(holder, RecordKey(ORG, SLOT.route, "free"), ttl=EXPIRED)
    async with holder.transaction():
        await holder.execute("SELECT 1 FROM idempotency.records WHERE key = 'held' FOR UPDATE")
        # Without SKIP LOCKED this would wait for the holder's transaction, i.e. forever here.
        assert await asyncio.wait_for(delete_expired(cleaner), 2) == 1
    assert [row["key"] for row in await holder.fetch("SELECT key FROM idempotency.records")] == ["held"]
    assert await delete_expired(cleaner) == 1


async def test_run_cleanup_deletes_every_expired_record_in_batches(database_url: str, connect: Connect) -> None:
    conn = await connect()
    expired = CLEANUP_BATCH_ROWS * 2 + 7
    await conn.execute(
        "INSERT INTO idempotency.records (org_id, route, key, fingerprint, status, expires_at) "
        "SELECT $1, 'POST /x', 'k' || n, $2, 'pending', now() - interval '1 second' FROM generate_series(1, $3) n",
        ORG,
        FINGERPRINT,
        expired,
    )
    await claim_and_complete(conn)
    db = Database(Secret(database_url), connect_timeout_s=5, statement_timeout_ms=5_000, max_size=2)
    await db.start()
    cleanup = asyncio.create_task(run_cleanup(db, interval_s=0.05))
    try:
        for _ in range(100):
            if await count_records(conn) == 1:
                break
            await asyncio.sleep(0.05)
        assert await count_records(conn) == 1
        assert not cleanup.done()
    finally:
        cleanup.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cleanup
        await db.close()
    assert await claim_in_own_transaction(conn) == Replay(ANSWER)
