"""Signed checkpoints of each org's audit chain head, taken on a schedule and on demand.

    POST /audit/checkpoints   admin, auditor: a checkpoint of the caller's org now (201), or the one that already
                              covers its head (200); audited as `audit.checkpoint`; 409 `conflict` naming the
                              record when the chain is broken since the last checkpoint (nothing is signed)
    GET  /audit/checkpoints   admin, auditor: the org's checkpoints, newest head first (cursor)

A plain hash chain can be recomputed by anyone who can write the database; a checkpoint is the org's head (seq and
hash) and the hashes of the records since the previous checkpoint (`services.compliance.anchors`), signed with the
evidence key, so `/audit/verify` catches history rewritten after it was taken, and names the rewritten record.
Each checkpoint also names the org's previous one (`previous`: its id and sha256), so the checkpoints form a chain
of their own and `/audit/verify` reports one deleted from the middle or replaced. The org's latest checkpoint is
where the next one starts, so it is verified first, like any anchor: one whose row fails (edited seq or hash,
another signature) is a refusal like a broken chain.

A checkpoint vouches for the records it covers, so none is signed over a chain already broken: before signing,
the records after the org's latest checkpoint must link from that checkpoint's hash up to the head
(`shared.audit.verify_org(after=...)`; an org's first checkpoint checks its chain from seq 1), or the checkpoint is
refused (`ChainBroken`): the on-demand route answers 409, the schedule skips the org with an `audit_chain_broken`
error line and security event, and `apgms audit checkpoint` exits 1. Each check reads only the records since the
last checkpoint; the first one of an org reads its whole chain, a batch at a time.

The schedule (`schedule`, every AUDIT_CHECKPOINT_INTERVAL_S, 0 = off) checkpoints every org whose head no
checkpoint covers yet; orgs come from audit.records by a skip scan in batches (`store.heads`). One replica works
at a time (a session advisory lock, tried, not waited for). Scheduled checkpoints write no audit record: it would
move every org's head, so every run would checkpoint every org again, forever. An on-demand checkpoint is audited
like any change, after it is inserted, so it covers the head before its own record.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response

from services.compliance.anchors import (
    CHECK_CHAIN,
    MAX_CHECKPOINT_ROWS,
    checkpoint_document,
    checkpoint_payload,
    collect_anchors,
)
from services.compliance.config import ComplianceSettings
from services.compliance.deps import compliance_deps
from services.compliance.keys import EvidenceKeys
from services.compliance.seq_cursor import decode_seq_cursor, encode_seq_cursor
from services.compliance.store import heads
from services.compliance.store.checkpoints import (
    Checkpoint,
    checkpoint_at,
    insert_checkpoint,
    latest_checkpoint,
    page_checkpoints,
)
from shared import audit
from shared.app import Runtime
from shared.authz import guard
from shared.crypto import SecretBox
from shared.db import Database
from shared.errors import ApiError
from shared.log import get_logger
from shared.metrics import record_security_event, timed_job
from shared.negotiation import JSON_MEDIA_TYPE
from shared.openapi import documented
from shared.pagination import PageQuery, page_of
from shared.roles import Role
from shared.tokens import Principal
from shared.validation import parse_query

__all__ = [
    "CHECKPOINTERS",
    "CHECKPOINT_LOCK",
    "FIRST_RUN_DELAY_S",
    "ChainBroken",
    "CheckpointView",
    "Taken",
    "checkpoint_moved_heads",
    "create_checkpoint",
    "list_checkpoints",
    "refused",
    "run_schedule",
    "schedule",
    "take_checkpoint",
]

log = get_logger(__name__)

CHECKPOINTERS: tuple[Role, ...] = ("admin", "auditor")
SCHEDULED_ACTOR = "system"
# The one-key session advisory lock of the scheduled run ('APGCKPT'): a replica that cannot take it skips the run.
CHECKPOINT_LOCK = 0x41_50_47_43_4B_50_54
# The first key of the two-key transaction advisory lock one org's checkpoints are taken under ('APGC'; the two-key
# space is apart from the one-key space of CHECKPOINT_LOCK).
CHECKPOINT_ORG_LOCK = 0x41_50_47_43
# The first scheduled run comes this soon after start-up (or after one interval, if shorter): a service restarted
# more often than the interval must still checkpoint.
FIRST_RUN_DELAY_S = 30.0
ACQUIRE_TIMEOUT_S = 10.0
CHECKPOINT_TASK = "audit-checkpoints"


@dataclass(frozen=True)
class Taken:
    """A checkpoint of the head, and whether this call made it (False: one already covered the head)."""

    checkpoint: Checkpoint
    created: bool


async def _rows_up_to(conn: asyncpg.Connection, org_id: uuid.UUID, after: int, head: int) -> list[audit.AuditRecord]:
    rows: list[audit.AuditRecord] = []
    async for row in audit.records(conn, org_id, after_seq=after, batch_rows=MAX_CHECKPOINT_ROWS):
        if row.seq > head:  # written after the head was read
            break
        rows.append(row)
    return rows


class ChainBroken(Exception):
    """The records a new checkpoint would vouch for do not link: nothing was signed. `link` is the first break."""

    def __init__(self, org_id: uuid.UUID, link: audit.BrokenLink) -> None:
        super().__init__(f"the audit chain of org {org_id} is broken at record {link.seq}: {link.reason}")
        self.org_id, self.link = org_id, link


async def _segment_break(
    conn: asyncpg.Connection, org_id: uuid.UUID, previous: Checkpoint | None, head: audit.AuditRecord
) -> audit.BrokenLink | None:
    """The first break in the records after `previous` (from seq 1 without one) up to `head`, or None."""
    if previous is None:
        return (await audit.verify_org(conn, org_id, anchor=audit.Anchor(head.seq, head.hash))).broken
    source = f"signed checkpoint {previous.id} (head record {previous.seq})"
    if head.seq < previous.seq:
        return audit.BrokenLink(
            head.seq + 1,
            f"the chain ends at record {head.seq} but {source} records record {previous.seq}: "
            "records were deleted from the tail",
        )
    if head.seq == previous.seq:
        if head.hash == previous.hash:
            return None
        return audit.BrokenLink(head.seq, f"record {head.seq} was changed after {source} covered it")
    known = audit.Anchor(previous.seq, previous.hash, source)
    return (await audit.verify_org(conn, org_id, after=known, anchor=audit.Anchor(head.seq, head.hash))).broken


def _org_lock(org_id: uuid.UUID) -> int:
    """The second key of the org's checkpoint lock (two orgs sharing one only wait for each other)."""
    return int.from_bytes(org_id.bytes[:4], "big", signed=True)


async def _untrusted(conn: asyncpg.Connection, keys: EvidenceKeys, latest: Checkpoint) -> audit.BrokenLink | None:
    """Why the org's latest checkpoint cannot be the starting link of the next one, or None when it verifies (its
    digest, key, signature and every field its row shows, as `/audit/verify` checks it)."""
    published = await keys.public_keys_with(latest.key_id, conn)
    # Alone, it has no predecessor to be checked against (CHECK_CHAIN): only its own verification counts here.
    invalid = collect_anchors([checkpoint_document(latest)], published).invalid
    found = [each for each in invalid if each.check != CHECK_CHAIN]
    if not found:
        return None
    return audit.BrokenLink(
        latest.seq,
        f"the latest signed checkpoint {latest.id} (head record {latest.seq}) fails its own verification "
        f"({found[0].check}: {found[0].reason}), so nothing can link from it",
    )


async def take_checkpoint(conn: asyncpg.Connection, keys: EvidenceKeys, org_id: uuid.UUID, actor: str) -> Taken | None:
    """A signed checkpoint of the org's head now, stored; the existing one when a checkpoint already covers that
    head; None when the org has no audit records. The new checkpoint names the org's latest one (`previous`), so
    the checkpoints form a chain of their own (`services.compliance.anchors`).

    `ChainBroken` (nothing signed or stored) when the org's latest checkpoint fails its own verification (its seq
    and hash are where the new one would start: a row edited in the database must not be trusted), or when the
    records since it (since the first record, for its first) do not link from its hash to the head: a checkpoint
    vouches for them, so it must not be signed over a chain already broken.

    In a transaction of its own (a savepoint inside the caller's) holding the org's checkpoint lock until the
    outermost transaction ends: two checkpoints of one org taken at once would otherwise both name the same
    predecessor, and the second would look like a break in the sequence."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1::int, $2::int)", CHECKPOINT_ORG_LOCK, _org_lock(org_id))
        head = await audit.last_record(conn, org_id)
        if head is None:
            return None
        previous = await latest_checkpoint(conn, org_id)
        if previous is not None and (untrusted := await _untrusted(conn, keys, previous)) is not None:
            raise ChainBroken(org_id, untrusted)
        if (broken := await _segment_break(conn, org_id, previous, head)) is not None:
            raise ChainBroken(org_id, broken)
        if previous is not None and previous.seq == head.seq:
            return Taken(previous, created=False)
        covered = 0 if previous is None else previous.seq
        rows = await _rows_up_to(conn, org_id, max(covered, head.seq - MAX_CHECKPOINT_ROWS), head.seq)
        checkpoint_id, created_at = uuid.uuid4(), datetime.now(UTC)
        payload = checkpoint_payload(checkpoint_id, org_id, created_at, actor, head, rows, previous)
        # On the connection held: a key reload on a second one could leave the pool empty with every signer waiting.
        signed = await keys.sign(payload, conn)
        checkpoint = Checkpoint(
            id=checkpoint_id,
            org_id=org_id,
            created_at=created_at,
            created_by=actor,
            seq=head.seq,
            hash=head.hash,
            payload=signed.payload,
            sha256=signed.sha256,
            signature=signed.signature,
            key_id=signed.key_id,
        )
        if await insert_checkpoint(conn, checkpoint):
            return Taken(checkpoint, created=True)
        existing = await checkpoint_at(conn, org_id, head.seq)  # another caller took it a moment ago
        assert existing is not None, "the insert conflicted on (org_id, seq), so the row exists"
        return Taken(existing, created=False)


# --- the schedule -------------------------------------------------------------------------------------------------


def refused(broken: ChainBroken) -> None:
    """Say that a checkpoint was refused over a broken chain: an `audit_chain_broken` error line naming the org and
    the record, and the `audit_chain_broken` security event."""
    link = broken.link
    log.error("audit_chain_broken", org_id=str(broken.org_id), seq=link.seq, reason=link.reason)
    record_security_event("audit_chain_broken", org_id=str(broken.org_id), seq=link.seq)


async def checkpoint_moved_heads(conn: asyncpg.Connection, keys: EvidenceKeys) -> int | None:
    """Checkpoint every org whose head no checkpoint covers, on `conn`; the number taken, or None when another
    replica holds the run's lock. An org whose chain is broken since its last checkpoint is skipped (`refused`);
    the run goes on with the others, and the next run finds it again."""
    if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", CHECKPOINT_LOCK):
        return None
    taken = 0
    try:
        after: uuid.UUID | None = None
        while batch := await heads.org_ids_after(conn, after):
            for org_id in await heads.uncovered_heads(conn, batch):
                try:
                    result = await take_checkpoint(conn, keys, org_id, SCHEDULED_ACTOR)
                except ChainBroken as broken:
                    refused(broken)
                    continue
                taken += result is not None and result.created
            after = batch[-1]
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", CHECKPOINT_LOCK)
    return taken


async def run_schedule(db: Database, keys: EvidenceKeys, interval_s: float) -> None:
    """Forever: a round of `checkpoint_moved_heads` every `interval_s` (the first after FIRST_RUN_DELAY_S at
    most), timed as the job "checkpoint". A failed round is logged and the next one comes as usual."""
    delay = min(interval_s, FIRST_RUN_DELAY_S)
    while True:
        await asyncio.sleep(delay)
        delay = interval_s
        try:
            with timed_job("checkpoint"):
                async with db.pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn:
                    taken = await checkpoint_moved_heads(conn, keys)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("audit_checkpoints_failed", error=type(exc).__name__, message=str(exc))
            continue
        if taken is None:
            log.info("audit_checkpoints_skipped", reason="another replica holds the lock")
        else:
            log.info("audit_checkpoints", taken=taken)


def schedule(runtime: Runtime, settings: ComplianceSettings) -> None:
    """Run the scheduled checkpoints from start-up to shutdown (`Runtime.run_in_background`); none when the interval
    is 0."""
    if settings.checkpoint_interval_s <= 0:
        return

    def checkpoints(rt: Runtime) -> Coroutine[Any, Any, None]:
        assert rt.db is not None
        keys = EvidenceKeys(rt.db.pool, SecretBox(settings.require_master_key()))
        return run_schedule(rt.db, keys, settings.checkpoint_interval_s)

    runtime.run_in_background(CHECKPOINT_TASK, checkpoints)


# --- the routes ---------------------------------------------------------------------------------------------------


class CheckpointView(BaseModel):
    id: uuid.UUID
    org_id: uuid.UUID
    seq: int
    hash: str
    sha256: str
    signature: str
    key_id: str
    created_at: datetime
    created_by: str

    @classmethod
    def of(cls, checkpoint: Checkpoint) -> CheckpointView:
        return cls(
            id=checkpoint.id,
            org_id=checkpoint.org_id,
            seq=checkpoint.seq,
            hash=checkpoint.hash,
            sha256=checkpoint.sha256,
            signature=checkpoint.signature,
            key_id=checkpoint.key_id,
            created_at=checkpoint.created_at,
            created_by=checkpoint.created_by,
        )


class CheckpointPage(BaseModel):
    items: list[CheckpointView]
    next_cursor: str | None


@documented(
    "Take a signed checkpoint of the org's audit chain head now (200 with the existing one when it is covered)",
    response=CheckpointView,
    status=201,
    tags=["audit"],
)
@guard(roles=CHECKPOINTERS)
async def create_checkpoint(request: Request, principal: Principal) -> Response:
    org_id = uuid.UUID(principal.org_id)
    actor = audit.actor_of(principal)
    keys = compliance_deps(request).keys
    async with request.app.state.runtime.db.pool.acquire() as conn, conn.transaction():
        try:
            taken = await take_checkpoint(conn, keys, org_id, actor)
        except ChainBroken as broken:
            refused(broken)
            raise ApiError(
                "conflict",
                f"The audit chain is broken at record {broken.link.seq} ({broken.link.reason}), so no checkpoint "
                "was signed: run GET /audit/verify for the whole chain's verdict",
            ) from None
        if taken is None:
            raise ApiError("conflict", "The organisation has no audit records to checkpoint yet")
        if taken.created:
            checkpoint = taken.checkpoint
            detail: dict[str, Any] = {
                "id": str(checkpoint.id),
                "seq": checkpoint.seq,
                "hash": checkpoint.hash,
                "sha256": checkpoint.sha256,
                "key_id": checkpoint.key_id,
            }
            await audit.append(
                conn,
                org_id=org_id,
                actor=actor,
                action="audit.checkpoint",
                target=f"audit_checkpoint:{checkpoint.id}",
                detail=detail,
            )
    body = CheckpointView.of(taken.checkpoint).model_dump_json()
    return Response(body, status_code=201 if taken.created else 200, media_type=JSON_MEDIA_TYPE)


@documented("List the org's signed audit checkpoints, newest head first", response=CheckpointPage, tags=["audit"])
@guard(roles=CHECKPOINTERS)
async def list_checkpoints(request: Request, principal: Principal) -> Response:
    query = parse_query(request.query_params, PageQuery)
    org_id = uuid.UUID(principal.org_id)
    bound_to = b"audit-checkpoints"
    before = decode_seq_cursor(query.cursor, bound_to) if query.cursor is not None else None
    async with request.app.state.runtime.db.pool.acquire() as conn:
        rows = await page_checkpoints(conn, org_id, before, query.limit + 1)
    page, next_cursor = page_of(rows, query.limit, lambda checkpoint: encode_seq_cursor(checkpoint.seq, bound_to))
    body = CheckpointPage(items=[CheckpointView.of(row) for row in page], next_cursor=next_cursor)
    return Response(body.model_dump_json(), media_type=JSON_MEDIA_TYPE)
