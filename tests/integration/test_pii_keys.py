"""shared.pii on real PostgreSQL: data keys created once per org and stored wrapped, crypto-shredding, KEK rotation,
and what another process's cache sees. Each `PiiCipher` here stands for one service process."""

from __future__ import annotations

import asyncio
import base64
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio
from typer.testing import CliRunner

from apgms import devstack
from apgms.cli import app
from shared.config import Secret
from shared.kek import KekUnavailable, LocalKekProvider, WrappedKey
from shared.pii import (
    CiphertextInvalid,
    DataKeyCache,
    KeyDestroyed,
    PiiCipher,
    PlaintextInvalid,
    kek_usage,
    rotate_kek,
    sealed_key_id,
)

OLD_KEK = Secret(base64.b64encode(os.urandom(32)).decode())
NEW_KEK = Secret(base64.b64encode(os.urandom(32)).decode())
PAYEES = ["Acme Pty Ltd", "Ōtautahi Plumbing", "O'Brien & Sons", ""]
# Long enough for a destroy to commit while an unwrap waits.
SLOW_UNWRAP_S = 0.5


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest_asyncio.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    async with asyncpg.create_pool(database_url, min_size=1, max_size=4) as created:
        yield created


def cipher(pool: asyncpg.Pool, *keks: Secret, cache: DataKeyCache | None = None) -> PiiCipher:
    return PiiCipher(pool, LocalKekProvider(list(keks) or [OLD_KEK]), cache)


async def key_rows(pool: asyncpg.Pool, org_id: uuid.UUID) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await pool.fetch(
        "SELECT * FROM pii.data_keys WHERE org_id = $1 ORDER BY key_id", org_id
    )
    return rows


async def test_values_round_trip_under_one_stored_wrapped_key_per_org(pool: asyncpg.Pool) -> None:
    pii, org = cipher(pool), uuid.uuid4()
    blobs = [await pii.encrypt(org, "bank_lines", "payee", payee) for payee in PAYEES]
    assert [await pii.decrypt(org, "bank_lines", "payee", blob) for blob in blobs] == PAYEES
    rows = await key_rows(pool, org)
    assert [(row["key_id"], row["kek_id"], row["destroyed_at"]) for row in rows] == [
        (1, LocalKekProvider([OLD_KEK]).current_kek_id, None)
    ]
    # Another process, with nothing cached, opens them from the stored key.
    assert [await cipher(pool).decrypt(org, "bank_lines", "payee", blob) for blob in blobs] == PAYEES


async def test_a_value_opens_only_for_its_org_table_and_column(pool: asyncpg.Pool) -> None:
    pii, org_a, org_b = cipher(pool), uuid.uuid4(), uuid.uuid4()
    blob = await pii.encrypt(org_a, "bank_lines", "payee", "Acme Pty Ltd")
    await pii.encrypt(org_b, "bank_lines", "payee", "B's own payee")
    for org, table, column in [
        (org_b, "bank_lines", "payee"),
        (org_a, "bank_lines", "description"),
        (org_a, "exports", "payee"),
        (uuid.uuid4(), "bank_lines", "payee"),  # an org with no key at all
    ]:
        with pytest.raises(CiphertextInvalid):
            await pii.decrypt(org, table, column, blob)
    assert await pii.decrypt(org_a, "bank_lines", "payee", blob) == "Acme Pty Ltd"


async def test_decrypting_never_creates_a_key(pool: asyncpg.Pool) -> None:
    org = uuid.uuid4()
    with pytest.raises(CiphertextInvalid):
        await cipher(pool).decrypt(org, "bank_lines", "payee", b"\x01\x00\x00\x00\x01" + bytes(40))
    assert await key_rows(pool, org) == []


async def test_batches_use_one_lookup_and_bind_each_row(pool: asyncpg.Pool) -> None:
    pii, org = cipher(pool), uuid.uuid4()
    row_ids = [str(uuid.uuid4()) for _ in PAYEES]
    blobs = await pii.encrypt_many(org, "bank_lines", "payee", PAYEES, row_ids=row_ids)
    assert await pii.decrypt_many(org, "bank_lines", "payee", blobs, row_ids=row_ids) == PAYEES
    swapped = [row_ids[1], row_ids[0], *row_ids[2:]]
    with pytest.raises(CiphertextInvalid):
        await pii.decrypt_many(org, "bank_lines", "payee", blobs, row_ids=swapped)
    with pytest.raises(ValueError, match="row ids for"):
        await pii.encrypt_many(org, "bank_lines", "payee", PAYEES, row_ids=row_ids[:1])


async def test_concurrent_first_encryptions_share_one_key(pool: asyncpg.Pool) -> None:
    org = uuid.uuid4()
    processes = [cipher(pool) for _ in range(4)]
    blobs = await asyncio.gather(
        *(processes[n % 4].encrypt(org, "bank_lines", "payee", f"payee {n}") for n in range(20))
    )
    assert len(await key_rows(pool, org)) == 1
    reader = cipher(pool)
    assert [await reader.decrypt(org, "bank_lines", "payee", blob) for blob in blobs] == [
        f"payee {n}" for n in range(20)
    ]


async def test_after_destroy_nothing_of_the_org_opens_and_other_orgs_do(pool: asyncpg.Pool) -> None:
    pii, org_a, org_b = cipher(pool), uuid.uuid4(), uuid.uuid4()
    blobs_a = await pii.encrypt_many(org_a, "bank_lines", "payee", PAYEES)
    blob_b = await pii.encrypt(org_b, "bank_lines", "payee", "B stays")

    assert await pii.destroy(org_a) == 1

    for process in (pii, cipher(pool)):
        for blob in blobs_a:
            with pytest.raises(KeyDestroyed):
                await process.decrypt(org_a, "bank_lines", "payee", blob)
        with pytest.raises(KeyDestroyed):
            await process.encrypt(org_a, "bank_lines", "payee", "a new value for a deleted org")
        assert await process.decrypt(org_b, "bank_lines", "payee", blob_b) == "B stays"
    [row] = await key_rows(pool, org_a)
    assert (row["wrapped"], row["kek_id"]) == (None, None)
    assert row["destroyed_at"] is not None
    assert await pii.destroy(org_a) == 0


async def test_destroying_an_org_that_never_had_a_key_refuses_one_later(pool: asyncpg.Pool) -> None:
    pii, org = cipher(pool), uuid.uuid4()
    assert await pii.destroy(org) == 0
    with pytest.raises(KeyDestroyed):
        await pii.encrypt(org, "bank_lines", "payee", "x")


async def test_destroy_in_a_transaction_that_rolls_back_destroys_nothing(pool: asyncpg.Pool) -> None:
    pii, org = cipher(pool), uuid.uuid4()
    blob = await pii.encrypt(org, "bank_lines", "payee", "kept")
    async with pool.acquire() as conn:
        with pytest.raises(RuntimeError):
            async with conn.transaction():
                assert await pii.destroy(org, conn=conn) == 1
                raise RuntimeError("the org deletion failed")
    assert await pii.decrypt(org, "bank_lines", "payee", blob) == "kept"
    assert (await key_rows(pool, org))[0]["wrapped"] is not None


async def test_a_lookup_while_a_callers_destroy_is_uncommitted_never_caches_the_key(pool: asyncpg.Pool) -> None:
    cache = DataKeyCache()
    pii, org = cipher(pool, cache=cache), uuid.uuid4()
    blob = await pii.encrypt(org, "bank_lines", "payee", "Jane Citizen")
    async with pool.acquire() as conn:
        async with conn.transaction():
            assert await pii.destroy(org, conn=conn) == 1
            # Another request of this process, before the commit: the committed key still opens the value.
            assert await pii.decrypt(org, "bank_lines", "payee", blob) == "Jane Citizen"
            assert len(cache) == 0
        # Committed; the caller has not called forget yet, and the key is gone all the same.
        with pytest.raises(KeyDestroyed):
            await pii.decrypt(org, "bank_lines", "payee", blob)
        pii.forget(org)
    with pytest.raises(KeyDestroyed):
        await pii.decrypt(org, "bank_lines", "payee", blob)
    with pytest.raises(KeyDestroyed):
        await pii.encrypt(org, "bank_lines", "payee", "new")


async def test_forget_after_a_rolled_back_destroy_caches_the_key_again(pool: asyncpg.Pool) -> None:
    cache = DataKeyCache()
    pii, org = cipher(pool, cache=cache), uuid.uuid4()
    blob = await pii.encrypt(org, "bank_lines", "payee", "kept")
    async with pool.acquire() as conn:
        with pytest.raises(RuntimeError):
            async with conn.transaction():
                await pii.destroy(org, conn=conn)
                raise RuntimeError("the org deletion failed")
    assert await pii.decrypt(org, "bank_lines", "payee", blob) == "kept"
    assert len(cache) == 0, "pending until the caller says its transaction is over"
    pii.forget(org)
    assert await pii.decrypt(org, "bank_lines", "payee", blob) == "kept"
    assert len(cache) == 1


class SlowUnwrap(LocalKekProvider):
    """A KEK provider with a KMS's latency; `unwrapping` is set while an unwrap waits."""

    def __init__(self, keks: list[Secret]) -> None:
        super().__init__(keks)
        self.unwrapping = asyncio.Event()

    async def unwrap(self, wrapped: WrappedKey) -> bytes:
        self.unwrapping.set()
        await asyncio.sleep(SLOW_UNWRAP_S)
        return await super().unwrap(wrapped)


@pytest.mark.parametrize("in_callers_transaction", [False, True], ids=["own", "callers"])
async def test_a_lookup_running_when_a_destroy_commits_does_not_cache_the_destroyed_key(
    pool: asyncpg.Pool, in_callers_transaction: bool
) -> None:
    provider = SlowUnwrap([OLD_KEK])
    cache = DataKeyCache()
    pii, org = PiiCipher(pool, provider, cache), uuid.uuid4()
    blob = await pii.encrypt(org, "bank_lines", "payee", "Jane Citizen")
    cache.evict(org)  # as if its entry had expired
    provider.unwrapping.clear()
    reader = asyncio.create_task(pii.decrypt(org, "bank_lines", "payee", blob))
    await provider.unwrapping.wait()  # the reader holds the live row and is unwrapping it
    if in_callers_transaction:
        async with pool.acquire() as conn:
            async with conn.transaction():
                assert await pii.destroy(org, conn=conn) == 1
            pii.forget(org)
    else:
        assert await pii.destroy(org) == 1
    assert await reader == "Jane Citizen", "it began before the destroy"
    assert len(cache) == 0
    with pytest.raises(KeyDestroyed):
        await pii.decrypt(org, "bank_lines", "payee", blob)


async def test_text_with_no_utf8_form_is_refused_by_encrypt_and_encrypt_many(pool: asyncpg.Pool) -> None:
    pii, org = cipher(pool), uuid.uuid4()
    with pytest.raises(PlaintextInvalid):
        await pii.encrypt(org, "bank_lines", "payee", "Acme \ud800")
    with pytest.raises(PlaintextInvalid):
        await pii.encrypt_many(org, "bank_lines", "payee", ["fine", "\udfff"])


async def test_another_process_sees_a_destroy_once_its_cached_key_expires(pool: asyncpg.Pool) -> None:
    clock, org = Clock(), uuid.uuid4()
    other = cipher(pool, cache=DataKeyCache(ttl_s=60, clock=clock))
    blob = await cipher(pool).encrypt(org, "bank_lines", "payee", "cached")
    assert await other.decrypt(org, "bank_lines", "payee", blob) == "cached"

    await cipher(pool).destroy(org)
    clock.now += 59
    assert await other.decrypt(org, "bank_lines", "payee", blob) == "cached", "still cached (documented window)"
    clock.now += 1
    with pytest.raises(KeyDestroyed):
        await other.decrypt(org, "bank_lines", "payee", blob)


async def test_kek_rotation_rewraps_every_key_and_leaves_every_value_readable(pool: asyncpg.Pool) -> None:
    before = cipher(pool, OLD_KEK)
    orgs = [uuid.uuid4() for _ in range(7)]
    sealed = {org: await before.encrypt_many(org, "bank_lines", "payee", PAYEES) for org in orgs}
    destroyed = uuid.uuid4()
    await before.encrypt(destroyed, "bank_lines", "payee", "gone")
    await before.destroy(destroyed)
    wrapped_before = {org: (await key_rows(pool, org))[0]["wrapped"] for org in orgs}
    old_id, new_id = (LocalKekProvider([kek]).current_kek_id for kek in (OLD_KEK, NEW_KEK))

    new_only = cipher(pool, NEW_KEK)
    with pytest.raises(KekUnavailable):
        await new_only.decrypt(orgs[0], "bank_lines", "payee", sealed[orgs[0]][0])

    async with pool.acquire() as conn:
        rotation = await rotate_kek(conn, LocalKekProvider([NEW_KEK, OLD_KEK]), batch_size=3)
        assert rotation.kek_usage == await kek_usage(conn) == {new_id: 7}
    assert (rotation.rewrapped, rotation.batches) == (7, 3)
    for org in orgs:
        [row] = await key_rows(pool, org)
        assert row["kek_id"] == new_id != old_id
        assert row["wrapped"] != wrapped_before[org]
        assert row["rewrapped_at"] is not None

    # The old KEK retired: a process holding only the new one opens every value sealed before the rotation.
    retired = cipher(pool, NEW_KEK)
    for org in orgs:
        assert await retired.decrypt_many(org, "bank_lines", "payee", sealed[org]) == PAYEES
    with pytest.raises(KeyDestroyed):
        await retired.encrypt(destroyed, "bank_lines", "payee", "still refused")
    async with pool.acquire() as conn:
        assert (await rotate_kek(conn, LocalKekProvider([NEW_KEK]))).rewrapped == 0


async def test_the_cli_rotates_the_kek_named_first(
    pool: asyncpg.Pool, database_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(devstack, "PROJECT_ROOT", tmp_path)  # a developer's `.env` must not decide the KEK
    org = uuid.uuid4()
    blob = await cipher(pool, OLD_KEK).encrypt(org, "bank_lines", "payee", "Acme Pty Ltd")
    kek_file = tmp_path / "kek"
    kek_file.write_text(f"# new first, then the one being retired\n{NEW_KEK.reveal()}\n{OLD_KEK.reveal()}\n")
    environment = {"DATABASE_URL": database_url, "APGMS_ENV": "test", "APGMS_KEK_FILE": str(kek_file)}

    result = await asyncio.to_thread(CliRunner().invoke, app, ["pii", "rotate-kek"], env=environment)

    new_id = LocalKekProvider([NEW_KEK]).current_kek_id
    assert result.exit_code == 0, result.output
    assert f"Re-wrapped 1 data key(s) under KEK {new_id}" in result.stdout
    assert "retired KEKs can be removed" in result.stdout
    assert await cipher(pool, NEW_KEK).decrypt(org, "bank_lines", "payee", blob) == "Acme Pty Ltd"
    for secret in (NEW_KEK.reveal(), OLD_KEK.reveal()):
        assert secret not in result.output


async def test_a_writers_share_lock_and_a_destroy_in_another_process_serialise(pool: asyncpg.Pool) -> None:
    org_id = uuid.uuid4()
    writer, destroyer = cipher(pool), cipher(pool)
    sealed = await writer.encrypt(org_id, "bank_lines", "payee", "Acme")
    key_id = sealed_key_id(sealed)
    assert key_id == 1
    # The writer holds the lock: the destroy waits for its commit.
    async with pool.acquire() as conn, conn.transaction():
        assert await writer.lock_live_key(conn, org_id, key_id) is True
        destroying = asyncio.create_task(destroyer.destroy(org_id))
        await asyncio.sleep(SLOW_UNWRAP_S)
        assert not destroying.done()
    assert await destroying == 1
    # Destroyed in the other process while this one still has the key cached: the lock says so, and the writer
    # forgets the key.
    async with pool.acquire() as conn, conn.transaction():
        assert await writer.lock_live_key(conn, org_id, key_id) is False
    with pytest.raises(KeyDestroyed):
        await writer.encrypt(org_id, "bank_lines", "payee", "Acme")


def test_a_sealed_value_names_its_key_and_a_short_one_is_refused() -> None:
    with pytest.raises(CiphertextInvalid):
        sealed_key_id(b"\x01\x00")
    with pytest.raises(CiphertextInvalid):
        sealed_key_id(b"\x02\x00\x00\x00\x01")
    assert sealed_key_id(b"\x01\x00\x00\x01\x00" + bytes(40)) == 256


async def test_tags_are_stable_per_org_differ_elsewhere_and_are_refused_after_destroy(pool: asyncpg.Pool) -> None:
    org_a, org_b = uuid.uuid4(), uuid.uuid4()
    one, other_process = cipher(pool), cipher(pool)
    tag = await one.tag(org_a, "deposit_source", "Acme Pty Ltd 062-000 12345678")
    assert len(tag) == 32
    assert await other_process.tag(org_a, "deposit_source", "Acme Pty Ltd 062-000 12345678") == tag
    assert await one.tag(org_b, "deposit_source", "Acme Pty Ltd 062-000 12345678") != tag
    assert await one.tag(org_a, "other_purpose", "Acme Pty Ltd 062-000 12345678") != tag
    # Tagging created the org's key, which seals and opens as usual.
    assert len(await key_rows(pool, org_a)) == 1
    blob = await one.encrypt(org_a, "bank_lines", "payee", "x")
    assert await other_process.decrypt(org_a, "bank_lines", "payee", blob) == "x"
    await one.destroy(org_a)
    with pytest.raises(KeyDestroyed):
        await one.tag(org_a, "deposit_source", "Acme Pty Ltd 062-000 12345678")
    with pytest.raises(KeyDestroyed):
        await cipher(pool).tag(org_a, "deposit_source", "Acme Pty Ltd 062-000 12345678")
    assert await one.tag(org_b, "deposit_source", "x") == await other_process.tag(org_b, "deposit_source", "x")
