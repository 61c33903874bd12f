"""Opaque keyset cursors: `{"items": [...], "next_cursor": ...}` pages, newest or oldest first by (time, id)."""

from __future__ import annotations

import base64
import binascii
import uuid
from datetime import datetime

import orjson
from pydantic import BaseModel, ConfigDict, Field

from shared.errors import ApiError, FieldError

__all__ = ["DEFAULT_PAGE_SIZE", "MAX_CURSOR_CHARS", "MAX_PAGE_SIZE", "PageQuery", "decode_cursor", "encode_cursor"]

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 200
# A cursor we hand out is about 100 characters (a timestamp and a UUID, base64url); longer is not ours.
MAX_CURSOR_CHARS = 200


class PageQuery(BaseModel):
    """`?cursor=...&limit=...` of a listing (`shared.validation.parse_query`); unknown parameters are refused."""

    model_config = ConfigDict(extra="forbid")

    cursor: str | None = Field(default=None, max_length=MAX_CURSOR_CHARS)
    limit: int = Field(default=DEFAULT_PAGE_SIZE, ge=1, le=MAX_PAGE_SIZE)


def encode_cursor(at: datetime, row_id: uuid.UUID) -> str:
    return base64.urlsafe_b64encode(orjson.dumps([at.isoformat(), str(row_id)])).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    """The (time, id) a cursor points after; 400 `invalid_query` for anything we did not hand out."""
    try:
        at, row_id = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        return datetime.fromisoformat(at), uuid.UUID(row_id)
    except (binascii.Error, orjson.JSONDecodeError, ValueError, TypeError):
        raise ApiError("invalid_query", errors=[FieldError("cursor", "not a cursor from this API")]) from None
