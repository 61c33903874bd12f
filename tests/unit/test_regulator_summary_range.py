"""The regulator's bank-line summary range (`reads.summary_dates`): the last twelve calendar months by default,
`from`/`to` as given, and a refusal naming the field for a reversed or over-long range."""

from __future__ import annotations

from datetime import date

import pytest

from services.regulator.reads import SUMMARY_MAX_DAYS, SummaryRange, summary_dates
from shared.errors import ApiError
from shared.validation import parse_query

TODAY = date(2026, 11, 28)


def dates(**query: str) -> tuple[date, date]:
    return summary_dates(parse_query(query, SummaryRange), TODAY)


def test_the_default_is_the_last_twelve_calendar_months_to_today() -> None:
    assert dates() == (date(2025, 12, 1), TODAY)
    assert summary_dates(SummaryRange(), date(2026, 1, 5)) == (date(2025, 2, 1), date(2026, 1, 5))


def test_a_given_end_or_start_anchors_the_range() -> None:
    assert dates(to="2025-03-15") == (date(2024, 4, 1), date(2025, 3, 15))
    assert dates(**{"from": "2026-06-01"}) == (date(2026, 6, 1), TODAY)
    assert dates(**{"from": "2027-02-01"}) == (date(2027, 2, 1), date(2027, 2, 1))
    assert dates(**{"from": "2021-11-29", "to": "2026-11-28"}) == (date(2021, 11, 29), TODAY)


@pytest.mark.parametrize(
    ("query", "field"),
    [({"from": "2026-02-01", "to": "2026-01-31"}, "to"), ({"from": "2020-01-01", "to": "2026-11-28"}, "from")],
)
def test_a_reversed_or_too_long_range_is_400_naming_the_field(query: dict[str, str], field: str) -> None:
    with pytest.raises(ApiError) as refused:
        dates(**query)
    assert refused.value.code == "invalid_query"
    assert [error.path for error in refused.value.errors] == [field]


def test_the_range_bound_is_five_years_of_days() -> None:
    start = date(2021, 11, 28)
    assert (TODAY - start).days + 1 <= SUMMARY_MAX_DAYS
    assert dates(**{"from": start.isoformat(), "to": TODAY.isoformat()}) == (start, TODAY)


def test_an_org_or_any_other_unknown_parameter_is_refused() -> None:
    with pytest.raises(ApiError) as refused:
        dates(org_id="9b4256cf-135f-40e8-8457-053ef36ba740")
    assert refused.value.code == "invalid_query"
