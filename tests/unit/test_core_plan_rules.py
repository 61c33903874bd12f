"""Payment plans' pure rules and request body: the start-date window, decisions that happen once, only a BLOCKED
cycle gets a plan, and the body's field rules (reason, weekly amount, notes)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from services.core import bas
from services.core.plan_rules import (
    NOTES_MAX_CHARS,
    REASON_MAX_CHARS,
    START_WINDOW_DAYS,
    decide,
    request_error,
    start_date_error,
)
from services.core.plans import Decision, NewPlan

TODAY = date(2025, 8, 4)


@given(st.dates(), st.integers(-400, 400))
def test_a_plan_starts_from_today_to_the_end_of_the_window(today: date, offset: int) -> None:
    try:
        start = today + timedelta(days=offset)
    except OverflowError:
        return
    error = start_date_error(start, today)
    assert (error is None) == (0 <= offset <= START_WINDOW_DAYS)
    if offset < 0:
        assert error is not None and "past" in error
    elif offset > START_WINDOW_DAYS:
        assert error is not None and (today + timedelta(days=START_WINDOW_DAYS)).isoformat() in error


@pytest.mark.parametrize("decision", ["approve", "reject"])
def test_a_submitted_plan_is_decided_once(decision: Any) -> None:
    assert decide("SUBMITTED", decision) == {"approve": "APPROVED", "reject": "REJECTED"}[decision]
    assert decide("APPROVED", decision) is None
    assert decide("REJECTED", decision) is None


def test_only_a_blocked_cycle_gets_a_plan() -> None:
    assert request_error("BLOCKED") is None
    assert "READY" in str(request_error("READY"))
    assert "lodged" in str(request_error("LODGED"))


def body(**overrides: Any) -> dict[str, Any]:
    today = bas.business_date(datetime.now(UTC))
    valid: dict[str, Any] = {
        "reason": "A large customer paid late",
        "weekly_amount": "250.00",
        "start_date": (today + timedelta(days=7)).isoformat(),
    }
    valid.update(overrides)
    return {name: value for name, value in valid.items() if value is not None}


def test_a_valid_body_parses_with_exact_money_and_no_cycle_by_default() -> None:
    plan = NewPlan.model_validate(body(notes="Weekly from the operating account"))
    assert (str(plan.weekly_amount), plan.cycle_id, plan.notes) == ("250.00", None, "Weekly from the operating account")
    assert NewPlan.model_validate(body(reason="r" * REASON_MAX_CHARS, notes="n" * NOTES_MAX_CHARS))


@pytest.mark.parametrize(
    "overrides",
    [
        {"reason": ""},
        {"reason": "   "},
        {"reason": "r" * (REASON_MAX_CHARS + 1)},
        {"reason": None},
        {"notes": "n" * (NOTES_MAX_CHARS + 1)},
        {"weekly_amount": "0.00"},
        {"weekly_amount": "-5.00"},
        {"weekly_amount": 250},
        {"weekly_amount": 250.0},
        {"weekly_amount": "250"},
        {"weekly_amount": "1e3"},
        {"start_date": "2000-01-01"},
        {"start_date": "04/08/2025"},
        {"start_date": "2025-02-30"},
        {"start_date": 1754265600},
        {"start_date": "2025-08-04T00:00:00"},
        {"cycle_id": "not-a-uuid"},
        {"extra": 1},
    ],
)
def test_bodies_that_break_a_rule_are_refused(overrides: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        NewPlan.model_validate(body(**overrides))


def test_a_start_past_the_window_is_refused_and_the_window_end_is_not() -> None:
    today = bas.business_date(datetime.now(UTC))
    with pytest.raises(ValidationError, match=f"within {START_WINDOW_DAYS} days"):
        NewPlan.model_validate(body(start_date=(today + timedelta(days=START_WINDOW_DAYS + 1)).isoformat()))
    # A second either side of midnight in Sydney could move "today" between the two calls; the window's end is
    # still inside it the day after.
    assert NewPlan.model_validate(body(start_date=(today + timedelta(days=START_WINDOW_DAYS - 1)).isoformat()))


def test_a_decision_note_is_optional_and_bounded() -> None:
    assert Decision.model_validate({}).note is None
    assert Decision.model_validate({"note": "Agreed by phone"}).note == "Agreed by phone"
    for bad in ({"note": "n" * (NOTES_MAX_CHARS + 1)}, {"note": 5}, {"status": "APPROVED"}):
        with pytest.raises(ValidationError):
            Decision.model_validate(bad)
