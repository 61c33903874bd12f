"""Payment plans' rules (pure): what a request must say, and how a plan's status may change.

    start_date_error(start, today)     why a plan cannot start on `start` (None when it can)
    decide(status, decision)           the status a decision leads to, or None when the plan is already decided
    request_error(cycle_status)        why a cycle cannot get a plan (None when it is BLOCKED)

A plan is asked for a BLOCKED cycle (a shortfall the org cannot cover now): a reason (1..REASON_MAX_CHARS, not
all whitespace), a weekly amount (money, more than 0.00), a start date and optional notes (up to NOTES_MAX_CHARS).
The start date is a day in Australia (`services.core.bas.business_date`), from today to START_WINDOW_DAYS ahead:
not in the past, because a plan that began before it was asked for would make payments already missed; not far
ahead, because a plan exists to pay a shortfall that is due now (the ATO asks a plan's first payment within weeks).

A plan is SUBMITTED, then an admin with step-up APPROVES or REJECTS it, once: a decided plan is final (another
decision is 409 `plan_decided`). A cycle has at most one open plan (SUBMITTED or APPROVED; the partial unique index
`payment_plans_one_open` decides under races): after a rejection the org may ask again.
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Literal

__all__ = [
    "NOTES_MAX_CHARS",
    "OPEN_STATUSES",
    "REASON_MAX_CHARS",
    "START_WINDOW_DAYS",
    "Decision",
    "PlanStatus",
    "decide",
    "request_error",
    "start_date_error",
]

PlanStatus = Literal["SUBMITTED", "APPROVED", "REJECTED"]
Decision = Literal["approve", "reject"]
OPEN_STATUSES: tuple[PlanStatus, ...] = ("SUBMITTED", "APPROVED")
REASON_MAX_CHARS = 500
NOTES_MAX_CHARS = 1000
START_WINDOW_DAYS = 90
_OUTCOME: dict[Decision, PlanStatus] = {"approve": "APPROVED", "reject": "REJECTED"}


def start_date_error(start: date, today: date) -> str | None:
    if start < today:
        return f"a plan cannot start in the past (today is {today.isoformat()} in Australia)"
    if start > (latest := today + timedelta(days=START_WINDOW_DAYS)):
        return f"a plan must start within {START_WINDOW_DAYS} days, by {latest.isoformat()}"
    return None


def decide(status: str, decision: Decision) -> PlanStatus | None:
    """APPROVED or REJECTED for a SUBMITTED plan; None for one already decided."""
    return _OUTCOME[decision] if status == "SUBMITTED" else None


def request_error(cycle_status: str) -> str | None:
    """None for a BLOCKED cycle; otherwise why it gets no plan (its status is live for an unlodged cycle)."""
    if cycle_status == "BLOCKED":
        return None
    if cycle_status == "LODGED":
        return "The BAS cycle is lodged; a payment plan is only for a BLOCKED cycle"
    return f"The BAS cycle is {cycle_status}: nothing is short, so there is nothing for a payment plan to pay"
