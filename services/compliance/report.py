"""`GET /compliance/report` (any role): the org's compliance report, built from core's report inputs.

The org is the caller's (from the token). Core is read over its internal API (`services.compliance.core_client`:
the caller's request ID goes along, a failing core is a 502/504 problem within a few seconds), and nothing is
written anywhere: the report shows figures (no PII), so, like core's read of them, it writes no audit row. The
work is timed as `apgms_job_duration_seconds{job="report"}`.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from starlette.requests import Request
from starlette.responses import Response

from services.compliance import core_client
from services.compliance.pack import report_of
from shared.authz import guard
from shared.contracts.compliance import Report
from shared.contracts.core import ReportInputs
from shared.metrics import timed_job
from shared.negotiation import JSON_MEDIA_TYPE
from shared.openapi import documented
from shared.roles import ROLES
from shared.tokens import Principal

__all__ = ["REPORT_JOB", "build_report", "get_report"]

REPORT_JOB = "report"


async def build_report(request: Request, org_id: uuid.UUID) -> tuple[Report, ReportInputs]:
    """The org's report now, and the core inputs it was made from (an evidence pack carries both)."""
    inputs = await core_client.report_inputs(request, org_id)
    return report_of(inputs, datetime.now(UTC)), inputs


@documented(
    "The org's compliance report: BAS history, payment plans, alerts, obligations, next BAS due, designated totals",
    response=Report,
    tags=["compliance"],
)
@guard(roles=ROLES)
async def get_report(request: Request, principal: Principal) -> Response:
    with timed_job(REPORT_JOB):
        report, _ = await build_report(request, uuid.UUID(principal.org_id))
    return Response(report.model_dump_json(), media_type=JSON_MEDIA_TYPE)
