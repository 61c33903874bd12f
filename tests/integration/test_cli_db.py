"""`apgms db status` / `apgms db migrate` against real databases (the runbook's `prisma migrate status`)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from typer.testing import CliRunner

from apgms import devstack
from apgms.cli import app
from apgms.devservers import create_database, drop_database
from shared.migrations import discover


@pytest.fixture(autouse=True)
def no_project_dotenv(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A developer's `.env` must not decide what these tests see."""
    monkeypatch.setattr(devstack, "PROJECT_ROOT", tmp_path)


@pytest.fixture
def empty_database(postgres_dsn: str) -> Iterator[str]:
    name = f"cli_{uuid.uuid4().hex[:12]}"
    dsn = asyncio.run(create_database(postgres_dsn, name))
    yield dsn
    asyncio.run(drop_database(postgres_dsn, name))


def run(*args: str, database_url: str | None) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args), env={"DATABASE_URL": database_url})
    return result.exit_code, result.stdout, result.stderr


def test_status_of_a_fresh_database_lists_everything_pending_and_exits_1(empty_database: str) -> None:
    code, out, err = run("db", "status", database_url=empty_database)
    assert code == 1
    assert "0001_schema.sql" in out
    assert err.strip() == f"error: {len(discover())} migration(s) pending; run `apgms db migrate`"


def test_migrate_applies_once_then_status_is_clean(empty_database: str) -> None:
    code, out, _ = run("db", "migrate", database_url=empty_database)
    assert code == 0
    assert [line for line in out.splitlines() if line.startswith("applied ")] == [
        f"applied {migration.label}" for migration in discover()
    ]

    code, out, _ = run("db", "migrate", database_url=empty_database)
    assert (code, out.strip()) == (0, "Nothing to apply; the schema is up to date.")

    code, out, err = run("db", "status", database_url=empty_database)
    assert (code, err) == (0, "")
    assert out.rstrip().endswith("Database schema is up to date.")


def test_a_tampered_migration_fails_status_and_migrate(database_url: str) -> None:
    async def tamper() -> None:
        connection = await asyncpg.connect(database_url)
        try:
            await connection.execute("UPDATE apgms_meta.schema_migrations SET checksum = 'x' WHERE service = 'core'")
        finally:
            await connection.close()

    asyncio.run(tamper())
    code, out, err = run("db", "status", database_url=database_url)
    assert code == 1
    assert "changed on disk" in err
    core_row = next(line for line in out.splitlines() if line.startswith("│ core"))
    assert core_row.count("0001_schema.sql") == 2, "listed as applied and as changed"

    code, _, err = run("db", "migrate", database_url=database_url)
    assert code == 1
    assert "core/0001_schema.sql was changed after it was applied" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("command", ["status", "migrate"])
def test_missing_database_url_is_named(command: str) -> None:
    code, out, err = run("db", command, database_url=None)
    assert code == 1
    assert out == ""
    assert err.startswith("error: DATABASE_URL is not set")


def test_unreachable_database_is_one_line_without_the_password() -> None:
    code, _, err = run("db", "status", database_url="postgresql://app:s3cret@127.0.0.1:1/apgms")
    assert code == 1
    assert err.count("\n") == 1
    assert err.startswith("error: cannot use the database at postgresql://app@127.0.0.1:1/apgms: ")
    assert "s3cret" not in err
