"""Compliance's reads of core's internal API (services/core/internal.py), typed with core's own answer models.

Every call goes through the runtime's service client (a `core:read` token; the caller's request ID and trace
context go along, so one request can be followed into core's log) and is bounded by CORE_CALL_DEADLINE_S, the
token fetch included. Core never sees a write from here.

A failure is the caller's upstream problem, never a 500 and never a hang:

    core (or auth, for the token) unreachable, a non-2xx answer,   502 upstream_unavailable
    or an answer that does not parse into core's model
    no answer within CORE_CALL_DEADLINE_S                           504 upstream_timeout

each logged once with the path and the cause (the status, or the first validation error), never the body.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any, TypeVar

import aiohttp
from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from services.compliance.deps import compliance_deps
from services.core.alerts import AlertPage
from services.core.internal import ReportInputs
from shared.errors import ApiError
from shared.log import get_logger
from shared.service_client import ServiceAuthError, ServiceCallError

__all__ = ["CORE_CALL_DEADLINE_S", "PACK_ALERTS", "newest_alerts", "report_inputs"]

# Core answers report inputs in tens of milliseconds; five seconds is a core in trouble, and the proxy's own
# deadline for compliance must not run out first.
CORE_CALL_DEADLINE_S = 5.0
# The alerts a pack carries: the newest ones, whatever their status.
PACK_ALERTS = 25

M = TypeVar("M", bound=BaseModel)

log = get_logger(__name__)


async def _read(request: Request, path: str, model: type[M], params: dict[str, str] | None = None) -> M:
    client = request.app.state.runtime.require_service_client()
    url = f"{compliance_deps(request).settings.core_url}{path}"
    try:
        async with asyncio.timeout(CORE_CALL_DEADLINE_S):
            document: Any = await client.get_msgpack(url, params=params or {})
    except TimeoutError:
        log.warning("core_call_failed", path=path, error="timeout", deadline_s=CORE_CALL_DEADLINE_S)
        raise ApiError("upstream_timeout", f"Core did not answer within {CORE_CALL_DEADLINE_S:g}s") from None
    except ServiceCallError as error:
        log.warning("core_call_failed", path=path, error="status", status=error.status)
        raise ApiError("upstream_unavailable", f"Core answered {error.status}") from None
    except (ServiceAuthError, aiohttp.ClientError, ValueError) as error:
        log.warning("core_call_failed", path=path, error=type(error).__name__)
        raise ApiError("upstream_unavailable", "Core could not be reached") from None
    try:
        return model.model_validate(document)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "$"
        log.error("core_answer_invalid", path=path, at=where, problem=first["msg"], errors=error.error_count())
        raise ApiError("upstream_unavailable", "Core's answer was not understood") from None


async def report_inputs(request: Request, org_id: uuid.UUID) -> ReportInputs:
    """What the org's report is built from (`GET /internal/orgs/{org}/report-inputs`)."""
    return await _read(request, f"/internal/orgs/{org_id}/report-inputs", ReportInputs)


async def newest_alerts(request: Request, org_id: uuid.UUID, limit: int = PACK_ALERTS) -> AlertPage:
    """The org's `limit` newest alerts, open and resolved, without resolution notes."""
    return await _read(request, f"/internal/orgs/{org_id}/alerts", AlertPage, {"limit": str(limit)})
