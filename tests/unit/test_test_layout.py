"""The suite's own layout: pytest imports test modules by basename (rootdir-relative packages are not used), so two
test files with one name in different folders stop the whole collection."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent


def test_every_test_module_has_a_name_of_its_own() -> None:
    names = Counter(path.name for path in TESTS.rglob("test_*.py"))
    assert len(names) > 50
    assert [name for name, count in names.items() if count > 1] == []
