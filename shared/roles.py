"""The user roles (SPEC section 3), defined once: the auth service's request models, every service's guards and
the tests that pin the SQL CHECK on `auth.users.role` (SQL cannot import this) take them from here."""

from __future__ import annotations

from typing import Literal, get_args

__all__ = ["ROLES", "Role"]

Role = Literal["admin", "finance", "analyst", "auditor"]
ROLES: tuple[Role, ...] = get_args(Role)
