"""The bulk import's parser (services/core/imports.py): formats, every bad input of issue #11, limits."""

from __future__ import annotations

import csv
import io
import uuid
from datetime import UTC, date, datetime
from decimal import Decimal

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.core.bulk import refused_error, summarise
from services.core.imports import (
    MAX_REPORTED_ERRORS,
    MAX_ROWS,
    Accepted,
    ImportFormat,
    ImportRow,
    Refused,
    RowError,
    TooManyRows,
    import_format,
    parse_import,
)
from services.core.models import DESCRIPTION_MAX_CHARS, PAYEE_MAX_CHARS
from shared.errors import problem_body
from shared.money import format_money

CSV, JSONL = ImportFormat.CSV, ImportFormat.JSON_LINES
HEADER = "date,amount,payee,description,gst_amount,paygw_amount"
GOOD = "2025-07-01,1100.00,Officeworks,Printer paper,100.00,0.00"


def csv_body(*lines: str, header: str = HEADER, newline: str = "\n") -> bytes:
    return newline.join((header, *lines)).encode() + newline.encode()


def jsonl_body(*objects: object) -> bytes:
    return b"\n".join(orjson.dumps(o) for o in objects) + b"\n"


def line(**fields: object) -> dict[str, object]:
    return {"date": "2025-07-01", "amount": "10.00", "payee": "ATO", "description": "", **fields}


def accepted(result: object) -> tuple[ImportRow, ...]:
    assert isinstance(result, Accepted), result
    return result.rows


def refused(result: object) -> list[tuple[int, str, str]]:
    assert isinstance(result, Refused), result
    assert result.total >= len(result.errors) > 0
    return [(e.row, e.field, e.code) for e in result.errors]


# --- media types -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content_type", "expected"),
    [
        ("text/csv", CSV),
        ("text/csv; charset=utf-8", CSV),
        ('Text/CSV; charset="UTF-8"', CSV),
        ("application/x-ndjson", JSONL),
        ("application/jsonl", JSONL),
        ("text/csv; charset=latin-1", None),
        ("application/json", None),
        ("", None),
    ],
)
def test_the_format_comes_from_the_media_type(content_type: str, expected: ImportFormat | None) -> None:
    assert import_format(content_type) is expected


# --- CSV -------------------------------------------------------------------------------------------------------


def test_a_csv_file_gives_its_rows_in_order() -> None:
    rows = accepted(parse_import(csv_body(GOOD, "2025-07-02,-55.10,Telstra,Phone bill,-5.01,0.00"), CSV))
    assert rows == (
        ImportRow(
            date(2025, 7, 1), Decimal("1100.00"), Decimal("100.00"), Decimal("0.00"), "Officeworks", "Printer paper"
        ),
        ImportRow(date(2025, 7, 2), Decimal("-55.10"), Decimal("-5.01"), Decimal("0.00"), "Telstra", "Phone bill"),
    )


def test_columns_come_in_any_order_and_the_components_are_optional() -> None:
    body = csv_body("Bunnings,Screws,2025-08-09,12.30", header="payee,description,date,amount")
    (row,) = accepted(parse_import(body, CSV))
    assert (row.payee, row.date, row.amount, row.gst_amount, row.paygw_amount) == (
        "Bunnings",
        date(2025, 8, 9),
        Decimal("12.30"),
        Decimal("0.00"),
        Decimal("0.00"),
    )


def test_an_empty_cell_in_an_optional_column_is_its_default() -> None:
    (row,) = accepted(parse_import(csv_body("2025-07-01,10.00,ATO,,,"), CSV))
    assert (row.description, row.gst_amount, row.paygw_amount) == ("", Decimal("0.00"), Decimal("0.00"))


def test_crlf_line_ends_are_accepted() -> None:
    rows = accepted(parse_import(csv_body(GOOD, GOOD, newline="\r\n"), CSV))
    assert len(rows) == 2 and rows[1].paygw_amount == Decimal("0.00")


def test_quoted_commas_quotes_and_line_breaks_are_accepted() -> None:
    body = csv_body('2025-07-01,10.00,"Smith, J & Co","He said ""paid""\r\nin full",0.00,0.00')
    (row,) = accepted(parse_import(body, CSV))
    assert (row.payee, row.description) == ("Smith, J & Co", 'He said "paid"\r\nin full')


def test_blank_lines_are_skipped_and_not_counted() -> None:
    body = csv_body(GOOD, "", "2025-07-01,1.234,ATO,,0.00,0.00")
    assert refused(parse_import(body, CSV)) == [(2, "amount", "invalid_money")]


def test_a_byte_order_mark_is_refused() -> None:
    assert refused(parse_import(b"\xef\xbb\xbf" + csv_body(GOOD), CSV)) == [(0, "$", "bom")]
    assert refused(parse_import(b"\xef\xbb\xbf" + jsonl_body(line()), JSONL)) == [(0, "$", "bom")]


def test_a_missing_column_is_named() -> None:
    body = csv_body("2025-07-01,10.00,ATO", header="date,amount,payee")
    assert refused(parse_import(body, CSV)) == [(0, "description", "missing_column")]


def test_an_extra_column_is_named() -> None:
    body = csv_body(GOOD + ",x", header=HEADER + ",category")
    assert refused(parse_import(body, CSV)) == [(0, "category", "unknown_column")]


def test_a_repeated_column_is_named() -> None:
    body = csv_body("2025-07-01,10.00,ATO,,1.00", header="date,amount,payee,description,amount")
    assert refused(parse_import(body, CSV)) == [(0, "amount", "duplicate_column")]


def test_a_row_with_too_many_or_too_few_cells_is_a_row_error() -> None:
    body = csv_body(GOOD + ",extra", "2025-07-01,10.00")
    assert refused(parse_import(body, CSV)) == [(1, "$", "field_count"), (2, "$", "field_count")]


def test_an_unclosed_quote_is_malformed() -> None:
    body = csv_body(GOOD, '2025-07-01,10.00,"ATO,,0.00,0.00')
    assert refused(parse_import(body, CSV)) == [(2, "$", "malformed_csv")]


def test_an_empty_file_or_a_header_alone_holds_no_rows() -> None:
    assert refused(parse_import(b"", CSV)) == [(0, "$", "no_rows")]
    assert refused(parse_import(csv_body(), CSV)) == [(0, "$", "no_rows")]
    assert refused(parse_import(b"\n\n", JSONL)) == [(0, "$", "no_rows")]


def test_a_file_that_is_not_utf8_is_refused_naming_the_line() -> None:
    result = parse_import(csv_body(GOOD, "2025-07-01,10.00,Caf\xe9,,0.00,0.00").replace(b"\xc3\xa9", b"\xe9"), CSV)
    assert refused(result) == [(0, "$", "encoding")]
    assert isinstance(result, Refused) and "line 3" in result.errors[0].message


# --- the field rules, in both formats ----------------------------------------------------------------------------

NEXT_YEAR_PLUS_ONE = f"{datetime.now(UTC).year + 2}-01-01"
BAD_VALUES = [
    ("amount", "12.345", "invalid_money"),  # 3 decimals
    ("amount", "12.5", "invalid_money"),
    ("amount", "12", "invalid_money"),
    ("amount", "1e3", "invalid_money"),  # exponent
    ("amount", "1e309", "invalid_money"),
    ("amount", "NaN", "invalid_money"),
    ("amount", "Infinity", "invalid_money"),
    ("amount", "", "invalid_money"),
    ("gst_amount", "1.000", "invalid_money"),
    ("gst_amount", "20.00", "invalid_component"),  # more than the amount
    ("paygw_amount", "-1.00", "invalid_component"),
    ("payee", "", "empty"),
    ("payee", "   ", "empty"),
    ("payee", "x" * 10_240, "too_long"),  # 10 KB
    ("payee", "x" * (PAYEE_MAX_CHARS + 1), "too_long"),
    ("description", "d" * (DESCRIPTION_MAX_CHARS + 1), "too_long"),
    ("date", "2025-02-30", "invalid_date"),
    ("date", "1899-12-31", "invalid_date"),
    ("date", NEXT_YEAR_PLUS_ONE, "invalid_date"),
    ("date", "01/07/2025", "invalid_date"),
    ("date", "2025-7-1", "invalid_date"),
    ("date", "", "invalid_date"),
]


@pytest.mark.parametrize(("field", "value", "code"), BAD_VALUES)
def test_a_bad_value_in_a_csv_row_names_the_row_field_and_code(field: str, value: str, code: str) -> None:
    fields = {**line(), "gst_amount": "0.00", "paygw_amount": "0.00", field: value}
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow([fields[c] for c in HEADER.split(",")])
    body = csv_body(GOOD, out.getvalue().rstrip("\n"), GOOD)
    assert refused(parse_import(body, CSV)) == [(2, field, code)]


@pytest.mark.parametrize(("field", "value", "code"), BAD_VALUES)
def test_a_bad_value_in_a_json_line_names_the_row_field_and_code(field: str, value: str, code: str) -> None:
    body = jsonl_body(line(), line(**{field: value}))
    assert refused(parse_import(body, JSONL)) == [(2, field, code)]


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        (line(amount=10.5), [(1, "amount", "wrong_type")]),  # a float
        (line(amount=10), [(1, "amount", "wrong_type")]),
        (line(payee=7), [(1, "payee", "wrong_type")]),
        (line(date=20250701), [(1, "date", "wrong_type")]),
        (line(description=None), [(1, "description", "wrong_type")]),
        (line(category="food"), [(1, "category", "unknown_field")]),
        ({"date": "2025-07-01", "amount": "1.00"}, [(1, "payee", "missing"), (1, "description", "missing")]),
        (line(payee="A\x00B"), [(1, "payee", "nul_character")]),
    ],
)
def test_json_lines_refuse_wrong_types_unknown_and_missing_fields(
    record: dict[str, object], expected: list[tuple[int, str, str]]
) -> None:
    assert refused(parse_import(jsonl_body(record), JSONL)) == expected


def test_json_lines_that_are_not_objects_or_not_json_are_row_errors() -> None:
    body = jsonl_body(line()) + b'[1, 2]\n"text"\n{"date": \n' + jsonl_body(line())
    assert refused(parse_import(body, JSONL)) == [
        (2, "$", "not_an_object"),
        (3, "$", "not_an_object"),
        (4, "$", "invalid_json"),
    ]


def test_json_lines_accept_crlf_and_a_missing_final_newline() -> None:
    body = orjson.dumps(line()) + b"\r\n" + orjson.dumps(line(amount="2.00"))
    assert [row.amount for row in accepted(parse_import(body, JSONL))] == [Decimal("10.00"), Decimal("2.00")]


def test_only_lf_ends_a_json_line() -> None:
    (row,) = accepted(parse_import(jsonl_body(line(description="one\u2028two\x85three")), JSONL))
    assert row.description == "one\u2028two\x85three"


# --- limits ----------------------------------------------------------------------------------------------------


def test_max_rows_are_accepted_and_one_more_is_too_many() -> None:
    rows = [GOOD] * MAX_ROWS
    assert len(accepted(parse_import(csv_body(*rows), CSV))) == MAX_ROWS
    assert parse_import(csv_body(*rows, GOOD), CSV) == TooManyRows(MAX_ROWS)
    assert parse_import(jsonl_body(*[line()] * (MAX_ROWS + 1)), JSONL) == TooManyRows(MAX_ROWS)


def test_too_many_rows_wins_over_row_errors() -> None:
    body = csv_body(*["2025-02-30,1.00,ATO,,,"] * 11, GOOD)
    assert parse_import(body, CSV, max_rows=10) == TooManyRows(10)


def test_errors_are_capped_with_the_total_kept() -> None:
    result = parse_import(csv_body(*["2025-07-01,1.001,,x,0.00,0.00"] * 300), CSV)
    assert isinstance(result, Refused)
    assert len(result.errors) == MAX_REPORTED_ERRORS and result.total == 600
    assert result.errors[:2] == (
        RowError(1, "amount", "invalid_money", result.errors[0].message),
        RowError(1, "payee", "empty", result.errors[1].message),
    )


def test_every_row_is_checked_so_all_mistakes_are_reported_at_once() -> None:
    body = csv_body("2025-02-30,1.00,ATO,,,", GOOD, "2025-07-01,1.0,ATO,,,", "2025-07-01,1.00,,,,")
    assert refused(parse_import(body, CSV)) == [
        (1, "date", "invalid_date"),
        (3, "amount", "invalid_money"),
        (4, "payee", "empty"),
    ]


# --- what the route makes of a result -------------------------------------------------------------------------


def test_the_422_problem_lists_row_field_code_and_message_with_the_total() -> None:
    result = parse_import(csv_body(*["2025-07-01,1.001,ATO,,,"] * 150), CSV)
    assert isinstance(result, Refused)
    error = refused_error(result)
    assert (error.kind.status, error.code) == (422, "invalid_rows")
    document = orjson.loads(problem_body(error.code, error.detail, errors=error.errors, **error.extra))
    assert document["error_count"] == 150
    assert len(document["errors"]) == MAX_REPORTED_ERRORS
    assert document["errors"][0] == {
        "row": 1,
        "field": "amount",
        "code": "invalid_money",
        "message": result.errors[0].message,
    }


def test_the_summary_carries_count_totals_and_dates_and_no_pii() -> None:
    rows = accepted(parse_import(csv_body(GOOD, "2024-01-31,-0.10,Secret Payee,Secret,0.00,0.00"), CSV))
    summary = summarise(uuid.UUID(int=1), rows)
    assert summary.detail() == {
        "count": 2,
        "totals": {"amount": "1099.90", "gst_amount": "100.00", "paygw_amount": "0.00"},
        "first_date": "2024-01-31",
        "last_date": "2025-07-01",
    }
    assert "Secret" not in orjson.dumps(summary.document()).decode()
    assert summary.document()["imported"] == 2


def test_a_summary_whose_totals_pass_twelve_integer_digits_is_written_with_them() -> None:
    largest = "999999999999.99"
    rows = accepted(parse_import(csv_body(*[f"2025-01-0{day},{largest},P,D,0.00,{largest}" for day in (1, 2)]), CSV))
    totals = summarise(uuid.UUID(int=1), rows).document()["totals"]
    assert totals == {"amount": "1999999999999.98", "gst_amount": "0.00", "paygw_amount": "1999999999999.98"}


# --- round trip ----------------------------------------------------------------------------------------------------

cents = st.integers(min_value=-(10**14) + 1, max_value=10**14 - 1)


def money(cents: int) -> Decimal:
    return Decimal(cents).scaleb(-2)


text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=PAYEE_MAX_CHARS)


@st.composite
def valid_rows(draw: st.DrawFn) -> ImportRow:
    amount_cents = draw(cents)
    gst = money(draw(st.integers(min_value=0, max_value=abs(amount_cents))))
    paygw = money(draw(st.integers(min_value=0, max_value=abs(amount_cents))))
    amount = money(amount_cents)
    payee = draw(text.filter(lambda s: s.strip() != ""))
    return ImportRow(
        date=draw(st.dates(min_value=date(1900, 1, 1), max_value=date(datetime.now(UTC).year + 1, 12, 31))),
        amount=amount,
        gst_amount=gst if amount >= 0 else -gst,
        paygw_amount=paygw,
        payee=payee,
        description=draw(text),
    )


@settings(max_examples=200, deadline=None)
# Python's writer quotes a field holding a character of its line terminator, so a bare CR in a value needs CRLF
# lines or quoting everything; either is valid RFC 4180.
@given(
    st.lists(valid_rows(), min_size=1, max_size=5),
    st.sampled_from([("\r\n", csv.QUOTE_MINIMAL), ("\n", csv.QUOTE_ALL)]),
)
def test_any_valid_row_written_as_csv_parses_back_to_the_same_values(
    rows: list[ImportRow], dialect: tuple[str, int]
) -> None:
    newline, quoting = dialect
    out = io.StringIO()
    writer = csv.writer(out, lineterminator=newline, quoting=quoting)
    writer.writerow(HEADER.split(","))
    for row in rows:
        writer.writerow(
            [
                row.date.isoformat(),
                format_money(row.amount),
                row.payee,
                row.description,
                format_money(row.gst_amount),
                format_money(row.paygw_amount),
            ]
        )
    assert accepted(parse_import(out.getvalue().encode(), CSV)) == tuple(rows)
