"""`apgms audit verify --org` against a real database: an intact chain, a tampered one, an empty one, a bad id."""

from __future__ import annotations

import asyncio
import io
import uuid
from pathlib import Path

import asyncpg
import pytest
from rich.console import Console
from typer.testing import CliRunner

from apgms import devstack
from apgms.cli import app
from shared.audit import append

ORG = uuid.UUID("7d7a6b0e-5c1f-4a39-9a57-0f3c2b1e8d44")
CHAIN_LENGTH = 5


@pytest.fixture(autouse=True)
def no_project_dotenv(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A developer's `.env` must not decide what these tests see."""
    monkeypatch.setattr(devstack, "PROJECT_ROOT", tmp_path)
    monkeypatch.chdir(tmp_path)


async def run(database_url: str, *args: str) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of `apgms <args>` (in a thread: the command runs its own event loop)."""
    environment = {"DATABASE_URL": database_url, "APGMS_ENV": "test"}
    result = await asyncio.to_thread(CliRunner().invoke, app, list(args), env=environment)
    return result.exit_code, result.stdout, result.stderr


async def write_chain(database_url: str, length: int = CHAIN_LENGTH) -> None:
    connection = await asyncpg.connect(database_url)
    try:
        for index in range(length):
            async with connection.transaction():
                await append(
                    connection, org_id=ORG, actor="system", action="bas.lodge", target=f"bas:{index}", detail={}
                )
    finally:
        await connection.close()


async def test_an_intact_chain_verifies_with_exit_0(database_url: str) -> None:
    await write_chain(database_url)
    code, out, err = await run(database_url, "audit", "verify", "--org", str(ORG))
    assert code == 0, err
    assert f"{CHAIN_LENGTH} record(s) checked: the audit chain of org {ORG} is intact." in out


async def test_a_tampered_chain_fails_with_exit_1_naming_the_record(database_url: str) -> None:
    await write_chain(database_url)
    connection = await asyncpg.connect(database_url)
    try:
        async with connection.transaction():
            await connection.execute("SET LOCAL session_replication_role = replica")
            await connection.execute("UPDATE audit.records SET target = 'bas:forged' WHERE seq = 3")
    finally:
        await connection.close()
    code, out, err = await run(database_url, "audit", "verify", "--org", str(ORG))
    assert code == 1
    assert "intact" not in out
    assert f"audit chain of org {ORG} is broken at record 3: row 3 was edited (2 record(s) before it check out)" in (
        " ".join(err.split())
    )


async def test_an_org_without_records_has_an_empty_intact_chain(database_url: str) -> None:
    code, out, err = await run(database_url, "audit", "verify", "--org", str(uuid.uuid4()))
    assert code == 0, err
    assert "0 record(s) checked" in out


@pytest.mark.parametrize("org", ["not-a-uuid", "7d7a6b0e-5c1f-4a39-9a57"])
async def test_a_malformed_org_id_is_a_usage_error(database_url: str, org: str) -> None:
    code, out, err = await run(database_url, "audit", "verify", "--org", org)
    assert code == 2
    assert "--org" in err
    assert "Traceback" not in out + err


async def test_an_unreachable_database_is_one_clean_error(database_url: str) -> None:
    unreachable = "postgresql://nobody@127.0.0.1:1/apgms"
    code, out, err = await run(unreachable, "audit", "verify", "--org", str(ORG))
    assert code == 1
    assert err.startswith("error: cannot use the database at postgresql://nobody@127.0.0.1:1/apgms")
    assert "Traceback" not in out + err


async def test_a_long_chain_in_a_terminal_shows_progress_on_stderr(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from apgms import audit_cli

    terminal = io.StringIO()
    monkeypatch.setattr(audit_cli, "error_console", Console(file=terminal, force_terminal=True, width=80))
    monkeypatch.setattr(audit_cli, "PROGRESS_FROM_RECORDS", CHAIN_LENGTH - 1)
    await write_chain(database_url)
    result = await audit_cli.verify_chain(database_url, ORG)
    assert (result.checked, result.broken) == (CHAIN_LENGTH, None)
    assert "Checking records" in terminal.getvalue()
    assert f"{CHAIN_LENGTH}/{CHAIN_LENGTH}" in terminal.getvalue()
