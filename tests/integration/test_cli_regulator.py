"""`apgms regulator add / list / revoke` against a real database: the printed code is the one the row's hash
accepts, the listing shows it, revocation ends its sessions, every change is audited in each org's chain."""

from __future__ import annotations

import asyncio
import re
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
from typer.testing import CliRunner

from apgms import devstack
from apgms.cli import app
from apgms.regulator_demo import DEMO_CREDENTIAL_NAME, DemoRegulatorRefused, ensure_demo_credential
from services.regulator import codes, store
from shared.passwords import token_hash, verify_secret

ORG_A = uuid.UUID("0b4f7c3e-1d2a-4e5f-8a9b-0c1d2e3f4a5b")
ORG_B = uuid.UUID("9e8d7c6b-5a49-4837-a625-1b0c9d8e7f6a")


@pytest.fixture(autouse=True)
def no_project_dotenv(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A developer's `.env` must not decide what these tests see."""
    monkeypatch.setattr(devstack, "PROJECT_ROOT", tmp_path)
    monkeypatch.chdir(tmp_path)


async def run(database_url: str, *args: str) -> tuple[int, str, str]:
    environment = {"DATABASE_URL": database_url, "APGMS_ENV": "test"}
    result = await asyncio.to_thread(CliRunner().invoke, app, list(args), env=environment)
    return result.exit_code, result.stdout, result.stderr


async def create_orgs(database_url: str, *org_ids: uuid.UUID) -> None:
    """The orgs in auth.orgs, as auth makes them (`apgms regulator add` refuses an org that is not there)."""
    connection = await asyncpg.connect(database_url)
    try:
        for org_id in org_ids:
            await connection.execute("INSERT INTO auth.orgs (id, name) VALUES ($1, $2)", org_id, f"Org {org_id}")
    finally:
        await connection.close()


async def test_add_list_revoke(database_url: str) -> None:
    await create_orgs(database_url, ORG_A, ORG_B)
    status, out, err = await run(
        database_url, "regulator", "add", "asic-1", "--orgs", f"{ORG_A},{ORG_B}", "--expires", "30d"
    )
    assert status == 0, err
    found = re.search(r"rgc\.[0-9a-f]{16}\.[A-Za-z0-9_-]{43}", out)
    assert found is not None, out
    code = found.group(0)
    assert "/regulator/login" in out and str(ORG_A) in out

    connection = await asyncpg.connect(database_url)
    try:
        credential = await store.credential_by_name(connection, "asic-1")
        assert credential is not None and set(credential.org_ids) == {ORG_A, ORG_B}
        assert verify_secret(credential.code_hash, code), "the printed code is the one the row's hash accepts"
        assert code not in credential.code_hash
        assert timedelta(days=29) < credential.expires_at - datetime.now(UTC) <= timedelta(days=30)
        # A live session on it (as login would open), to see revocation end it.
        async with connection.transaction():
            await store.insert_session(
                connection,
                credential=credential,
                org_id=ORG_A,
                token_hash=token_hash("rgs_test"),
                expires_at=datetime.now(UTC) + timedelta(hours=1),
            )

        status, out, err = await run(database_url, "regulator", "add", "asic-1", "--orgs", str(ORG_A))
        assert status == 1 and "exists already" in err

        status, out, err = await run(database_url, "regulator", "list")
        assert status == 0, err
        row = next(line for line in out.splitlines() if "asic-1" in line)
        assert str(ORG_A) in out and str(ORG_B) in out and row.rstrip(" │|").endswith("1")

        status, out, err = await run(database_url, "regulator", "revoke", "asic-1")
        assert status == 0, err
        assert "1 live session(s) ended" in out
        assert await store.live_session(connection, token_hash("rgs_test")) is None
        status, out, _ = await run(database_url, "regulator", "revoke", "asic-1")
        assert status == 0 and "already revoked" in out
        # The name stays taken after revocation, and the refusal says so (no "revoke it" circle).
        status, out, err = await run(database_url, "regulator", "add", "asic-1", "--orgs", str(ORG_A))
        assert status == 1 and "exists already" in err and "never reused" in err and "revoke it" not in err

        for org in (ORG_A, ORG_B):
            actions = await connection.fetch(
                "SELECT actor, action FROM audit.records WHERE org_id = $1 ORDER BY seq", org
            )
            assert [(r["actor"], r["action"]) for r in actions] == [
                ("system", "regulator.credential.create"),
                ("system", "regulator.credential.revoke"),
            ], org
    finally:
        await connection.close()


@pytest.mark.parametrize(
    "args",
    [
        ["add", "has space", "--orgs", str(ORG_A)],
        ["add", "ok", "--orgs", "not-a-uuid"],
        ["add", "ok", "--orgs", ","],
        ["add", "ok", "--orgs", str(ORG_A), "--expires", "90"],
        ["add", "ok", "--orgs", str(ORG_A), "--expires", "999d"],
    ],
)
async def test_bad_arguments_are_usage_errors_and_write_nothing(database_url: str, args: list[str]) -> None:
    status, _, err = await run(database_url, "regulator", *args)
    assert status == 2, err
    connection = await asyncpg.connect(database_url)
    try:
        assert await connection.fetchval("SELECT count(*) FROM regulator.credentials") == 0
    finally:
        await connection.close()


async def test_add_refuses_an_org_that_does_not_exist_and_writes_nothing(database_url: str) -> None:
    await create_orgs(database_url, ORG_A)
    ghost = uuid.uuid4()
    status, out, err = await run(database_url, "regulator", "add", "ghost-org", "--orgs", f"{ORG_A},{ghost}")
    assert status == 1, out
    assert f"unknown org {ghost}" in err and str(ORG_A) not in err
    assert "rgc." not in out  # no access code printed
    connection = await asyncpg.connect(database_url)
    try:
        assert await connection.fetchval("SELECT count(*) FROM regulator.credentials") == 0
        assert await connection.fetchval("SELECT count(*) FROM audit.records") == 0
    finally:
        await connection.close()


async def test_revoking_an_unknown_name_fails(database_url: str) -> None:
    status, _, err = await run(database_url, "regulator", "revoke", "nobody")
    assert status == 1 and "no regulator credential named 'nobody'" in err
    assert codes.parse_lookup("x") is None


async def test_the_demo_credential_follows_the_master_key(database_url: str) -> None:
    org_id = uuid.uuid4()
    dev = {"APGMS_ENV": "dev"}
    connection = await asyncpg.connect(database_url)
    try:
        first = await ensure_demo_credential(connection, org_id, "key one", dev)
        assert first == await ensure_demo_credential(connection, org_id, "key one", dev), "printable on every run"
        row = await store.credential_by_name(connection, DEMO_CREDENTIAL_NAME)
        assert row is not None and verify_secret(row.code_hash, first) and row.org_ids == (org_id,)

        # Another master key: another code, and the old one no longer opens the row.
        second = await ensure_demo_credential(connection, org_id, "key two", dev)
        assert second != first
        row = await store.credential_by_name(connection, DEMO_CREDENTIAL_NAME)
        assert row is not None and verify_secret(row.code_hash, second) and not verify_secret(row.code_hash, first)
        assert codes.parse_lookup(second) == row.lookup

        # Revoked (by an admin, say): the next make run makes it usable again.
        await store.revoke(connection, row.id)
        assert await ensure_demo_credential(connection, org_id, "key two", dev) == second
        row = await store.credential_by_name(connection, DEMO_CREDENTIAL_NAME)
        assert row is not None and row.revoked_at is None

        actions = await connection.fetch("SELECT action FROM audit.records WHERE org_id = $1 ORDER BY seq", org_id)
        assert [r["action"] for r in actions] == [
            "regulator.credential.create",
            "regulator.credential.reissue",
            "regulator.credential.reissue",
        ]
        with pytest.raises(DemoRegulatorRefused):
            await ensure_demo_credential(connection, org_id, "key two", {"APGMS_ENV": "production"})
    finally:
        await connection.close()


async def test_the_demo_credential_never_takes_over_a_row_make_run_did_not_make(database_url: str) -> None:
    demo_org, other_org = uuid.uuid4(), uuid.uuid4()
    dev = {"APGMS_ENV": "dev"}
    connection = await asyncpg.connect(database_url)
    try:
        # An org admin's credential named demo-regulator, for their own org.
        code = codes.new_access_code()
        admin_made = await store.insert_credential(
            connection,
            name=DEMO_CREDENTIAL_NAME,
            lookup=code.lookup,
            code_hash=token_hash(code.text).hex(),
            org_ids=[other_org],
            created_by=f"user:{uuid.uuid4()}",
            expires_at=datetime.now(UTC) + timedelta(days=30),
        )
        assert admin_made is not None
        for attempt in range(2):  # and again after a revocation: the name stays theirs
            with pytest.raises(DemoRegulatorRefused) as refused:
                await ensure_demo_credential(connection, demo_org, "key one", dev)
            message = str(refused.value)
            assert "not by make run" in message and "Rename" in message and "revoke" in message, message
            row = await store.credential_by_name(connection, DEMO_CREDENTIAL_NAME)
            assert row is not None and row.org_ids == (other_org,) and row.lookup == code.lookup, "left alone"
            if attempt == 0:
                await store.revoke(connection, row.id)

        # A system-made row that also covers another org (an operator's, say) is refused too.
        await connection.execute(
            "UPDATE regulator.credentials SET name = 'renamed' WHERE name = $1", DEMO_CREDENTIAL_NAME
        )
        await ensure_demo_credential(connection, demo_org, "key one", dev)
        row = await store.credential_by_name(connection, DEMO_CREDENTIAL_NAME)
        assert row is not None
        await store.add_org(connection, row.id, other_org)
        await store.revoke(connection, row.id)
        with pytest.raises(DemoRegulatorRefused) as refused:
            await ensure_demo_credential(connection, demo_org, "key one", dev)
        assert "not the demo org alone" in str(refused.value)
        row = await store.credential_by_name(connection, DEMO_CREDENTIAL_NAME)
        assert row is not None and row.revoked_at is not None, "left revoked"
        assert await connection.fetchval("SELECT count(*) FROM audit.records WHERE org_id = $1", other_org) == 0
    finally:
        await connection.close()
