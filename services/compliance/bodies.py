"""Bodies of compliance's POSTs that may be left out: the runbook's curl sends none (and no content type), a
client may send `{}` or an object of the route's optional fields. One parser, so every such route refuses the same
things the same way."""

from __future__ import annotations

from typing import TypeVar

import orjson
from pydantic import BaseModel
from starlette.requests import Request

from shared.errors import ApiError
from shared.negotiation import JSON_MEDIA_TYPE
from shared.validation import malformed_json, read_body, validate

__all__ = ["is_json", "optional_object"]

M = TypeVar("M", bound=BaseModel)


def is_json(content_type: str | None) -> bool:
    media_type = (content_type or "").split(";")[0].strip().lower()
    return media_type == JSON_MEDIA_TYPE or media_type.endswith("+json")


async def optional_object(request: Request, model: type[M], max_bytes: int, example: str = "{}") -> M:
    """The body as `model`: no body at all is `model()` (every field optional); otherwise a JSON object, validated.
    A body in another media type is 415; one past `max_bytes` 413; not JSON, not an object (the problem shows
    `example`), an unknown field or a bad value 400 naming the field."""
    body = await read_body(request, max_bytes)
    if not body:
        return model()
    content_type = request.headers.get("content-type")
    if content_type is not None and not is_json(content_type):
        raise ApiError("unsupported_media_type", "Send the body as application/json, or send none")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise malformed_json(body) from None
    if not isinstance(data, dict):
        raise ApiError("invalid_body", f"The body must be a JSON object such as {example}")
    return validate(model, data)
