"""`apgms incident new ID`: the page is the real template with id, title, severity and the UTC time filled in, its
row goes first in status/README.md's table (a `|` in the title escaped), and an existing or unsafe id, a bad
severity or title, or a README without the table's markers is refused with nothing written."""

from __future__ import annotations

import re
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cli_support import run_cli

pytestmark = pytest.mark.usefixtures("no_project_dotenv")

REPOSITORY_STATUS = Path(__file__).resolve().parents[2] / "status"
# The incident command touches no database; run_cli only needs a value to put in DATABASE_URL.
UNUSED_DSN = "postgresql://unused@127.0.0.1:1/unused"


@pytest.fixture
def status_dir(tmp_path: Path) -> Path:
    """A copy of the repository's status/ in the checkout the CLI sees (no_project_dotenv made it tmp_path)."""
    target = tmp_path / "status"
    shutil.copytree(REPOSITORY_STATUS, target)
    return target


def table_rows(readme: str) -> list[str]:
    lines = readme.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("<!-- incidents:start"))
    end = lines.index("<!-- incidents:end -->")
    return lines[start + 3 : end]


def snapshot(directory: Path) -> dict[str, str]:
    return {str(path.relative_to(directory)): path.read_text() for path in sorted(directory.rglob("*.md"))}


async def test_new_fills_the_template_and_adds_rows_newest_first(status_dir: Path) -> None:
    assert table_rows((status_dir / "README.md").read_text()) == []
    template = (status_dir / "incidents" / "_template.md").read_text()
    code, out, err = await run_cli(
        UNUSED_DSN, "incident", "new", "2026-11-28-db-outage", "--title", "Database | outage", "--severity", "sev2"
    )
    assert code == 0, (out, err)
    assert "2026-11-28-db-outage.md" in out
    page = (status_dir / "incidents" / "2026-11-28-db-outage.md").read_text()
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    opened = re.search(r"\| Started \(UTC\) \| (.+) \|", page)
    assert opened is not None and re.fullmatch(rf"{today} \d\d:\d\d UTC", opened.group(1)), page
    assert page.startswith("# 2026-11-28-db-outage: Database | outage\n")
    assert "| Severity | sev2 |" in page and "| Status | investigating |" in page
    assert f"| {opened.group(1)} | Incident opened with `apgms incident new 2026-11-28-db-outage`. |" in page
    assert "artifacts/compliance/2026-11-28-db-outage.md" in page
    assert "{{" not in page
    # The page is the template with its placeholders filled, nothing else changed.
    assert page == (
        template.replace("{{id}}", "2026-11-28-db-outage")
        .replace("{{title}}", "Database | outage")
        .replace("{{severity}}", "sev2")
        .replace("{{opened_utc}}", opened.group(1))
    )
    assert (status_dir / "incidents" / "_template.md").read_text() == template

    code, out, err = await run_cli(UNUSED_DSN, "incident", "new", "2026-11-29-auth-anomaly")
    assert code == 0, (out, err)
    second = (status_dir / "incidents" / "2026-11-29-auth-anomaly.md").read_text()
    assert second.startswith("# 2026-11-29-auth-anomaly: 2026-11-29-auth-anomaly\n") and "| Severity | sev3 |" in second
    rows = table_rows((status_dir / "README.md").read_text())
    assert len(rows) == 2
    assert rows[0].startswith(
        "| [2026-11-29-auth-anomaly](incidents/2026-11-29-auth-anomaly.md) | 2026-11-29-auth-anomaly | sev3 |"
    )
    assert rows[1] == (
        f"| [2026-11-28-db-outage](incidents/2026-11-28-db-outage.md) | Database \\| outage | sev2 | investigating "
        f"| {opened.group(1)} |"
    )


async def test_existing_unsafe_and_bad_input_are_refused_and_write_nothing(status_dir: Path) -> None:
    code, _, _ = await run_cli(UNUSED_DSN, "incident", "new", "2026-11-28-db-outage")
    assert code == 0
    before = snapshot(status_dir)

    code, out, err = await run_cli(UNUSED_DSN, "incident", "new", "2026-11-28-db-outage", "--title", "Again")
    assert code == 1
    assert "incident 2026-11-28-db-outage exists already" in err, (out, err)

    for unsafe in ("../x", "a b", ".hidden", "_template", "x/y", "", "é", "x" * 101):
        code, out, err = await run_cli(UNUSED_DSN, "incident", "new", unsafe)
        assert code == 2, (unsafe, out, err)
        assert "is not a safe name" in err, (unsafe, err)
    for args in (
        ("ok-id", "--severity", "sev5"),
        ("ok-id", "--title", "two\nlines"),
        ("ok-id", "--title", "x" * 201),
    ):
        code, out, err = await run_cli(UNUSED_DSN, "incident", "new", *args)
        assert code == 2, (args, out, err)
    assert snapshot(status_dir) == before
    assert not (status_dir.parent / "x.md").exists()

    readme = status_dir / "README.md"
    readme.write_text("# Status\n\nNo table here.\n")
    code, out, err = await run_cli(UNUSED_DSN, "incident", "new", "2026-12-01-no-table")
    assert code == 1 and "incidents table is not between" in err, (out, err)
    assert not (status_dir / "incidents" / "2026-12-01-no-table.md").exists()
    assert readme.read_text() == "# Status\n\nNo table here.\n"
