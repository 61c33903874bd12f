"""The throwaway / dev PostgreSQL and Redis servers, and the database fixtures built on them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio

from apgms.devservers import DevServerError, LocalPostgres, process_matches, read_pid_file
from apgms.localredis import LocalRedis, redis_ping
from shared.migrations import discover


async def fetchval(dsn: str, sql: str) -> object:
    connection = await asyncpg.connect(dsn)
    try:
        return await connection.fetchval(sql)
    finally:
        await connection.close()


async def test_postgres_keeps_its_data_across_a_restart(server_dir: Path) -> None:
    data_dir = server_dir / "pg"
    first = LocalPostgres(data_dir)
    with first:
        assert first.dsn == f"postgresql://postgres@127.0.0.1:{first.port}/postgres"
        assert await fetchval(first.dsn, "SHOW listen_addresses") == "127.0.0.1"
        assert await fetchval(first.dsn, "SHOW fsync") == "off"
        await fetchval(first.dsn, "CREATE TABLE kept AS SELECT 42 AS answer")
        postmaster_pid = read_pid_file(data_dir / "postmaster.pid")
        assert postmaster_pid is not None
    assert not (data_dir / "postmaster.pid").exists(), "a clean stop removes the pid file"
    assert not process_matches(postmaster_pid, "postgres")

    version_stamp = (data_dir / "PG_VERSION").stat().st_mtime_ns
    with LocalPostgres(data_dir) as second:
        assert await fetchval(second.dsn, "SELECT answer FROM kept") == 42
    assert (data_dir / "PG_VERSION").stat().st_mtime_ns == version_stamp, "initdb ran only once"


async def test_postgres_runs_utf8_with_unicode_case_rules_like_production(server_dir: Path) -> None:
    # compose's postgres:15 is UTF-8 under en_US.utf8; under the "C" locale lower() left `İ` alone and the suite
    # could not see the lockout bypass of issue #9 finding 4.
    with LocalPostgres(server_dir / "pg") as server:
        assert await fetchval(server.dsn, "SHOW server_encoding") == "UTF8"
        assert str(await fetchval(server.dsn, "SHOW lc_ctype")).lower().replace("-", "").endswith(".utf8")
        assert await fetchval(server.dsn, "SELECT lower('audİtor')") == "auditor"


async def test_postgres_creates_and_drops_databases_from_a_template(server_dir: Path) -> None:
    with LocalPostgres(server_dir / "pg") as server:
        template_dsn = await server.create_database('tpl "quoted"')
        await fetchval(template_dsn, "CREATE TABLE seeded AS SELECT 'x' AS v")
        copy_dsn = await server.create_database("copy", template='tpl "quoted"')
        assert copy_dsn == f"postgresql://postgres@127.0.0.1:{server.port}/copy"
        assert await fetchval(copy_dsn, "SELECT v FROM seeded") == "x"

        holder = await asyncpg.connect(copy_dsn)
        try:
            await server.drop_database("copy")  # FORCE: an open session does not block the drop
        finally:
            await holder.close()
        assert await fetchval(server.dsn, "SELECT count(*) FROM pg_database WHERE datname = 'copy'") == 0


async def test_a_postmaster_left_running_by_a_killed_supervisor_is_stopped_first(server_dir: Path) -> None:
    data_dir = server_dir / "pg"
    orphan = LocalPostgres(data_dir)
    orphan.start()
    orphan_pid = read_pid_file(data_dir / "postmaster.pid")

    with LocalPostgres(data_dir) as fresh:
        assert read_pid_file(data_dir / "postmaster.pid") != orphan_pid
        assert await fetchval(fresh.dsn, "SELECT 1") == 1
        with pytest.raises(OSError):
            await asyncpg.connect(orphan.dsn, timeout=2)


async def test_a_stale_pid_file_of_a_dead_postmaster_is_cleaned(server_dir: Path) -> None:
    data_dir = server_dir / "pg"
    with LocalPostgres(data_dir):
        pass
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (data_dir / "postmaster.pid").write_text(f"{dead.stdout.strip()}\n{data_dir}\n")

    with LocalPostgres(data_dir) as server:
        assert await fetchval(server.dsn, "SELECT 1") == 1


@pytest.mark.skipif(os.geteuid() != 0, reason="only root hands the data directory to the postgres user")
def test_postgres_refuses_a_data_dir_the_postgres_user_cannot_reach(server_dir: Path) -> None:
    private = server_dir / "private"
    private.mkdir(mode=0o700)
    with pytest.raises(DevServerError, match=r"cannot enter .*private.*chmod o\+x"):
        LocalPostgres(private / "pg").start()


async def test_redis_answers_ping_and_stops_on_sigterm(server_dir: Path) -> None:
    server = LocalRedis(server_dir)
    with server:
        assert server.url == f"redis://127.0.0.1:{server.port}/0"
        client = redis.asyncio.Redis.from_url(server.url)
        try:
            assert await client.ping() is True
            await client.set("k", "v")
            assert await client.get("k") == b"v"
            assert await client.config_get("save") == {"save": ""}
        finally:
            await client.aclose()
        port = server.port
    assert not redis_ping(port)


def test_redis_left_running_by_a_killed_supervisor_is_stopped_first(server_dir: Path) -> None:
    orphan = LocalRedis(server_dir)
    orphan.start()
    orphan_port, orphan_pid = orphan.port, orphan.pid
    assert orphan_pid is not None
    try:
        with LocalRedis(server_dir) as fresh:
            assert redis_ping(fresh.port)
            assert not redis_ping(orphan_port)
    finally:
        orphan.stop()
    assert not process_matches(orphan_pid, "redis-server")


async def test_database_url_is_a_fresh_copy_of_the_migrated_template(
    database_url: str, postgres_dsn: str, migrated_template: str
) -> None:
    applied = await fetchval(database_url, "SELECT count(*) FROM apgms_meta.schema_migrations")
    assert applied == len(discover())
    database = await fetchval(database_url, "SELECT current_database()")
    assert isinstance(database, str) and database.startswith("t_")

    await fetchval(database_url, "CREATE TABLE only_here (id int)")
    template_dsn = database_url.rsplit("/", 1)[0] + f"/{migrated_template}"
    assert await fetchval(template_dsn, "SELECT to_regclass('only_here')") is None


async def test_each_test_gets_its_own_database(database_url: str, postgres_dsn: str) -> None:
    assert await fetchval(database_url, "SELECT to_regclass('only_here')") is None
    assert await fetchval(postgres_dsn, "SELECT count(*) FROM pg_database WHERE datname LIKE 't\\_%'") == 1
