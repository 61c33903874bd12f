"""After a plain `make run`, the `apgms` commands use its project-local database (and the checkout's master key)
without DATABASE_URL; when it is not running they say how to get one, in one line."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import asyncpg

from apgms.devservers import LocalPostgres
from apgms.devstack import MASTER_KEY_FILE
from services.auth import store
from shared.migrations import migrate

COMMAND_TIMEOUT_S = 60


def apgms(dev_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`apgms <args>` as a user runs it in another terminal: no DATABASE_URL, no APGMS_MASTER_KEY (set empty, so a
    developer's `.env` cannot supply them either), `make run`'s data in `dev_dir`."""
    env = {**os.environ, "DATABASE_URL": "", "APGMS_MASTER_KEY": "", "APGMS_DEV_DIR": str(dev_dir)}
    env.pop("APGMS_ENV", None)
    return subprocess.run(
        [sys.executable, "-m", "apgms", *args],
        env=env,
        cwd=dev_dir.parent,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
        check=False,
    )


async def prepare(dsn: str) -> uuid.UUID:
    """What `make run` does before serving (migrations), and an org to add a client to."""
    await migrate(dsn)
    connection = await asyncpg.connect(dsn)
    try:
        return await store.create_org(connection, "Dev Org")
    finally:
        await connection.close()


async def client_names(dsn: str) -> list[str]:
    connection = await asyncpg.connect(dsn)
    try:
        return [row["name"] for row in await connection.fetch("SELECT name FROM auth.oauth_clients")]
    finally:
        await connection.close()


def test_commands_use_make_runs_database_and_say_how_to_start_it_when_it_is_not_running(server_dir: Path) -> None:
    dev_dir = server_dir / ".devdb"
    with LocalPostgres(dev_dir / "pg") as postgres:  # as `make run` starts it
        org_id = asyncio.run(prepare(postgres.dsn))

        added = apgms(dev_dir, "clients", "add", "--org", str(org_id), "--name", "dev sync", "--scope", "users:read")
        assert added.returncode == 0, added.stderr
        assert re.search(r"client_id\s+│\s+\S+", added.stdout), added.stdout
        assert added.stderr.strip() == f"Using make run's database at {postgres.dsn} (DATABASE_URL is not set)"
        assert asyncio.run(client_names(postgres.dsn)) == ["dev sync"]

        status = apgms(dev_dir, "db", "status")
        assert status.returncode == 0, status.stderr
        assert "Database schema is up to date." in status.stdout

        # Sealing commands take the checkout's key, as `make run` does: a second seed opens what the first sealed.
        first, second = apgms(dev_dir, "seed"), apgms(dev_dir, "seed")
        assert (first.returncode, second.returncode) == (0, 0), first.stderr + second.stderr
        secrets = [re.search(r"Admin TOTP: secret (\S+)", run.stdout) for run in (first, second)]
        assert secrets[0] and secrets[1] and secrets[0].group(1) == secrets[1].group(1), second.stdout
        assert (dev_dir / MASTER_KEY_FILE).exists()

    stopped = apgms(dev_dir, "clients", "add", "--org", str(org_id), "--name", "late", "--scope", "users:read")
    assert stopped.returncode == 1
    assert stopped.stdout == ""
    assert stopped.stderr.splitlines() == [
        f"error: DATABASE_URL is not set and make run's PostgreSQL ({dev_dir / 'pg'}) is not running: start it "
        "with `make run` (in another terminal), or set DATABASE_URL to a PostgreSQL URL, "
        "e.g. postgresql://user@127.0.0.1:5432/apgms"
    ]
