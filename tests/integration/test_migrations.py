"""Migrations against a real PostgreSQL: applied once, recorded with checksums, tampering refused."""

import asyncio
import shutil
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio

from shared.migrations import OWNERS, SERVICES, MigrationError, discover, migrate, migrations_folder, status


def with_database(dsn: str, name: str) -> str:
    base, _, _ = dsn.rpartition("/")
    return f"{base}/{name}"


@pytest_asyncio.fixture
async def empty_database_url(postgres_dsn: str) -> AsyncIterator[str]:
    name = f"m_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(postgres_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield with_database(postgres_dsn, name)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture
def migrations_copy(tmp_path: Path) -> Path:
    for owner in OWNERS:
        shutil.copytree(migrations_folder(owner), migrations_folder(owner, tmp_path))
    return tmp_path


async def test_fresh_database_is_all_pending_then_up_to_date(empty_database_url: str) -> None:
    before = await status(empty_database_url)
    assert all(s.pending and not s.applied for s in before)

    applied = await migrate(empty_database_url)
    assert {m.service for m in applied} == set(OWNERS)

    after = await status(empty_database_url)
    assert all(s.up_to_date and s.applied for s in after)
    assert await migrate(empty_database_url) == []

    connection = await asyncpg.connect(empty_database_url)
    try:
        schemas = {r["nspname"] for r in await connection.fetch("SELECT nspname FROM pg_namespace")}
        rows = await connection.fetch("SELECT service, checksum FROM apgms_meta.schema_migrations")
    finally:
        await connection.close()
    assert set(SERVICES) <= schemas
    assert {r["service"] for r in rows} == set(OWNERS)
    assert all(len(r["checksum"]) == 64 for r in rows)


async def test_tampered_applied_migration_is_refused(empty_database_url: str, migrations_copy: Path) -> None:
    await migrate(empty_database_url, root=migrations_copy)
    tampered = migrations_folder("core", migrations_copy) / "0001_schema.sql"
    tampered.write_text(tampered.read_text() + "\nCREATE TABLE core.sneaky (id int);\n")
    (migrations_folder("core", migrations_copy) / "0099_next.sql").write_text("CREATE TABLE core.next (id int);")

    with pytest.raises(MigrationError, match=r"core/0001_schema\.sql was changed after it was applied"):
        await migrate(empty_database_url, root=migrations_copy)

    report = {s.service: s for s in await status(empty_database_url, root=migrations_copy)}
    assert report["core"].changed == ["0001_schema.sql"]
    assert report["core"].pending == ["0099_next.sql"]
    connection = await asyncpg.connect(empty_database_url)
    try:
        assert await connection.fetchval("SELECT to_regclass('core.next')") is None
        assert await connection.fetchval("SELECT to_regclass('core.sneaky')") is None
    finally:
        await connection.close()


async def test_a_failing_migration_leaves_nothing_applied(empty_database_url: str, migrations_copy: Path) -> None:
    (migrations_folder("auth", migrations_copy) / "0099_good.sql").write_text("CREATE TABLE auth.good (id int);")
    (migrations_folder("regulator", migrations_copy) / "0099_bad.sql").write_text("CREATE TABLE nope.bad (id int);")

    with pytest.raises(asyncpg.exceptions.InvalidSchemaNameError):
        await migrate(empty_database_url, root=migrations_copy)

    assert all(s.pending and not s.applied for s in await status(empty_database_url, root=migrations_copy))


async def test_concurrent_migrate_runs_apply_each_file_once(empty_database_url: str) -> None:
    results = await asyncio.gather(*(migrate(empty_database_url) for _ in range(4)))
    assert sorted(len(r) for r in results) == [0, 0, 0, len(discover())]


async def test_status_of_an_unreachable_database_raises() -> None:
    with pytest.raises((OSError, asyncpg.exceptions.PostgresError)):
        await status("postgresql://postgres@127.0.0.1:1/nothing")
