"""The `apgms` command: the runbook's scripts in Python (`apgms --help` lists them)."""

from __future__ import annotations

import asyncio
import os
import secrets
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import TaskID
from rich.table import Table

from apgms import devstack
from apgms.audit_cli import audit_app
from apgms.backup import backup_app
from apgms.common import (
    command_environ,
    console,
    database_url,
    error_console,
    fail,
    unreachable,
    with_connection,
)
from apgms.compliance_cli import compliance_app
from apgms.devservers import DATABASE_ERRORS
from apgms.evidence_cli import evidence_app
from apgms.incident import incident_app
from apgms.regulator_cli import regulator_app
from apgms.seed import (
    DEFAULT_RANDOM_SEED,
    DEMO_ORG_NAME,
    MAX_SEED_LINES_PER_ORG,
    MAX_SEED_ORGS,
    SeedError,
    SeedOrgRef,
    demo_password,
    ensure_seed_orgs,
    logins_table,
    password_line,
    seed_bank_lines,
    seed_demo,
    seed_progress_bar,
    seeded_table,
)
from apgms.smoke import smoke_app
from services.auth.keys import PUBLISH_AHEAD_S, RETIRE_AFTER_S, rotate
from services.auth.oauth import ClientError, create_client
from shared.config import (
    ConfigError,
    Settings,
    load_settings,
    new_master_key,
    new_service_client_secret,
    read_dotenv,
)
from shared.crypto import SecretBox
from shared.kek import KekProvider, kek_provider_from_env, new_kek
from shared.migrations import MigrationError, ServiceStatus, migrate, status
from shared.pii import rotate_kek

app = typer.Typer(no_args_is_help=True, add_completion=False, help="APGMS development and operations tooling.")
db_app = typer.Typer(no_args_is_help=True, help="Database migrations of every service.")
app.add_typer(db_app, name="db")
app.add_typer(audit_app, name="audit")
keys_app = typer.Typer(no_args_is_help=True, help="Token signing keys of the auth service.")
app.add_typer(keys_app, name="keys")
clients_app = typer.Typer(no_args_is_help=True, help="OAuth2 API clients (client credentials).")
app.add_typer(clients_app, name="clients")
pii_app = typer.Typer(no_args_is_help=True, help="PII data keys and their key-encryption key (KEK).")
app.add_typer(pii_app, name="pii")
app.add_typer(evidence_app, name="evidence")
app.add_typer(backup_app, name="backup")
app.add_typer(smoke_app, name="smoke")
app.add_typer(regulator_app, name="regulator")
app.add_typer(compliance_app, name="compliance")
app.add_typer(incident_app, name="incident")


@app.command()
def dev() -> None:
    """Run the whole stack locally (project-local PostgreSQL and Redis unless DATABASE_URL / REDIS_URL)."""
    raise typer.Exit(devstack.main())


@db_app.command("migrate")
def db_migrate() -> None:
    """Apply every pending migration (DATABASE_URL, else the database of a running `make run`)."""
    dsn = database_url()
    try:
        applied = asyncio.run(migrate(dsn))
    except MigrationError as error:
        fail(str(error))
    except DATABASE_ERRORS as error:
        fail(unreachable(dsn, error))
    for migration in applied:
        console.print(f"applied {migration.label}")
    console.print(f"{len(applied)} migration(s) applied." if applied else "Nothing to apply; the schema is up to date.")


def status_table(statuses: list[ServiceStatus]) -> Table:
    table = Table(title="Migrations")
    for column in ("Service", "Applied", "Pending", "Changed after applying"):
        table.add_column(column)
    for entry in statuses:
        table.add_row(
            entry.service,
            "\n".join(entry.applied) or "-",
            "\n".join(entry.pending) or "-",
            "\n".join(f"[red]{name}[/]" for name in entry.changed) or "-",
        )
    return table


@db_app.command("status")
def db_status() -> None:
    """Applied and pending migrations per service; exit code 1 when anything is pending or changed."""
    dsn = database_url()
    try:
        statuses = asyncio.run(status(dsn))
    except MigrationError as error:
        fail(str(error))
    except DATABASE_ERRORS as error:
        fail(unreachable(dsn, error))
    console.print(status_table(statuses))
    pending = sum(len(entry.pending) for entry in statuses)
    changed = sum(len(entry.changed) for entry in statuses)
    if changed:
        fail(f"{changed} applied migration file(s) changed on disk; restore them and add a new migration instead")
    if pending:
        fail(f"{pending} migration(s) pending; run `apgms db migrate`")
    console.print("Database schema is up to date.")


# --- audit: checking an org's chain -------------------------------------------------------------------------------

# --- auth: demo data, signing keys, API clients ------------------------------------------------------------------


def auth_settings(environ: dict[str, str], *, sealing: bool) -> Settings:
    """DATABASE_URL and APGMS_MASTER_KEY as the auth service reads them; `sealing`: the command needs the key."""
    try:
        return load_settings("auth", environ, master_key_required=sealing)
    except ConfigError as error:
        fail(str(error))


@app.command()
def seed(
    bank_lines: Annotated[
        int,
        typer.Option(
            "--bank-lines", min=0, max=MAX_SEED_LINES_PER_ORG, help="Generated bank lines to write into each org."
        ),
    ] = 0,
    orgs: Annotated[
        int,
        typer.Option("--orgs", min=1, max=MAX_SEED_ORGS, help="Orgs to seed: the demo org, then Seed Org 1, 2, ..."),
    ] = 1,
    add: Annotated[bool, typer.Option("--add", help="Write the lines even into orgs that already have some.")] = False,
    random_seed: Annotated[int, typer.Option("--random-seed", help="Seed of the generated lines.")] = (
        DEFAULT_RANDOM_SEED
    ),
) -> None:
    """Create the demo org with an admin (TOTP enrolled), a finance user and an auditor; safe to run again. With
    --bank-lines N, also N generated bank lines in each of --orgs orgs that has none yet (--add: in every org)."""
    environ = command_environ(master_key=True, kek=bank_lines > 0)
    settings = auth_settings(environ, sealing=True)
    box = SecretBox(settings.require_master_key())
    provider = line_seed_provider(environ) if bank_lines else None
    try:
        password = demo_password(environ)
        result = with_connection(settings, lambda conn: seed_demo(conn, box, password))
    except SeedError as error:
        fail(str(error))
    created = sum(login.created for login in result.logins)
    console.print(f"Created {created} demo user(s)." if created else "Demo org already seeded; nothing created.")
    console.print(logins_table(result))
    console.print(password_line(result), markup=False, soft_wrap=True)
    if result.totp_uri:
        console.print(f"Admin TOTP: secret {result.totp_secret}  URI {result.totp_uri}", markup=False, soft_wrap=True)
    else:
        console.print("Admin TOTP: enrolled, but its secret was sealed under another master key", soft_wrap=True)
    if provider is not None:
        seed_lines(settings, provider, SeedOrgRef(result.org_id, DEMO_ORG_NAME), orgs, bank_lines, add, random_seed)


def line_seed_provider(environ: dict[str, str]) -> KekProvider:
    """The KEK provider the seed seals bank lines with (core's), checked before anything is written."""
    if environ.get("APGMS_ENV") == "production":
        fail("--bank-lines writes made-up bank lines; it is refused when APGMS_ENV=production")
    try:
        return kek_provider_from_env(environ)
    except ConfigError as error:
        fail(str(error))


def seed_lines(
    settings: Settings, provider: KekProvider, demo: SeedOrgRef, orgs: int, count: int, add: bool, random_seed: int
) -> None:
    """The bank-line half of `apgms seed` (apgms.seed: what is written, in which transactions, and when not)."""
    seed_orgs = with_connection(settings, lambda conn: ensure_seed_orgs(conn, orgs - 1)) if orgs > 1 else []
    assert settings.database_url is not None
    dsn = settings.database_url.reveal()
    started = time.perf_counter()
    with seed_progress_bar(error_console, disable=not error_console.is_terminal) as progress:
        tasks: dict[uuid.UUID, TaskID] = {}

        def report(org: SeedOrgRef, written: int, total: int) -> None:
            if org.org_id not in tasks:
                tasks[org.org_id] = progress.add_task(org.name, total=total)
            progress.update(tasks[org.org_id], completed=written)

        try:
            results = asyncio.run(
                seed_bank_lines(
                    dsn, provider, [demo, *seed_orgs], count, random_seed=random_seed, add=add, progress=report
                )
            )
        except DATABASE_ERRORS as error:
            fail(unreachable(dsn, error))
    elapsed = time.perf_counter() - started
    console.print(seeded_table(results))
    added = sum(result.added for result in results)
    rate = f" ({added / elapsed:,.0f} lines/s)" if added else ""
    console.print(f"Seeded {added:,} bank line(s) in {len(results)} org(s) in {elapsed:.1f} s{rate}.", soft_wrap=True)


@keys_app.command("rotate")
def keys_rotate() -> None:
    """Retire the active signing key (it keeps verifying until its tokens expire) and start signing with a new one."""
    settings = auth_settings(command_environ(master_key=True), sealing=True)
    box = SecretBox(settings.require_master_key())
    old, new = with_connection(settings, lambda conn: rotate(conn, box))
    if old is None:
        console.print(f"There was no active key. New signing key: {new}", soft_wrap=True)
    else:
        console.print(
            f"Retired key {old} (still verifies for {RETIRE_AFTER_S:g} s). New signing key: {new} "
            f"(published now, signs in {PUBLISH_AHEAD_S:g} s, once every verifier can have fetched it)",
            soft_wrap=True,
        )


@clients_app.command("add")
def clients_add(
    org: Annotated[uuid.UUID, typer.Option("--org", help="The org the client acts for.")],
    name: Annotated[str, typer.Option("--name", help="What the client is, e.g. 'core export'.")],
    scope: Annotated[list[str], typer.Option("--scope", help="A scope it may request; repeat for more.")],
) -> None:
    """Register an API client; prints its id and secret (the secret is shown only this once)."""
    settings = auth_settings(command_environ(), sealing=False)
    try:
        client_id, secret = with_connection(settings, lambda conn: create_client(conn, org, name, scope))
    except ClientError as error:
        fail(str(error))
    table = Table(title="New API client", caption="Store the secret now: it is not shown again.")
    table.add_column("Field", no_wrap=True)
    table.add_column("Value", no_wrap=True)
    table.add_row("client_id", client_id)
    table.add_row("client_secret", secret)
    table.add_row("org", str(org))
    table.add_row("scopes", " ".join(dict.fromkeys(scope)))
    console.print(table)


@pii_app.command("rotate-kek")
def pii_rotate_kek() -> None:
    """Re-wrap every org's data key under the current KEK (the first in APGMS_KEK_FILE or APGMS_KEK); no PII value
    is re-encrypted. Once no key is left under an old KEK, that KEK can be removed from the file."""
    environ = command_environ(kek=True)
    settings = auth_settings(environ, sealing=False)
    try:
        provider = kek_provider_from_env(environ)
    except ConfigError as error:
        fail(str(error))
    rotation = with_connection(settings, lambda conn: rotate_kek(conn, provider))
    console.print(
        f"Re-wrapped {rotation.rewrapped} data key(s) under KEK {provider.current_kek_id} "
        f"in {rotation.batches} batch(es).",
        soft_wrap=True,
    )
    others = {kek: count for kek, count in rotation.kek_usage.items() if kek != provider.current_kek_id}
    if others:
        fail(f"data keys still under other KEKs (added during the rotation?), run it again: {others}")
    console.print("No data key is wrapped under any other KEK; retired KEKs can be removed.", soft_wrap=True)


# --- docker compose ------------------------------------------------------------------------------------------

# What docker-compose.yml takes from `.env` (which compose reads by itself): nothing secret is in the repository.
# Each is made by its generator; the passwords are URL-safe, since they go into DATABASE_URL and REDIS_URL.
COMPOSE_PASSWORD_BYTES = 32
COMPOSE_SECRET_GENERATORS: dict[str, Callable[[], str]] = {
    "APGMS_COMPOSE_DB_PASSWORD": lambda: secrets.token_urlsafe(COMPOSE_PASSWORD_BYTES),
    "APGMS_COMPOSE_REDIS_PASSWORD": lambda: secrets.token_urlsafe(COMPOSE_PASSWORD_BYTES),
    "APGMS_COMPOSE_MASTER_KEY": new_master_key,
    "APGMS_COMPOSE_KEK": new_kek,
    # Each calling service's client secret: compose gives it to the service and to auth (SERVICE_CLIENT_SECRET_<NAME>).
    "APGMS_COMPOSE_CORE_CLIENT_SECRET": new_service_client_secret,
    "APGMS_COMPOSE_COMPLIANCE_CLIENT_SECRET": new_service_client_secret,
    "APGMS_COMPOSE_REGULATOR_CLIENT_SECRET": new_service_client_secret,
    # The proxy's scrape credential (METRICS_BEARER_TOKEN), which the compose Prometheus presents on /metrics.
    "APGMS_COMPOSE_METRICS_BEARER_TOKEN": lambda: secrets.token_urlsafe(COMPOSE_PASSWORD_BYTES),
    "APGMS_COMPOSE_GRAFANA_ADMIN_PASSWORD": lambda: secrets.token_urlsafe(COMPOSE_PASSWORD_BYTES),
}
COMPOSE_SECRETS = tuple(COMPOSE_SECRET_GENERATORS)
# Values compose also needs as a file, for a compose secret (`secrets: file:` in docker-compose.yml, seen in the
# container at /run/secrets/<name>): Prometheus reads the scrape credential from a file, the proxy from its
# environment, so both come from the one value in .env. The file is in the git-ignored dev dir, in a directory only
# its owner may enter; the file itself is readable by all, as it is bind-mounted into the Prometheus container,
# which runs as `nobody`.
COMPOSE_SECRET_FILES: dict[str, Path] = {
    "APGMS_COMPOSE_METRICS_BEARER_TOKEN": Path(devstack.DEV_DIR_NAME, "compose", "metrics_bearer_token"),
}


def compose_secret(name: str) -> str:
    return COMPOSE_SECRET_GENERATORS[name]()


@app.command("dev-secrets")
def dev_secrets() -> None:
    """Generate the docker compose stack's database and Redis passwords, master key, KEK, service client secrets,
    scrape credential and Grafana admin password into `.env` (mode 0600), and the scrape credential's compose secret
    file.

    Values already there are kept: the database volume keeps the password it was created with."""
    path = devstack.PROJECT_ROOT / ".env"
    existing = read_dotenv(path)
    missing = [name for name in COMPOSE_SECRETS if not existing.get(name)]
    generated = {name: compose_secret(name) for name in missing}
    if generated:
        text = path.read_text() if path.exists() else ""
        lines = [f"{name}={value}" for name, value in generated.items()]
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(descriptor, "a") as file:
            file.write(("\n" if text and not text.endswith("\n") else "") + "\n".join(lines) + "\n")
        path.chmod(0o600)
        console.print(
            f"Wrote {', '.join(missing)} to {path}; `docker compose up` reads them from there.", soft_wrap=True
        )
    files = write_compose_secret_files({**existing, **generated})
    if files:
        console.print(f"Wrote {', '.join(map(str, files))} (compose secrets, from the same values).", soft_wrap=True)
    if not generated and not files:
        console.print(f"{path} already holds {', '.join(COMPOSE_SECRETS)}; nothing changed.", soft_wrap=True)


def write_compose_secret_files(values: Mapping[str, str]) -> list[Path]:
    """Write each of COMPOSE_SECRET_FILES whose content is not its value in .env; returns the paths written."""
    written = []
    for name, relative in COMPOSE_SECRET_FILES.items():
        path = devstack.PROJECT_ROOT / relative
        if path.is_file() and path.read_text() == values[name]:
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.parent.chmod(0o700)
        temporary = path.with_name(f".{path.name}.tmp")
        temporary.write_text(values[name])
        temporary.chmod(0o644)
        os.replace(temporary, path)
        written.append(path)
    return written


def main() -> None:
    app(prog_name="apgms")
