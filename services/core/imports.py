"""The bulk import's parser: a request body and its media type → validated rows, or every row's errors. No I/O.

    import_format(content_type)    CSV | JSON_LINES, or None for a media type the import does not take (415)
    parse_import(body, format)     Accepted(rows) | Refused(errors, total) | TooManyRows(limit)

Two formats carry the same fields (`date`, `amount`, `payee`, `description`, and optionally `gst_amount`,
`paygw_amount`), checked by the one row model the single-line POST uses, so a line is valid in a file exactly when
it is valid alone:

- `text/csv` (RFC 4180, UTF-8): a header row naming the columns in any order, CRLF or LF line ends, quoted fields
  (commas, quotes, line breaks inside them). A missing, unknown or repeated column refuses the whole file, naming
  the column. An empty cell in an optional column means the column's default (0.00).
- `application/x-ndjson` or `application/jsonl`: one JSON object per line, with the same rules as the POST body
  (money as strings, unknown fields refused).

Errors are `RowError(row, field, code, message)`. `row` is the 1-based number of the data record (the CSV header
and blank lines are not counted); row 0 is the file as a whole (the header, its encoding). Every row is checked
before anything is decided, so a client sees all its mistakes at once; only the first MAX_REPORTED_ERRORS are
kept, with the total. A byte order mark is refused (code `bom`), not stripped: the issue lists it among the bad
inputs, and a file whose first header cell is silently `\\ufeffdate` in other tools is better fixed at its source.
More than MAX_ROWS records is `TooManyRows` (the route's 413, like the 5 MiB cap): a batch limit, not a row's
mistake, so the parser stops counting there.
"""

from __future__ import annotations

import codecs
import csv
import io
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from enum import Enum
from typing import Any

import orjson
from pydantic import ValidationError

from services.core.models import NewBankLine
from shared.validation import nul_paths

__all__ = [
    "MAX_BODY_BYTES",
    "MAX_REPORTED_ERRORS",
    "MAX_ROWS",
    "OPTIONAL_COLUMNS",
    "REQUIRED_COLUMNS",
    "Accepted",
    "ImportFormat",
    "ImportRow",
    "ParsedImport",
    "Refused",
    "RowError",
    "TooManyRows",
    "import_format",
    "parse_import",
]

MiB = 1024 * 1024
# Issue #11: up to 10,000 rows or 5 MiB per request (the proxy's limit for the route is the same 5 MiB).
MAX_ROWS = 10_000
MAX_BODY_BYTES = 5 * MiB
# A file with a mistake in every row would otherwise answer with a 10,000-entry list; the total says how many.
MAX_REPORTED_ERRORS = 100
REQUIRED_COLUMNS = ("date", "amount", "payee", "description")
OPTIONAL_COLUMNS = ("gst_amount", "paygw_amount")
KNOWN_COLUMNS = frozenset(REQUIRED_COLUMNS + OPTIONAL_COLUMNS)
FILE_ROW = 0
WHOLE = "$"  # the field of an error about a whole row or file, as in shared.validation's paths

# Pydantic's error types → the import's codes; a type not listed is reported as pydantic names it.
CODES = {
    "missing": "missing",
    "extra_forbidden": "unknown_field",
    "string_type": "wrong_type",
    "money_type": "wrong_type",
    "date_type": "wrong_type",
    "string_too_short": "empty",
    "string_pattern_mismatch": "empty",  # the payee rule's "not all whitespace"
    "string_too_long": "too_long",
    "money": "invalid_money",
    "date": "invalid_date",
    "component": "invalid_component",
}


class ImportFormat(Enum):
    CSV = "text/csv"
    JSON_LINES = "application/x-ndjson"


MEDIA_TYPES = {
    "text/csv": ImportFormat.CSV,
    "application/x-ndjson": ImportFormat.JSON_LINES,
    "application/jsonl": ImportFormat.JSON_LINES,
}
CHARSETS = frozenset({"utf-8", "utf8"})


@dataclass(frozen=True, slots=True)
class ImportRow:
    """One valid line, in plaintext: what the handler seals and stores."""

    date: date
    amount: Decimal
    gst_amount: Decimal
    paygw_amount: Decimal
    payee: str
    description: str


@dataclass(frozen=True, slots=True)
class RowError:
    row: int
    field: str
    code: str
    message: str

    def document(self) -> dict[str, Any]:
        """The entry of the 422 problem's `errors` list (`shared.errors.ProblemItem`)."""
        return {"row": self.row, "field": self.field, "code": self.code, "message": self.message}


@dataclass(frozen=True)
class Accepted:
    rows: tuple[ImportRow, ...]


@dataclass(frozen=True)
class Refused:
    """At least one error: the first MAX_REPORTED_ERRORS of them, and how many there were in all."""

    errors: tuple[RowError, ...]
    total: int


@dataclass(frozen=True)
class TooManyRows:
    limit: int


ParsedImport = Accepted | Refused | TooManyRows


class _FileRefused(Exception):
    def __init__(self, *errors: RowError) -> None:
        self.errors = errors


def import_format(content_type: str) -> ImportFormat | None:
    """The format a `Content-Type` value names (parameters allowed, charset only UTF-8); None for any other."""
    media_type, *parameters = (part.strip().lower() for part in content_type.split(";"))
    for parameter in parameters:
        name, _, value = parameter.partition("=")
        if name.strip() == "charset" and value.strip().strip('"') not in CHARSETS:
            return None
    return MEDIA_TYPES.get(media_type)


def parse_import(body: bytes, fmt: ImportFormat, *, max_rows: int = MAX_ROWS) -> ParsedImport:
    """Every record of `body` validated as a bank line (`services.core.models.NewBankLine`, the POST's rules)."""
    try:
        text = _text(body)
        records = _csv_records(text) if fmt is ImportFormat.CSV else _json_line_records(text)
        collector = _Collector()
        rows: list[ImportRow] = []
        for number, record in records:
            if number > max_rows:
                return TooManyRows(max_rows)
            if isinstance(record, RowError):
                collector.add(record)
                continue
            row = _validate(number, record, collector)
            if row is not None:
                rows.append(row)
    except _FileRefused as refused:
        return Refused(refused.errors, len(refused.errors))
    if collector.total:
        return collector.refused()
    if not rows:
        return Refused((RowError(FILE_ROW, WHOLE, "no_rows", "The file holds no rows"),), 1)
    return Accepted(tuple(rows))


class _Collector:
    def __init__(self) -> None:
        self.kept: list[RowError] = []
        self.total = 0

    def add(self, error: RowError) -> None:
        self.total += 1
        if len(self.kept) < MAX_REPORTED_ERRORS:
            self.kept.append(error)

    def refused(self) -> Refused:
        return Refused(tuple(self.kept), self.total)


def _text(body: bytes) -> str:
    if body.startswith(codecs.BOM_UTF8):
        raise _FileRefused(
            RowError(FILE_ROW, WHOLE, "bom", "The file starts with a byte order mark; save it as UTF-8 without BOM")
        )
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = body.count(b"\n", 0, exc.start) + 1
        raise _FileRefused(
            RowError(FILE_ROW, WHOLE, "encoding", f"The file is not UTF-8 (line {line}, byte {exc.start})")
        ) from None


Record = Mapping[str, object] | RowError


def _csv_records(text: str) -> Iterator[tuple[int, Record]]:
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader, None)
    except csv.Error as exc:
        raise _FileRefused(RowError(FILE_ROW, WHOLE, "malformed_csv", f"The header is not valid CSV: {exc}")) from None
    if header is None:
        raise _FileRefused(RowError(FILE_ROW, WHOLE, "no_rows", "The file is empty: send a header row and rows"))
    columns = _check_header(header)
    number = 0
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            number += 1
            yield number, RowError(number, WHOLE, "malformed_csv", f"Not valid CSV: {exc}")
            return  # the reader cannot resynchronise after a broken quote
        if not cells or cells == [""]:
            continue  # a blank line
        number += 1
        if len(cells) != len(columns):
            yield (
                number,
                RowError(
                    number, WHOLE, "field_count", f"The row has {len(cells)} fields; the header has {len(columns)}"
                ),
            )
            continue
        yield (
            number,
            {
                column: cell
                for column, cell in zip(columns, cells, strict=True)
                if cell != "" or column not in OPTIONAL_COLUMNS
            },
        )


def _check_header(header: list[str]) -> list[str]:
    errors = []
    seen: set[str] = set()
    for column in header:
        if column in seen:
            errors.append(RowError(FILE_ROW, column, "duplicate_column", f"The column {column!r} appears twice"))
        elif column not in KNOWN_COLUMNS:
            known = ", ".join(REQUIRED_COLUMNS + OPTIONAL_COLUMNS)
            errors.append(RowError(FILE_ROW, column, "unknown_column", f"Unknown column {column!r}; known: {known}"))
        seen.add(column)
    errors += [
        RowError(FILE_ROW, column, "missing_column", f"The header has no {column!r} column")
        for column in REQUIRED_COLUMNS
        if column not in seen
    ]
    if errors:
        raise _FileRefused(*errors)
    return header


def _json_line_records(text: str) -> Iterator[tuple[int, Record]]:
    number = 0
    # Only LF (and CRLF) end a line: `str.splitlines` would also split at U+2028 and others, which JSON strings
    # may hold unescaped.
    for raw in text.split("\n"):
        line = raw.removesuffix("\r")
        if not line.strip():
            continue
        number += 1
        try:
            value = orjson.loads(line)
        except orjson.JSONDecodeError:
            yield number, RowError(number, WHOLE, "invalid_json", "The line is not valid JSON")
            continue
        if not isinstance(value, dict):
            yield number, RowError(number, WHOLE, "not_an_object", "Each line must be one JSON object")
            continue
        yield number, value


def _validate(number: int, record: Mapping[str, object], errors: _Collector) -> ImportRow | None:
    if bad := nul_paths(dict(record)):
        for path in bad:
            errors.add(RowError(number, path.removeprefix("$."), "nul_character", "Text may not contain NUL"))
        return None
    try:
        line = NewBankLine.model_validate(record)
    except ValidationError as exc:
        for error in exc.errors():
            field = ".".join(str(part) for part in error["loc"]) or WHOLE
            errors.add(RowError(number, field, CODES.get(error["type"], error["type"]), error["msg"]))
        return None
    return ImportRow(
        date=line.date,
        amount=line.amount,
        gst_amount=line.gst_amount,
        paygw_amount=line.paygw_amount,
        payee=line.payee,
        description=line.description,
    )
