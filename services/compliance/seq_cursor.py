"""Page cursors of the listings ordered by audit seq (`GET /audit`, `GET /audit/checkpoints`), pure.

A cursor is unpadded base64url of the canonical JSON `{"before": <seq>, "filters": <digest>}`: the page after it
holds the rows below that seq, and `filters` is the first 16 hex digits of sha256 of the canonical text of the
filters it was made for, so a cursor replayed with other filters is refused (400 `invalid_query` naming `cursor`,
`shared.pagination.bad_cursor`) rather than paging a listing it was not made for. It needs no MAC: the query is
always scoped to the caller's org, and a forged seq only moves where the caller's own listing starts.
"""

from __future__ import annotations

import base64
import binascii
import hashlib

import orjson

from shared.audit import MAX_SEQ
from shared.canonical import canonical_json
from shared.pagination import bad_cursor

__all__ = ["decode_seq_cursor", "encode_seq_cursor"]

FILTER_DIGEST_CHARS = 16


def _filters_digest(bound_to: bytes) -> str:
    return hashlib.sha256(bound_to).hexdigest()[:FILTER_DIGEST_CHARS]


def encode_seq_cursor(before_seq: int, bound_to: bytes) -> str:
    """The cursor of the page below `before_seq`, for the filters whose canonical text is `bound_to`."""
    text = canonical_json({"before": before_seq, "filters": _filters_digest(bound_to)})
    return base64.urlsafe_b64encode(text).decode().rstrip("=")


def decode_seq_cursor(cursor: str, bound_to: bytes) -> int:
    """The seq `cursor` pages below; `ApiError` 400 unless `encode_seq_cursor` made exactly this text for the same
    filters."""
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        document = orjson.loads(text)
    except (binascii.Error, ValueError):
        raise bad_cursor() from None
    if not isinstance(document, dict) or set(document) != {"before", "filters"}:
        raise bad_cursor()
    before = document["before"]
    if not isinstance(before, int) or isinstance(before, bool) or not 1 <= before <= MAX_SEQ:
        raise bad_cursor()
    if encode_seq_cursor(before, bound_to) != cursor:  # other filters, or a second spelling of a cursor
        raise bad_cursor()
    return before
