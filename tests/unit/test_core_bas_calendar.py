"""The BAS calendar: quarters, due dates rolled past weekends and national public holidays, cycle ids."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from services.core.bas import (
    business_date,
    cycle_for,
    cycle_id,
    is_business_day,
    next_bas_due,
    roll_to_business_day,
)

ORG = uuid.UUID("3f0e2a8c-9d41-4c55-8a3e-1b6f7c2d9e10")
DAYS = st.dates(min_value=date(2000, 1, 1), max_value=date(2099, 12, 31))


def test_quarters_and_their_due_dates_in_2025_2026() -> None:
    # Jul-Sep 2025: 28 Oct 2025 is a Tuesday.
    assert cycle_for(date(2025, 8, 15)) == cycle_for(date(2025, 7, 1))
    q1 = cycle_for(date(2025, 9, 30))
    assert (q1.period_start, q1.period_end, q1.due_date) == (date(2025, 7, 1), date(2025, 9, 30), date(2025, 10, 28))
    # Oct-Dec 2025: 28 Feb 2026 is a Saturday, so Monday 2 March.
    q2 = cycle_for(date(2025, 10, 1))
    assert (q2.period_start, q2.period_end, q2.due_date) == (date(2025, 10, 1), date(2025, 12, 31), date(2026, 3, 2))
    # Jan-Mar 2026: 28 Apr 2026 is a Tuesday.
    q3 = cycle_for(date(2026, 2, 14))
    assert (q3.period_start, q3.period_end, q3.due_date) == (date(2026, 1, 1), date(2026, 3, 31), date(2026, 4, 28))
    # Apr-Jun 2026: 28 Jul 2026 is a Tuesday.
    q4 = cycle_for(date(2026, 6, 30))
    assert (q4.period_start, q4.period_end, q4.due_date) == (date(2026, 4, 1), date(2026, 6, 30), date(2026, 7, 28))
    # Jul-Sep 2026: 28 Oct 2026 is a Wednesday; Oct-Dec 2026: 28 Feb 2027 is a Sunday, so Monday 1 March.
    assert cycle_for(date(2026, 7, 1)).due_date == date(2026, 10, 28)
    assert cycle_for(date(2026, 11, 27)).due_date == date(2027, 3, 1)


def test_weekend_rolls() -> None:
    # 28 Oct 2028 is a Saturday, 28 Apr 2024 a Sunday, 28 Jul 2029 a Saturday.
    assert cycle_for(date(2028, 8, 1)).due_date == date(2028, 10, 30)
    assert cycle_for(date(2024, 1, 1)).due_date == date(2024, 4, 29)
    assert cycle_for(date(2029, 5, 5)).due_date == date(2029, 7, 30)


def test_national_public_holidays_of_2025_and_2026_are_not_business_days() -> None:
    for holiday in [
        date(2025, 1, 1),
        date(2025, 4, 18),  # Good Friday
        date(2025, 4, 21),  # Easter Monday
        date(2025, 4, 25),  # ANZAC Day
        date(2025, 12, 25),
        date(2025, 12, 26),
        date(2026, 1, 1),
        date(2026, 1, 26),  # Australia Day
        date(2026, 4, 3),
        date(2026, 4, 6),
    ]:
        assert not is_business_day(holiday), holiday
    assert is_business_day(date(2025, 4, 22)) and is_business_day(date(2026, 1, 27))
    # A roll passes weekends and holidays together: Good Friday 2026 to the Tuesday after Easter Monday.
    assert roll_to_business_day(date(2026, 4, 3)) == date(2026, 4, 7)
    assert roll_to_business_day(date(2025, 12, 25)) == date(2025, 12, 29)
    # A state-only holiday (Melbourne Cup Day, 4 Nov 2025) does not move an ATO date.
    assert is_business_day(date(2025, 11, 4))


@given(DAYS)
def test_every_date_belongs_to_exactly_one_quarter(day: date) -> None:
    cycle = cycle_for(day)
    assert cycle.contains(day)
    assert cycle.period_start.day == 1 and cycle.period_start.month in (1, 4, 7, 10)
    assert cycle_for(cycle.period_start) == cycle == cycle_for(cycle.period_end)
    assert not cycle_for(cycle.period_start - timedelta(days=1)).contains(day)
    assert not cycle_for(cycle.period_end + timedelta(days=1)).contains(day)
    assert cycle_for(cycle.period_end + timedelta(days=1)).period_start == cycle.period_end + timedelta(days=1)


@given(DAYS)
def test_due_dates_are_business_days_after_the_period_end_from_the_28th(day: date) -> None:
    cycle = cycle_for(day)
    assert is_business_day(cycle.due_date)
    assert cycle.due_date > cycle.period_end
    nominal = date(cycle.due_date.year, cycle.due_date.month, 28)
    if cycle.due_date.day < 28:  # rolled into the next month
        nominal = (cycle.due_date.replace(day=1) - timedelta(days=1)).replace(day=28)
    assert nominal <= cycle.due_date <= nominal + timedelta(days=7)
    assert all(not is_business_day(nominal + timedelta(days=n)) for n in range((cycle.due_date - nominal).days))


@given(DAYS)
def test_next_bas_due_is_the_first_due_date_not_yet_past(day: date) -> None:
    due = next_bas_due(day)
    assert due >= day
    quarters = [cycle_for(day)]
    for _ in range(3):
        quarters.append(cycle_for(quarters[-1].period_start - timedelta(days=1)))
    dues = {quarter.due_date for quarter in quarters}
    assert due == min(d for d in dues if d >= day)


def test_next_bas_due_examples() -> None:
    assert next_bas_due(date(2025, 10, 15)) == date(2025, 10, 28)  # Jul-Sep's, not yet due
    assert next_bas_due(date(2025, 10, 28)) == date(2025, 10, 28)
    assert next_bas_due(date(2025, 10, 29)) == date(2026, 3, 2)
    assert next_bas_due(date(2026, 3, 1)) == date(2026, 3, 2)  # Oct-Dec's, rolled past the weekend
    assert next_bas_due(date(2026, 3, 3)) == date(2026, 4, 28)


def test_cycle_ids_derive_from_org_and_period() -> None:
    start = date(2025, 7, 1)
    assert cycle_id(ORG, start) == uuid.uuid5(ORG, "bas:2025-07-01")
    assert cycle_id(ORG, start) != cycle_id(ORG, date(2025, 10, 1))
    assert cycle_id(ORG, start) != cycle_id(uuid.uuid4(), start)


def test_business_date_is_sydney_time() -> None:
    # 14:30 UTC on 30 Sep is 00:30 on 1 Oct in Sydney (AEST, +10): the next quarter there.
    assert business_date(datetime(2025, 9, 30, 14, 30, tzinfo=UTC)) == date(2025, 10, 1)
    assert business_date(datetime(2025, 9, 30, 13, 59, tzinfo=UTC)) == date(2025, 9, 30)
