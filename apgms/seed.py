"""The demo org (`apgms seed`, and `apgms dev` on every start): "Demo Pty Ltd" with an admin (TOTP enrolled),
a finance user and an auditor. Idempotent: a second run creates nothing and shows the same logins, re-reading the
admin's TOTP secret by opening the sealed copy.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

import asyncpg
import pyotp
from rich.table import Table

from services.auth import store
from services.auth.passwords import MIN_PASSWORD_CHARS, hash_password, verify_password
from shared.config import DEV_ONLY_MARKER
from shared.crypto import SealError, SecretBox

DEMO_ORG_NAME = "Demo Pty Ltd"
DEMO_USERS = (
    ("admin", "admin@demo.apgms.example"),
    ("finance", "finance@demo.apgms.example"),
    ("auditor", "auditor@demo.apgms.example"),
)
DEV_DEMO_PASSWORD = "demo-password-dev-only"  # noqa: S105 (refused in production, see demo_password)
TOTP_ISSUER = "APGMS"
# Any fixed number; serialises two seeds started together (`apgms dev` and `apgms seed`).
SEED_LOCK = 0x41_50_47_53_45_45_44


class SeedError(Exception):
    """The demo data cannot be seeded as configured; the message says why."""


@dataclass(frozen=True)
class DemoLogin:
    role: str
    email: str
    created: bool


@dataclass(frozen=True)
class DemoSeed:
    org_id: uuid.UUID
    logins: tuple[DemoLogin, ...]
    password: str
    # False when the admin already existed with another password (APGMS_DEMO_PASSWORD changed since).
    password_matches: bool
    totp_secret: str | None
    totp_uri: str | None


def demo_password(environ: Mapping[str, str]) -> str:
    """APGMS_DEMO_PASSWORD, or the dev-only default outside production."""
    production = environ.get("APGMS_ENV") == "production"
    password = environ.get("APGMS_DEMO_PASSWORD") or ""
    if not password:
        if production:
            raise SeedError("APGMS_DEMO_PASSWORD is required when APGMS_ENV=production")
        return DEV_DEMO_PASSWORD
    if production and DEV_ONLY_MARKER in password:
        raise SeedError("APGMS_DEMO_PASSWORD is a dev-only password, refused when APGMS_ENV=production")
    if len(password) < MIN_PASSWORD_CHARS:
        raise SeedError(f"APGMS_DEMO_PASSWORD must be at least {MIN_PASSWORD_CHARS} characters")
    return password


async def _admin_totp(conn: asyncpg.Connection, box: SecretBox, admin: store.User) -> str | None:
    """The admin's confirmed TOTP secret, enrolling one when there is none; None when the stored one cannot be
    opened (sealed under another master key)."""
    credential = await store.totp_credential(conn, admin.id)
    if credential is not None and credential.confirmed:
        try:
            return box.open(credential.secret_sealed, associated=admin.id.bytes).decode()
        except SealError:
            return None
    secret = pyotp.random_base32()
    sealed = box.seal(secret.encode(), associated=admin.id.bytes)
    await store.begin_totp(conn, admin.id, sealed)
    # Step 0 confirms without using up a real step: the admin's first code is accepted.
    if not await store.confirm_totp(conn, admin.id, sealed, 0):
        raise SeedError(f"could not confirm the TOTP enrolment of {admin.email}")
    return secret


async def _demo_admin(conn: asyncpg.Connection) -> store.User | None:
    """The oldest demo admin in an org of the demo org's name: an address is unique per org only, so another org
    may have a user with the same address."""
    admins = await store.users_by_email(conn, DEMO_USERS[0][1])
    names = await store.org_names(conn, [admin.org_id for admin in admins])
    return next((admin for admin in admins if names[admin.org_id] == DEMO_ORG_NAME), None)


async def seed_demo(conn: asyncpg.Connection, box: SecretBox, password: str) -> DemoSeed:
    """Create what is missing of the demo org, in one transaction; return its logins."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", SEED_LOCK)
        existing_admin = await _demo_admin(conn)
        org_id = existing_admin.org_id if existing_admin else await store.create_org(conn, DEMO_ORG_NAME)
        logins = []
        users: dict[str, store.User] = {}
        for role, email in DEMO_USERS:
            found = await store.users_by_email(conn, email, org_id=org_id)
            user = found[0] if found else None
            created = user is None
            if user is None:
                user = await store.create_user(
                    conn, org_id, email, await asyncio.to_thread(hash_password, password), role
                )
            if user is None:
                raise SeedError(f"{email} exists but is disabled; enable or delete it to seed the demo org")
            users[role] = user
            logins.append(DemoLogin(role, email, created))
        admin = users["admin"]
        matches = existing_admin is None or await asyncio.to_thread(verify_password, admin.password_hash, password)
        secret = await _admin_totp(conn, box, admin)
    uri = pyotp.TOTP(secret).provisioning_uri(name=admin.email, issuer_name=TOTP_ISSUER) if secret else None
    return DemoSeed(org_id, tuple(logins), password, matches, secret, uri)


def logins_table(seed: DemoSeed, *, title: str = "Demo logins") -> Table:
    """Role and email of each demo user; the password and TOTP secret are printed beside it, unwrapped."""
    table = Table(title=title, caption=f"org {DEMO_ORG_NAME} ({seed.org_id})")
    for column in ("Role", "Email", "MFA"):
        table.add_column(column, no_wrap=True)
    for login in seed.logins:
        table.add_row(login.role, login.email, "TOTP" if login.role == "admin" and seed.totp_secret else "-")
    return table


def password_line(seed: DemoSeed) -> str:
    if seed.password_matches:
        return f"Password (all demo users): {seed.password}"
    return "Password: as set at an earlier seed (APGMS_DEMO_PASSWORD has changed since)"
