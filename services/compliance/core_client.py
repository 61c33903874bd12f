"""Compliance's reads of core's internal API (services/core/internal.py), typed with the contract's models
(`shared.contracts.core`).

Every call goes through `shared.upstream.read_model`: the runtime's service client (a `core:read` token; the
caller's request ID and trace context go along, so one request can be followed into core's log), bounded by
CORE_CALL_DEADLINE_S, the token fetch included. Core never sees a write from here. A failure is the caller's
upstream problem, never a 500 and never a hang: 502 `upstream_unavailable` (core or auth unreachable, a non-2xx
answer, an answer that does not parse into core's model) or 504 `upstream_timeout` (no answer within the deadline),
each logged once as `core_call_failed` or `core_answer_invalid` with the path and the cause, never the body.
"""

from __future__ import annotations

import uuid
from typing import TypeVar

from pydantic import BaseModel
from starlette.requests import Request

from services.compliance.deps import compliance_deps
from shared.contracts.core import AlertPage, ReportInputs
from shared.upstream import read_model

__all__ = ["CORE_CALL_DEADLINE_S", "PACK_ALERTS", "newest_alerts", "report_inputs"]

# Core answers report inputs in tens of milliseconds; five seconds is a core in trouble, and the proxy's own
# deadline for compliance must not run out first.
CORE_CALL_DEADLINE_S = 5.0
# The alerts a pack carries: the newest ones, whatever their status.
PACK_ALERTS = 25

M = TypeVar("M", bound=BaseModel)


async def _read(request: Request, path: str, model: type[M], params: dict[str, str] | None = None) -> M:
    core_url = compliance_deps(request).settings.core_url
    return await read_model(request, "core", core_url, path, model, deadline_s=CORE_CALL_DEADLINE_S, params=params)


async def report_inputs(request: Request, org_id: uuid.UUID) -> ReportInputs:
    """What the org's report is built from (`GET /internal/orgs/{org}/report-inputs`)."""
    return await _read(request, f"/internal/orgs/{org_id}/report-inputs", ReportInputs)


async def newest_alerts(request: Request, org_id: uuid.UUID, limit: int = PACK_ALERTS) -> AlertPage:
    """The org's `limit` newest alerts, open and resolved, without resolution notes."""
    return await _read(request, f"/internal/orgs/{org_id}/alerts", AlertPage, {"limit": str(limit)})
