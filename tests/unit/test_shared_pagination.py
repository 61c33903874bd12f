"""Page queries: `limit` is an integer in one spelling only, ASCII digits, within 1..MAX_PAGE_SIZE. `page_of` cuts a
page from the `limit + 1` rows read and makes the next cursor only when a row past the page came back; a (time, id)
cursor round-trips."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.errors import ApiError
from shared.pagination import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, PageQuery, decode_cursor, encode_cursor, page_of
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


def seq_key(row: int) -> str:
    return f"before:{row}"


def test_a_row_past_the_page_makes_the_next_cursor_from_the_pages_last_row() -> None:
    assert page_of([9, 8, 7, 6], 3, seq_key) == ([9, 8, 7], "before:7")


@pytest.mark.parametrize(("rows", "limit"), [([9, 8, 7], 3), ([9, 8], 3), ([9], 1)])
def test_a_page_with_no_row_past_it_is_the_last_and_has_no_cursor(rows: list[int], limit: int) -> None:
    assert page_of(rows, limit, seq_key) == (rows, None)


def test_no_rows_is_an_empty_last_page_and_the_key_is_never_called() -> None:
    def never(_: int) -> str:
        raise AssertionError("no row to key")

    assert page_of([], 5, never) == ([], None)
    assert page_of([1, 2], 2, never) == ([1, 2], None)


def test_a_page_is_a_new_list_of_at_most_limit_rows() -> None:
    rows = (5, 4, 3)  # any sequence, e.g. what a fetch returned
    page, cursor = page_of(rows, 2, seq_key)
    assert (page, cursor) == ([5, 4], "before:4")
    assert isinstance(page, list)


def test_a_page_of_no_rows_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one row"):
        page_of([1], 0, seq_key)


@given(st.lists(st.integers(), max_size=30), st.integers(min_value=1, max_value=10))
def test_paging_through_visits_every_row_once_in_order(rows: list[int], limit: int) -> None:
    seen: list[int] = []
    position = 0
    while True:
        fetched = rows[position : position + limit + 1]  # what a keyset query after the cursor returns
        page, cursor = page_of(fetched, limit, str)
        seen += page
        if cursor is None:
            break
        assert cursor == str(page[-1])
        position += limit
    assert seen == rows


def test_a_time_and_id_cursor_round_trips() -> None:
    at, row_id = datetime(2026, 11, 27, 21, 55, 37, 120, tzinfo=UTC), uuid.uuid4()
    assert decode_cursor(encode_cursor(at, row_id)) == (at, row_id)


@pytest.mark.parametrize(
    "cursor", ["", "not-a-cursor", encode_cursor(datetime(2026, 1, 1, tzinfo=UTC), uuid.UUID(int=0))[:-3]]
)
def test_a_cursor_we_did_not_hand_out_is_a_400_naming_it(cursor: str) -> None:
    with pytest.raises(ApiError) as caught:
        decode_cursor(cursor)
    assert (caught.value.kind.status, caught.value.code) == (400, "invalid_query")
    assert [error.path for error in caught.value.errors] == ["cursor"]
