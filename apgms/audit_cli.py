"""`apgms audit ...`: the audit trail, each org's hash chain, and its signed checkpoints.

`verify` checks the chain against every anchor the org's signed checkpoints and evidence packs record, with the
public keys from compliance.evidence_keys (no master key needed): history rewritten after a checkpoint or pack
was issued is caught even when every later hash was recomputed, and a checkpoint deleted from the middle of the
org's sequence of checkpoints, or replaced, is named by the one after it. `checkpoint` takes a signed checkpoint
now (the master key opens the evidence signing key); like the compliance service's schedule, it writes no audit
record.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from typing import Annotated

import asyncpg
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from apgms.common import CONNECT_TIMEOUT_S, command_environ, console, error_console, fail, unreachable
from apgms.devservers import DATABASE_ERRORS
from services.compliance.anchors import CHECK_CHAIN, AnchorSet
from services.compliance.audit_trail import org_anchors
from services.compliance.checkpoints import SCHEDULED_ACTOR, ChainBroken, checkpoint_moved_heads, take_checkpoint
from services.compliance.config import SERVICE_NAME as COMPLIANCE
from services.compliance.keys import EvidenceKeys, genuine_keys
from services.compliance.signing import jwks_keys
from services.compliance.store.keys import all_keys
from shared.audit import BrokenLink, VerifyResult, last_record, verify_org
from shared.config import ConfigError, Env, load_settings
from shared.crypto import SecretBox

__all__ = ["audit_app"]

audit_app = typer.Typer(no_args_is_help=True, help="The audit trail: each org's hash chain.")

# A chain up to this long is checked without a progress bar (a few batches: it is over in a moment).
PROGRESS_FROM_RECORDS = 10_000


@dataclass(frozen=True)
class ChainCheck:
    """The chain's verdict against the anchors of the org's signed checkpoints and packs that verified."""

    result: VerifyResult
    anchors: AnchorSet

    @property
    def checked(self) -> int:
        return self.result.checked

    @property
    def broken(self) -> BrokenLink | None:
        return self.result.broken


async def verify_chain(dsn: str, org_id: uuid.UUID, box: SecretBox | None = None) -> ChainCheck:
    """`verify_org` against the org's anchors over a connection of its own, with a progress bar on stderr for a
    long chain in a terminal. With `box` (the master key) only this deployment's own evidence keys are trusted
    (`services.compliance.keys.genuine_keys`); without it, every key in the table is."""
    connection = await asyncpg.connect(dsn, timeout=CONNECT_TIMEOUT_S)
    try:
        rows = await all_keys(connection)
        if box is not None:
            rows, untrusted = genuine_keys(rows, box)
            for kid in untrusted:
                error_console.print(
                    f"evidence key {kid} is not one of this deployment's keys (its private key does not open under "
                    "the master key); nothing it signed is trusted",
                    markup=False,
                    soft_wrap=True,
                )
        keys = jwks_keys({"keys": [row.public_jwk for row in rows]})
        anchors = await org_anchors(connection, org_id, keys)
        last = await last_record(connection, org_id)
        total = last.seq if last is not None else 0
        show = error_console.is_terminal and total > PROGRESS_FROM_RECORDS
        columns = (TextColumn("Checking records"), BarColumn(), MofNCompleteColumn())
        with Progress(*columns, console=error_console, transient=True, disable=not show) as progress:
            task = progress.add_task("verify", total=total)
            result = await verify_org(
                connection,
                org_id,
                anchors=anchors.anchors,
                progress=lambda checked: progress.update(task, completed=checked),
            )
        return ChainCheck(result, anchors)
    finally:
        await connection.close()


@audit_app.command("verify")
def audit_verify(org: Annotated[uuid.UUID, typer.Option("--org", help="The org whose chain to check.")]) -> None:
    """Recompute the org's audit chain from its first record and check it against every signed checkpoint and
    evidence pack of the org; exit code 1 names the first broken link, or a checkpoint or pack that was tampered
    with."""
    environ = command_environ(master_key=True)
    try:
        settings = load_settings(COMPLIANCE, environ, master_key_required=False, service_client=False)
        master_key = Env(environ).master_key("APGMS_MASTER_KEY", required=False)
    except ConfigError as error:
        fail(str(error))
    assert settings.database_url is not None
    dsn = settings.database_url.reveal()
    if master_key is None:
        error_console.print(
            "APGMS_MASTER_KEY is not set: the evidence keys in the database are trusted as they are (a database "
            "writer could have added one); set it to check them",
            markup=False,
            soft_wrap=True,
        )
    box = SecretBox(master_key) if master_key is not None else None
    try:
        check = asyncio.run(verify_chain(dsn, org, box))
    except DATABASE_ERRORS as error:
        fail(unreachable(dsn, error))
    for invalid in check.anchors.invalid:
        name = f"{'signed checkpoint' if invalid.kind == 'checkpoint' else 'evidence pack'} {invalid.id}"
        finding = (
            f"{name} is {invalid.reason}"
            if invalid.check == CHECK_CHAIN
            else f"{name} fails its own verification ({invalid.check}: {invalid.reason}); it is not used as an anchor"
        )
        error_console.print(finding, markup=False, soft_wrap=True)
    if check.broken is not None:
        fail(
            f"audit chain of org {org} is broken at record {check.broken.seq}: {check.broken.reason} "
            f"({check.checked} record(s) before it check out)"
        )
    if check.anchors.invalid:
        fail(
            f"the audit chain of org {org} links, but {len(check.anchors.invalid)} signed anchor(s) were tampered with"
        )
    used = check.anchors.used
    against = f" against {used} signed checkpoint(s) and pack(s)" if used else ""
    console.print(
        f"{check.checked} record(s) checked{against}: the audit chain of org {org} is intact.", soft_wrap=True
    )


async def checkpoint_now(dsn: str, box: SecretBox, org_id: uuid.UUID | None) -> int | None:
    """A checkpoint of the org's head (`org_id`), or of every org whose head moved (None); the number taken, None
    when the compliance service's scheduled run holds the lock."""
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2, timeout=CONNECT_TIMEOUT_S)
    try:
        keys = EvidenceKeys(pool, box)
        async with pool.acquire() as connection:
            if org_id is None:
                return await checkpoint_moved_heads(connection, keys)
            taken = await take_checkpoint(connection, keys, org_id, SCHEDULED_ACTOR)
            return 0 if taken is None or not taken.created else 1
    finally:
        await pool.close()


@audit_app.command("checkpoint")
def audit_checkpoint(
    org: Annotated[uuid.UUID | None, typer.Option("--org", help="The org whose chain head to checkpoint.")] = None,
    every: Annotated[bool, typer.Option("--all", help="Checkpoint every org whose head moved.")] = False,
) -> None:
    """Take a signed checkpoint of an org's audit chain head now (`--org`), or of every org whose head moved since
    its last checkpoint (`--all`); no audit record is written, as for the scheduled checkpoints."""
    if (org is None) == (not every):
        fail("give exactly one of --org ID and --all")
    environ = command_environ(master_key=True)
    try:
        settings = load_settings(COMPLIANCE, environ, master_key_required=True, service_client=False)
    except ConfigError as error:
        fail(str(error))
    assert settings.database_url is not None
    dsn = settings.database_url.reveal()
    try:
        taken = asyncio.run(checkpoint_now(dsn, SecretBox(settings.require_master_key()), org))
    except DATABASE_ERRORS as error:
        fail(unreachable(dsn, error))
    except ChainBroken as broken:
        fail(
            f"the audit chain of org {broken.org_id} is broken at record {broken.link.seq} ({broken.link.reason}); "
            f"no checkpoint was signed. Run: apgms audit verify --org {broken.org_id}"
        )
    if taken is None:
        fail("the compliance service is taking its scheduled checkpoints right now; try again in a moment")
    if org is not None:
        console.print(
            f"Checkpointed the audit chain head of org {org}."
            if taken
            else f"Nothing to do: org {org} has no audit records, or a checkpoint already covers its head.",
            soft_wrap=True,
        )
    else:
        console.print(f"Checkpointed {taken} org(s) whose audit chain head moved.", soft_wrap=True)
