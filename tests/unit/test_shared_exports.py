"""Every module of `shared/` says what it exports (`__all__`), and exports only names it defines or imports."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import shared

MODULES = sorted(info.name.removeprefix("shared.") for info in pkgutil.walk_packages(shared.__path__, "shared."))


def test_the_package_has_modules() -> None:
    assert len(MODULES) > 20


@pytest.mark.parametrize("name", MODULES)
def test_each_shared_module_declares_what_it_exports(name: str) -> None:
    module = importlib.import_module(f"shared.{name}")
    exported = getattr(module, "__all__", None)
    assert exported, f"shared.{name} has no __all__"
    assert len(set(exported)) == len(exported)
    assert [n for n in exported if not hasattr(module, n)] == []
