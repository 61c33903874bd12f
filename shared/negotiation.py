"""Content negotiation for internal routes: JSON unless the caller asks for msgpack (SPEC section 1's dependency
table: `application/msgpack` on internal routes).

    return negotiated_response(request, summary)      # a pydantic model; 406 not_acceptable when nothing fits

or, to refuse an unacceptable request before doing its work:

    media_type = response_media_type(request)         # 406 not_acceptable
    ...
    return encoded_response(summary, media_type)

The choice follows RFC 9110 section 12.5.1. Each media type we offer takes the quality of the most specific range
of `Accept` that matches it (`application/msgpack` over `application/*` over `*/*`), so
`application/json;q=0, */*` excludes JSON and still admits msgpack. The best quality wins; on a tie, the type
matched by the more specific range, then by the range written first, then JSON (what curl and a person can read).
No `Accept`, or one with no range we can parse, is "anything": JSON. A well-formed `Accept` that admits neither
type (`text/html`, `application/json;q=0`) is 406 `not_acceptable`.

Both encodings carry the same document, `model_dump(mode="json")`: money stays a decimal string and dates ISO
text in msgpack too, so a caller decodes either into the same value. Answers say `Vary: Accept` for caches.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgpack
import orjson
from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response

from shared.errors import ApiError

__all__ = [
    "JSON_MEDIA_TYPE",
    "MSGPACK_MEDIA_TYPE",
    "OFFERED",
    "MediaRange",
    "decode",
    "encode",
    "encoded_response",
    "negotiate",
    "negotiated_response",
    "parse_accept",
    "response_media_type",
]

JSON_MEDIA_TYPE = "application/json"
MSGPACK_MEDIA_TYPE = "application/msgpack"
# What an internal route can answer, in our order of preference.
OFFERED = (JSON_MEDIA_TYPE, MSGPACK_MEDIA_TYPE)
# A longer Accept is not a caller of ours; the rest is ignored rather than parsed.
MAX_MEDIA_RANGES = 32
# RFC 9110 section 12.4.2: qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] ), kept as thousandths.
QVALUE = re.compile(r"0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?", re.ASCII)
QUALITY_SCALE = 1000
TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", re.ASCII)
WILDCARD = "*"


@dataclass(frozen=True)
class MediaRange:
    """One range of an Accept header: `type/subtype` (lower case, either may be `*`), its quality in thousandths,
    and where it stood in the header."""

    type: str
    subtype: str
    quality: int
    position: int

    @property
    def specificity(self) -> int:
        """2 for `type/subtype`, 1 for `type/*`, 0 for `*/*`."""
        return (self.type != WILDCARD) + (self.subtype != WILDCARD)

    def matches(self, media_type: str) -> bool:
        type_, _, subtype = media_type.partition("/")
        return self.type in (WILDCARD, type_) and self.subtype in (WILDCARD, subtype)


def _quality(text: str) -> int | None:
    if QVALUE.fullmatch(text) is None:
        return None
    whole, _, thousandths = text.partition(".")
    return int(whole) * QUALITY_SCALE + int(thousandths.ljust(3, "0"))


def _media_range(text: str, position: int) -> MediaRange | None:
    """One comma-separated element of Accept, or None when it is not a media range (`*/json`, `text`, `q=2`)."""
    media, *parameters = (part.strip() for part in text.split(";"))
    type_, slash, subtype = media.lower().partition("/")
    if not slash or TOKEN.fullmatch(type_) is None or TOKEN.fullmatch(subtype) is None:
        return None
    if type_ == WILDCARD and subtype != WILDCARD:
        return None
    quality = QUALITY_SCALE
    for parameter in parameters:
        name, equals, value = parameter.partition("=")
        if name.strip().lower() == "q":
            parsed = _quality(value.strip()) if equals else None
            if parsed is None:
                return None
            quality = parsed
            break  # what follows q= are accept-extensions, not media type parameters
    return MediaRange(type_, subtype, quality, position)


def parse_accept(value: str) -> list[MediaRange]:
    """The media ranges of an Accept header in order; malformed elements are left out."""
    elements = [element for element in value.split(",") if element.strip()][:MAX_MEDIA_RANGES]
    ranges = (_media_range(element, position) for position, element in enumerate(elements))
    return [media_range for media_range in ranges if media_range is not None]


def negotiate(accept: str | None, offered: Sequence[str] = OFFERED) -> str | None:
    """The media type of `offered` to answer a request with `accept`, or None when it admits none of them."""
    ranges = parse_accept(accept) if accept else []
    if not ranges:
        return offered[0]
    best: tuple[tuple[int, int, int, int], str] | None = None
    for index, media_type in enumerate(offered):
        matching = [media_range for media_range in ranges if media_range.matches(media_type)]
        if not matching:
            continue
        # The most specific matching range decides; among equally specific ones, the first.
        decisive = max(matching, key=lambda r: (r.specificity, -r.position))
        if decisive.quality == 0:
            continue
        rank = (decisive.quality, decisive.specificity, -decisive.position, -index)
        if best is None or rank > best[0]:
            best = (rank, media_type)
    return None if best is None else best[1]


def response_media_type(request: Request, offered: Sequence[str] = OFFERED) -> str:
    """The media type to answer `request` with; 406 `not_acceptable` when its Accept admits none we offer."""
    media_type = negotiate(request.headers.get("accept"), offered)
    if media_type is None:
        raise ApiError("not_acceptable", f"This route answers {' or '.join(offered)}")
    return media_type


def encode(document: Any, media_type: str) -> bytes:
    """`document` (JSON-shaped: dicts, lists, strings, numbers, booleans, None) in `media_type`."""
    if media_type == MSGPACK_MEDIA_TYPE:
        packed: bytes = msgpack.packb(document, use_bin_type=True)
        return packed
    if media_type == JSON_MEDIA_TYPE:
        return orjson.dumps(document)
    raise ValueError(f"cannot encode {media_type}")


def decode(body: bytes, media_type: str) -> Any:
    """The document of a body in `media_type` (the inverse of `encode`); raises ValueError when malformed."""
    if media_type == MSGPACK_MEDIA_TYPE:
        try:
            return msgpack.unpackb(body, raw=False, strict_map_key=True)
        except (msgpack.UnpackException, ValueError, TypeError) as error:
            raise ValueError(f"malformed msgpack: {error}") from None
    if media_type == JSON_MEDIA_TYPE:
        return orjson.loads(body)
    raise ValueError(f"cannot decode {media_type}")


def encoded_response(model: BaseModel, media_type: str, status_code: int = 200) -> Response:
    """`model` in `media_type` (from `response_media_type`, which a handler calls before doing any work)."""
    return Response(
        encode(model.model_dump(mode="json"), media_type),
        status_code=status_code,
        media_type=media_type,
        headers={"vary": "accept"},
    )


def negotiated_response(request: Request, model: BaseModel, status_code: int = 200) -> Response:
    """`model` as JSON or msgpack, whichever the request's Accept prefers (406 `not_acceptable` for neither)."""
    return encoded_response(model, response_media_type(request), status_code)
