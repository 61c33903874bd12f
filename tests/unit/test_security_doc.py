"""docs/security.md's threat table names the test that proves each defence: each must exist, so the table cannot
point at a test that was renamed or deleted."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = re.compile(r"`(tests/[\w/]+\.py)?::(\w+)`")


def referenced_tests() -> list[tuple[str, str]]:
    """(file, test name) for every `tests/x.py::name` in the doc; `::name` means the file named before it."""
    found: list[tuple[str, str]] = []
    for line in (ROOT / "docs" / "security.md").read_text().splitlines():
        current = ""
        for match in REFERENCE.finditer(line):
            current = match.group(1) or current
            assert current, f"{match.group(0)} names no file: {line[:80]}"
            found.append((current, match.group(2)))
    return found


def test_the_threat_table_names_tests_that_exist() -> None:
    references = referenced_tests()
    assert len(references) >= 40
    missing = [
        f"{path}::{name}"
        for path, name in references
        if not re.search(rf"^(async )?def {name}\(", (ROOT / path).read_text(), re.MULTILINE)
    ]
    assert not missing, missing


def test_every_finding_of_the_review_has_a_row() -> None:
    rows = {int(m) for m in re.findall(r"^\| (\d+) \|", (ROOT / "docs" / "security.md").read_text(), re.MULTILINE)}
    assert rows == set(range(1, 15))
