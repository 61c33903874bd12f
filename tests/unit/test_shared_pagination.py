"""Page queries: `limit` is an integer in one spelling only, ASCII digits, within 1..MAX_PAGE_SIZE."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.errors import ApiError
from shared.pagination import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, PageQuery
from shared.validation import parse_query


def refused(params: dict[str, str]) -> list[str]:
    with pytest.raises(ApiError) as caught:
        parse_query(params, PageQuery)
    assert (caught.value.kind.status, caught.value.code) == (400, "invalid_query")
    return [error.path for error in caught.value.errors]


@given(st.integers(min_value=1, max_value=MAX_PAGE_SIZE))
def test_every_limit_in_range_written_in_digits_is_accepted(limit: int) -> None:
    assert parse_query({"limit": str(limit)}, PageQuery).limit == limit


def test_the_default_limit() -> None:
    assert parse_query({}, PageQuery).limit == DEFAULT_PAGE_SIZE


@pytest.mark.parametrize(
    "limit", ["+5", "-5", " 5", "5 ", "1_0", "5.0", "5e0", "05", "0x5", "\u0665", "\uff15", "", "five", "1" * 5000]
)
def test_any_other_spelling_of_a_limit_is_refused_naming_it(limit: str) -> None:
    assert refused({"limit": limit}) == ["limit"]


@given(st.text(max_size=6).filter(lambda text: not (text.isascii() and text.isdigit())))
def test_a_limit_with_anything_but_ascii_digits_is_refused(limit: str) -> None:
    assert refused({"limit": limit}) == ["limit"]


@pytest.mark.parametrize("limit", ["0", str(MAX_PAGE_SIZE + 1), "999999999"])
def test_a_limit_out_of_range_is_refused(limit: str) -> None:
    assert refused({"limit": limit}) == ["limit"]
