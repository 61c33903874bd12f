"""Page cursors of `GET /bank-lines`: opaque, tamper-evident, and valid only for the org and filters they were
made for. Pure: the key is passed in (store.cursor_key reads it).

A cursor is the position of the last line of a page, (date, id), and a MAC over it:

    offset  size  field
    0       1     version, CURSOR_VERSION (1)
    1       4     the date as a proleptic Gregorian ordinal, unsigned big-endian
    5       16    the line's id
    21      16    HMAC-SHA256(key, DOMAIN || org id (16 bytes) || sha256(filters) || bytes 0-20), first 16 bytes

written as unpadded base64url (CURSOR_CHARS characters). The MAC binds the position to the org and to the canonical
text of the filters, so a cursor used by another org, with other filters, edited, truncated or padded fails in one
way: `InvalidCursor`, which the handler answers like garbage (400 `invalid_query` naming `cursor`). Nothing in a
cursor is secret (its user saw that line), and the query is always scoped to the caller's org; the MAC is what
makes "another org's cursor" and "a cursor for other filters" refusals instead of silently odd pages.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import struct
import uuid
from datetime import date

from services.core.store import LineKey

__all__ = ["CURSOR_CHARS", "CURSOR_KEY_BYTES", "CURSOR_VERSION", "InvalidCursor", "decode_cursor", "encode_cursor"]

CURSOR_VERSION = 1
CURSOR_KEY_BYTES = 32
MAC_BYTES = 16
DOMAIN = b"apgms-core-bank-lines-cursor\x00"
_POSITION = struct.Struct(">BI16s")
_CURSOR_BYTES = _POSITION.size + MAC_BYTES
# Unpadded base64: 4 characters per 3 bytes, rounded up.
CURSOR_CHARS = -(-_CURSOR_BYTES * 4 // 3)
_CURSOR_RE = re.compile(rf"[A-Za-z0-9_-]{{{CURSOR_CHARS}}}", re.ASCII)


class InvalidCursor(ValueError):
    """Not a cursor this API made for this org and these filters; deliberately says no more."""


def _mac(key: bytes, org_id: uuid.UUID, filters: bytes, position: bytes) -> bytes:
    message = DOMAIN + org_id.bytes + hashlib.sha256(filters).digest() + position
    return hmac.new(key, message, hashlib.sha256).digest()[:MAC_BYTES]


def encode_cursor(key: bytes, org_id: uuid.UUID, filters: bytes, after: LineKey) -> str:
    """The cursor of the page that follows `after`, for `org_id` and the canonical `filters` text."""
    position = _POSITION.pack(CURSOR_VERSION, after.date.toordinal(), after.id.bytes)
    return base64.urlsafe_b64encode(position + _mac(key, org_id, filters, position)).decode().rstrip("=")


def decode_cursor(key: bytes, org_id: uuid.UUID, filters: bytes, cursor: str) -> LineKey:
    """The position `cursor` points after; `InvalidCursor` unless `encode_cursor` made exactly this text with the
    same key, org and filters."""
    if _CURSOR_RE.fullmatch(cursor) is None:
        raise InvalidCursor("malformed")
    try:
        raw = base64.b64decode(cursor + "=" * (-len(cursor) % 4), altchars=b"-_", validate=True)
    except binascii.Error:
        raise InvalidCursor("malformed") from None
    position, mac = raw[: _POSITION.size], raw[_POSITION.size :]
    # One spelling per cursor: unused low bits of the last character are not ignored.
    if base64.urlsafe_b64encode(raw).decode().rstrip("=") != cursor:
        raise InvalidCursor("malformed")
    if not hmac.compare_digest(mac, _mac(key, org_id, filters, position)):
        raise InvalidCursor("not ours")
    version, ordinal, id_bytes = _POSITION.unpack(position)
    if version != CURSOR_VERSION:
        raise InvalidCursor("unknown version")
    try:
        day = date.fromordinal(ordinal)
    except (ValueError, OverflowError):
        raise InvalidCursor("bad date") from None
    return LineKey(day, uuid.UUID(bytes=id_bytes))
