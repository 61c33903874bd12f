"""The regulator's read-only views of its session's org, one function per view, shared by the JSON API (api.py)
and the HTML portal (portal.py), so both show the same data and audit it the same way.

Each view reads compliance's or core's internal API (`services.regulator.clients`: the service token, the request
ID passed on, a deadline) for `session.org_id` and never for an org a caller names, then writes one audit row in
that org's chain: action `regulator.<view>.read`, actor `regulator:<credential name>`, target the org (or the pack),
a small detail (how many items, which pack). SPEC audits PII reads and the issue asks for every regulator read, so
an org sees who looked at what and when. The row is written in a short transaction of its own AFTER the upstream
answered (no transaction waits on another service); an upstream failure (502/504), a refused cursor (400) or a pack
the org does not have (404) shows nothing and writes nothing.

    report(request, session)                             the compliance report        regulator.report.read
    alerts(request, session, AlertQuery)                 a page of alerts             regulator.alerts.read
    snapshots(request, session, PageQuery)               a page of snapshots          regulator.snapshots.read
    bank_line_summary(request, session, SummaryRange)    bank-line totals by month    regulator.bank_lines.read
    evidence_list(request, session, PageQuery)           packs, each with its verdict regulator.evidence.list
    evidence_item(request, session, pack_id)             a pack and its verification  regulator.evidence.read

The bank-line summary covers the last SUMMARY_DEFAULT_MONTHS calendar months (this one included) unless `from`/`to`
say otherwise, at most SUMMARY_MAX_DAYS days (about five years) per call: its answer has one entry per month.
"""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request

from services.regulator import clients
from services.regulator.deps import POOL_ACQUIRE_TIMEOUT_S
from services.regulator.models import RegulatorSession
from shared import audit
from shared.contracts.compliance import PackItem, Report, SnapshotPage, VerifiedPackPage
from shared.contracts.core import AlertPage, AlertQuery, BankLineSummary, LineDate
from shared.errors import ApiError, FieldError
from shared.pagination import PageQuery

__all__ = [
    "SUMMARY_DEFAULT_MONTHS",
    "SUMMARY_MAX_DAYS",
    "SummaryRange",
    "alerts",
    "bank_line_summary",
    "evidence_item",
    "evidence_list",
    "report",
    "snapshots",
    "summary_dates",
]

SUMMARY_DEFAULT_MONTHS = 12
# Five years of days (with a leap day to spare): 60 monthly entries, the most a regulator's question spans.
SUMMARY_MAX_DAYS = 5 * 366


class SummaryRange(BaseModel):
    """`?from=YYYY-MM-DD&to=YYYY-MM-DD` of the bank-line summary, both optional; unknown parameters are refused
    (an `org_id` among them: the org is the session's)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    start: LineDate | None = Field(default=None, alias="from")
    end: LineDate | None = Field(default=None, alias="to")


def _months_back(day: date, months: int) -> date:
    """The first day of the calendar month `months` before `day`'s."""
    index = day.year * 12 + day.month - 1 - months
    return date(index // 12, index % 12 + 1, 1)


def summary_dates(query: SummaryRange, today: date) -> tuple[date, date]:
    """The (from, to) a summary covers: as given, `to` defaulting to today and `from` to the first day of the
    month SUMMARY_DEFAULT_MONTHS - 1 months before `to`'s; 400 `invalid_query` naming the field when `to` is
    before `from` or the range is longer than SUMMARY_MAX_DAYS."""
    end = query.end if query.end is not None else max(today, query.start or today)
    start = query.start if query.start is not None else _months_back(end, SUMMARY_DEFAULT_MONTHS - 1)
    if end < start:
        raise ApiError("invalid_query", errors=[FieldError("to", "must be on or after 'from'")])
    if (end - start).days + 1 > SUMMARY_MAX_DAYS:
        raise ApiError(
            "invalid_query", errors=[FieldError("from", f"the range may span at most {SUMMARY_MAX_DAYS} days")]
        )
    return start, end


async def _audit_read(
    request: Request, session: RegulatorSession, action: str, target: str, detail: dict[str, Any]
) -> None:
    async with request.app.state.runtime.db.pool.acquire(timeout=POOL_ACQUIRE_TIMEOUT_S) as conn, conn.transaction():
        await audit.append(
            conn, org_id=session.org_id, actor=session.actor, action=action, target=target, detail=detail
        )


def _org(session: RegulatorSession) -> str:
    return f"org:{session.org_id}"


async def report(request: Request, session: RegulatorSession) -> Report:
    """The session's org's compliance report."""
    body = await clients.report(request, session.org_id)
    detail = {"period": body.obligations.period, "status": body.obligations.status}
    await _audit_read(request, session, "regulator.report.read", _org(session), detail)
    return body


async def alerts(request: Request, session: RegulatorSession, query: AlertQuery | None = None) -> AlertPage:
    """A page of the session's org's alerts, newest first, optionally by status and severity."""
    query = query if query is not None else AlertQuery()
    page = await clients.alerts(request, session.org_id, query)
    detail = {"count": len(page.items), **query.filter_detail()}
    await _audit_read(request, session, "regulator.alerts.read", _org(session), detail)
    return page


async def snapshots(request: Request, session: RegulatorSession, query: PageQuery | None = None) -> SnapshotPage:
    """A page of the session's org's monitoring snapshots, newest first."""
    page = await clients.snapshots(request, session.org_id, query if query is not None else PageQuery())
    await _audit_read(request, session, "regulator.snapshots.read", _org(session), {"count": len(page.items)})
    return page


async def bank_line_summary(
    request: Request, session: RegulatorSession, query: SummaryRange | None = None
) -> BankLineSummary:
    """Count and totals of the session's org's bank lines by month (`summary_dates` says which months)."""
    start, end = summary_dates(query if query is not None else SummaryRange(), datetime.now(UTC).date())
    summary = await clients.bank_line_summary(request, session.org_id, start, end)
    detail = {"from": start.isoformat(), "to": end.isoformat(), "count": summary.count}
    await _audit_read(request, session, "regulator.bank_lines.read", _org(session), detail)
    return summary


async def evidence_list(
    request: Request, session: RegulatorSession, query: PageQuery | None = None
) -> VerifiedPackPage:
    """A page of the session's org's evidence packs, newest first, without payloads, each with its verification
    verdict (`verified`, `failed_check`): one read and one `regulator.evidence.list` row for the page, the packs
    listed, not each opened (`evidence_item` is that read)."""
    page = await clients.packs(request, session.org_id, query if query is not None else PageQuery())
    await _audit_read(request, session, "regulator.evidence.list", _org(session), {"count": len(page.items)})
    return page


async def evidence_item(request: Request, session: RegulatorSession, pack_id: uuid.UUID) -> PackItem:
    """One of the session's org's packs (the export envelope) with its verification result; 404 `not_found` for
    any other id."""
    item = await clients.pack_item(request, session.org_id, pack_id)
    if item.export.org_id != session.org_id:  # compliance reads by org; this is the regulator's own check of it
        raise ApiError("not_found", "No evidence pack with this id in the session's org")
    detail = {"id": str(pack_id), "valid": item.verification.valid}
    await _audit_read(request, session, "regulator.evidence.read", f"evidence_pack:{pack_id}", detail)
    return item
