"""`apgms seed --bank-lines N --orgs M` through the real CLI entry point against a real database: the counts, the
ciphertext (opened by `PiiCipher` for its own org only), one audit record per org and run on an intact chain, a
second run that adds nothing, `--add` that does, the progress bar, and production's refusal."""

from __future__ import annotations

import io
import os
import uuid
from datetime import date

import asyncpg
import pytest
from cli_support import run_cli
from rich.console import Console

from apgms import cli
from apgms.bank_line_seed import LineGenerator
from apgms.seed import DEFAULT_RANDOM_SEED, DEMO_ORG_NAME, SEED_ACTION, SeedOrgRef, seed_org_id, seed_org_lines
from services.core.store import BANK_LINES_TABLE
from shared.audit import verify_org
from shared.kek import kek_provider_from_env, new_kek
from shared.pii import CiphertextInvalid, PiiCipher

LINES = 5_000
ORGS = 3
KEK = new_kek()

pytestmark = pytest.mark.usefixtures("no_project_dotenv")


async def run(database_url: str, *args: str, **env: str | None) -> tuple[int, str, str]:
    """`apgms <args>` with this module's KEK (the one the tests open the rows with)."""
    return await run_cli(database_url, *args, **{"APGMS_KEK": KEK, "APGMS_KEK_FILE": None, **env})


async def org_ids(conn: asyncpg.Connection) -> list[uuid.UUID]:
    demo = await conn.fetchval("SELECT id FROM auth.orgs WHERE name = $1", DEMO_ORG_NAME)
    return [demo, *(seed_org_id(number) for number in range(1, ORGS))]


async def counts(conn: asyncpg.Connection) -> dict[uuid.UUID, int]:
    rows = await conn.fetch("SELECT org_id, count(*) FROM core.bank_lines GROUP BY org_id")
    return {row["org_id"]: row["count"] for row in rows}


async def seed_records(conn: asyncpg.Connection, org_id: uuid.UUID) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT actor, target, detail::text AS detail FROM audit.records WHERE org_id = $1 AND action = $2 "
        "ORDER BY seq",
        org_id,
        SEED_ACTION,
    )


async def test_seeding_writes_sealed_lines_and_one_audit_record_per_org_once(
    database_url: str, conn: asyncpg.Connection
) -> None:
    code, out, err = await run(database_url, "seed", "--bank-lines", str(LINES), "--orgs", str(ORGS))
    assert (code, err) == (0, ""), out
    assert f"Seeded {LINES * ORGS:,} bank line(s) in {ORGS} org(s)" in out
    orgs = await org_ids(conn)
    names = {row["id"]: row["name"] for row in await conn.fetch("SELECT id, name FROM auth.orgs")}
    assert names == {orgs[0]: DEMO_ORG_NAME, orgs[1]: "Seed Org 1", orgs[2]: "Seed Org 2"}
    assert await counts(conn) == dict.fromkeys(orgs, LINES)
    for org_id in orgs:
        assert [tuple(record) for record in await seed_records(conn, org_id)] == [
            ("system", f"org:{org_id}", f'{{"count": {LINES}, "random_seed": {DEFAULT_RANDOM_SEED}}}')
        ]
        # The demo org's chain also holds the demo seed's whitelisting of its deposit source.
        chain_length = await conn.fetchval("SELECT count(*) FROM audit.records WHERE org_id = $1", org_id)
        result = await verify_org(conn, org_id)
        assert (result.checked, result.broken) == (chain_length, None)

    code, again, err = await run(database_url, "seed", "--bank-lines", str(LINES), "--orgs", str(ORGS))
    assert (code, err) == (0, ""), again
    assert "Seeded 0 bank line(s)" in again
    assert await counts(conn) == dict.fromkeys(orgs, LINES), "a second run adds nothing"
    assert [len(await seed_records(conn, org_id)) for org_id in orgs] == [1] * ORGS

    code, added, err = await run(database_url, "seed", "--bank-lines", "100", "--orgs", str(ORGS), "--add")
    assert (code, err) == (0, ""), added
    assert await counts(conn) == dict.fromkeys(orgs, LINES + 100), "--add writes the lines again"
    for org_id in orgs:
        assert len(await seed_records(conn, org_id)) == 2
        assert (await verify_org(conn, org_id)).broken is None
    assert await conn.fetchval("SELECT count(DISTINCT id) FROM core.bank_lines") == ORGS * (LINES + 100)


async def test_payee_and_description_are_ciphertext_the_orgs_cipher_opens(
    database_url: str, conn: asyncpg.Connection
) -> None:
    code, out, _ = await run(database_url, "seed", "--bank-lines", "200", "--orgs", "2")
    assert code == 0, out
    demo, other = (await org_ids(conn))[:2]
    rows = await conn.fetch(
        "SELECT id, amount, payee, description, created_by FROM core.bank_lines WHERE org_id = $1 ORDER BY id", demo
    )
    expected = LineGenerator(DEFAULT_RANDOM_SEED, demo, 0, date.today()).batch(200)
    by_id = dict(zip(expected.ids, zip(expected.amounts, expected.payees, strict=True), strict=True))
    row_ids = [str(row["id"]) for row in rows]
    async with asyncpg.create_pool(database_url, min_size=1, max_size=1) as pool:
        cipher = PiiCipher(pool, kek_provider_from_env({"APGMS_KEK": KEK}))
        payees = await cipher.decrypt_many(
            demo, BANK_LINES_TABLE, "payee", [row["payee"] for row in rows], row_ids=row_ids
        )
        descriptions = await cipher.decrypt_many(
            demo, BANK_LINES_TABLE, "description", [row["description"] for row in rows], row_ids=row_ids
        )
        with pytest.raises(CiphertextInvalid):
            await cipher.decrypt(other, BANK_LINES_TABLE, "payee", rows[0]["payee"], row_id=row_ids[0])
        with pytest.raises(CiphertextInvalid):
            await cipher.decrypt(demo, BANK_LINES_TABLE, "payee", rows[0]["payee"], row_id=row_ids[1])
    for row, payee, description in zip(rows, payees, descriptions, strict=True):
        assert payee.encode() not in row["payee"] and description.encode() not in row["description"]
        assert by_id[row["id"]] == (row["amount"], payee), "the generator's line, opened"
        assert description and row["created_by"] == "system"


async def test_a_terminal_shows_a_progress_bar_with_the_rate(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    terminal = io.StringIO()
    monkeypatch.setattr(cli, "error_console", Console(file=terminal, force_terminal=True, width=100))
    code, out, _ = await run(database_url, "seed", "--bank-lines", "300")
    assert code == 0, out
    shown = terminal.getvalue()
    assert DEMO_ORG_NAME in shown and "300/300" in shown and "rows/s" in shown


async def test_production_refuses_before_writing_anything(database_url: str, conn: asyncpg.Connection) -> None:
    code, out, err = await run(
        database_url,
        "seed",
        "--bank-lines",
        "10",
        APGMS_ENV="production",
        APGMS_DEMO_PASSWORD="a-long-production-password",
        APGMS_MASTER_KEY=os.environ["APGMS_MASTER_KEY"],
    )
    assert code == 1, out
    assert "refused when APGMS_ENV=production" in err
    assert await conn.fetchval("SELECT count(*) FROM auth.orgs") == 0
    assert await conn.fetchval("SELECT count(*) FROM core.bank_lines") == 0


async def test_bad_counts_are_usage_errors(database_url: str) -> None:
    for args in (("--bank-lines", "-1"), ("--bank-lines", "abc"), ("--orgs", "0"), ("--bank-lines", "10000001")):
        code, _, err = await run(database_url, "seed", *args)
        assert code == 2, (args, err)


async def test_an_orgs_lines_are_all_written_or_none(database_url: str, conn: asyncpg.Connection) -> None:
    """Batches are COPYs in one transaction with the audit record: a failure in the fourth leaves nothing."""
    org = SeedOrgRef(uuid.uuid4(), "Failing Org")
    await conn.execute(
        "CREATE SEQUENCE test_rows; CREATE FUNCTION test_fail() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        "IF nextval('test_rows') > 3500 THEN RAISE EXCEPTION 'injected at row 3501'; END IF; RETURN NEW; END $$; "
        "CREATE TRIGGER test_fail BEFORE INSERT ON core.bank_lines FOR EACH ROW EXECUTE FUNCTION test_fail()"
    )
    seen: list[int] = []
    async with asyncpg.create_pool(database_url, min_size=1, max_size=1) as pool:
        cipher = PiiCipher(pool, kek_provider_from_env({"APGMS_KEK": KEK}))
        with pytest.raises(asyncpg.RaiseError, match="injected at row 3501"):
            await seed_org_lines(
                conn, cipher, org, 5_000, batch_rows=1_000, progress=lambda _, written, total: seen.append(written)
            )
        assert seen == [0, 1_000, 2_000, 3_000]
        assert await conn.fetchval("SELECT count(*) FROM core.bank_lines") == 0
        assert await conn.fetchval("SELECT count(*) FROM audit.records") == 0

        await conn.execute("DROP TRIGGER test_fail ON core.bank_lines")
        seen.clear()
        result = await seed_org_lines(
            conn, cipher, org, 5_000, batch_rows=1_000, progress=lambda _, written, total: seen.append(written)
        )
    assert (result.existing, result.added) == (0, 5_000)
    assert seen == [0, 1_000, 2_000, 3_000, 4_000, 5_000]
    assert await counts(conn) == {org.org_id: 5_000}
