"""Core's routes for the other services only (the proxy never forwards `/internal/...`), called with a service
token that carries `core:read` (compliance's and the regulator's: services/auth/config.py `SERVICE_SCOPES`).

    GET /internal/orgs/{org_id}/bank-lines/summary?from=YYYY-MM-DD&to=YYYY-MM-DD[&group=month]

The count and the sums of `amount`, `gst_amount` and `paygw_amount` of the org's lines dated `from`..`to`
(inclusive, both required, the dates a line may carry); with `group=month` also one entry per calendar month the
range touches, empty months included with zeros, so a BAS quarter is the sum of three entries (or one call with
the quarter's dates). Sums are money strings with two places (`shared.money.format_total`): past the twelve integer
digits one line obeys but a sum of many need not, they keep the same spelling with more digits.

    GET /internal/orgs/{org_id}/alerts?status=open|resolved&severity=&cursor=&limit=

The org's alerts, newest first, paged like `GET /alerts` (the same filters, a cursor bound to org and filters),
without resolution notes: a note is free text a user wrote for the org, not for other services.

    GET /internal/orgs/{org_id}/report-inputs

What the compliance report is built from, read in one read-only REPEATABLE READ transaction so its parts agree:
`cycles`, the current BAS cycle (live, as GET /org/obligations/current shows it) and up to REPORT_CYCLES - 1
earlier ones as their rows recorded them, newest first, each with a `period` label such as "2025-Q3 (Jul-Sep)"
(`period_label`), its status, due date, and when it was lodged and whether on time; `payment_plans`, the newest
REPORT_PLANS without their free text (reason, notes, decision note); `alerts`, the number of open alerts in all and
of each severity (`open_by_severity`), the open HIGH ones' count with the newest REPORT_OPEN_HIGH of them, and the
number resolved since the current quarter began (in Australia);
`obligations`, the current cycle's figures, status, blockers and `next_bas_due`; `designated_totals`, the PAYGW
and GST designated balances. Every figure comes from the same functions the org's own routes use.

No PII is read (payee and description are never selected, nor alert notes), so the reads write no audit row:
SPEC audits state changes and PII reads, and a caller that shows these figures to a person (the regulator's views)
audits its own call. Core keeps no org table, so an org it has no lines for, or one that does not exist, answers zeros.

A user token or an org API client's is for another audience: 401 `invalid_token`. A service token without
`core:read` (core's own) is 403 `forbidden`. A malformed org id is 400 `bad_request` (`shared.validation.path_org`);
bad dates or `from` after `to` are 400 `invalid_query`, each naming the field.
The answer is JSON, or msgpack for `Accept: application/msgpack` (`shared.negotiation`; 406 `not_acceptable` for
neither). The bodies are the contract's (`shared.contracts.core`): compliance and the regulator read them from there.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from starlette.requests import Request
from starlette.responses import Response

from services.core import bas, store
from services.core.alerts import alert_filters, alert_view
from services.core.cursor import InvalidCursor, decode_alert_cursor, encode_alert_cursor
from services.core.cycles import LODGED, CurrentCycle, read_current_cycle, tax_view
from services.core.deps import core_deps
from services.core.obligations import TaxAmounts
from services.core.store import alerts as alert_store
from services.core.store import cycles as cycle_store
from services.core.store import plans as plan_store
from shared.authz import guard
from shared.canonical import canonical_json
from shared.contracts.core import (
    REPORT_CYCLES,
    REPORT_OPEN_HIGH,
    REPORT_PLANS,
    AlertPage,
    AlertQuery,
    AlertSummary,
    AlertView,
    BankLineSummary,
    DesignatedTotals,
    LineDate,
    MonthSummary,
    OpenAlertCounts,
    ReportCycle,
    ReportInputs,
    ReportObligations,
    ReportPlan,
)
from shared.money import format_money, format_total
from shared.negotiation import encoded_response, response_media_type
from shared.openapi import documented
from shared.pagination import bad_cursor
from shared.tokens import SERVICE_AUDIENCE, Principal
from shared.validation import parse_query, path_org

__all__ = [
    "CORE_READ_SCOPE",
    "SummaryQuery",
    "bank_line_summary",
    "month_spans",
    "org_alerts",
    "period_label",
    "report_cycles",
    "report_inputs",
    "summarise",
]

CORE_READ_SCOPE = "core:read"
ZERO = Decimal("0.00")
QUARTER_MONTHS = ("Jan-Mar", "Apr-Jun", "Jul-Sep", "Oct-Dec")
MONTHS_PER_QUARTER = 3


class SummaryQuery(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    start: LineDate = Field(alias="from")
    end: LineDate = Field(alias="to")
    group: Literal["none", "month"] = "none"

    @field_validator("end")
    @classmethod
    def _not_before_start(cls, end: date, info: ValidationInfo) -> date:
        start = info.data.get("start")
        if start is not None and end < start:
            raise ValueError("'to' must be on or after 'from'")
        return end


def month_spans(start: date, end: date) -> Iterator[tuple[date, date, date]]:
    """(first day of the month, first day in range, last day in range) for each month `start`..`end` touches."""
    month = start.replace(day=1)
    while month <= end:
        following = (month + timedelta(days=32)).replace(day=1)
        yield month, max(month, start), min(following - timedelta(days=1), end)
        month = following


def _totals(rows: Iterable[store.MonthTotals]) -> tuple[int, str, str, str]:
    rows = list(rows)
    return (
        sum(row.count for row in rows),
        format_total(sum((row.amount for row in rows), ZERO)),
        format_total(sum((row.gst_amount for row in rows), ZERO)),
        format_total(sum((row.paygw_amount for row in rows), ZERO)),
    )


def summarise(
    org_id: uuid.UUID, start: date, end: date, rows: Iterable[store.MonthTotals], *, by_month: bool
) -> BankLineSummary:
    """The answer from the store's per-month rows (months without lines have none)."""
    by_first_day = {row.month: row for row in rows}
    count, amount, gst, paygw = _totals(by_first_day.values())
    months = None
    if by_month:
        months = []
        for first_day, month_start, month_end in month_spans(start, end):
            row = by_first_day.get(first_day)
            m_count, m_amount, m_gst, m_paygw = _totals([row] if row is not None else [])
            months.append(
                MonthSummary(
                    month=first_day.strftime("%Y-%m"),
                    start=month_start,
                    end=month_end,
                    count=m_count,
                    amount=m_amount,
                    gst_amount=m_gst,
                    paygw_amount=m_paygw,
                )
            )
    return BankLineSummary(
        org_id=str(org_id),
        start=start,
        end=end,
        count=count,
        amount=amount,
        gst_amount=gst,
        paygw_amount=paygw,
        months=months,
    )


@documented(
    "Count and totals of an org's bank lines between two dates, optionally per month (no PII); JSON or msgpack",
    response=BankLineSummary,
    tags=["internal"],
)
@guard(audience=SERVICE_AUDIENCE, scopes=(CORE_READ_SCOPE,))
async def bank_line_summary(request: Request, principal: Principal) -> Response:
    org_id = path_org(request)
    query = parse_query(request.query_params, SummaryQuery)
    media_type = response_media_type(request)
    async with request.app.state.runtime.db.pool.acquire() as conn:
        rows = await store.bank_line_summary(conn, org_id, query.start, query.end)
    summary = summarise(org_id, query.start, query.end, rows, by_month=query.group == "month")
    return encoded_response(summary, media_type)


# What an alert keeps to itself when it leaves core for another service: free text the org wrote (resolution notes)
# and the text of a refused deposit's source, which may name a person and an account (its tag stays).
WITHHELD_ALERT_DETAIL = ("source",)


def shared_alert_view(alert: alert_store.Alert) -> AlertView:
    """The alert as compliance and the regulator see it: no resolution note, no WITHHELD_ALERT_DETAIL keys."""
    detail = {key: value for key, value in alert.detail.items() if key not in WITHHELD_ALERT_DETAIL}
    return alert_view(alert).model_copy(update={"resolution_note": None, "detail": detail})


@documented(
    "An org's alerts, newest first, paged and filtered like GET /alerts, without resolution notes; JSON or msgpack",
    response=AlertPage,
    tags=["internal"],
)
@guard(audience=SERVICE_AUDIENCE, scopes=(CORE_READ_SCOPE,))
async def org_alerts(request: Request, principal: Principal) -> Response:
    org_id = path_org(request)
    query = parse_query(request.query_params, AlertQuery)
    media_type = response_media_type(request)
    bound_to = canonical_json(query.filter_detail())
    async with request.app.state.runtime.db.pool.acquire() as conn:
        key = await core_deps(request).cursor_key.get(conn)
        try:
            after = decode_alert_cursor(key, org_id, bound_to, query.cursor) if query.cursor is not None else None
        except InvalidCursor:
            raise bad_cursor() from None
        rows = await alert_store.page_alerts(conn, org_id, alert_filters(query), after, query.limit + 1)
    page, more = rows[: query.limit], len(rows) > query.limit
    last = page[-1] if more else None
    body = AlertPage(
        items=[shared_alert_view(alert) for alert in page],
        next_cursor=encode_alert_cursor(key, org_id, bound_to, alert_store.AlertKey(last.created_at, last.id))
        if last
        else None,
    )
    return encoded_response(body, media_type)


def period_label(period_start: date) -> str:
    """ "2025-Q3 (Jul-Sep)": the calendar year and quarter a BAS period starts in, with its months spelt out, which
    reads the same to someone counting financial years (where Jul-Sep is Q1)."""
    quarter = (period_start.month - 1) // MONTHS_PER_QUARTER
    return f"{period_start.year}-Q{quarter + 1} ({QUARTER_MONTHS[quarter]})"


def _lodged_on_time(lodged_at: datetime | None, due_date: date) -> bool | None:
    return None if lodged_at is None else bas.business_date(lodged_at) <= due_date


def report_cycles(current: CurrentCycle, rows: Sequence[cycle_store.CycleRow]) -> list[ReportCycle]:
    """The current cycle (as reads see it) and the org's earlier cycle rows, newest first, at most REPORT_CYCLES."""
    view = current.view
    cycles = [
        ReportCycle(
            id=view.id,
            period=period_label(view.period_start),
            period_start=view.period_start,
            period_end=view.period_end,
            due_date=view.due_date,
            status=view.status,
            current=True,
            lodged_at=view.lodged_at,
            lodged_on_time=_lodged_on_time(view.lodged_at, view.due_date),
            lodgement_reference=view.lodgement_reference,
        )
    ]
    for row in rows:
        if len(cycles) == REPORT_CYCLES:
            break
        if row.period_start >= view.period_start:
            continue  # the current cycle's own row (shown above), or none later exists
        cycles.append(
            ReportCycle(
                id=row.id,
                period=period_label(row.period_start),
                period_start=row.period_start,
                period_end=row.period_end,
                due_date=row.due_date,
                status=row.status,
                current=False,
                lodged_at=row.lodged_at if row.status == LODGED else None,
                lodged_on_time=_lodged_on_time(row.lodged_at, row.due_date),
                lodgement_reference=row.lodgement_reference,
            )
        )
    return cycles


def _plan(plan: plan_store.Plan) -> ReportPlan:
    return ReportPlan(
        id=plan.id,
        cycle_id=plan.cycle_id,
        status=plan.status,
        weekly_amount=format_money(plan.weekly_amount),
        start_date=plan.start_date,
        requested_at=plan.requested_at,
        decided_at=plan.decided_at,
    )


def _quarter_began(current: CurrentCycle) -> datetime:
    """The instant the current quarter began in Australia."""
    return datetime.combine(current.cycle.period_start, time.min, tzinfo=bas.BAS_TIMEZONE)


@documented(
    "What an org's compliance report is built from: BAS cycles, payment plans, alert summary, obligations and "
    "designated totals (no PII); JSON or msgpack",
    response=ReportInputs,
    tags=["internal"],
)
@guard(audience=SERVICE_AUDIENCE, scopes=(CORE_READ_SCOPE,))
async def report_inputs(request: Request, principal: Principal) -> Response:
    org_id = path_org(request)
    media_type = response_media_type(request)
    now = datetime.now(UTC)
    async with (
        request.app.state.runtime.db.pool.acquire() as conn,
        conn.transaction(isolation="repeatable_read", readonly=True),
    ):
        current = await read_current_cycle(conn, org_id, now)
        rows = await cycle_store.list_cycles(conn, org_id, REPORT_CYCLES)
        plans = await plan_store.list_plans(conn, org_id, None, REPORT_PLANS)
        since = _quarter_began(current)
        counts = await alert_store.count_alerts(conn, org_id, resolved_since=since)
        open_high = await alert_store.page_alerts(
            conn, org_id, alert_store.AlertFilters(resolved=False, severity="HIGH"), None, REPORT_OPEN_HIGH
        )
        balances: TaxAmounts = await cycle_store.designated_balances(conn, org_id)
    figures = current.obligations
    body = ReportInputs(
        org_id=str(org_id),
        generated_at=now,
        cycles=report_cycles(current, rows),
        payment_plans=[_plan(plan) for plan in plans],
        alerts=AlertSummary(
            open_high_count=counts.open_by_severity["HIGH"],
            open_total=counts.open_total,
            open_by_severity=OpenAlertCounts.model_validate(counts.open_by_severity),
            open_high=[shared_alert_view(alert) for alert in open_high],
            resolved_this_quarter=counts.resolved_since,
            quarter_start=current.cycle.period_start,
        ),
        obligations=ReportObligations(
            cycle_id=current.view.id,
            period=period_label(current.cycle.period_start),
            paygw=tax_view(figures.paygw),
            gst=tax_view(figures.gst),
            total_shortfall=format_total(figures.total_shortfall),
            status=current.status,
            blockers=current.blockers,
            next_bas_due=bas.next_bas_due(bas.business_date(now)),
        ),
        designated_totals=DesignatedTotals(paygw=balances.paygw, gst=balances.gst),
    )
    return encoded_response(body, media_type)
