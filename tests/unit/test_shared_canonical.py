"""Canonical JSON is RFC 8785's encoding of our types: one value, one byte string, whoever built the value."""

from __future__ import annotations

import enum
import json
import struct
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from random import Random
from uuid import UUID

import pytest
import rfc8785
from hypothesis import given
from hypothesis import strategies as st

from shared.canonical import canonical_json, utc_text
from shared.money import MoneyError

# RFC 8785 section 3.2.2: the example of JCS's string and number rules, input and canonical output as printed.
RFC_3_2_2_INPUT = (
    '{"numbers":[333333333.33333329,1E30,4.50,2e-3,0.000000000000000000000000001],'
    '"string":"\\u20ac$\\u000F\\u000aA\'\\u0042\\u0022\\u005c\\\\\\"\\/","literals":[null,true,false]}'
)
RFC_3_2_2_OUTPUT = (
    '{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],'
    '"string":"\u20ac$\\u000f\\nA\'B\\"\\\\\\\\\\"/"}'
)

# RFC 8785 section 3.2.3: keys sorted by UTF-16 code units, so the emoji (a surrogate pair, D83D DE00) comes before
# U+FB33, although its code point is higher.
RFC_3_2_3_INPUT = {
    "\u20ac": "Euro Sign",
    "\r": "Carriage Return",
    "\ufb33": "Hebrew Letter Dalet With Dagesh",
    "1": "One",
    "\U0001f600": "Emoji: Grinning Face",
    "\u0080": "Control",
    "\u00f6": "Latin Small Letter O With Diaeresis",
}
RFC_3_2_3_OUTPUT = (
    '{"\\r":"Carriage Return","1":"One","\u0080":"Control","\u00f6":"Latin Small Letter O With Diaeresis",'
    '"\u20ac":"Euro Sign","\U0001f600":"Emoji: Grinning Face","\ufb33":"Hebrew Letter Dalet With Dagesh"}'
)

# RFC 8785 appendix B: IEEE 754 doubles (as hex) and their JCS spelling.
RFC_APPENDIX_B = [
    ("0000000000000000", "0"),
    ("8000000000000000", "0"),
    ("0000000000000001", "5e-324"),
    ("8000000000000001", "-5e-324"),
    ("7fefffffffffffff", "1.7976931348623157e+308"),
    ("ffefffffffffffff", "-1.7976931348623157e+308"),
    ("4340000000000000", "9007199254740992"),
    ("c340000000000000", "-9007199254740992"),
    ("4430000000000000", "295147905179352830000"),
    ("44b52d02c7e14af5", "9.999999999999997e+22"),
    ("44b52d02c7e14af6", "1e+23"),
    ("44b52d02c7e14af7", "1.0000000000000001e+23"),
    ("444b1ae4d6e2ef4e", "999999999999999700000"),
    ("444b1ae4d6e2ef4f", "999999999999999900000"),
    ("444b1ae4d6e2ef50", "1e+21"),
    ("3eb0c6f7a0b5ed8c", "9.999999999999997e-7"),
    ("3eb0c6f7a0b5ed8d", "0.000001"),
    ("41b3de4355555553", "333333333.3333332"),
    ("41b3de4355555554", "333333333.33333325"),
    ("41b3de4355555555", "333333333.3333333"),
    ("41b3de4355555556", "333333333.3333334"),
    ("41b3de4355555557", "333333333.33333343"),
    ("becbf647612f3696", "-0.0000033333333333333333"),
    ("43143ff3c1cb0959", "1424953923781206.2"),
]

# What JSON holds natively, without floats (canonical_json refuses them) and within JCS's integer range.
JSON_SCALARS = st.none() | st.booleans() | st.integers(min_value=-(2**53) + 1, max_value=2**53 - 1) | st.text()
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


class Colour(enum.StrEnum):
    RED = "red"


def test_the_rfc_string_and_number_example() -> None:
    # Floats are refused by canonical_json, so the numbers half checks the package we delegate to.
    assert rfc8785.dumps(json.loads(RFC_3_2_2_INPUT)) == RFC_3_2_2_OUTPUT.encode()
    without_numbers = {k: v for k, v in json.loads(RFC_3_2_2_INPUT).items() if k != "numbers"}
    assert canonical_json(without_numbers) == b'{"literals":[null,true,false],"string":' + (
        RFC_3_2_2_OUTPUT.split('"string":', 1)[1].encode()
    )


def test_the_rfc_key_sorting_example() -> None:
    assert canonical_json(RFC_3_2_3_INPUT) == RFC_3_2_3_OUTPUT.encode()


@pytest.mark.parametrize(("ieee_hex", "text"), RFC_APPENDIX_B)
def test_the_rfc_number_examples_hold_in_the_package_we_delegate_to(ieee_hex: str, text: str) -> None:
    (number,) = struct.unpack(">d", bytes.fromhex(ieee_hex))
    assert rfc8785.dumps(number) == text.encode()


def test_our_types_are_written_as_their_json_strings() -> None:
    moment = datetime(2026, 11, 28, 8, 55, 37, tzinfo=timezone(timedelta(hours=11)))
    row = {
        "amount": Decimal("1234.50"),
        "refund": Decimal("-3.00"),
        "at": moment,
        "org_id": UUID("7D7A0F3E-1C2B-4A5D-9E8F-0123456789AB"),
        "kind": Colour.RED,
        "seq": 7,
        "lines": (Decimal("0.07"), None),
    }
    assert canonical_json(row) == (
        b'{"amount":"1234.50","at":"2026-11-27T21:55:37.000000Z","kind":"red","lines":["0.07",null],'
        b'"org_id":"7d7a0f3e-1c2b-4a5d-9e8f-0123456789ab","refund":"-3.00","seq":7}'
    )


def test_an_instant_has_one_spelling_whatever_its_zone() -> None:
    utc = datetime(2026, 1, 2, 3, 4, 5, 600, tzinfo=UTC)
    sydney = utc.astimezone(timezone(timedelta(hours=11)))
    assert canonical_json(utc) == canonical_json(sydney) == b'"2026-01-02T03:04:05.000600Z"'


def test_a_naive_datetime_is_refused() -> None:
    with pytest.raises(ValueError, match="aware datetime"):
        canonical_json({"at": datetime(2026, 1, 2, 3, 4, 5)})
    with pytest.raises(ValueError, match="aware datetime"):
        utc_text(datetime(2026, 1, 2, 3, 4, 5))


FIXED_ZONES = st.builds(timezone, st.timedeltas(min_value=timedelta(hours=-23), max_value=timedelta(hours=23)))


# Fixed offsets: a zone's DST gap has wall times that name no instant, which compare unequal to any.
@given(st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1), timezones=FIXED_ZONES))
def test_utc_text_is_the_canonical_json_string_of_an_instant_without_its_quotes(moment: datetime) -> None:
    text = utc_text(moment)
    assert canonical_json(moment) == f'"{text}"'.encode()
    assert len(text) == len("2026-01-02T03:04:05.000000Z") and text.endswith("Z")
    assert datetime.fromisoformat(text) == moment


def test_utc_text_spells_whole_seconds_with_microseconds_and_other_zones_in_utc() -> None:
    assert utc_text(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)) == "2026-01-02T03:04:05.000000Z"
    assert utc_text(datetime(2026, 1, 2, 14, 4, 5, 7, tzinfo=timezone(timedelta(hours=11)))) == (
        "2026-01-02T03:04:05.000007Z"
    )


@pytest.mark.parametrize("amount", [Decimal("1.5"), Decimal("1.500"), Decimal("NaN"), Decimal("1E+13")])
def test_a_decimal_that_is_not_money_is_refused(amount: Decimal) -> None:
    with pytest.raises(MoneyError):
        canonical_json({"amount": amount})


@pytest.mark.parametrize(
    ("value", "type_name"),
    [
        (1.5, "float"),
        (0.0, "float"),
        ({"amount": 1234.5}, "float"),
        ([1, 2.0], "float"),
        ({1, 2}, "set"),
        (b"bytes", "bytes"),
        (date(2026, 1, 2), "date"),
        (object(), "object"),
    ],
)
def test_other_types_are_a_type_error_naming_the_type(value: object, type_name: str) -> None:
    with pytest.raises(TypeError, match=rf"\b{type_name}\b"):
        canonical_json(value)


def test_a_non_string_key_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="keys must be str, not int"):
        canonical_json({1: "one"})


@pytest.mark.parametrize("value", [2**53, -(2**53), "\ud800"])
def test_values_jcs_cannot_encode_are_refused(value: object) -> None:
    with pytest.raises(rfc8785.CanonicalizationError):
        canonical_json({"value": value})


@given(st.dictionaries(st.text(max_size=8), JSON_VALUES, max_size=8), st.randoms())
def test_key_insertion_order_does_not_change_the_bytes(value: dict[str, object], random: Random) -> None:
    items = list(value.items())
    random.shuffle(items)
    assert canonical_json(dict(items)) == canonical_json(value)


@given(JSON_VALUES)
def test_the_bytes_parse_back_to_the_same_value(value: object) -> None:
    encoded = canonical_json(value)
    assert json.loads(encoded) == value
    assert canonical_json(json.loads(encoded)) == encoded
