"""SPEC section 1: the services never import each other and share only `shared/`; the proxy and `shared/` import
no service. What two services must agree on is in `shared/contracts/`. Checked on the source's import statements
(ast), so an import inside a function counts as much as one at the top."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVICES = sorted(path.name for path in (ROOT / "services").iterdir() if (path / "__init__.py").is_file())


def imported_modules(path: Path) -> Iterator[str]:
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module is not None:
            yield node.module


def forbidden_imports(package: Path, forbidden: tuple[str, ...]) -> list[str]:
    found = []
    for path in sorted(package.rglob("*.py")):
        for module in imported_modules(path):
            if any(module == prefix or module.startswith(f"{prefix}.") for prefix in forbidden):
                found.append(f"{path} imports {module}")
    return found


def test_there_are_services_to_check() -> None:
    assert SERVICES == ["auth", "compliance", "core", "regulator"]


@pytest.mark.parametrize("service", SERVICES)
def test_a_service_imports_no_other_service(service: str) -> None:
    others = tuple(f"services.{other}" for other in SERVICES if other != service)
    assert forbidden_imports(ROOT / "services" / service, others) == []


@pytest.mark.parametrize("package", ["shared", "proxy"])
def test_shared_code_and_the_proxy_import_no_service(package: str) -> None:
    assert forbidden_imports(ROOT / package, ("services", "apgms", "bench", "tests")) == []


def test_the_check_sees_a_cross_service_import(tmp_path: Path) -> None:
    package = tmp_path / "regulator"
    package.mkdir()
    (package / "reads.py").write_text("def f():\n    from services.core.alerts import alert_view\n")
    (package / "ok.py").write_text("from shared.contracts.core import AlertPage\nimport services.regulator.app\n")
    found = forbidden_imports(package, ("services.core",))
    assert [line.split(" imports ")[1] for line in found] == ["services.core.alerts"]
