"""Request bodies and query strings validated by pydantic models, failing as RFC 9457 problems."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

import orjson
from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from shared.errors import ApiError, FieldError

__all__ = [
    "MAX_JSON_BODY_BYTES",
    "field_errors",
    "nul_paths",
    "parse_body",
    "parse_query",
    "read_body",
    "read_json",
    "validate",
]

M = TypeVar("M", bound=BaseModel)

MiB = 1024 * 1024
MAX_JSON_BODY_BYTES = 1 * MiB


def field_errors(error: ValidationError) -> list[FieldError]:
    """Pydantic's errors as `{path, message}` pairs, the path written `items.0.amount`."""
    return [FieldError(".".join(str(part) for part in e["loc"]) or "$", e["msg"]) for e in error.errors()]


def nul_paths(data: object, path: str = "$") -> list[str]:
    """Where a string (key or value) holds a NUL character: PostgreSQL text cannot store one."""
    if isinstance(data, str):
        return [path] if "\x00" in data else []
    if isinstance(data, dict):
        found = [f"{path}.{key}" for key in data if isinstance(key, str) and "\x00" in key]
        for key, value in data.items():
            found += nul_paths(value, f"{key}" if path == "$" else f"{path}.{key}")
        return found
    if isinstance(data, list):
        return [p for index, item in enumerate(data) for p in nul_paths(item, f"{path}.{index}")]
    return []


def validate(model: type[M], data: object, *, code: str = "invalid_body") -> M:
    if bad := nul_paths(data):
        raise ApiError(code, "Text may not contain NUL characters", errors=[FieldError(p, "contains NUL") for p in bad])
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ApiError(code, "The request does not match the expected shape", errors=field_errors(exc)) from None


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The request body, at most `max_bytes`: 413 `payload_too_large` at once for a larger Content-Length, else as
    soon as the bytes received pass the limit (the rest is never read)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise ApiError("payload_too_large", f"The body exceeds {max_bytes} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise ApiError("payload_too_large", f"The body exceeds {max_bytes} bytes")
    return bytes(body)


async def read_json(request: Request, max_bytes: int = MAX_JSON_BODY_BYTES) -> object:
    """The request body parsed as JSON; 415 for another media type, 413 past `max_bytes`, 400 when malformed."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != "application/json" and not media_type.endswith("+json"):
        raise ApiError("unsupported_media_type", "Send the body as application/json")
    body = await read_body(request, max_bytes)
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        raise ApiError("invalid_body", "The body is not valid JSON") from None


async def parse_body(request: Request, model: type[M], max_bytes: int = MAX_JSON_BODY_BYTES) -> M:
    return validate(model, await read_json(request, max_bytes))


def parse_query(query: Mapping[str, str], model: type[M]) -> M:
    return validate(model, dict(query), code="invalid_query")
