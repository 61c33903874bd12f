"""Migration auth/0004 on rows written before it: every user gets the email key the login now looks up by, and
addresses the rule refuses can no longer log in (issue #9, findings 4 and 8)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest_asyncio

from apgms.devservers import create_database, drop_database
from services.auth import store
from shared.migrations import migrations_folder

AUTH_MIGRATIONS = migrations_folder("auth")
# Accepted before 0004; PostgreSQL's lower() made the first `auditor@example.com` on a UTF-8 database.
DOTTED_I = "aud\u0130tor@example.com"
FULLWIDTH = "\uff46\uff55\uff4c\uff4c@example.com"


@pytest_asyncio.fixture
async def before_0004(postgres_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """A database with the auth schema as 0001 and 0002 left it."""
    name = f"m4_{uuid.uuid4().hex[:12]}"
    connection = await asyncpg.connect(await create_database(postgres_dsn, name))
    try:
        for path in sorted(AUTH_MIGRATIONS.glob("000[12]_*.sql")):
            await connection.execute(path.read_text())
        yield connection
    finally:
        await connection.close()
        await drop_database(postgres_dsn, name)


async def test_existing_users_get_their_keys_and_refused_addresses_an_unusable_one(
    before_0004: asyncpg.Connection,
) -> None:
    conn = before_0004
    org = uuid.uuid4()
    await conn.execute("INSERT INTO auth.orgs (id, name) VALUES ($1, 'Old Org')", org)
    rows = {
        "Jessie.Auditor@Example.com": uuid.uuid4(),
        DOTTED_I: uuid.uuid4(),
        FULLWIDTH: uuid.uuid4(),
    }
    for email, user_id in rows.items():
        await conn.execute(
            "INSERT INTO auth.users (id, org_id, email, password_hash, role) VALUES ($1, $2, $3, 'x', 'auditor')",
            user_id,
            org,
            email,
        )

    await conn.execute((AUTH_MIGRATIONS / "0004_email_keys_and_totp_replacement.sql").read_text())

    keys = {row["email"]: row["email_key"] for row in await conn.fetch("SELECT email, email_key FROM auth.users")}
    assert keys["Jessie.Auditor@Example.com"] == "jessie.auditor@example.com"
    assert keys[DOTTED_I] == f"unusable:{rows[DOTTED_I]}"
    assert keys[FULLWIDTH] == f"unusable:{rows[FULLWIDTH]}"

    [found] = await store.users_by_email(conn, " JESSIE.auditor@example.com")
    assert found.id == rows["Jessie.Auditor@Example.com"]
    assert await store.users_by_email(conn, "auditor@example.com") == []
    assert await store.users_by_email(conn, "full@example.com") == []
    # The address can be created again in its proper form, in the same org.
    again = await store.create_user(conn, org, "full@example.com", "x", "auditor")
    assert again is not None and again.email_key == "full@example.com"
    assert await store.create_user(conn, org, "JESSIE.AUDITOR@example.com", "x", "auditor") is None
