"""What every `apgms` command shares: the consoles, failing with a message, the environment a command reads
(`.env`, make run's database and keys), and one database connection for a piece of work."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import NoReturn, TypeVar

import asyncpg
import typer
from rich.console import Console

from apgms import devstack
from apgms.devservers import DATABASE_ERRORS, LocalPostgres, redact_url
from shared.config import ConfigError, Env, Settings, environ_with_dotenv

__all__ = [
    "CONNECT_TIMEOUT_S",
    "command_environ",
    "console",
    "database_url",
    "dev_database_url",
    "error_console",
    "fail",
    "unreachable",
    "with_connection",
]

T = TypeVar("T")
CONNECT_TIMEOUT_S = 10.0

console = Console(highlight=False)
error_console = Console(stderr=True, highlight=False)


def fail(message: str) -> NoReturn:
    error_console.print(f"error: {message}", markup=False, soft_wrap=True)
    raise typer.Exit(1)


def command_environ(*, master_key: bool = False, kek: bool = False) -> dict[str, str]:
    """What a command reads: the environment over `.env`; without DATABASE_URL, `make run`'s database (outside
    production); with `master_key` and without APGMS_MASTER_KEY, the checkout's key (the one `make run` uses);
    with `kek` and without APGMS_KEK_FILE or APGMS_KEK, the checkout's KEK file (the one `make run` gives core and
    compliance)."""
    environ = environ_with_dotenv(None, devstack.PROJECT_ROOT / ".env")
    if not environ.get("DATABASE_URL"):
        environ["DATABASE_URL"] = dev_database_url(environ)
    if master_key:
        try:
            environ = devstack.with_dev_master_key(environ)
        except OSError as error:
            fail(f"cannot read or create the checkout's master key: {error}")
    if kek:
        try:
            environ = devstack.with_dev_kek(environ)
        except OSError as error:
            fail(f"cannot read or create the checkout's KEK file: {error}")
    return environ


def dev_database_url(environ: dict[str, str]) -> str:
    """The DSN of `make run`'s PostgreSQL while it runs; otherwise the command stops saying how to get one."""
    example = "e.g. postgresql://user@127.0.0.1:5432/apgms"
    if environ.get("APGMS_ENV") == "production":
        fail(f"DATABASE_URL is not set; set it to the PostgreSQL URL, {example}")
    data_dir = devstack.dev_dir(environ) / "pg"
    dsn = LocalPostgres(data_dir).running_dsn()
    if dsn is None:
        fail(
            f"DATABASE_URL is not set and make run's PostgreSQL ({devstack.shown_path(data_dir)}) is not running: "
            f"start it with `make run` (in another terminal), or set DATABASE_URL to a PostgreSQL URL, {example}"
        )
    error_console.print(f"Using make run's database at {dsn} (DATABASE_URL is not set)", soft_wrap=True)
    return dsn


def database_url() -> str:
    environ = command_environ()
    try:
        url = Env(environ).url("DATABASE_URL", ("postgres", "postgresql"), required=True)
    except ConfigError as error:
        fail(str(error))
    assert url is not None
    return url.reveal()


def unreachable(dsn: str, error: BaseException) -> str:
    return f"cannot use the database at {redact_url(dsn)}: {str(error) or type(error).__name__}"


def with_connection(settings: Settings, work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
    assert settings.database_url is not None
    dsn = settings.database_url.reveal()

    async def run() -> T:
        connection = await asyncpg.connect(dsn)
        try:
            return await work(connection)
        finally:
            await connection.close()

    try:
        return asyncio.run(run())
    except DATABASE_ERRORS as error:
        fail(unreachable(dsn, error))
