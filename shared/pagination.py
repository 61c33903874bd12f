"""Opaque keyset cursors: `{"items": [...], "next_cursor": ...}` pages, newest or oldest first by (time, id).

A listing reads `limit + 1` rows past the cursor; `page_of` cuts the page and makes the next cursor from its last
row's key only when that extra row came back, so the last page has `next_cursor: null` without a second query. The
key is the listing's own: a (time, id) `encode_cursor`, or another scheme (the audit seq cursors of compliance).

`QueryInt` is an integer as a query string spells it: ASCII digits only. Pydantic's lax `int` would also take
`+5`, ` 5`, `1_0`, `5.0` and `05`, each a second spelling of one value that a cache, a log or a signed cursor then sees
as different; `limit` is one.
"""

from __future__ import annotations

import base64
import binascii
import re
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Annotated, Any, TypeVar

import orjson
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from pydantic_core import PydanticCustomError

from shared.errors import ApiError, FieldError

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "MAX_CURSOR_CHARS",
    "MAX_PAGE_SIZE",
    "PageQuery",
    "QueryInt",
    "bad_cursor",
    "decode_cursor",
    "encode_cursor",
    "page_of",
]

T = TypeVar("T")

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 200
# A cursor we hand out is about 100 characters (a timestamp and a UUID, base64url); longer is not ours.
MAX_CURSOR_CHARS = 200
# Past this many digits no query integer is in range; the bound keeps a huge digit string from being converted.
MAX_QUERY_INT_DIGITS = 9
_DIGITS = re.compile(rf"0|[1-9][0-9]{{0,{MAX_QUERY_INT_DIGITS - 1}}}", re.ASCII)


def _query_int(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value  # built in code, not parsed from a query string
    if isinstance(value, str) and _DIGITS.fullmatch(value):
        return int(value)
    raise PydanticCustomError(
        "query_int", "must be a whole number in ASCII digits (no sign, space, '_', '.' or leading zero)"
    )


QueryInt = Annotated[int, BeforeValidator(_query_int)]


def bad_cursor() -> ApiError:
    """The answer to a cursor this API did not make for this listing, these filters and this org, on every
    listing alike: 400 `invalid_query` naming `cursor` (deliberately saying no more)."""
    return ApiError(
        "invalid_query",
        "The cursor is not one this API gave for these filters",
        errors=[FieldError("cursor", "not a cursor from this API for these filters")],
    )


class PageQuery(BaseModel):
    """`?cursor=...&limit=...` of a listing (`shared.validation.parse_query`); unknown parameters are refused."""

    model_config = ConfigDict(extra="forbid")

    cursor: str | None = Field(default=None, max_length=MAX_CURSOR_CHARS)
    limit: QueryInt = Field(default=DEFAULT_PAGE_SIZE, ge=1, le=MAX_PAGE_SIZE)


def page_of(rows: Sequence[T], limit: int, key: Callable[[T], str]) -> tuple[list[T], str | None]:
    """The page in `rows` (read with a limit of `limit + 1`) and the cursor of the next one: `key` of the page's
    last row when a row past the page came back, else None."""
    if limit < 1:
        raise ValueError(f"a page holds at least one row, not {limit}")
    page = list(rows[:limit])
    return page, key(page[-1]) if len(rows) > limit else None


def encode_cursor(at: datetime, row_id: uuid.UUID) -> str:
    return base64.urlsafe_b64encode(orjson.dumps([at.isoformat(), str(row_id)])).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    """The (time, id) a cursor points after; 400 `invalid_query` for anything we did not hand out."""
    try:
        at, row_id = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        return datetime.fromisoformat(at), uuid.UUID(row_id)
    except (binascii.Error, orjson.JSONDecodeError, ValueError, TypeError):
        raise ApiError("invalid_query", errors=[FieldError("cursor", "not a cursor from this API")]) from None
