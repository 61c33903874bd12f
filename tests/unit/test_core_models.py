"""The bank-line field rules and the request models of core's bank-lines API: every bad input of issue #11 is a
400 problem naming its field; the page query builder writes only the bounds given."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.core.models import (
    DESCRIPTION_MAX_CHARS,
    PAYEE_MAX_CHARS,
    BankLineQuery,
    FilterText,
    NewBankLine,
    component_errors,
)
from services.core.store import LineKey, PageFilters, page_query
from shared.contracts.core import latest_line_date, parse_line_date
from shared.errors import ApiError
from shared.validation import validate

TODAY = date(2026, 11, 27)
VALID = {
    "date": "2025-07-01",
    "amount": "-110.00",
    "payee": "Bunnings Warehouse",
    "description": "Timber",
    "gst_amount": "-10.00",
}


def refused_paths(model: type[Any], data: dict[str, Any], code: str = "invalid_body") -> list[str]:
    with pytest.raises(ApiError) as caught:
        validate(model, data, code=code)
    assert caught.value.code == code
    return [error.path for error in caught.value.errors]


def test_a_valid_line_parses_with_components_defaulting_to_zero() -> None:
    line = validate(NewBankLine, {key: value for key, value in VALID.items() if key != "gst_amount"})
    assert line.date == date(2025, 7, 1)
    assert (line.amount, line.gst_amount, line.paygw_amount) == (Decimal("-110.00"), Decimal("0.00"), Decimal("0.00"))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("amount", "1.005"),  # three decimals
        ("amount", 12.5),  # a float
        ("amount", 12),  # an int
        ("amount", "NaN"),
        ("amount", "1e309"),
        ("amount", "1E2"),
        ("amount", "Infinity"),
        ("amount", "1000000000000.00"),  # 13 integer digits
        ("amount", None),
        ("gst_amount", "0.5"),
        ("paygw_amount", "-0.00"),
        ("date", "2025-02-30"),  # impossible
        ("date", "2025-13-01"),
        ("date", "1899-12-31"),  # before 1900
        ("date", f"{datetime.now(UTC).year + 2}-01-01"),  # after next year
        ("date", "2025-7-1"),
        ("date", "20250701"),
        ("date", "2025-07-01T00:00:00"),
        ("date", 20250701),
        ("date", "\uff12\uff10\uff12\uff15-07-01"),  # fullwidth digits
        ("payee", ""),
        ("payee", "   "),
        ("payee", "x" * (PAYEE_MAX_CHARS + 1)),
        ("payee", "x" * 10_240),  # 10 KB
        ("payee", 42),
        ("payee", ["Bunnings"]),
        ("payee", "Bunn\x00ings"),
        ("description", "y" * (DESCRIPTION_MAX_CHARS + 1)),
        ("description", None),
    ],
)
def test_a_bad_field_is_refused_naming_it(field: str, value: Any) -> None:
    assert field in refused_paths(NewBankLine, {**VALID, field: value})


@pytest.mark.parametrize("missing", ["date", "amount", "payee", "description"])
def test_a_missing_field_is_named(missing: str) -> None:
    assert refused_paths(NewBankLine, {key: value for key, value in VALID.items() if key != missing}) == [missing]


def test_an_unknown_field_is_refused_by_name() -> None:
    assert refused_paths(NewBankLine, {**VALID, "org_id": str(uuid.uuid4())}) == ["org_id"]


def test_payee_and_description_at_their_limits_are_accepted() -> None:
    line = validate(NewBankLine, {**VALID, "payee": "p" * PAYEE_MAX_CHARS, "description": "d" * DESCRIPTION_MAX_CHARS})
    assert len(line.payee) == PAYEE_MAX_CHARS
    assert validate(NewBankLine, {**VALID, "description": ""}).description == ""


def test_dates_span_1900_to_the_end_of_next_year() -> None:
    assert parse_line_date("1900-01-01", TODAY) == date(1900, 1, 1)
    assert latest_line_date(TODAY) == date(2027, 12, 31)
    assert parse_line_date("2027-12-31", TODAY) == date(2027, 12, 31)
    with pytest.raises(ValueError, match="on or before 2027-12-31"):
        parse_line_date("2028-01-01", TODAY)
    with pytest.raises(ValueError, match="calendar"):
        parse_line_date("2024-02-30", TODAY)
    assert parse_line_date("2024-02-29", TODAY) == date(2024, 2, 29)


@pytest.mark.parametrize(
    ("amount", "gst", "paygw", "fields"),
    [
        ("-110.00", "-10.00", "0.00", []),
        ("110.00", "10.00", "0.00", []),
        ("-5000.00", "0.00", "1500.00", []),
        ("0.00", "0.00", "0.00", []),
        ("-110.00", "10.00", "0.00", ["gst_amount"]),  # sign differs from the amount's
        ("110.00", "-10.00", "0.00", ["gst_amount"]),
        ("10.00", "10.01", "0.00", ["gst_amount"]),  # larger than the amount
        ("0.00", "0.01", "0.00", ["gst_amount"]),
        ("-100.00", "0.00", "-1.00", ["paygw_amount"]),  # negative
        ("-100.00", "0.00", "100.01", ["paygw_amount"]),  # larger than the amount
        ("100.00", "-1.00", "-1.00", ["gst_amount", "paygw_amount"]),
    ],
)
def test_component_rules(amount: str, gst: str, paygw: str, fields: list[str]) -> None:
    assert [field for field, _ in component_errors(Decimal(amount), Decimal(gst), Decimal(paygw))] == fields
    body = {**VALID, "amount": amount, "gst_amount": gst, "paygw_amount": paygw}
    if fields:
        assert refused_paths(NewBankLine, body) == fields
    else:
        validate(NewBankLine, body)


def test_a_bad_amount_is_the_only_error_reported_not_its_components() -> None:
    assert refused_paths(NewBankLine, {**VALID, "amount": "1.5"}) == ["amount"]


def test_the_query_defaults_and_names_filters_as_the_client_does() -> None:
    query = validate(BankLineQuery, {}, code="invalid_query")
    assert (query.limit, query.cursor, query.filters()) == (50, None, PageFilters())
    query = validate(
        BankLineQuery,
        {"from": "2025-01-01", "to": "2025-03-31", "min_amount": "-5.00", "max_amount": "5.00", "limit": "200"},
        code="invalid_query",
    )
    assert query.filters() == PageFilters(date(2025, 1, 1), date(2025, 3, 31), Decimal("-5.00"), Decimal("5.00"))
    assert query.limit == 200


@pytest.mark.parametrize(
    ("params", "path"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "201"}, "limit"),
        ({"limit": "abc"}, "limit"),
        ({"limit": "-1"}, "limit"),
        ({"limit": "+5"}, "limit"),
        ({"limit": " 5"}, "limit"),
        ({"limit": "5 "}, "limit"),
        ({"limit": "1_0"}, "limit"),
        ({"limit": "5.0"}, "limit"),
        ({"limit": "05"}, "limit"),
        ({"limit": "\u0665"}, "limit"),  # ARABIC-INDIC DIGIT FIVE: a digit, not an ASCII one
        ({"limit": "1" * 5000}, "limit"),
        ({"limit": ""}, "limit"),
        ({"from": "2025-02-30"}, "from"),
        ({"to": "yesterday"}, "to"),
        ({"from": "2025-02-01", "to": "2025-01-31"}, "to"),
        ({"min_amount": "1e3"}, "min_amount"),
        ({"max_amount": "5"}, "max_amount"),
        ({"min_amount": "5.00", "max_amount": "4.99"}, "max_amount"),
        ({"start": "2025-01-01"}, "start"),  # the field's name is not a parameter
        ({"org_id": str(uuid.uuid4())}, "org_id"),
        ({"cursor": "x" * 201}, "cursor"),
    ],
)
def test_bad_query_parameters_are_refused_naming_them(params: dict[str, str], path: str) -> None:
    assert refused_paths(BankLineQuery, params, code="invalid_query") == [path]


def test_filter_text_is_canonical_and_names_only_the_given_bounds() -> None:
    text = FilterText.of(PageFilters(end=date(2025, 1, 31), min_amount=Decimal("-1.50")))
    assert text.detail == {"to": "2025-01-31", "min_amount": "-1.50"}
    assert text.canonical == b'{"min_amount":"-1.50","to":"2025-01-31"}'
    assert FilterText.of(PageFilters()).canonical == b"{}"


ORG = uuid.UUID("44444444-4444-4444-8444-444444444444")


def test_the_page_query_writes_only_the_bounds_given_and_never_an_offset() -> None:
    sql, args = page_query(ORG, PageFilters(), None, 51)
    assert sql.endswith("WHERE org_id = $1 ORDER BY date DESC, id DESC LIMIT 51")
    assert args == [ORG]
    after = LineKey(date(2025, 1, 2), uuid.uuid4())
    filters = PageFilters(date(2025, 1, 1), None, None, Decimal("9.99"))
    sql, args = page_query(ORG, filters, after, 11)
    assert "WHERE org_id = $1 AND (date, id) < ($2, $3) AND date >= $4 AND amount <= $5 ORDER BY" in sql
    assert args == [ORG, after.date, after.id, date(2025, 1, 1), Decimal("9.99")]
    assert "OFFSET" not in sql.upper()


@given(st.sampled_from([0, -1, True, 1.5, "5"]))
def test_the_page_query_refuses_a_limit_that_is_not_a_positive_int(limit: Any) -> None:
    with pytest.raises(ValueError, match="limit"):
        page_query(ORG, PageFilters(), None, limit)
