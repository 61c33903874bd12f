"""`apgms audit ...`: the audit trail, each org's hash chain."""

from __future__ import annotations

import asyncio
import uuid
from typing import Annotated

import asyncpg
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from apgms.common import CONNECT_TIMEOUT_S, console, database_url, error_console, fail, unreachable
from apgms.devservers import DATABASE_ERRORS
from shared.audit import VerifyResult, last_record, verify_org

__all__ = ["audit_app"]

audit_app = typer.Typer(no_args_is_help=True, help="The audit trail: each org's hash chain.")

# A chain up to this long is checked without a progress bar (a few batches: it is over in a moment).
PROGRESS_FROM_RECORDS = 10_000


async def verify_chain(dsn: str, org_id: uuid.UUID) -> VerifyResult:
    """`verify_org` over a connection of its own, with a progress bar on stderr for a long chain in a terminal."""
    connection = await asyncpg.connect(dsn, timeout=CONNECT_TIMEOUT_S)
    try:
        last = await last_record(connection, org_id)
        total = last.seq if last is not None else 0
        show = error_console.is_terminal and total > PROGRESS_FROM_RECORDS
        columns = (TextColumn("Checking records"), BarColumn(), MofNCompleteColumn())
        with Progress(*columns, console=error_console, transient=True, disable=not show) as progress:
            task = progress.add_task("verify", total=total)
            return await verify_org(
                connection, org_id, progress=lambda checked: progress.update(task, completed=checked)
            )
    finally:
        await connection.close()


@audit_app.command("verify")
def audit_verify(org: Annotated[uuid.UUID, typer.Option("--org", help="The org whose chain to check.")]) -> None:
    """Recompute the org's audit chain from its first record; exit code 1 names the first broken link."""
    dsn = database_url()
    try:
        result = asyncio.run(verify_chain(dsn, org))
    except DATABASE_ERRORS as error:
        fail(unreachable(dsn, error))
    if result.broken is not None:
        fail(
            f"audit chain of org {org} is broken at record {result.broken.seq}: {result.broken.reason} "
            f"({result.checked} record(s) before it check out)"
        )
    console.print(f"{result.checked} record(s) checked: the audit chain of org {org} is intact.", soft_wrap=True)
