"""The audit chain in PostgreSQL: concurrent writers leave gap-free chains, tampering is found at its row, the
table refuses changes, and a failed audit write is `AuditFailed` with the caller's change rolled back."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import orjson
import pytest
import pytest_asyncio

from shared.audit import (
    EARLIEST_AT,
    GENESIS_HASH,
    LATEST_AT,
    READ_BATCH_ROWS,
    AuditFailed,
    AuditRecord,
    BrokenLink,
    append,
    last_record,
    next_record,
    records,
    verify,
    verify_org,
)
from shared.context import current_request_id

ORG = uuid.UUID("7d7a6b0e-5c1f-4a39-9a57-0f3c2b1e8d44")
OTHER_ORG = uuid.UUID("0b9f3e2a-1c4d-4e8f-8a6b-2d5c7e9f1a30")
ADMIN = "user:3f2c1b0a-9e8d-4c7b-8a69-5f4e3d2c1b0a"
CONCURRENT_WRITERS = 200
ORGS_AT_ONCE = 20
WRITERS_PER_ORG = 10
# Enough connections that the writers really contend for the org's lock, within the test server's 100.
POOL_MAX_SIZE = 40
CHAIN_LENGTH = 6
COLUMNS = "org_id, seq, at, actor, action, target, request_id, detail, prev_hash, hash"


@pytest_asyncio.fixture
async def conn(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(database_url)
    yield connection
    await connection.close()


@pytest_asyncio.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    async with asyncpg.create_pool(database_url, min_size=1, max_size=POOL_MAX_SIZE) as created:
        yield created


async def write(connection: asyncpg.Connection, org_id: uuid.UUID, index: int) -> AuditRecord:
    async with connection.transaction():
        return await append(
            connection,
            org_id=org_id,
            actor=ADMIN,
            action="user.update",
            target=f"user:{index}",
            detail={"index": index, "role": {"old": "analyst", "new": "finance"}},
            request_id=f"req-{index}",
        )


async def write_chain(connection: asyncpg.Connection, length: int = CHAIN_LENGTH, org_id: uuid.UUID = ORG) -> None:
    for index in range(length):
        await write(connection, org_id, index)


async def tamper(connection: asyncpg.Connection, statement: str, *args: object) -> None:
    """Run `statement` with the table's triggers off, as someone with the database's superuser would."""
    async with connection.transaction():
        await connection.execute("SET LOCAL session_replication_role = replica")
        await connection.execute(statement, *args)


async def stored(connection: asyncpg.Connection, org_id: uuid.UUID = ORG) -> list[AuditRecord]:
    return [record async for record in records(connection, org_id)]


# --- writing ------------------------------------------------------------------------------------------------------


async def test_append_links_each_record_to_the_last_and_stores_what_it_hashed(conn: asyncpg.Connection) -> None:
    first = await write(conn, ORG, 0)
    second = await write(conn, ORG, 1)
    assert (first.seq, first.prev_hash) == (1, GENESIS_HASH)
    assert (second.seq, second.prev_hash) == (2, first.hash)
    assert await stored(conn) == [first, second]
    assert await last_record(conn, ORG) == second
    assert await last_record(conn, OTHER_ORG) is None
    assert verify(await stored(conn)).ok


async def test_request_id_defaults_to_the_current_requests(conn: asyncpg.Connection) -> None:
    token = current_request_id.set("req-from-context")
    try:
        async with conn.transaction():
            record = await append(conn, org_id=ORG, actor="system", action="job.run", target="job:1", detail={})
    finally:
        current_request_id.reset(token)
    assert record.request_id == "req-from-context"
    async with conn.transaction():
        outside = await append(conn, org_id=ORG, actor="system", action="job.run", target="job:2", detail={})
    assert outside.request_id is None
    assert [row.request_id for row in await stored(conn)] == ["req-from-context", None]


async def test_append_outside_a_transaction_is_refused(conn: asyncpg.Connection) -> None:
    with pytest.raises(AuditFailed, match="inside the transaction"):
        await append(conn, org_id=ORG, actor="system", action="job.run", target="job:1", detail={})
    assert await stored(conn) == []


async def test_concurrent_writers_in_one_org_leave_a_gap_free_chain(pool: asyncpg.Pool) -> None:
    async def writer(index: int) -> AuditRecord:
        async with pool.acquire() as connection:
            return await write(connection, ORG, index)

    written = await asyncio.gather(*(writer(index) for index in range(CONCURRENT_WRITERS)))
    assert sorted(record.seq for record in written) == list(range(1, CONCURRENT_WRITERS + 1))
    async with pool.acquire() as connection:
        rows = await stored(connection)
        assert await verify_org(connection, ORG) == verify(rows)
    assert [row.seq for row in rows] == list(range(1, CONCURRENT_WRITERS + 1))
    assert sorted(row.detail["index"] for row in rows) == list(range(CONCURRENT_WRITERS))
    result = verify(rows)
    assert (result.checked, result.broken) == (CONCURRENT_WRITERS, None)


async def test_many_orgs_written_at_once_each_keep_their_own_chain(pool: asyncpg.Pool) -> None:
    orgs = [uuid.uuid4() for _ in range(ORGS_AT_ONCE)]

    async def writer(org_id: uuid.UUID, index: int) -> None:
        async with pool.acquire() as connection:
            await write(connection, org_id, index)

    await asyncio.gather(*(writer(org, index) for index in range(WRITERS_PER_ORG) for org in orgs))
    async with pool.acquire() as connection:
        for org_id in orgs:
            rows = await stored(connection, org_id)
            assert [row.seq for row in rows] == list(range(1, WRITERS_PER_ORG + 1))
            assert {row.org_id for row in rows} == {org_id}
            result = await verify_org(connection, org_id)
            assert (result.checked, result.broken) == (WRITERS_PER_ORG, None)


# --- a failed audit write -------------------------------------------------------------------------------------------


async def test_a_database_error_in_the_insert_is_audit_failed_and_the_change_rolls_back(
    conn: asyncpg.Connection,
) -> None:
    await conn.execute("CREATE TABLE scratch (note text)")
    await conn.execute(
        """
        CREATE FUNCTION audit.test_refuse_insert() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION 'audit insert refused by the test'; END $$;
        CREATE TRIGGER test_refuse_insert BEFORE INSERT ON audit.records
            FOR EACH ROW EXECUTE FUNCTION audit.test_refuse_insert();
        """
    )
    with pytest.raises(AuditFailed) as raised:
        async with conn.transaction():
            await conn.execute("INSERT INTO scratch VALUES ('the change')")
            await append(conn, org_id=ORG, actor=ADMIN, action="user.create", target="user:1", detail={})
    assert isinstance(raised.value.__cause__, asyncpg.RaiseError)
    assert (raised.value.org_id, raised.value.action, raised.value.actor) == (str(ORG), "user.create", ADMIN)
    assert "audit insert refused by the test" in raised.value.reason
    assert await conn.fetchval("SELECT count(*) FROM scratch") == 0
    assert await conn.fetchval("SELECT count(*) FROM audit.records") == 0


async def test_a_deadline_on_the_orgs_lock_is_raised_as_it_is_not_as_audit_failed(
    conn: asyncpg.Connection, database_url: str
) -> None:
    """A writer queued behind the org's lock past its statement timeout: the database was busy, the trail is fine.
    The timeout goes through unwrapped (the boundary answers 503 with Retry-After), with no audit_failed page."""
    holder = await asyncpg.connect(database_url)
    try:
        async with holder.transaction():
            await append(holder, org_id=ORG, actor=ADMIN, action="user.create", target="user:1", detail={})
            with pytest.raises(asyncpg.QueryCanceledError):
                async with conn.transaction():
                    await conn.execute("SET LOCAL statement_timeout = 200")
                    await append(conn, org_id=ORG, actor=ADMIN, action="user.update", target="user:1", detail={})
    finally:
        await holder.close()
    assert [record.seq for record in await stored(conn)] == [1]


async def test_a_record_that_cannot_be_written_is_audit_failed(conn: asyncpg.Connection) -> None:
    with pytest.raises(AuditFailed, match="actor") as raised:
        async with conn.transaction():
            await append(conn, org_id=ORG, actor="jane@example.com", action="user.create", target="u", detail={})
    assert type(raised.value.__cause__).__name__ == "InvalidAuditField"
    assert await stored(conn) == []


@pytest.mark.parametrize(
    "at",
    [datetime.max.replace(tzinfo=UTC), datetime.min.replace(tzinfo=UTC), datetime(1969, 12, 31, 23, 59, tzinfo=UTC)],
    ids=["max", "min", "before-1970"],
)
async def test_a_time_storage_cannot_give_back_is_refused_and_the_chain_still_verifies(
    conn: asyncpg.Connection, at: datetime
) -> None:
    # asyncpg writes an aware datetime.max or datetime.min as +-infinity and reads it back naive: hashed as one
    # thing, stored as another, the row would break the org's chain for good.
    await write(conn, ORG, 0)
    with pytest.raises(AuditFailed, match="at must lie") as raised:
        async with conn.transaction():
            await append(conn, org_id=ORG, actor=ADMIN, action="user.update", target="user:1", detail={}, at=at)
    assert type(raised.value.__cause__).__name__ == "InvalidAuditField"
    await write(conn, ORG, 1)
    assert await verify_org(conn, ORG) == verify(await stored(conn))
    assert (await verify_org(conn, ORG)).checked == 2


async def test_the_edges_of_the_time_range_round_trip(conn: asyncpg.Connection) -> None:
    for at in (EARLIEST_AT, LATEST_AT):
        async with conn.transaction():
            await append(conn, org_id=ORG, actor=ADMIN, action="user.update", target="user:1", detail={}, at=at)
    assert [row.at for row in await stored(conn)] == [EARLIEST_AT, LATEST_AT]
    result = await verify_org(conn, ORG)
    assert result.ok and result.checked == 2


@pytest.mark.parametrize("detail", [{"memo": "a\x00b"}, {"a\x00": 1}, {"list": [{"deep": ["\x00"]}]}])
async def test_a_nul_in_the_detail_is_refused_before_any_write(
    conn: asyncpg.Connection, detail: dict[str, object]
) -> None:
    with pytest.raises(AuditFailed, match="NUL") as raised:
        async with conn.transaction():
            await append(conn, org_id=ORG, actor=ADMIN, action="user.update", target="user:1", detail=detail)
    assert type(raised.value.__cause__).__name__ == "InvalidAuditField"
    assert await stored(conn) == []


@pytest.mark.parametrize("isolation", ["repeatable_read", "serializable"])
async def test_append_outside_read_committed_is_refused(conn: asyncpg.Connection, isolation: str) -> None:
    await conn.execute("CREATE TABLE scratch (note text)")
    with pytest.raises(AuditFailed, match="needs a read committed transaction") as raised:
        async with conn.transaction(isolation=isolation):  # type: ignore[arg-type]
            await conn.execute("INSERT INTO scratch VALUES ('the change')")
            await append(conn, org_id=ORG, actor=ADMIN, action="user.create", target="user:1", detail={})
    assert raised.value.__cause__ is None
    assert isolation.replace("_", " ") in raised.value.reason
    assert await conn.fetchval("SELECT count(*) FROM scratch") == 0
    assert await stored(conn) == []


async def test_a_session_defaulting_to_repeatable_read_is_refused(conn: asyncpg.Connection) -> None:
    await conn.execute("SET default_transaction_isolation = 'repeatable read'")
    with pytest.raises(AuditFailed, match="not repeatable read"):
        async with conn.transaction():
            await append(conn, org_id=ORG, actor=ADMIN, action="user.create", target="user:1", detail={})
    await conn.execute("RESET default_transaction_isolation")
    await write(conn, ORG, 0)
    assert (await verify_org(conn, ORG)).checked == 1


# --- the table refuses changes --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE audit.records SET target = 'user:forged' WHERE seq = 2",
        "DELETE FROM audit.records WHERE seq = 2",
        "TRUNCATE audit.records",
    ],
)
async def test_the_table_is_append_only(conn: asyncpg.Connection, statement: str) -> None:
    await write_chain(conn)
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
        await conn.execute(statement)
    assert verify(await stored(conn)).checked == CHAIN_LENGTH


@pytest.mark.parametrize("change", ["seq = 2", "prev_hash = repeat('a', 64)"], ids=["renumbered", "relinked"])
async def test_only_the_first_record_links_to_genesis(conn: asyncpg.Connection, change: str) -> None:
    await write_chain(conn, 1)
    with pytest.raises(asyncpg.CheckViolationError, match="records_genesis"):
        await tamper(conn, f"UPDATE audit.records SET {change} WHERE seq = 1")  # noqa: S608


# --- tampering is found at its row ----------------------------------------------------------------------------------

# Positions: the first row, one in the middle, the last but one (a deleted last row needs an Anchor: unit tests).
POSITIONS = [1, 3, CHAIN_LENGTH - 1]
EDITS = {
    "at": "at = at + interval '1 microsecond'",
    "actor": "actor = 'system'",
    "action": "action = 'user.create'",
    "target": "target = target || 'x'",
    "request_id": "request_id = 'req-forged'",
    "request_id_null": "request_id = NULL",
    "detail": """detail = jsonb_set(detail, '{role,new}', '"admin"')""",
    "hash": "hash = repeat('b', 64)",
    "org_id": f"org_id = '{OTHER_ORG}'",
}
# A record's seq and link cannot change at seq 1 (records_genesis refuses it); elsewhere they are edits too.
LINK_EDITS = {"seq": "seq = seq + 1000", "prev_hash": "prev_hash = repeat('a', 64)"}


@pytest.mark.parametrize("position", POSITIONS)
@pytest.mark.parametrize("edit", sorted(EDITS))
async def test_an_edit_of_any_column_is_reported_at_that_row(
    conn: asyncpg.Connection, edit: str, position: int
) -> None:
    await write_chain(conn)
    await tamper(conn, f"UPDATE audit.records SET {EDITS[edit]} WHERE seq = $1", position)  # noqa: S608
    result = await verify_org(conn, ORG)
    assert result.broken is not None, edit
    assert (result.broken.seq, result.checked) == (position, position - 1), result


@pytest.mark.parametrize("position", POSITIONS[1:])
@pytest.mark.parametrize("edit", sorted(LINK_EDITS))
async def test_a_changed_seq_or_link_is_reported_at_that_row(
    conn: asyncpg.Connection, edit: str, position: int
) -> None:
    await write_chain(conn)
    await tamper(conn, f"UPDATE audit.records SET {LINK_EDITS[edit]} WHERE seq = $1", position)  # noqa: S608
    result = await verify_org(conn, ORG)
    assert result.broken is not None
    assert (result.broken.seq, result.checked) == (position, position - 1), result


@pytest.mark.parametrize("position", POSITIONS)
async def test_a_deleted_row_is_reported_at_its_seq(conn: asyncpg.Connection, position: int) -> None:
    await write_chain(conn)
    await tamper(conn, "DELETE FROM audit.records WHERE seq = $1", position)
    result = await verify_org(conn, ORG)
    assert result.broken == BrokenLink(position, f"seq gap: expected {position}, found {position + 1}")
    assert result.checked == position - 1


@pytest.mark.parametrize("position", [2, 3, CHAIN_LENGTH - 1])
async def test_two_rows_swapped_are_reported_at_the_earlier(conn: asyncpg.Connection, position: int) -> None:
    await write_chain(conn)
    async with conn.transaction():
        await conn.execute("SET LOCAL session_replication_role = replica")
        # Through a seq no row has, as the primary key is checked row by row.
        await conn.execute("UPDATE audit.records SET seq = $2 WHERE seq = $1", position, CHAIN_LENGTH + 100)
        await conn.execute("UPDATE audit.records SET seq = $1 WHERE seq = $1 + 1", position)
        await conn.execute("UPDATE audit.records SET seq = $1 + 1 WHERE seq = $2", position, CHAIN_LENGTH + 100)
    rows = await stored(conn)
    assert [row.seq for row in rows] == list(range(1, CHAIN_LENGTH + 1))
    result = await verify_org(conn, ORG)
    assert result.broken == BrokenLink(position, f"row {position} was edited")


# --- reading in batches ---------------------------------------------------------------------------------------------


async def test_a_long_chain_is_read_and_verified_in_batches(conn: asyncpg.Connection) -> None:
    length = 2 * READ_BATCH_ROWS + 7
    chain: list[AuditRecord] = []
    start = datetime(2026, 11, 27, tzinfo=UTC)
    for index in range(length):
        prev = chain[-1] if chain else None
        at = start + timedelta(seconds=index)
        chain.append(next_record(prev, ORG, at, "system", "bas.lodge", f"bas:{index}", None, {"index": index}))
    await conn.copy_records_to_table(
        "records",
        schema_name="audit",
        columns=COLUMNS.split(", "),
        records=[
            (
                r.org_id,
                r.seq,
                r.at,
                r.actor,
                r.action,
                r.target,
                r.request_id,
                orjson.dumps(r.detail).decode(),
                r.prev_hash,
                r.hash,
            )
            for r in chain
        ],
    )
    seen: list[int] = []
    result = await verify_org(conn, ORG, progress=seen.append)
    assert (result.checked, result.broken) == (length, None)
    assert seen == [READ_BATCH_ROWS, 2 * READ_BATCH_ROWS, length]
    assert [record async for record in records(conn, ORG, after_seq=length - 2)] == chain[-2:]

    await tamper(conn, "UPDATE audit.records SET target = 'bas:forged' WHERE seq = $1", READ_BATCH_ROWS + 3)
    small: list[int] = []
    result = await verify_org(conn, ORG, batch_rows=100, progress=small.append)
    assert result.broken == BrokenLink(READ_BATCH_ROWS + 3, f"row {READ_BATCH_ROWS + 3} was edited")
    assert small == [*range(100, READ_BATCH_ROWS + 1, 100), READ_BATCH_ROWS + 2]


async def test_an_org_with_no_records_verifies_as_empty(conn: asyncpg.Connection) -> None:
    result = await verify_org(conn, OTHER_ORG)
    assert (result.checked, result.broken) == (0, None)
