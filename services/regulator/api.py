"""The regulator's read-only JSON API: one GET route per view of `services.regulator.reads`, for the session's org.

    GET /regulator/compliance/report                                  the org's compliance report
    GET /regulator/alerts?status=open|resolved&severity=&cursor=&limit=   its alerts, newest first, paged
    GET /regulator/monitoring/snapshots?cursor=&limit=                its monitoring snapshots, newest first, paged
    GET /regulator/bank-lines/summary?from=YYYY-MM-DD&to=YYYY-MM-DD   bank-line count and totals by month
    GET /regulator/evidence?cursor=&limit=                            its evidence packs, newest first, no payload,
                                                                      each with verified and failed_check
    GET /regulator/evidence/{pack_id}                                 a pack's export envelope and verification

Every route needs a live regulator session (`sessions.regulator_guard`: 401 without one, and for a user's token);
each successful answer is one audit row in the org's chain (reads.py). The org is always the session's: no route
takes one, and a query parameter naming one (`org_id`, or any other unknown one) is 400 `invalid_query`. A pack of
another org, an unknown or a malformed pack id is 404 `not_found`. Answers are JSON.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict
from starlette.requests import Request
from starlette.responses import Response

from services.regulator import reads
from services.regulator.models import RegulatorSession
from services.regulator.sessions import regulator_guard
from shared.contracts.compliance import PackItem, Report, SnapshotPage, VerifiedPackPage
from shared.contracts.core import AlertPage, AlertQuery, BankLineSummary
from shared.negotiation import JSON_MEDIA_TYPE
from shared.openapi import documented
from shared.pagination import PageQuery
from shared.validation import parse_query, path_uuid

__all__ = ["NoQuery", "alerts", "bank_line_summary", "evidence_item", "evidence_list", "report", "snapshots"]

TAGS = ["regulator"]


class NoQuery(BaseModel):
    """The query of a route without parameters: like every regulator route, it refuses unknown ones (an `org_id`
    among them)."""

    model_config = ConfigDict(extra="forbid")


def _json(body: Report | AlertPage | SnapshotPage | BankLineSummary | VerifiedPackPage | PackItem) -> Response:
    return Response(body.model_dump_json(), media_type=JSON_MEDIA_TYPE)


def _no_parameters(request: Request) -> None:
    parse_query(request.query_params, NoQuery)


@documented("The session's org's compliance report (audited)", response=Report, tags=TAGS)
@regulator_guard
async def report(request: Request, session: RegulatorSession) -> Response:
    _no_parameters(request)
    return _json(await reads.report(request, session))


@documented("The session's org's alerts, newest first, paged (audited)", response=AlertPage, tags=TAGS)
@regulator_guard
async def alerts(request: Request, session: RegulatorSession) -> Response:
    return _json(await reads.alerts(request, session, parse_query(request.query_params, AlertQuery)))


@documented("The session's org's monitoring snapshots, newest first, paged (audited)", response=SnapshotPage, tags=TAGS)
@regulator_guard
async def snapshots(request: Request, session: RegulatorSession) -> Response:
    return _json(await reads.snapshots(request, session, parse_query(request.query_params, PageQuery)))


@documented(
    "The session's org's bank-line count and totals by month, the last 12 months by default (audited)",
    response=BankLineSummary,
    tags=TAGS,
)
@regulator_guard
async def bank_line_summary(request: Request, session: RegulatorSession) -> Response:
    query = parse_query(request.query_params, reads.SummaryRange)
    return _json(await reads.bank_line_summary(request, session, query))


@documented(
    "The session's org's evidence packs, newest first, paged, no payload, each with its verification verdict (audited)",
    response=VerifiedPackPage,
    tags=TAGS,
)
@regulator_guard
async def evidence_list(request: Request, session: RegulatorSession) -> Response:
    return _json(await reads.evidence_list(request, session, parse_query(request.query_params, PageQuery)))


@documented(
    "One of the session's org's evidence packs: its export envelope and verification result (audited)",
    response=PackItem,
    tags=TAGS,
)
@regulator_guard
async def evidence_item(request: Request, session: RegulatorSession) -> Response:
    _no_parameters(request)
    pack_id = path_uuid(request, "pack_id")
    return _json(await reads.evidence_item(request, session, pack_id))
