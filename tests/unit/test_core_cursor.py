"""Page cursors of GET /bank-lines and GET /alerts: each round trip for the org and filters it was made for (a
line's (date, id), an alert's (created_at, id) to the microsecond), and one refusal for everything else, on either
listing alike: another org, other filters, another key, the other listing's cursor, any edit, truncation or
padding."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.core.cursor import (
    ALERT_CURSOR_CHARS,
    CURSOR_CHARS,
    InvalidCursor,
    decode_alert_cursor,
    decode_cursor,
    encode_alert_cursor,
    encode_cursor,
)
from services.core.store import LineKey
from services.core.store.alerts import AlertKey

KEY = bytes(range(32))
ORG = uuid.UUID("11111111-1111-4111-8111-111111111111")
OTHER_ORG = uuid.UUID("22222222-2222-4222-8222-222222222222")
ROW = uuid.UUID("33333333-3333-4333-8333-333333333333")
FILTERS = b'{"from":"2025-01-01"}'
LINE_AT = LineKey(date(2025, 7, 1), ROW)
ALERT_AT = AlertKey(datetime(2025, 7, 1, 9, 30, 15, 123456, tzinfo=UTC), ROW)
BASE64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


@dataclass(frozen=True)
class Listing:
    """One listing's cursor functions and a position on it."""

    name: str
    encode: Callable[[bytes, uuid.UUID, bytes, Any], str]
    decode: Callable[[bytes, uuid.UUID, bytes, str], object]
    at: object

    def cursor(self) -> str:
        return self.encode(KEY, ORG, FILTERS, self.at)


LINES = Listing("bank-lines", encode_cursor, decode_cursor, LINE_AT)
ALERTS = Listing("alerts", encode_alert_cursor, decode_alert_cursor, ALERT_AT)
each_listing = pytest.mark.parametrize("listing", [LINES, ALERTS], ids=lambda listing: listing.name)

times = st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59), timezones=st.just(UTC))


@given(st.builds(LineKey, st.dates(), st.uuids()), st.binary(max_size=64))
def test_a_line_cursor_decodes_to_its_position_for_its_org_and_filters(at: LineKey, filters: bytes) -> None:
    cursor = encode_cursor(KEY, ORG, filters, at)
    assert len(cursor) == CURSOR_CHARS
    assert decode_cursor(KEY, ORG, filters, cursor) == at


@given(st.builds(AlertKey, times, st.uuids()), st.binary(max_size=64))
def test_an_alert_cursor_decodes_to_its_exact_position(at: AlertKey, filters: bytes) -> None:
    cursor = encode_alert_cursor(KEY, ORG, filters, at)
    assert len(cursor) == ALERT_CURSOR_CHARS
    assert decode_alert_cursor(KEY, ORG, filters, cursor) == at


def test_another_zone_names_the_same_instant() -> None:
    local = AlertKey(ALERT_AT.created_at.astimezone(timezone(timedelta(hours=10))), ALERT_AT.id)
    assert decode_alert_cursor(KEY, ORG, FILTERS, encode_alert_cursor(KEY, ORG, FILTERS, local)) == ALERT_AT


def test_a_cursor_is_opaque_text_without_the_id_or_date_in_the_clear() -> None:
    cursor = LINES.cursor()
    assert str(ROW) not in cursor and "2025" not in cursor
    assert cursor.isascii() and "=" not in cursor


@each_listing
@pytest.mark.parametrize(
    ("key", "org", "filters"),
    [
        (KEY, OTHER_ORG, FILTERS),  # another org's cursor
        (KEY, ORG, b'{"from":"2025-01-02"}'),  # made for other filters
        (KEY, ORG, b"{}"),
        (bytes(32), ORG, FILTERS),  # signed with another key
    ],
)
def test_a_cursor_is_refused_by_another_org_other_filters_or_key(
    listing: Listing, key: bytes, org: uuid.UUID, filters: bytes
) -> None:
    with pytest.raises(InvalidCursor):
        listing.decode(key, org, filters, listing.cursor())


def test_a_cursor_of_one_listing_is_refused_by_the_other() -> None:
    with pytest.raises(InvalidCursor):
        decode_alert_cursor(KEY, ORG, FILTERS, encode_cursor(KEY, ORG, FILTERS, LineKey(LINE_AT.date, ROW)))
    with pytest.raises(InvalidCursor):
        decode_cursor(KEY, ORG, FILTERS, ALERTS.cursor())


@each_listing
@given(st.data())
def test_any_single_character_edit_is_refused(listing: Listing, data: st.DataObject) -> None:
    cursor = listing.cursor()
    index = data.draw(st.integers(0, len(cursor) - 1))
    edited = cursor[:index] + data.draw(st.sampled_from(BASE64URL)) + cursor[index + 1 :]
    if edited != cursor:
        with pytest.raises(InvalidCursor):
            listing.decode(KEY, ORG, FILTERS, edited)


@each_listing
@pytest.mark.parametrize(
    "mangle",
    [
        lambda c: c[:-1],  # truncated
        lambda c: c[:20],
        lambda c: c + "A",  # extended
        lambda c: c + "==",  # padded
        lambda c: c.replace("-", "+").replace("_", "/") + "+",  # the other base64 alphabet
        lambda c: " " + c,
        lambda c: "",
        lambda c: "not a cursor",
        lambda c: "A" * len(c),
        lambda c: c[:-1] + chr(ord(c[-1]) ^ 1),  # the unused low bits of the last character
    ],
)
def test_mangled_cursors_are_refused(listing: Listing, mangle: Callable[[str], str]) -> None:
    with pytest.raises(InvalidCursor):
        listing.decode(KEY, ORG, FILTERS, mangle(listing.cursor()))


@each_listing
@given(st.text(max_size=80))
def test_arbitrary_text_is_refused_not_crashed_on(listing: Listing, text: str) -> None:
    with pytest.raises(InvalidCursor):
        listing.decode(KEY, ORG, FILTERS, text)
