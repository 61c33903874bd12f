"""The `apgms` command: the runbook's scripts in Python (`apgms --help` lists them)."""

from __future__ import annotations

import asyncio
from typing import NoReturn

import typer
from rich.console import Console
from rich.table import Table

from apgms import devstack
from apgms.devservers import DATABASE_ERRORS, redact_url
from shared.config import environ_with_dotenv
from shared.migrations import MigrationError, ServiceStatus, migrate, status

app = typer.Typer(no_args_is_help=True, add_completion=False, help="APGMS development and operations tooling.")
db_app = typer.Typer(no_args_is_help=True, help="Database migrations of every service.")
app.add_typer(db_app, name="db")

console = Console(highlight=False)
error_console = Console(stderr=True, highlight=False)


def fail(message: str) -> NoReturn:
    error_console.print(f"error: {message}", markup=False, soft_wrap=True)
    raise typer.Exit(1)


def database_url() -> str:
    url = environ_with_dotenv(None, devstack.PROJECT_ROOT / ".env").get("DATABASE_URL")
    if not url:
        fail("DATABASE_URL is not set; set it to the PostgreSQL URL, e.g. postgresql://user@127.0.0.1:5432/apgms")
    return url


def unreachable(dsn: str, error: BaseException) -> str:
    return f"cannot use the database at {redact_url(dsn)}: {str(error) or type(error).__name__}"


@app.command()
def dev() -> None:
    """Run the whole stack locally (project-local PostgreSQL and Redis unless DATABASE_URL / REDIS_URL)."""
    raise typer.Exit(devstack.main())


@db_app.command("migrate")
def db_migrate() -> None:
    """Apply every pending migration (DATABASE_URL)."""
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


def main() -> None:
    app(prog_name="apgms")
