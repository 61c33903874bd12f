"""The BAS calendar (pure): Australian quarters, their due dates, and the ids of the cycle rows that stand for them.

    cycle_for(day)                 the quarter `day` falls in: period start and end, due date
    quarter_start(day)             its first day (the key of a quarter's running totals)
    next_bas_due(today)            the first due date on or after `today`
    cycle_id(org_id, start)        uuid5(org_id, "bas:<start>"): the cycle row's id, known before the row exists
    business_date(now)             the calendar date in Australia (Sydney time) at the instant `now`

Quarters run Jul-Sep, Oct-Dec, Jan-Mar and Apr-Jun, due on the 28th of Oct, Feb, Apr and Jul. A due date that
falls on a weekend or an Australian national public holiday moves to the next business day; the holidays come from
the `holidays` package (national ones only: state holidays do not move an ATO due date), never from a hand-kept
list. The quarterly due dates for small businesses lodging themselves are these; the ATO's extended dates for agents
are not modelled.

A cycle's id derives from its org and period start, so a GET can name the org's current cycle without writing and
the first write that needs the row inserts it with `ON CONFLICT DO NOTHING` (the other helpers compute the same id).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

import holidays

__all__ = [
    "BAS_TIMEZONE",
    "DUE_DAY",
    "Cycle",
    "business_date",
    "cycle_for",
    "cycle_id",
    "is_business_day",
    "next_bas_due",
    "quarter_start",
    "roll_to_business_day",
]

# "Today" for a BAS is a date in Australia; the ATO's dates are Canberra's (the same zone as Sydney).
BAS_TIMEZONE = ZoneInfo("Australia/Sydney")
COUNTRY = "AU"
MONTHS_PER_QUARTER = 3
DUE_DAY = 28
# The month a quarter's BAS is due, by the quarter's first month, and whether it falls in the following year.
DUE_MONTH_OF = {7: (10, 0), 10: (2, 1), 1: (4, 0), 4: (7, 0)}
SATURDAY = 5
HOLIDAY_CACHE_YEARS = 64


@dataclass(frozen=True)
class Cycle:
    """One BAS quarter: the dates of its period (both inclusive) and its due date (a business day after the end)."""

    period_start: date
    period_end: date
    due_date: date

    def contains(self, day: date) -> bool:
        return self.period_start <= day <= self.period_end


@lru_cache(maxsize=HOLIDAY_CACHE_YEARS)
def _national_holidays(year: int) -> frozenset[date]:
    return frozenset(holidays.country_holidays(COUNTRY, years=year))


def is_business_day(day: date) -> bool:
    """Not a Saturday, Sunday or Australian national public holiday."""
    return day.weekday() < SATURDAY and day not in _national_holidays(day.year)


def roll_to_business_day(day: date) -> date:
    """`day` when it is a business day, else the next one."""
    while not is_business_day(day):
        day += timedelta(days=1)
    return day


def quarter_start(day: date) -> date:
    """The first day of the quarter `day` is in."""
    return date(day.year, (day.month - 1) // MONTHS_PER_QUARTER * MONTHS_PER_QUARTER + 1, 1)


def cycle_for(day: date) -> Cycle:
    """The quarter `day` belongs to, with its due date."""
    start = quarter_start(day)
    next_month = start.month + MONTHS_PER_QUARTER
    next_start = date(start.year + 1, 1, 1) if next_month > 12 else date(start.year, next_month, 1)
    due_month, years_on = DUE_MONTH_OF[start.month]
    due = roll_to_business_day(date(start.year + years_on, due_month, DUE_DAY))
    return Cycle(period_start=start, period_end=next_start - timedelta(days=1), due_date=due)


def next_bas_due(today: date) -> date:
    """The first BAS due date on or after `today`: the previous quarter's while it is not yet past, else the
    current quarter's."""
    current = cycle_for(today)
    previous = cycle_for(current.period_start - timedelta(days=1))
    return previous.due_date if previous.due_date >= today else current.due_date


def cycle_id(org_id: uuid.UUID, period_start: date) -> uuid.UUID:
    """The id of the org's cycle row for the quarter starting `period_start`."""
    return uuid.uuid5(org_id, f"bas:{period_start.isoformat()}")


def business_date(now: datetime) -> date:
    """The date in Australia at the aware instant `now`."""
    return now.astimezone(BAS_TIMEZONE).date()
