"""Names a command turns into file names (`apgms compliance evidence --tag`, `apgms incident new ID`): letters,
digits, `.`, `_` and `-`, starting with a letter or digit, so a name can neither leave its folder (`../x`, `/etc`)
nor hide (`.x`), nor need quoting in a shell or a Markdown link."""

from __future__ import annotations

import re

import typer

__all__ = ["MAX_NAME_CHARS", "safe_name"]

MAX_NAME_CHARS = 100
_SAFE_NAME = re.compile(rf"[A-Za-z0-9][A-Za-z0-9._-]{{0,{MAX_NAME_CHARS - 1}}}")


def safe_name(value: str, option: str) -> str:
    """`value` when it is a safe file name; otherwise a usage error (exit 2) naming `option` and the rule."""
    if _SAFE_NAME.fullmatch(value) is None:
        raise typer.BadParameter(
            f"{value!r} is not a safe name: use 1 to {MAX_NAME_CHARS} letters, digits, '.', '_' or '-', starting "
            "with a letter or digit (e.g. 2026-11-28-db-outage)",
            param_hint=option,
        )
    return value
