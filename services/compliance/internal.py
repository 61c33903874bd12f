"""Compliance's routes for the other services only (the proxy never forwards `/internal/...`), called with a
service token that carries `compliance:read` (the regulator's: services/auth/config.py `SERVICE_SCOPES`). They
answer what an org's own users see on compliance's routes, for the org in the path, and write nothing:

    GET /internal/orgs/{org_id}/report                    the report of GET /compliance/report
    GET /internal/orgs/{org_id}/snapshots?cursor=&limit=  the org's snapshots, newest first, paged
    GET /internal/orgs/{org_id}/evidence?cursor=&limit=   the org's packs, newest first, paged, no payload, each
                                                          with its verification verdict (verified, failed_check)
    GET /internal/orgs/{org_id}/evidence/{pack_id}        the pack's export envelope and its verification result

Each uses the function the org's own route uses (no second reading of the same rows); the evidence listing adds to
each pack what `/verify` says of it, so the regulator shows a page of packs with their status from one call. The
bodies are the contract's (`shared.contracts.compliance`). The report, a listing and a verdict hold no PII, and
whoever shows them to a person (the regulator) audits that read in its own chain, so these reads write no audit
row, like core's internal reads.

A user token or an org API client's is for another audience: 401 `invalid_token`. A service token without
`compliance:read` (core's, compliance's own) is 403 `forbidden`. A malformed org id is 400 `bad_request`
(`shared.validation.path_org`); another org's pack, an unknown or a malformed pack id 404 `not_found`. The answer
is JSON, or msgpack for `Accept: application/msgpack` (`shared.negotiation`; 406 `not_acceptable` for neither).
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response

from services.compliance.evidence import export_of, org_pack, verdict_of, verified_pack_page
from services.compliance.report import REPORT_JOB, build_report
from services.compliance.snapshots import snapshot_page
from shared.authz import guard
from shared.contracts.compliance import PackItem, Report, SnapshotPage, VerifiedPackPage
from shared.metrics import timed_job
from shared.negotiation import encoded_response, response_media_type
from shared.openapi import documented
from shared.pagination import PageQuery
from shared.tokens import SERVICE_AUDIENCE, Principal
from shared.validation import parse_query, path_org

__all__ = ["COMPLIANCE_READ_SCOPE", "org_evidence", "org_pack_item", "org_report", "org_snapshots"]

COMPLIANCE_READ_SCOPE = "compliance:read"

# A listing of the org's, as a function: snapshots.snapshot_page, evidence.verified_pack_page.
Lister = Callable[[Request, uuid.UUID, PageQuery], Awaitable[BaseModel]]


async def _org_page(request: Request, page: Lister) -> Response:
    org_id = path_org(request)
    query = parse_query(request.query_params, PageQuery)
    media_type = response_media_type(request)
    return encoded_response(await page(request, org_id, query), media_type)


@documented("An org's compliance report; JSON or msgpack", response=Report, tags=["internal"])
@guard(audience=SERVICE_AUDIENCE, scopes=(COMPLIANCE_READ_SCOPE,))
async def org_report(request: Request, principal: Principal) -> Response:
    org_id = path_org(request)
    media_type = response_media_type(request)
    with timed_job(REPORT_JOB):
        report, _ = await build_report(request, org_id)
    return encoded_response(report, media_type)


@documented(
    "An org's monitoring snapshots, newest first, paged; JSON or msgpack", response=SnapshotPage, tags=["internal"]
)
@guard(audience=SERVICE_AUDIENCE, scopes=(COMPLIANCE_READ_SCOPE,))
async def org_snapshots(request: Request, principal: Principal) -> Response:
    return await _org_page(request, snapshot_page)


@documented(
    "An org's evidence packs, newest first, paged, no payload, each with its verification verdict; JSON or msgpack",
    response=VerifiedPackPage,
    tags=["internal"],
)
@guard(audience=SERVICE_AUDIENCE, scopes=(COMPLIANCE_READ_SCOPE,))
async def org_evidence(request: Request, principal: Principal) -> Response:
    return await _org_page(request, verified_pack_page)


@documented(
    "One of an org's evidence packs: its export envelope and its verification result; JSON or msgpack",
    response=PackItem,
    tags=["internal"],
)
@guard(audience=SERVICE_AUDIENCE, scopes=(COMPLIANCE_READ_SCOPE,))
async def org_pack_item(request: Request, principal: Principal) -> Response:
    org_id = path_org(request)
    media_type = response_media_type(request)
    pack = await org_pack(request, org_id)
    item = PackItem(export=export_of(pack), verification=await verdict_of(request, pack))
    return encoded_response(item, media_type)
