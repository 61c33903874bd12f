"""The role set is defined once in `shared.roles`; the SQL CHECK on `auth.users.role`, which cannot import it, must
list exactly the same roles."""

from __future__ import annotations

import re
import typing
from pathlib import Path

from services.auth import models
from shared.roles import ROLES, Role

AUTH_MIGRATIONS = Path(__file__).resolve().parents[2] / "services" / "auth" / "migrations"
ROLE_CHECK = re.compile(r"\brole\b[^\n]*CHECK\s*\(\s*role\s+IN\s*\(([^)]*)\)\s*\)", re.IGNORECASE)


def checked_roles() -> tuple[str, ...]:
    """The roles of the last migration that (re)defines the CHECK on the role column."""
    found: list[tuple[str, ...]] = []
    for path in sorted(AUTH_MIGRATIONS.glob("*.sql")):
        for listed in ROLE_CHECK.findall(path.read_text()):
            found.append(tuple(re.findall(r"'([^']*)'", listed)))
    assert found, "no CHECK (role IN (...)) in the auth migrations"
    return found[-1]


def test_the_sql_check_lists_exactly_the_shared_roles() -> None:
    assert checked_roles() == ROLES


def test_roles_are_the_four_of_the_spec_in_its_order() -> None:
    assert ROLES == ("admin", "finance", "analyst", "auditor")
    assert typing.get_args(Role) == ROLES


def test_the_auth_models_take_the_role_type_from_shared() -> None:
    assert models.CreateUserRequest.model_fields["role"].annotation is Role
