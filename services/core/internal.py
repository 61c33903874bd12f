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

No PII is read (payee and description are never selected, nor alert notes), so the reads write no audit row:
SPEC audits state changes and PII reads, and a caller that shows these figures to a person (the regulator's views)
audits its own call. Core keeps no org table, so an org it has no lines for, or one that does not exist, answers zeros.

A user token or an org API client's is for another audience: 401 `invalid_token`. A service token without
`core:read` (core's own) is 403 `forbidden`. A malformed org id is 400 `bad_request`, bad dates or `from` after
`to` 400 `invalid_query`, each naming the field. The answer is JSON, or msgpack for `Accept: application/msgpack`
(`shared.negotiation`; 406 `not_acceptable` for neither).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator
from datetime import date, timedelta
from decimal import Decimal
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from starlette.requests import Request
from starlette.responses import Response

from services.core import store
from services.core.alerts import AlertPage, AlertQuery, AlertView
from services.core.cursor import InvalidCursor, decode_alert_cursor, encode_alert_cursor
from services.core.deps import core_deps
from services.core.models import LineDate
from services.core.store import alerts as alert_store
from shared.authz import guard
from shared.canonical import canonical_json
from shared.errors import ApiError, FieldError
from shared.money import format_total
from shared.negotiation import encoded_response, response_media_type
from shared.openapi import documented
from shared.tokens import SERVICE_AUDIENCE, Principal
from shared.validation import parse_query

__all__ = [
    "CORE_READ_SCOPE",
    "BankLineSummary",
    "MonthSummary",
    "SummaryQuery",
    "bank_line_summary",
    "month_spans",
    "org_alerts",
    "path_org",
    "summarise",
]

CORE_READ_SCOPE = "core:read"
ZERO = Decimal("0.00")


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


class Totals(BaseModel):
    model_config = ConfigDict(frozen=True, serialize_by_alias=True, populate_by_name=True)

    start: date = Field(serialization_alias="from")
    end: date = Field(serialization_alias="to")
    count: int
    amount: str
    gst_amount: str
    paygw_amount: str


class MonthSummary(Totals):
    """One calendar month of the range (`YYYY-MM`), clipped to the range's dates."""

    month: str


class BankLineSummary(Totals):
    """The whole range; `months` only for `group=month`, else null."""

    org_id: str
    months: list[MonthSummary] | None


def path_org(text: str) -> uuid.UUID:
    """The org id of the path in its canonical form; 400 `bad_request` naming `org_id` for anything else."""
    try:
        org_id = uuid.UUID(text)
    except ValueError:
        org_id = None
    if org_id is None or str(org_id) != text.lower():
        raise ApiError("bad_request", "The org id is not a UUID", errors=[FieldError("org_id", "not a UUID")])
    return org_id


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
    org_id = path_org(request.path_params["org_id"])
    query = parse_query(request.query_params, SummaryQuery)
    media_type = response_media_type(request)
    async with request.app.state.runtime.db.pool.acquire() as conn:
        rows = await store.bank_line_summary(conn, org_id, query.start, query.end)
    summary = summarise(org_id, query.start, query.end, rows, by_month=query.group == "month")
    return encoded_response(summary, media_type)


@documented(
    "An org's alerts, newest first, paged and filtered like GET /alerts, without resolution notes; JSON or msgpack",
    response=AlertPage,
    tags=["internal"],
)
@guard(audience=SERVICE_AUDIENCE, scopes=(CORE_READ_SCOPE,))
async def org_alerts(request: Request, principal: Principal) -> Response:
    org_id = path_org(request.path_params["org_id"])
    query = parse_query(request.query_params, AlertQuery)
    media_type = response_media_type(request)
    bound_to = canonical_json(query.filter_detail())
    async with request.app.state.runtime.db.pool.acquire() as conn:
        key = await core_deps(request).cursor_key.get(conn)
        try:
            after = decode_alert_cursor(key, org_id, bound_to, query.cursor) if query.cursor is not None else None
        except InvalidCursor:
            raise ApiError(
                "invalid_query",
                "The cursor is not one this API gave for these filters",
                errors=[FieldError("cursor", "not a cursor from this API for these filters")],
            ) from None
        rows = await alert_store.page_alerts(conn, org_id, query.filters(), after, query.limit + 1)
    page, more = rows[: query.limit], len(rows) > query.limit
    last = page[-1] if more else None
    body = AlertPage(
        items=[AlertView.of(alert).model_copy(update={"resolution_note": None}) for alert in page],
        next_cursor=encode_alert_cursor(key, org_id, bound_to, alert_store.AlertKey(last.created_at, last.id))
        if last
        else None,
    )
    return encoded_response(body, media_type)
