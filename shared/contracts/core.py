"""Core's internal answers, as compliance and the regulator read them (services/core/internal.py serves them).

    GET /internal/orgs/{org_id}/report-inputs           ReportInputs
    GET /internal/orgs/{org_id}/alerts?AlertQuery       AlertPage (no resolution notes, no withheld detail)
    GET /internal/orgs/{org_id}/bank-lines/summary      BankLineSummary (`from`/`to` are LineDates)

Core's own routes answer the same AlertView, AlertPage, TaxView and DesignatedTotals, and take LineDate and
AlertQuery, so a field means the same to an org's user as to another service.

Money is a string with two places: `Total` serialises a Decimal with `shared.money.format_total`.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, PlainValidator, WithJsonSchema
from pydantic_core import PydanticCustomError

from shared.money import format_total
from shared.pagination import PageQuery

__all__ = [
    "EARLIEST_LINE_DATE",
    "REPORT_CYCLES",
    "REPORT_OPEN_HIGH",
    "REPORT_PLANS",
    "SEVERITIES",
    "AlertPage",
    "AlertQuery",
    "AlertSummary",
    "AlertView",
    "BankLineSummary",
    "DesignatedTotals",
    "LineDate",
    "MonthSummary",
    "OpenAlertCounts",
    "ReportCycle",
    "ReportInputs",
    "ReportObligations",
    "ReportPlan",
    "Severity",
    "TaxView",
    "Total",
    "latest_line_date",
    "parse_iso_date",
    "parse_line_date",
]

# How much history the report inputs carry: two years of quarters, and lists a report shows in full.
REPORT_CYCLES = 8
REPORT_PLANS = 20
REPORT_OPEN_HIGH = 20
EARLIEST_LINE_DATE = date(1900, 1, 1)
_ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", re.ASCII)

Severity = Literal["LOW", "MEDIUM", "HIGH"]
SEVERITIES: tuple[Severity, ...] = ("LOW", "MEDIUM", "HIGH")
# A sum of money may pass the twelve integer digits one line obeys: written with format_total, never refused.
Total = Annotated[Decimal, PlainSerializer(format_total, return_type=str)]


# --- dates ----------------------------------------------------------------------------------------------------


def latest_line_date(today: date) -> date:
    """The last date a line may carry: Dec 31 of the year after `today` (scheduled payments, not typos)."""
    return date(today.year + 1, 12, 31)


def parse_iso_date(value: object) -> date:
    """The day `value` spells as `YYYY-MM-DD` (nothing else `date.fromisoformat` takes); `ValueError` (a
    `TypeError` for a value that is not a string) saying which rule it broke."""
    if not isinstance(value, str):
        raise TypeError("a date must be a string like 2025-07-01")
    if _ISO_DATE.fullmatch(value) is None:
        raise ValueError("a date must be written YYYY-MM-DD")
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise ValueError("not a day of the calendar") from None


def parse_line_date(value: object, today: date) -> date:
    """The date `value` spells as `YYYY-MM-DD` (`parse_iso_date`), within EARLIEST_LINE_DATE..
    latest_line_date(today); `ValueError` (a `TypeError` for a value that is not a string) saying which rule it
    broke."""
    day = parse_iso_date(value)
    if day < EARLIEST_LINE_DATE:
        raise ValueError(f"a date must be on or after {EARLIEST_LINE_DATE.isoformat()}")
    if day > (latest := latest_line_date(today)):
        raise ValueError(f"a date must be on or before {latest.isoformat()}")
    return day


def _validate_line_date(value: Any) -> date:
    try:
        return parse_line_date(value, datetime.now(UTC).date())
    except TypeError as exc:
        raise PydanticCustomError("date_type", str(exc)) from None
    except ValueError as exc:
        raise PydanticCustomError("date", str(exc)) from None


LineDate = Annotated[
    date,
    PlainValidator(_validate_line_date),
    PlainSerializer(date.isoformat, return_type=str),
    WithJsonSchema({"type": "string", "format": "date", "examples": ["2025-07-01"]}),
]


# --- alerts ---------------------------------------------------------------------------------------------------


class AlertQuery(PageQuery):
    """`GET /alerts?status=&severity=&cursor=&limit=` (and the internal listing); unknown parameters are refused."""

    status: Literal["open", "resolved"] | None = None
    severity: Severity | None = None

    def filter_detail(self) -> dict[str, str]:
        """The filters as given: what a cursor is bound to (canonically) and the audit record names."""
        named = {"status": self.status, "severity": self.severity}
        return {name: value for name, value in named.items() if value is not None}


class AlertView(BaseModel):
    id: uuid.UUID
    type: str
    severity: Severity
    message: str
    detail: dict[str, Any]
    status: Literal["open", "resolved"]
    created_at: datetime
    created_by: str
    resolved_at: datetime | None
    resolved_by: str | None
    resolution_note: str | None


class AlertPage(BaseModel):
    items: list[AlertView]
    next_cursor: str | None


# --- bank-line summary ----------------------------------------------------------------------------------------


class Totals(BaseModel):
    model_config = ConfigDict(frozen=True, serialize_by_alias=True, populate_by_name=True)

    start: date = Field(validation_alias="from", serialization_alias="from")
    end: date = Field(validation_alias="to", serialization_alias="to")
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


# --- report inputs --------------------------------------------------------------------------------------------


class TaxView(BaseModel):
    required: str
    secured: str
    shortfall: str
    status: str


class DesignatedTotals(BaseModel):
    paygw: Total
    gst: Total


class ReportCycle(BaseModel):
    id: uuid.UUID
    period: str
    period_start: date
    period_end: date
    due_date: date
    status: str  # the current cycle's live READY/BLOCKED or LODGED; an earlier one's as its row recorded it
    current: bool
    lodged_at: datetime | None
    lodged_on_time: bool | None  # lodged on or before its due date (in Australia); None while not lodged
    lodgement_reference: str | None


class ReportPlan(BaseModel):
    """A payment plan without its free text (reason, notes, decision note: written by people for the org)."""

    id: uuid.UUID
    cycle_id: uuid.UUID
    status: str
    weekly_amount: str
    start_date: date
    requested_at: datetime
    decided_at: datetime | None


class OpenAlertCounts(BaseModel):
    """The org's open alerts of each severity (HIGH, MEDIUM, LOW)."""

    HIGH: int
    MEDIUM: int
    LOW: int


class AlertSummary(BaseModel):
    open_high_count: int
    open_total: int
    open_by_severity: OpenAlertCounts
    open_high: list[AlertView] = Field(description=f"The newest {REPORT_OPEN_HIGH} open HIGH alerts")
    resolved_this_quarter: int
    quarter_start: date


class ReportObligations(BaseModel):
    cycle_id: uuid.UUID
    period: str
    paygw: TaxView
    gst: TaxView
    total_shortfall: str
    status: str
    blockers: list[str]
    next_bas_due: date


class ReportInputs(BaseModel):
    org_id: str
    generated_at: datetime
    cycles: list[ReportCycle] = Field(
        description=f"The current cycle and earlier ones, newest first, at most {REPORT_CYCLES}"
    )
    payment_plans: list[ReportPlan] = Field(description=f"The newest {REPORT_PLANS}, newest first")
    alerts: AlertSummary
    obligations: ReportObligations
    designated_totals: DesignatedTotals
