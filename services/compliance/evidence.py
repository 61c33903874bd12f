"""Evidence packs: signed, stored as signed, verifiable by anyone with the published keys.

    POST /compliance/evidence                        admin, finance, auditor; Idempotency-Key optional; no body,
                                                     `{}` or `{"tag": "..."}` (1-100 characters, no controls)
    GET  /compliance/evidence                        any role: the org's packs, newest first, paged, no payload
    GET  /compliance/evidence/{id}                   any role: the export envelope (`contracts.Export`), or with
                                                     `Accept: application/json` named, the payload bytes themselves
    GET  /compliance/evidence/{id}/verify            any role: re-hash and re-verify; names the first failed check
    GET  /compliance/.well-known/evidence-keys.json  no login: every evidence key ever used, as a JWKS

A pack (`services.compliance.pack.PackPayload`) holds the report, core's current obligations, the org's newest
alerts, audit records and monitoring snapshots, and the head of the org's audit chain (taken from the same read as
the records, so the two agree). It is encoded once as canonical JSON; those bytes are hashed, signed with the active
evidence key, stored in `bytea` and exported unchanged. Core is read before a pool connection is taken (no
transaction waits on another service); the pack's row and its `evidence.create` audit record (the tag stays out of
it: free text) are written in one transaction, the audit record last. Creation is timed as
`apgms_job_duration_seconds{job="evidence_pack"}`.

Another org's pack, an id that names nothing and a malformed id are all 404 `not_found`. A row whose payload,
digest or signature was changed is not an error: `/verify` answers 200 with `valid: false` and the failed check.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from services.compliance import core_client
from services.compliance.bodies import optional_object
from services.compliance.deps import compliance_deps
from services.compliance.pack import (
    PACK_AUDIT_RECORDS,
    PACK_SNAPSHOTS,
    NewPack,
    PackPayload,
    audit_head,
    pack_audit_record,
    pack_snapshot,
    payload_bytes,
)
from services.compliance.report import build_report
from services.compliance.signing import Verification, digest_of, pack_fields, verify
from services.compliance.store import packs
from services.compliance.store.audit import AuditFilters, page_records
from services.compliance.store.snapshots import newest_snapshots
from shared import audit
from shared.authz import guard
from shared.contracts.compliance import CheckView, Export, PackView, Verdict, VerifiedPackPage, VerifiedPackView
from shared.errors import ApiError
from shared.idempotency import idempotent
from shared.metrics import timed_job
from shared.negotiation import JSON_MEDIA_TYPE, parse_accept
from shared.openapi import documented
from shared.pagination import PageQuery, decode_cursor, encode_cursor, page_of
from shared.roles import ROLES, Role
from shared.tokens import Principal
from shared.validation import parse_query, path_uuid
from shared.views import view_of

__all__ = [
    "EVIDENCE_KEYS_MAX_AGE_S",
    "MAKERS",
    "MAX_BODY_BYTES",
    "PACK_JOB",
    "PackPage",
    "create_pack",
    "evidence_keys",
    "export_of",
    "get_pack",
    "list_packs",
    "new_pack_body",
    "org_pack",
    "pack_page",
    "pack_view",
    "verdict_of",
    "verified_pack_page",
    "verify_pack",
    "wants_payload",
]

MAKERS: tuple[Role, ...] = ("admin", "finance", "auditor")
PACK_JOB = "evidence_pack"
# The only body is an optional tag of at most 100 characters; a few KiB is room for any spelling of it.
MAX_BODY_BYTES = 4 * 1024
# As auth's JWKS: a key added by a rotation signs at once, and a verifier that does not know a kid re-reads.
EVIDENCE_KEYS_MAX_AGE_S = 300
# Headers of the payload download: what the envelope carries besides the bytes.
SHA256_HEADER = "x-evidence-sha256"
SIGNATURE_HEADER = "x-evidence-signature"
KEY_ID_HEADER = "x-evidence-key-id"


class PackPage(BaseModel):
    items: list[PackView]
    next_cursor: str | None


def pack_view(pack: packs.PackSummary) -> PackView:
    return view_of(PackView, pack)


async def new_pack_body(request: Request) -> NewPack:
    """The body of a pack's creation: none at all (the runbook's curl sends no body and no content type), `{}`,
    or `{"tag": ...}` (`services.compliance.bodies.optional_object` says what else is refused, and how)."""
    return await optional_object(request, NewPack, MAX_BODY_BYTES, example='{"tag": "Q3 review"}')


@documented(
    "Create a signed evidence pack of the org's report, obligations, alerts, audit records and snapshots "
    "(idempotent with Idempotency-Key)",
    request=NewPack,
    response=PackView,
    status=201,
    tags=["compliance"],
)
@guard(roles=MAKERS)
async def create_pack(request: Request, principal: Principal) -> Response:
    body = await new_pack_body(request)
    org_id = uuid.UUID(principal.org_id)
    actor = audit.actor_of(principal)
    keys = compliance_deps(request).keys
    with timed_job(PACK_JOB):
        report, inputs = await build_report(request, org_id)
        alerts = await core_client.newest_alerts(request, org_id)
        async with request.app.state.runtime.db.pool.acquire() as conn, conn.transaction():

            async def create() -> Response:
                records = await page_records(conn, org_id, AuditFilters(), None, PACK_AUDIT_RECORDS)
                snapshots = await newest_snapshots(conn, org_id, PACK_SNAPSHOTS)
                payload = PackPayload(
                    id=uuid.uuid4(),
                    org_id=org_id,
                    created_at=datetime.now(UTC),
                    created_by=actor,
                    tag=body.tag,
                    audit_head=audit_head(records),
                    report=report,
                    obligations=inputs.obligations,
                    alerts=alerts.items,
                    audit=[pack_audit_record(record) for record in records],
                    snapshots=[pack_snapshot(row) for row in snapshots],
                )
                signed = await keys.sign(payload_bytes(payload), conn)
                pack = packs.Pack(
                    id=payload.id,
                    org_id=org_id,
                    created_at=payload.created_at,
                    created_by=actor,
                    tag=body.tag,
                    sha256=signed.sha256,
                    key_id=signed.key_id,
                    payload=signed.payload,
                    signature=signed.signature,
                )
                await packs.insert_pack(conn, pack)
                await audit.append(
                    conn,
                    org_id=org_id,
                    actor=actor,
                    action="evidence.create",
                    target=f"evidence_pack:{pack.id}",
                    detail={"id": str(pack.id), "sha256": pack.sha256, "key_id": pack.key_id},
                )
                return Response(
                    pack_view(pack).model_dump_json(),
                    status_code=201,
                    media_type=JSON_MEDIA_TYPE,
                    headers={"location": f"/compliance/evidence/{pack.id}"},
                )

            return await idempotent(request, conn, create, org_id=org_id, actor=actor, body=body)


@documented("List the org's evidence packs, newest first (no payload)", response=PackPage, tags=["compliance"])
@guard(roles=ROLES)
async def list_packs(request: Request, principal: Principal) -> Response:
    body = await pack_page(request, uuid.UUID(principal.org_id), parse_query(request.query_params, PageQuery))
    return Response(body.model_dump_json(), media_type=JSON_MEDIA_TYPE)


async def pack_page(request: Request, org_id: uuid.UUID, query: PageQuery) -> PackPage:
    """One page of the org's packs, newest first (the listing here)."""
    after = decode_cursor(query.cursor) if query.cursor is not None else None
    async with request.app.state.runtime.db.pool.acquire() as conn:
        rows = await packs.page_packs(conn, org_id, after, query.limit + 1)
    page, next_cursor = page_of(rows, query.limit, _pack_cursor)
    return PackPage(items=[pack_view(row) for row in page], next_cursor=next_cursor)


async def verified_pack_page(request: Request, org_id: uuid.UUID, query: PageQuery) -> VerifiedPackPage:
    """One page of the org's packs, newest first, each re-hashed and re-verified as `/verify` does it (compliance's
    internal listing): a reader that shows every pack's status needs this one call, not one per pack. A page is at
    most MAX_PAGE_SIZE packs, and a check is a hash and one Ed25519 verification each."""
    after = decode_cursor(query.cursor) if query.cursor is not None else None
    async with request.app.state.runtime.db.pool.acquire() as conn:
        rows = await packs.page_signed_packs(conn, org_id, after, query.limit + 1)
    page, next_cursor = page_of(rows, query.limit, _pack_cursor)
    keys = await compliance_deps(request).keys.public_keys_with({pack.key_id for pack in page}) if page else {}
    items = []
    for pack in page:
        failed = _verification(pack, keys).failed
        items.append(
            view_of(VerifiedPackView, pack, verified=failed is None, failed_check=failed.name if failed else None)
        )
    return VerifiedPackPage(items=items, next_cursor=next_cursor)


def _pack_cursor(pack: packs.PackSummary) -> str:
    return encode_cursor(pack.created_at, pack.id)


async def org_pack(request: Request, org_id: uuid.UUID) -> packs.Pack:
    """The org's pack named by the path's `pack_id`; 404 `not_found` for another org's, an unknown or a malformed
    id alike."""
    pack_id = path_uuid(request, "pack_id")
    async with request.app.state.runtime.db.pool.acquire() as conn:
        pack = await packs.get_pack(conn, org_id, pack_id)
    if pack is None:
        raise ApiError("not_found", "No evidence pack with this id in your org")
    return pack


def wants_payload(accept: str | None) -> bool:
    """True when Accept names `application/json` itself (with a quality above 0): the caller wants the document.
    `*/*`, `application/*` or no Accept get the envelope, which carries the same bytes in base64."""
    return any(
        f"{media_range.type}/{media_range.subtype}" == JSON_MEDIA_TYPE and media_range.quality > 0
        for media_range in parse_accept(accept or "")
    )


def export_of(pack: packs.Pack) -> Export:
    """The pack's export envelope: its fields, signature and payload bytes in base64."""
    return Export(
        **pack_view(pack).model_dump(),
        signature=pack.signature,
        payload_base64=base64.b64encode(pack.payload).decode(),
    )


@documented(
    "One evidence pack: the export envelope (payload in base64, sha256, signature, key id), or the payload's exact "
    "bytes as a download for Accept: application/json",
    response=Export,
    tags=["compliance"],
)
@guard(roles=ROLES)
async def get_pack(request: Request, principal: Principal) -> Response:
    pack = await org_pack(request, uuid.UUID(principal.org_id))
    if not wants_payload(request.headers.get("accept")):
        return Response(export_of(pack).model_dump_json(), media_type=JSON_MEDIA_TYPE, headers={"vary": "accept"})
    return Response(
        pack.payload,
        media_type=JSON_MEDIA_TYPE,
        headers={
            "content-disposition": f'attachment; filename="evidence-pack_{pack.id}.json"',
            SHA256_HEADER: pack.sha256,
            SIGNATURE_HEADER: pack.signature,
            KEY_ID_HEADER: pack.key_id,
            # RFC 9530: the digest of the bytes sent, for any HTTP client to check; the x-evidence-sha256 beside it
            # is the one recorded at signing (they differ only for a tampered row).
            "repr-digest": f"sha-256=:{base64.b64encode(digest_of(pack.payload)).decode()}:",
            "vary": "accept",
        },
    )


@documented(
    "Re-hash and re-verify one evidence pack against the published keys; names the first check that failed",
    response=Verdict,
    tags=["compliance"],
)
@guard(roles=ROLES)
async def verify_pack(request: Request, principal: Principal) -> Response:
    verdict = await verdict_of(request, await org_pack(request, uuid.UUID(principal.org_id)))
    return Response(verdict.model_dump_json(), media_type=JSON_MEDIA_TYPE)


async def verdict_of(request: Request, pack: packs.Pack) -> Verdict:
    """The pack re-hashed and re-verified against the evidence keys (`signing.verify`), as `/verify` answers it."""
    keys = await compliance_deps(request).keys.public_keys_with(pack.key_id)
    result = _verification(pack, keys)
    failed = result.failed
    return Verdict(
        id=pack.id,
        valid=result.ok,
        failed=failed.name if failed else None,
        reason=failed.reason if failed else None,
        sha256=pack.sha256,
        key_id=pack.key_id,
        checks=[CheckView(name=check.name, ok=check.ok, reason=check.reason) for check in result.checks],
    )


def _verification(pack: packs.Pack, keys: Mapping[str, Ed25519PublicKey]) -> Verification:
    return verify(pack.payload, pack.sha256, pack.signature, pack.key_id, keys, expect=pack_fields(pack))


@documented("Public keys of every evidence key ever used (a JWKS), to verify packs offline", tags=["compliance"])
async def evidence_keys(request: Request) -> Response:
    jwks = await compliance_deps(request).keys.jwks()
    return JSONResponse(jwks, headers={"cache-control": f"public, max-age={EVIDENCE_KEYS_MAX_AGE_S}"})
