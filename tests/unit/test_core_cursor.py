"""Page cursors of GET /bank-lines: a round trip for the org and filters they were made for, and one refusal for
everything else (another org, other filters, another key, any edit, truncation or padding)."""

from __future__ import annotations

import uuid
from datetime import date

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.core.cursor import CURSOR_CHARS, InvalidCursor, decode_cursor, encode_cursor
from services.core.store import LineKey

KEY = bytes(range(32))
ORG = uuid.UUID("11111111-1111-4111-8111-111111111111")
OTHER_ORG = uuid.UUID("22222222-2222-4222-8222-222222222222")
FILTERS = b'{"from":"2025-01-01"}'
AT = LineKey(date(2025, 7, 1), uuid.UUID("33333333-3333-4333-8333-333333333333"))

keys = st.builds(LineKey, st.dates(), st.uuids())


@given(keys, st.binary(max_size=64))
def test_a_cursor_decodes_to_its_position_for_its_org_and_filters(at: LineKey, filters: bytes) -> None:
    cursor = encode_cursor(KEY, ORG, filters, at)
    assert len(cursor) == CURSOR_CHARS
    assert decode_cursor(KEY, ORG, filters, cursor) == at


def test_a_cursor_is_opaque_text_without_the_id_or_date_in_the_clear() -> None:
    cursor = encode_cursor(KEY, ORG, FILTERS, AT)
    assert str(AT.id) not in cursor and "2025" not in cursor
    assert cursor.isascii() and "=" not in cursor


@pytest.mark.parametrize(
    ("key", "org", "filters"),
    [
        (KEY, OTHER_ORG, FILTERS),  # another org's cursor
        (KEY, ORG, b'{"from":"2025-01-02"}'),  # made for other filters
        (KEY, ORG, b"{}"),
        (bytes(32), ORG, FILTERS),  # signed with another key
    ],
)
def test_a_cursor_is_refused_by_another_org_other_filters_or_key(key: bytes, org: uuid.UUID, filters: bytes) -> None:
    cursor = encode_cursor(KEY, ORG, FILTERS, AT)
    with pytest.raises(InvalidCursor):
        decode_cursor(key, org, filters, cursor)


@given(st.data())
def test_any_single_character_edit_is_refused(data: st.DataObject) -> None:
    cursor = encode_cursor(KEY, ORG, FILTERS, AT)
    index = data.draw(st.integers(0, len(cursor) - 1))
    replacement = data.draw(st.sampled_from("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"))
    edited = cursor[:index] + replacement + cursor[index + 1 :]
    if edited != cursor:
        with pytest.raises(InvalidCursor):
            decode_cursor(KEY, ORG, FILTERS, edited)


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
def test_mangled_cursors_are_refused(mangle: object) -> None:
    cursor = encode_cursor(KEY, ORG, FILTERS, AT)
    assert callable(mangle)
    with pytest.raises(InvalidCursor):
        decode_cursor(KEY, ORG, FILTERS, mangle(cursor))


@given(st.text(max_size=80))
def test_arbitrary_text_is_refused_not_crashed_on(text: str) -> None:
    with pytest.raises(InvalidCursor):
        decode_cursor(KEY, ORG, FILTERS, text)
