"""The regulator's reads of compliance's and core's internal APIs (services/compliance/internal.py,
services/core/internal.py), typed with the contract's models (`shared.contracts`), for the session's org only (the
caller passes `session.org_id`; nothing here takes an org from a request).

Every call goes through `shared.upstream.read_model`: the runtime's service client (the regulator's token, with
`core:read compliance:read`; the caller's request ID goes along), bounded by UPSTREAM_CALL_DEADLINE_S, the token
fetch included. A failure is 502 `upstream_unavailable` or 504 `upstream_timeout`, logged as
`compliance_call_failed` / `core_call_failed`. Two refusals are the caller's, not a failure: a pack the org does not
have is 404 `not_found`, a cursor the upstream did not hand out 400 `invalid_query`. Neither service is written to.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import date
from typing import TypeVar

from pydantic import BaseModel
from starlette.requests import Request

from services.regulator.config import RegulatorSettings
from shared.contracts.compliance import PackItem, Report, SnapshotPage, VerifiedPackPage
from shared.contracts.core import AlertPage, AlertQuery, BankLineSummary
from shared.errors import ApiError, FieldError
from shared.pagination import PageQuery
from shared.upstream import read_model

__all__ = [
    "UPSTREAM_CALL_DEADLINE_S",
    "alerts",
    "bank_line_summary",
    "pack_item",
    "packs",
    "report",
    "snapshots",
]

# Compliance builds a report from one core read (its own deadline is 5 s); a little over that lets compliance
# answer its own 504 first, and stays well inside the proxy's deadline for the regulator route.
UPSTREAM_CALL_DEADLINE_S = 6.0

M = TypeVar("M", bound=BaseModel)


def _bad_cursor() -> ApiError:
    return ApiError(
        "invalid_query", "The cursor is not one this listing handed out", errors=[FieldError("cursor", "unknown")]
    )


def _no_pack() -> ApiError:
    return ApiError("not_found", "No evidence pack with this id in the session's org")


def _settings(request: Request) -> RegulatorSettings:
    settings = request.app.state.runtime.settings
    if not isinstance(settings, RegulatorSettings):
        raise RuntimeError("the regulator's clients run in the regulator service only")
    return settings


def _page_params(query: PageQuery) -> dict[str, str]:
    params = {"limit": str(query.limit)}
    if query.cursor is not None:
        params["cursor"] = query.cursor
    return params


async def _compliance(
    request: Request, path: str, model: type[M], params: dict[str, str] | None = None, *, pack: bool = False
) -> M:
    refusals: dict[int, Callable[[], ApiError]] = {400: _bad_cursor} if params and "cursor" in params else {}
    if pack:
        refusals[404] = _no_pack
    url = _settings(request).compliance_url
    return await read_model(
        request, "compliance", url, path, model, deadline_s=UPSTREAM_CALL_DEADLINE_S, params=params, refusals=refusals
    )


async def _core(request: Request, path: str, model: type[M], params: dict[str, str], cursor: bool = False) -> M:
    url = _settings(request).core_url
    refusals: dict[int, Callable[[], ApiError]] = {400: _bad_cursor} if cursor else {}
    return await read_model(
        request, "core", url, path, model, deadline_s=UPSTREAM_CALL_DEADLINE_S, params=params, refusals=refusals
    )


async def report(request: Request, org_id: uuid.UUID) -> Report:
    """The org's compliance report (`GET /internal/orgs/{org}/report` of compliance)."""
    return await _compliance(request, f"/internal/orgs/{org_id}/report", Report)


async def snapshots(request: Request, org_id: uuid.UUID, query: PageQuery) -> SnapshotPage:
    """A page of the org's monitoring snapshots, newest first."""
    return await _compliance(request, f"/internal/orgs/{org_id}/snapshots", SnapshotPage, _page_params(query))


async def packs(request: Request, org_id: uuid.UUID, query: PageQuery) -> VerifiedPackPage:
    """A page of the org's evidence packs, newest first, without payloads, each with its verification verdict."""
    return await _compliance(request, f"/internal/orgs/{org_id}/evidence", VerifiedPackPage, _page_params(query))


async def pack_item(request: Request, org_id: uuid.UUID, pack_id: uuid.UUID) -> PackItem:
    """One of the org's packs with its verification result; 404 `not_found` when the org has no such pack."""
    return await _compliance(request, f"/internal/orgs/{org_id}/evidence/{pack_id}", PackItem, pack=True)


async def alerts(request: Request, org_id: uuid.UUID, query: AlertQuery) -> AlertPage:
    """A page of the org's alerts, newest first, filtered by status and severity, without resolution notes."""
    params = {**_page_params(query), **query.filter_detail()}
    return await _core(request, f"/internal/orgs/{org_id}/alerts", AlertPage, params, cursor=query.cursor is not None)


async def bank_line_summary(request: Request, org_id: uuid.UUID, start: date, end: date) -> BankLineSummary:
    """Count and totals of the org's bank lines dated `start`..`end`, per month."""
    params = {"from": start.isoformat(), "to": end.isoformat(), "group": "month"}
    return await _core(request, f"/internal/orgs/{org_id}/bank-lines/summary", BankLineSummary, params)
