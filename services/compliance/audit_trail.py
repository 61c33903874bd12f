"""The org's audit trail, read and verified.

    GET /audit          admin, auditor: the org's records newest first, filtered by `action`, `actor`, `from`
                        (inclusive) and `to` (exclusive), ISO 8601 instants with an offset; keyset cursor bound to
                        the filters (`services.compliance.seq_cursor`)
    GET /audit/verify   admin, auditor: the org's whole chain (`shared.audit.verify_org`, in batches) checked against
                        every anchor its signed checkpoints and packs record (`services.compliance.anchors`)

Verification answers 200 whatever it finds: a broken chain or a tampered pack is the finding, not an error of the
request. `ok` is true only when the chain holds against every anchor and no checkpoint or pack failed its own
verification (a signed document whose row was edited is evidence of tampering too). The evidence keys are re-read
once when a document names a kid the cached keys lack (a rotation by another replica or the CLI moments ago), so
a genuine document is not reported under an unknown key. Everything is read in one
read-only REPEATABLE READ transaction, so the anchors and the chain are one snapshot; the database's statement
timeout bounds each batch. Neither route writes an audit record: reading the trail changes nothing, and a record
per verification would move the head that checkpoints cover.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Annotated, Any

import asyncpg
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError
from starlette.requests import Request
from starlette.responses import Response

from services.compliance.anchors import AnchorCollector, AnchorSet, checkpoint_document, pack_document
from services.compliance.deps import compliance_deps
from services.compliance.seq_cursor import decode_seq_cursor, encode_seq_cursor
from services.compliance.store.audit import AuditFilters, page_records
from services.compliance.store.checkpoints import org_checkpoints, org_key_ids
from services.compliance.store.packs import signed_packs
from shared import audit
from shared.authz import guard
from shared.canonical import canonical_json
from shared.negotiation import JSON_MEDIA_TYPE
from shared.openapi import documented
from shared.pagination import PageQuery, page_of
from shared.roles import Role
from shared.tokens import Principal
from shared.validation import parse_query
from shared.views import view_of

__all__ = ["AUDIT_READERS", "AuditPage", "AuditQuery", "ChainVerdict", "list_records", "org_anchors", "verify_chain"]

AUDIT_READERS: tuple[Role, ...] = ("admin", "auditor")
MAX_ACTOR_CHARS = 160


def _instant(value: Any) -> Any:
    if isinstance(value, datetime):
        return value  # built in code
    try:
        parsed = datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        parsed = None
    if parsed is None or parsed.utcoffset() is None:
        raise PydanticCustomError("instant", "must be an ISO 8601 date and time with an offset, e.g. 2026-07-01T00:00Z")
    # In UTC, the instant must lie where an audit record can (an offset near either end of the calendar would
    # otherwise overflow it when the query converts it).
    try:
        in_utc = parsed.astimezone(UTC)
    except OverflowError:
        in_utc = None
    if in_utc is None or not audit.EARLIEST_AT <= in_utc <= audit.LATEST_AT:
        raise PydanticCustomError(
            "instant",
            "must lie from {earliest} to {latest} (UTC)",
            {"earliest": audit.EARLIEST_AT.isoformat(), "latest": audit.LATEST_AT.isoformat()},
        )
    return in_utc


Instant = Annotated[datetime, BeforeValidator(_instant)]


class AuditQuery(PageQuery):
    """`GET /audit?action=&actor=&from=&to=&cursor=&limit=`; unknown parameters are refused."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    action: str | None = Field(default=None, min_length=1, max_length=audit.MAX_ACTION_CHARS)
    actor: str | None = Field(default=None, min_length=1, max_length=MAX_ACTOR_CHARS)
    since: Instant | None = Field(default=None, alias="from")
    until: Instant | None = Field(default=None, alias="to")

    @model_validator(mode="after")
    def _ordered(self) -> AuditQuery:
        if self.since is not None and self.until is not None and self.until <= self.since:
            raise PydanticCustomError("range", "`to` must be later than `from`")
        return self

    def filters(self) -> AuditFilters:
        return AuditFilters(action=self.action, actor=self.actor, since=self.since, until=self.until)

    def bound_to(self) -> bytes:
        """The canonical text of the filters, which a cursor is bound to."""
        named = {"action": self.action, "actor": self.actor, "from": self.since, "to": self.until}
        return canonical_json({name: value for name, value in named.items() if value is not None})


class AuditRecordView(BaseModel):
    org_id: uuid.UUID
    seq: int
    at: datetime
    actor: str
    action: str
    target: str
    request_id: str | None
    detail: dict[str, Any]
    prev_hash: str
    hash: str

    @classmethod
    def of(cls, record: audit.AuditRecord) -> AuditRecordView:
        return view_of(cls, record)


class AuditPage(BaseModel):
    items: list[AuditRecordView]
    next_cursor: str | None


class Link(BaseModel):
    seq: int
    hash: str


class Broken(BaseModel):
    seq: int = Field(description="The first seq that does not hold")
    reason: str
    earliest_seq: int | None = Field(
        default=None,
        description="Set when the change is proven to lie somewhere from this seq to `seq` but not where",
    )


class AnchorSummary(BaseModel):
    used: int = Field(description="Signed checkpoints and packs whose anchors were checked")
    latest_seq: int | None = Field(description="The highest chain head among them")


class InvalidAnchorView(BaseModel):
    kind: str
    id: uuid.UUID
    check: str = Field(description="The first check of the document's own verification that failed")
    reason: str


class ChainVerdict(BaseModel):
    org_id: uuid.UUID
    ok: bool
    checked: int
    head: Link | None
    broken: Broken | None
    anchors: AnchorSummary
    invalid_anchors: list[InvalidAnchorView]

    @classmethod
    def of(
        cls, org_id: uuid.UUID, head: audit.AuditRecord | None, result: audit.VerifyResult, anchors: AnchorSet
    ) -> ChainVerdict:
        broken = result.broken
        return cls(
            org_id=org_id,
            ok=result.ok and not anchors.invalid,
            checked=result.checked,
            head=None if head is None else Link(seq=head.seq, hash=head.hash),
            broken=None
            if broken is None
            else Broken(seq=broken.seq, reason=broken.reason, earliest_seq=broken.earliest_seq),
            anchors=AnchorSummary(used=anchors.used, latest_seq=anchors.latest_seq),
            invalid_anchors=[
                InvalidAnchorView(kind=each.kind, id=each.id, check=each.check, reason=each.reason)
                for each in anchors.invalid
            ],
        )


async def org_anchors(conn: asyncpg.Connection, org_id: uuid.UUID, keys: Mapping[str, Ed25519PublicKey]) -> AnchorSet:
    """The anchors of the org's signed checkpoints and packs whose own digest and signature hold under `keys`, and
    the checkpoints' chain checked; the documents are read in batches and only their anchors kept (an org's
    payloads together may run to gigabytes; its anchors are bounded by its chain, one or a few per record)."""
    collector = AnchorCollector(keys)
    async for checkpoint in org_checkpoints(conn, org_id):
        collector.add(checkpoint_document(checkpoint))
    async for pack in signed_packs(conn, org_id):
        collector.add(pack_document(pack))
    return collector.result()


@documented("List the org's audit records, newest first", response=AuditPage, tags=["audit"])
@guard(roles=AUDIT_READERS)
async def list_records(request: Request, principal: Principal) -> Response:
    query = parse_query(request.query_params, AuditQuery)
    org_id = uuid.UUID(principal.org_id)
    bound_to = query.bound_to()
    before = decode_seq_cursor(query.cursor, bound_to) if query.cursor is not None else None
    async with request.app.state.runtime.db.pool.acquire() as conn:
        rows = await page_records(conn, org_id, query.filters(), before, query.limit + 1)
    page, next_cursor = page_of(rows, query.limit, lambda record: encode_seq_cursor(record.seq, bound_to))
    body = AuditPage(items=[AuditRecordView.of(row) for row in page], next_cursor=next_cursor)
    return Response(body.model_dump_json(), media_type=JSON_MEDIA_TYPE)


@documented(
    "Verify the org's whole audit chain against every signed checkpoint and evidence pack",
    response=ChainVerdict,
    tags=["audit"],
)
@guard(roles=AUDIT_READERS)
async def verify_chain(request: Request, principal: Principal) -> Response:
    org_id = uuid.UUID(principal.org_id)
    evidence_keys = compliance_deps(request).keys
    async with request.app.state.runtime.db.pool.acquire() as conn:
        # Every kid the org's documents name, known before the snapshot is taken: the cached keys are re-read once
        # when one is new to them (a rotation by another replica or the CLI in the cache's lifetime), on this
        # connection (outside the read-only snapshot, where a first key could not be written).
        keys = await evidence_keys.public_keys_with(await org_key_ids(conn, org_id), conn)
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            anchors = await org_anchors(conn, org_id, keys)
            head = await audit.last_record(conn, org_id)
            result = await audit.verify_org(conn, org_id, anchors=anchors.anchors)
    return Response(ChainVerdict.of(org_id, head, result, anchors).model_dump_json(), media_type=JSON_MEDIA_TYPE)
