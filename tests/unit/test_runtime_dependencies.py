"""Everything the shipped code imports is a runtime dependency: the image installs `.` without the dev extras."""

from __future__ import annotations

import ast
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ("shared", "proxy", "services", "apgms")
OURS = frozenset(SHIPPED)


def imported_modules(path: Path) -> set[str]:
    modules: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            modules.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules.add(node.module.split(".")[0])
    return modules


def runtime_distributions() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {Requirement(spec).name.lower().replace("_", "-") for spec in project["dependencies"]}


@pytest.mark.parametrize("package", SHIPPED)
def test_every_third_party_import_of_shipped_code_is_a_runtime_dependency(package: str) -> None:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, package
    distributions = packages_distributions()
    declared = runtime_distributions()
    missing = {}
    for path in files:
        for module in imported_modules(path) - OURS - set(sys.stdlib_module_names) - {"__future__"}:
            owners = {name.lower().replace("_", "-") for name in distributions.get(module, [module])}
            if not owners & declared:
                missing[module] = str(path.relative_to(ROOT))
    assert not missing, f"imported but not in [project].dependencies: {missing}"
