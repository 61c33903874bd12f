"""Page cursors of GET /alerts: a round trip of (created_at, id) to the microsecond for the org and filters they
were made for, and a refusal for another org, other filters, a bank-line cursor, or any edit."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.core.cursor import (
    ALERT_CURSOR_CHARS,
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
FILTERS = b'{"status":"open"}'
AT = AlertKey(datetime(2025, 7, 1, 9, 30, 15, 123456, tzinfo=UTC), uuid.UUID("33333333-3333-4333-8333-333333333333"))

times = st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59), timezones=st.just(UTC))


@given(st.builds(AlertKey, times, st.uuids()), st.binary(max_size=64))
def test_an_alert_cursor_decodes_to_its_exact_position(at: AlertKey, filters: bytes) -> None:
    cursor = encode_alert_cursor(KEY, ORG, filters, at)
    assert len(cursor) == ALERT_CURSOR_CHARS
    assert decode_alert_cursor(KEY, ORG, filters, cursor) == at


def test_another_zone_names_the_same_instant() -> None:
    local = AlertKey(AT.created_at.astimezone(timezone(timedelta(hours=10))), AT.id)
    assert decode_alert_cursor(KEY, ORG, FILTERS, encode_alert_cursor(KEY, ORG, FILTERS, local)) == AT


@pytest.mark.parametrize(
    ("key", "org", "filters"),
    [(KEY, OTHER_ORG, FILTERS), (KEY, ORG, b'{"status":"resolved"}'), (KEY, ORG, b"{}"), (bytes(32), ORG, FILTERS)],
)
def test_an_alert_cursor_is_refused_by_another_org_other_filters_or_key(
    key: bytes, org: uuid.UUID, filters: bytes
) -> None:
    with pytest.raises(InvalidCursor):
        decode_alert_cursor(key, org, filters, encode_alert_cursor(KEY, ORG, FILTERS, AT))


def test_a_cursor_of_one_listing_is_refused_by_the_other() -> None:
    line = encode_cursor(KEY, ORG, FILTERS, LineKey(AT.created_at.date(), AT.id))
    with pytest.raises(InvalidCursor):
        decode_alert_cursor(KEY, ORG, FILTERS, line)
    with pytest.raises(InvalidCursor):
        decode_cursor(KEY, ORG, FILTERS, encode_alert_cursor(KEY, ORG, FILTERS, AT))


@given(st.data())
def test_any_single_character_edit_is_refused(data: st.DataObject) -> None:
    cursor = encode_alert_cursor(KEY, ORG, FILTERS, AT)
    index = data.draw(st.integers(0, len(cursor) - 1))
    replacement = data.draw(st.sampled_from("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"))
    edited = cursor[:index] + replacement + cursor[index + 1 :]
    if edited != cursor:
        with pytest.raises(InvalidCursor):
            decode_alert_cursor(KEY, ORG, FILTERS, edited)


@given(st.text(max_size=80))
def test_arbitrary_text_is_refused_not_crashed_on(text: str) -> None:
    with pytest.raises(InvalidCursor):
        decode_alert_cursor(KEY, ORG, FILTERS, text)
