"""`apgms regulator ...`: regulator credentials, straight in the database (DATABASE_URL, or make run's).

    apgms regulator add NAME --orgs ID[,ID] [--expires 90d]   prints the new access code once, and how to log in
    apgms regulator revoke NAME                               revokes it for every org; its sessions end at once
    apgms regulator list                                      name, orgs, expiry, revoked, live sessions

Each change is audited (actor `system`) in the chain of every org it affects, in the transaction that makes it
(`services.regulator.lifecycle`, which the admins' routes share). `add` refuses an org id that is not an org of
auth (exit 1 naming it, nothing written): a typo would give a code that opens nothing and start a stray chain.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated

import asyncpg
import typer
from rich.table import Table

from apgms.common import command_environ, console, fail, with_connection
from services.auth.store import org_names
from services.regulator import codes, lifecycle, store
from services.regulator.config import SERVICE_NAME
from services.regulator.store import CredentialListing
from shared.config import ConfigError, Settings, load_settings

__all__ = ["regulator_app"]

regulator_app = typer.Typer(no_args_is_help=True, help="Regulator credentials: add, revoke, list.")

CLI_ACTOR = "system"
PROXY_URL = "http://localhost:3000"


def _settings() -> Settings:
    try:
        return load_settings(SERVICE_NAME, command_environ(), master_key_required=False, service_client=False)
    except ConfigError as error:
        fail(str(error))


def _name(value: str) -> str:
    try:
        return codes.valid_name(value)
    except ValueError as error:
        raise typer.BadParameter(str(error)) from None


def _org_ids(value: str) -> list[uuid.UUID]:
    parts = [part.strip() for part in value.split(",") if part.strip()]
    if not parts:
        raise typer.BadParameter("name at least one org id")
    try:
        return list(dict.fromkeys(uuid.UUID(part) for part in parts))
    except ValueError:
        raise typer.BadParameter(f"org ids are UUIDs separated by commas, not {value!r}") from None


def _expires(value: str) -> str:
    try:
        codes.parse_expires(value)
    except ValueError as error:
        raise typer.BadParameter(str(error)) from None
    return value


def login_hint(access_code: str, org_id: uuid.UUID) -> str:
    """How the regulator logs in with the code, printed beside it."""
    return (
        f"Log in at {PROXY_URL}/regulator/portal/ with the code and org {org_id}, or:\n"
        f"  curl -s -X POST {PROXY_URL}/regulator/login -H 'content-type: application/json' "
        f'-d \'{{"access_code": "{access_code}", "org_id": "{org_id}"}}\''
    )


@regulator_app.command("add")
def add(
    name: Annotated[
        str, typer.Argument(help="The credential's name (letters, digits, '.', '_', '-').", callback=_name)
    ],
    orgs: Annotated[str, typer.Option("--orgs", help="The org ids it may view, separated by commas.")],
    expires: Annotated[
        str, typer.Option("--expires", help="How long it is valid: days or weeks, e.g. 90d, 12w.", callback=_expires)
    ] = f"{codes.DEFAULT_EXPIRES_DAYS}d",
) -> None:
    """Create a regulator credential and print its access code (shown this once: it is stored only hashed)."""
    org_ids = _org_ids(orgs)
    expires_at = datetime.now(UTC) + codes.parse_expires(expires)
    code = codes.new_access_code()

    async def work(conn: asyncpg.Connection) -> lifecycle.IssuedCredential | list[uuid.UUID] | None:
        known = await org_names(conn, org_ids)
        unknown = [org_id for org_id in org_ids if org_id not in known]
        if unknown:
            return unknown
        code_hash = await lifecycle.hash_code(code)
        async with conn.transaction():
            return await lifecycle.issue(
                conn, name=name, org_ids=org_ids, expires_at=expires_at, actor=CLI_ACTOR, code=code, code_hash=code_hash
            )

    issued = with_connection(_settings(), work)
    if isinstance(issued, list):
        named = ", ".join(str(org_id) for org_id in issued)
        fail(f"unknown org {named}: no such org in auth.orgs (check the id); nothing was written")
    if issued is None:
        fail(lifecycle.name_taken(name))
    console.print(
        f"Regulator credential {name} for {len(org_ids)} org(s), valid until {expires_at:%Y-%m-%d %H:%M} UTC."
    )
    console.print("Access code (shown once; it is stored only as a hash):", markup=False)
    console.print(f"  {issued.access_code}", markup=False, soft_wrap=True)
    console.print(login_hint(issued.access_code, org_ids[0]), markup=False, soft_wrap=True)


@regulator_app.command("revoke")
def revoke(
    name: Annotated[str, typer.Argument(help="The credential's name.", callback=_name)],
) -> None:
    """Revoke a regulator credential for every org it covers; its sessions are refused from the next request."""

    async def work(conn: asyncpg.Connection) -> tuple[bool, int] | None:
        async with conn.transaction():
            found = await store.credential_by_name(conn, name)
            credential = await store.lock_credential(conn, found.id) if found is not None else None
            if credential is None:
                return None
            if credential.revoked_at is not None:
                return False, 0
            return True, await lifecycle.revoke_everywhere(conn, credential, CLI_ACTOR)

    outcome = with_connection(_settings(), work)
    if outcome is None:
        fail(f"there is no regulator credential named {name!r} (apgms regulator list shows them)")
    revoked, ended = outcome
    if not revoked:
        console.print(f"Regulator credential {name} was already revoked.", markup=False)
        return
    console.print(f"Revoked regulator credential {name}; {ended} live session(s) ended.", markup=False)


def _when(value: datetime | None) -> str:
    return "" if value is None else f"{value.astimezone(UTC):%Y-%m-%d %H:%M}"


@regulator_app.command("list")
def list_credentials() -> None:
    """Every regulator credential: name, orgs, expiry, revocation and live sessions."""

    async def work(conn: asyncpg.Connection) -> list[CredentialListing]:
        return await store.credentials(conn)

    listed = with_connection(_settings(), work)
    table = Table(title="Regulator credentials")
    table.add_column("name", overflow="fold")
    table.add_column("orgs", no_wrap=True, min_width=36)  # a UUID whole, so it can be copied
    for column in ("expires (UTC)", "revoked (UTC)", "live sessions"):
        table.add_column(column, overflow="fold")
    for entry in listed:
        credential = entry.credential
        table.add_row(
            credential.name,
            "\n".join(str(org) for org in credential.org_ids),
            _when(credential.expires_at),
            _when(credential.revoked_at),
            str(entry.live_sessions),
        )
    console.print(table)
    if not listed:
        console.print("No regulator credentials yet: apgms regulator add NAME --orgs ID", markup=False)
