"""Money is parsed from one spelling per amount and formatted back to exactly that spelling."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel

from shared.errors import ApiError
from shared.money import (
    MAX_INTEGER_DIGITS,
    Money,
    MoneyError,
    format_money,
    format_total,
    is_money,
    parse_money,
)
from shared.validation import validate

LARGEST = Decimal(10) ** MAX_INTEGER_DIGITS - Decimal("0.01")
CENTS = st.integers(min_value=-int(LARGEST * 100), max_value=int(LARGEST * 100))


class Payment(BaseModel):
    amount: Money


@pytest.mark.parametrize(
    ("text", "amount"),
    [
        ("1234.50", Decimal("1234.50")),
        ("-3.00", Decimal("-3.00")),
        ("0.00", Decimal("0.00")),
        ("0.07", Decimal("0.07")),
        ("-0.01", Decimal("-0.01")),
        ("999999999999.99", LARGEST),
        ("-999999999999.99", -LARGEST),
    ],
)
def test_accepted_text_parses_to_its_amount_and_formats_back(text: str, amount: Decimal) -> None:
    parsed = parse_money(text)
    assert parsed == amount
    assert parsed.as_tuple().exponent == -2
    assert format_money(parsed) == text


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("1234.5", "exactly 2 decimal places"),
        ("1234", "exactly 2 decimal places"),
        ("1234.", "exactly 2 decimal places"),
        ("1234.500", "exactly 2 decimal places"),
        ("0.001", "exactly 2 decimal places"),
        ("1e3", "exponent"),
        ("1.00E+2", "exponent"),
        ("NaN", "finite"),
        ("-nan", "finite"),
        ("sNaN", "finite"),
        ("Infinity", "finite"),
        ("-Infinity", "finite"),
        ("inf", "finite"),
        ("1000000000000.00", "at most 12 integer digits"),
        ("-1000000000000.00", "at most 12 integer digits"),
        ("+1.00", "start with"),
        (" 1.00", "spaces"),
        ("1.00 ", "spaces"),
        ("1.00\n", "spaces"),
        ("1 000.00", 'like "1234.50"'),
        ("1,000.00", 'like "1234.50"'),
        ("01.00", "leading zeros"),
        ("-00.50", "leading zeros"),
        ("-0.00", "zero as 0.00"),
        (".50", 'like "1234.50"'),
        ("-.50", 'like "1234.50"'),
        ("", 'like "1234.50"'),
        ("-", 'like "1234.50"'),
        ("--1.00", 'like "1234.50"'),
        ("1_000.00", 'like "1234.50"'),
        ("\u0661\u0662.\u0660\u0660", 'like "1234.50"'),  # Arabic-Indic digits, which Decimal() would accept
        ("\uff11.00", 'like "1234.50"'),  # a fullwidth 1
    ],
)
def test_other_spellings_are_refused_with_the_rule_they_break(text: str, reason: str) -> None:
    with pytest.raises(MoneyError, match=reason):
        parse_money(text)


@pytest.mark.parametrize("value", [1.5, 1234.50, 3, 0, True, None, Decimal("1.50"), b"1.50"])
def test_only_strings_are_parsed(value: object) -> None:
    with pytest.raises(TypeError, match="must be a string"):
        parse_money(value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "amount",
    [
        Decimal("1.5"),
        Decimal("1.500"),
        Decimal("1"),
        Decimal("1E+2"),
        Decimal("NaN"),
        Decimal("Infinity"),
        Decimal("1000000000000.00"),
    ],
)
def test_a_decimal_that_is_not_two_places_in_range_is_not_formatted(amount: Decimal) -> None:
    assert not is_money(amount)
    with pytest.raises(MoneyError, match="not a money amount"):
        format_money(amount)


def test_negative_zero_from_arithmetic_is_written_as_zero() -> None:
    amount = Decimal("0.00") * -1
    assert str(amount) == "-0.00"
    assert format_money(amount) == "0.00"


@given(CENTS)
def test_every_amount_in_range_round_trips(cents: int) -> None:
    amount = Decimal(cents).scaleb(-2)
    text = format_money(amount)
    assert parse_money(text) == amount
    assert format_money(parse_money(text)) == text


@given(st.text(max_size=20))
def test_any_accepted_text_formats_back_to_itself(text: str) -> None:
    try:
        amount = parse_money(text)
    except MoneyError:
        return
    assert format_money(amount) == text


def test_the_pydantic_type_validates_and_dumps_the_string() -> None:
    payment = Payment.model_validate_json('{"amount": "1234.50"}')
    assert payment.amount == Decimal("1234.50")
    assert isinstance(payment.amount, Decimal)
    assert payment.model_dump() == {"amount": "1234.50"}
    assert payment.model_dump_json() == '{"amount":"1234.50"}'
    assert Payment.model_json_schema()["properties"]["amount"]["type"] == "string"


@pytest.mark.parametrize(
    ("amount", "message"),
    [
        (1234.5, 'Money must be a string like "1234.50"'),
        (1234, 'Money must be a string like "1234.50"'),
        (True, 'Money must be a string like "1234.50"'),
        (None, 'Money must be a string like "1234.50"'),
        ("1234.5", "money must have exactly 2 decimal places"),
        ("1e3", "money may not use an exponent"),
        ("-0.00", "write zero as 0.00, without a sign"),
    ],
)
def test_a_refused_amount_in_a_body_is_a_400_invalid_body_naming_the_field(amount: object, message: str) -> None:
    with pytest.raises(ApiError) as caught:
        validate(Payment, {"amount": amount})
    problem = caught.value
    assert problem.code == "invalid_body"
    assert [(e.path, e.message) for e in problem.errors] == [("amount", message)]


# --- totals: sums of amounts, which may pass the twelve integer digits one amount is held to --------------------


@given(CENTS)
def test_a_total_in_range_is_written_as_the_amount_is_and_parses_back(cents: int) -> None:
    amount = Decimal(cents).scaleb(-2)
    assert format_total(amount) == format_money(amount)
    assert parse_money(format_total(amount)) == amount


@pytest.mark.parametrize(
    ("total", "text"),
    [
        (LARGEST * 2, "1999999999999.98"),
        (Decimal("100000000.00") * 10_000, "1000000000000.00"),
        (-LARGEST * 10_000, "-9999999999999900.00"),
        (Decimal("1E+30"), "1000000000000000000000000000000.00"),
        (Decimal("5"), "5.00"),
        (Decimal("12.345"), "12.34"),  # half-even: a sum of money never has more places, but it is defined
        (Decimal("-0.00"), "0.00"),
        (Decimal("0.00") * -1, "0.00"),
        (Decimal("-0.001"), "0.00"),
    ],
)
def test_a_total_has_two_places_no_exponent_no_negative_zero_and_any_integer_digits(total: Decimal, text: str) -> None:
    assert format_total(total) == text


def test_a_sum_past_the_amount_bound_is_a_total_but_not_an_amount() -> None:
    total = LARGEST + LARGEST
    with pytest.raises(MoneyError):
        format_money(total)
    with pytest.raises(MoneyError, match="integer digits"):
        parse_money(format_total(total))


@given(st.lists(CENTS, min_size=1, max_size=50))
def test_a_total_is_the_exact_sum_of_its_amounts(amounts: list[int]) -> None:
    total = sum((Decimal(cents).scaleb(-2) for cents in amounts), Decimal("0.00"))
    sign, digits = (-1, format_total(total)[1:]) if format_total(total).startswith("-") else (1, format_total(total))
    whole, fraction = digits.split(".")
    assert len(fraction) == 2 and whole == str(int(whole))
    assert sign * (int(whole) * 100 + int(fraction)) == sum(amounts)


@pytest.mark.parametrize("total", [Decimal("NaN"), Decimal("Infinity"), Decimal("-Infinity"), Decimal("sNaN")])
def test_a_total_that_is_not_finite_is_refused(total: Decimal) -> None:
    with pytest.raises(MoneyError):
        format_total(total)
