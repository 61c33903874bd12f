"""`apgms compliance evidence --tag ID` against the test database: each command runs in its own process and the
Markdown file holds the git commit (and that the tree was dirty), each command's exit code and output; a failing
command (pending migrations, an unreachable stack for the load smoke) is recorded and makes the exit code 1 while
the file is still written; an unsafe tag is a usage error and an existing file is kept unless --force."""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from cli_support import run_cli

from apgms.devservers import create_database, drop_database, free_port
from shared.audit import append
from shared.config import new_master_key

pytestmark = pytest.mark.usefixtures("no_project_dotenv")


@pytest.fixture
def empty_database(postgres_dsn: str) -> Iterator[str]:
    name = f"evidence_{uuid.uuid4().hex[:12]}"
    dsn = asyncio.run(create_database(postgres_dsn, name))
    yield dsn
    asyncio.run(drop_database(postgres_dsn, name))


def git(root: Path, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=True)
    return done.stdout.strip()


def section(report: str, title: str) -> str:
    """The text of the report's `## title` section."""
    start = report.index(f"\n## {title}\n")
    end = report.find("\n## ", start + 1)
    return report[start : end if end != -1 else len(report)]


async def test_evidence_captures_db_status_and_the_audit_chain_with_the_commit(
    database_url: str, tmp_path: Path
) -> None:
    git(tmp_path, "init", "-q")
    (tmp_path / "tracked.txt").write_text("one\n")
    git(tmp_path, "add", "tracked.txt")
    git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-q", "-m", "one")
    commit = git(tmp_path, "rev-parse", "HEAD")
    (tmp_path / "tracked.txt").write_text("two\n")
    org = uuid.uuid4()
    connection = await asyncpg.connect(database_url)
    try:
        for n in range(3):
            async with connection.transaction():
                await append(connection, org_id=org, actor="system", action="test.step", target=str(n), detail={})
    finally:
        await connection.close()
    key = new_master_key()

    args = ("compliance", "evidence", "--tag", "q4-2026", "--skip-tests", "--skip-load", "--org", str(org))
    code, out, err = await run_cli(database_url, *args, APGMS_MASTER_KEY=key)
    assert code == 0, (out, err)
    assert "[ok] every command that ran passed" in out
    path = tmp_path / "artifacts" / "compliance" / "q4-2026.md"
    report = path.read_text()
    assert report.startswith("# Compliance evidence: q4-2026\n")
    assert f"- Git commit: `{commit}`\n" in report
    assert "- Working tree dirty: yes (uncommitted changes to tracked files)\n" in report
    assert "- Result: 2 of 2 command(s) that ran passed, 2 skipped\n" in report
    assert "| Database migrations | `apgms db status` | passed | 0 |" in report
    assert "| Tests | `pytest -q` | skipped: --skip-tests | - | - |" in report
    assert (
        "| Load smoke | `apgms smoke load --base-url http://localhost:3000` | skipped: --skip-load | - | - |" in report
    )
    migrations = section(report, "Database migrations")
    assert "- Exit code: 0\n" in migrations and "```text\n" in migrations
    assert "Database schema is up to date." in migrations
    audit = section(report, f"Audit verification of {org}")
    assert "- Exit code: 0\n" in audit
    assert f"3 record(s) checked: the audit chain of org {org} is intact." in audit.replace("\n", " ")

    code, out, err = await run_cli(database_url, *args, APGMS_MASTER_KEY=key)
    assert code == 1 and "exists already" in err, (out, err)
    assert path.read_text() == report
    code, out, err = await run_cli(database_url, *args, "--force", APGMS_MASTER_KEY=key)
    assert code == 0, (out, err)
    assert path.read_text() != report and "q4-2026" in path.read_text()

    for unsafe in ("../x", "a b", "", ".x", "x;rm"):
        code, out, err = await run_cli(database_url, "compliance", "evidence", "--tag", unsafe, "--skip-tests")
        assert code == 2 and "is not a safe name" in err, (unsafe, out, err)
    assert sorted(p.name for p in (tmp_path / "artifacts" / "compliance").iterdir()) == ["q4-2026.md"]
    assert not (tmp_path / "artifacts" / "x.md").exists()


async def test_failed_commands_are_recorded_and_the_exit_code_is_1(empty_database: str, tmp_path: Path) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    code, out, err = await run_cli(
        empty_database, "compliance", "evidence", "--tag", "broken", "--skip-tests", "--base-url", nowhere
    )
    assert code == 1, (out, err)
    assert "[fail] Database migrations, Load smoke" in out
    report = (tmp_path / "artifacts" / "compliance" / "broken.md").read_text()
    assert "- Git commit: `unknown (not a git checkout, or git is missing)`\n" in report
    assert "- Result: 0 of 2 command(s) that ran passed, 2 skipped\n" in report
    migrations = section(report, "Database migrations")
    assert "- Result: failed (exit code 1)\n- Exit code: 1\n" in migrations
    assert "migration(s) pending; run `apgms db migrate`" in migrations
    load = section(report, "Load smoke")
    assert f"- Command: `apgms smoke load --base-url {nowhere}`\n" in load
    assert "- Exit code: 1\n" in load and f"[fail] cannot reach {nowhere}/health" in load
    assert "Traceback" not in load
    assert "| Audit verification | `apgms audit verify --org ID` | skipped: no --org | - | - |" in report
