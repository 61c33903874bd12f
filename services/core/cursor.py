"""Page cursors of core's listings (`GET /bank-lines`, `GET /alerts`): opaque, tamper-evident, and valid only for
the listing, org and filters they were made for. Pure: the key is passed in (store.cursor_key reads it).

A cursor is the position of the last row of a page and a MAC over it. A bank line's position is (date, id):

    offset  size  field
    0       1     version, CURSOR_VERSION (1)
    1       4     the date as a proleptic Gregorian ordinal, unsigned big-endian
    5       16    the line's id
    21      16    HMAC-SHA256(key, DOMAIN || org id (16 bytes) || sha256(filters) || bytes 0-20), first 16 bytes

and an alert's is (created_at, id): the version, created_at as signed big-endian microseconds since the Unix epoch
(8 bytes, exact for timestamptz), the id, and the MAC under ALERTS_DOMAIN. Each is written as unpadded base64url
of a fixed length (CURSOR_CHARS, ALERT_CURSOR_CHARS). The MAC binds the position to the listing (its domain), the
org and the canonical text of the filters, so a cursor used by another org, with other filters, on the other
listing, edited, truncated or padded fails in one way: `InvalidCursor`, which the handler answers like garbage
(400 `invalid_query` naming `cursor`). Nothing in a cursor is secret (its user saw that row), and the query is
always scoped to the caller's org; the MAC is what makes "another org's cursor" and "a cursor for other filters"
refusals instead of silently odd pages.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import struct
import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

from services.core.store import LineKey
from services.core.store.alerts import AlertKey

__all__ = [
    "ALERT_CURSOR_CHARS",
    "CURSOR_CHARS",
    "CURSOR_KEY_BYTES",
    "CURSOR_VERSION",
    "InvalidCursor",
    "decode_alert_cursor",
    "decode_cursor",
    "encode_alert_cursor",
    "encode_cursor",
]

CURSOR_VERSION = 1
CURSOR_KEY_BYTES = 32
MAC_BYTES = 16
DOMAIN = b"apgms-core-bank-lines-cursor\x00"
ALERTS_DOMAIN = b"apgms-core-alerts-cursor\x00"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MICROSECOND = timedelta(microseconds=1)


class InvalidCursor(ValueError):
    """Not a cursor this API made for this org and these filters; deliberately says no more."""


@dataclass(frozen=True)
class _Seal:
    """Seals and opens positions of one listing: `layout` is the packed position, whose first field is the
    version byte."""

    domain: bytes
    layout: struct.Struct
    chars: int = field(init=False)
    pattern: re.Pattern[str] = field(init=False)

    def __post_init__(self) -> None:
        # Unpadded base64: 4 characters per 3 bytes, rounded up.
        chars = -(-(self.layout.size + MAC_BYTES) * 4 // 3)
        object.__setattr__(self, "chars", chars)
        object.__setattr__(self, "pattern", re.compile(rf"[A-Za-z0-9_-]{{{chars}}}", re.ASCII))

    def _mac(self, key: bytes, org_id: uuid.UUID, filters: bytes, position: bytes) -> bytes:
        message = self.domain + org_id.bytes + hashlib.sha256(filters).digest() + position
        return hmac.new(key, message, hashlib.sha256).digest()[:MAC_BYTES]

    def seal(self, key: bytes, org_id: uuid.UUID, filters: bytes, *fields: object) -> str:
        position = self.layout.pack(CURSOR_VERSION, *fields)
        return base64.urlsafe_b64encode(position + self._mac(key, org_id, filters, position)).decode().rstrip("=")

    def open(self, key: bytes, org_id: uuid.UUID, filters: bytes, cursor: str) -> tuple[object, ...]:
        """The fields after the version; `InvalidCursor` unless `seal` made exactly this text with the same key,
        org and filters."""
        if self.pattern.fullmatch(cursor) is None:
            raise InvalidCursor("malformed")
        try:
            raw = base64.b64decode(cursor + "=" * (-len(cursor) % 4), altchars=b"-_", validate=True)
        except binascii.Error:
            raise InvalidCursor("malformed") from None
        position, mac = raw[: self.layout.size], raw[self.layout.size :]
        # One spelling per cursor: unused low bits of the last character are not ignored.
        if base64.urlsafe_b64encode(raw).decode().rstrip("=") != cursor:
            raise InvalidCursor("malformed")
        if not hmac.compare_digest(mac, self._mac(key, org_id, filters, position)):
            raise InvalidCursor("not ours")
        version, *fields = self.layout.unpack(position)
        if version != CURSOR_VERSION:
            raise InvalidCursor("unknown version")
        return tuple(fields)


_LINES = _Seal(DOMAIN, struct.Struct(">BI16s"))
_ALERTS = _Seal(ALERTS_DOMAIN, struct.Struct(">Bq16s"))
CURSOR_CHARS = _LINES.chars
ALERT_CURSOR_CHARS = _ALERTS.chars


def encode_cursor(key: bytes, org_id: uuid.UUID, filters: bytes, after: LineKey) -> str:
    """The bank-line cursor of the page that follows `after`, for `org_id` and the canonical `filters` text."""
    return _LINES.seal(key, org_id, filters, after.date.toordinal(), after.id.bytes)


def decode_cursor(key: bytes, org_id: uuid.UUID, filters: bytes, cursor: str) -> LineKey:
    """The bank-line position `cursor` points after; `InvalidCursor` unless `encode_cursor` made exactly this text
    with the same key, org and filters."""
    ordinal, id_bytes = _LINES.open(key, org_id, filters, cursor)
    assert isinstance(ordinal, int) and isinstance(id_bytes, bytes)
    try:
        day = date.fromordinal(ordinal)
    except (ValueError, OverflowError):
        raise InvalidCursor("bad date") from None
    return LineKey(day, uuid.UUID(bytes=id_bytes))


def encode_alert_cursor(key: bytes, org_id: uuid.UUID, filters: bytes, after: AlertKey) -> str:
    """The alert cursor of the page that follows `after` (an aware created_at), for `org_id` and `filters`."""
    return _ALERTS.seal(key, org_id, filters, (after.created_at - EPOCH) // MICROSECOND, after.id.bytes)


def decode_alert_cursor(key: bytes, org_id: uuid.UUID, filters: bytes, cursor: str) -> AlertKey:
    """The alert position `cursor` points after; `InvalidCursor` unless `encode_alert_cursor` made it with the
    same key, org and filters."""
    micros, id_bytes = _ALERTS.open(key, org_id, filters, cursor)
    assert isinstance(micros, int) and isinstance(id_bytes, bytes)
    try:
        created_at = EPOCH + micros * MICROSECOND
    except OverflowError:
        raise InvalidCursor("bad time") from None
    return AlertKey(created_at, uuid.UUID(bytes=id_bytes))
