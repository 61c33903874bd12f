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


def imported_modules(path: Path, package: str) -> Iterator[str]:
    """Every module `path` (a module of the dotted `package`) may import: `import a.b`, `from a import b` (as `a`
    and `a.b`, since `b` may be a module), relative imports resolved against `package`, and the string constant given
    to `importlib.import_module` or `__import__`."""
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            yield module
            yield from (f"{module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            called = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
            if called in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                yield node.args[0].value


def forbidden_imports(package_dir: Path, package: str, forbidden: tuple[str, ...]) -> list[str]:
    found = []
    for path in sorted(package_dir.rglob("*.py")):
        subpackage = ".".join([package, *path.parent.relative_to(package_dir).parts])
        for module in imported_modules(path, subpackage):
            if any(module == prefix or module.startswith(f"{prefix}.") for prefix in forbidden):
                found.append(f"{path} imports {module}")
    return found


def test_there_are_services_to_check() -> None:
    assert SERVICES == ["auth", "compliance", "core", "regulator"]


@pytest.mark.parametrize("service", SERVICES)
def test_a_service_imports_no_other_service(service: str) -> None:
    others = tuple(f"services.{other}" for other in SERVICES if other != service)
    assert forbidden_imports(ROOT / "services" / service, f"services.{service}", others) == []


@pytest.mark.parametrize("package", ["shared", "proxy"])
def test_shared_code_and_the_proxy_import_no_service(package: str) -> None:
    assert forbidden_imports(ROOT / package, package, ("services", "apgms", "bench", "tests")) == []


def test_the_check_sees_every_spelling_of_a_cross_service_import(tmp_path: Path) -> None:
    package = tmp_path / "regulator"
    (package / "views").mkdir(parents=True)
    spellings = {
        "in_function.py": "def f():\n    from services.core.alerts import alert_view\n",
        "from_package.py": "from services import core\n",
        "relative.py": "from ..core import alerts\n",
        "views/deeper.py": "from ...core.alerts import alert_view\n",
        "dynamic.py": "import importlib\nimportlib.import_module('services.core.alerts')\n",
        "dunder.py": "__import__('services.core')\n",
    }
    for name, source in spellings.items():
        (package / name).write_text(source)
    (package / "ok.py").write_text(
        "from shared.contracts.core import AlertPage\nfrom . import ok\nimport services.regulator.app\n"
    )
    found = forbidden_imports(package, "services.regulator", ("services.core",))
    files = {line.split(" imports ")[0].removeprefix(f"{package}/") for line in found}
    assert files == set(spellings)
