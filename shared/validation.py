"""Request bodies and query strings validated by pydantic models, failing as RFC 9457 problems."""

from __future__ import annotations

import asyncio
import json
import math
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

import orjson
from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from shared.config import BODY_IDLE_TIMEOUT_S, BODY_TIMEOUT_S
from shared.errors import ApiError, FieldError

__all__ = [
    "MAX_JSON_BODY_BYTES",
    "BodyDeadlines",
    "body_deadlines",
    "field_errors",
    "malformed_json",
    "nul_paths",
    "parse_body",
    "parse_query",
    "path_org",
    "path_uuid",
    "paths_where",
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


def paths_where(data: object, bad: Callable[[object], bool], path: str = "$") -> list[str]:
    """The paths (`amount`, `items.0.amount`; `$` for the document itself) of the keys and values of parsed JSON
    for which `bad` holds."""
    if bad(data):
        return [path]
    if isinstance(data, dict):
        found = [f"{path}.{key}" for key in data if bad(key)]
        for key, value in data.items():
            found += paths_where(value, bad, f"{key}" if path == "$" else f"{path}.{key}")
        return found
    if isinstance(data, list):
        return [p for index, item in enumerate(data) for p in paths_where(item, bad, f"{path}.{index}")]
    return []


def _holds_nul(value: object) -> bool:
    return isinstance(value, str) and "\x00" in value


def nul_paths(data: object, path: str = "$") -> list[str]:
    """Where a string (key or value) holds a NUL character: PostgreSQL text cannot store one."""
    return paths_where(data, _holds_nul, path)


class _OutOfRange:
    """Stands in, while explaining a refused body, for a number orjson cannot hold."""


OUT_OF_RANGE = _OutOfRange()
# orjson holds integers in [-2**63, 2**64 - 1]; past 19 digits is where that ends, near enough to explain it.
MAX_INTEGER_DIGITS = 19


def _fraction(text: str) -> object:
    return OUT_OF_RANGE if not math.isfinite(float(text)) else 0


def _integer(text: str) -> object:
    return OUT_OF_RANGE if len(text.lstrip("-")) > MAX_INTEGER_DIGITS else 0


def malformed_json(body: bytes) -> ApiError:
    """The 400 for a body orjson refused. Python's parser reads what orjson has no number for (`NaN`,
    `Infinity`, `1e309`, a 30-digit integer), so a second parse, on this error path alone, names the fields that
    hold one; anything else is just "not valid JSON"."""
    try:
        data = json.loads(body, parse_constant=lambda _: OUT_OF_RANGE, parse_float=_fraction, parse_int=_integer)
    except (ValueError, RecursionError):
        return ApiError("invalid_body", "The body is not valid JSON")
    paths = paths_where(data, lambda value: value is OUT_OF_RANGE)
    if not paths:
        return ApiError("invalid_body", "The body is not valid JSON")
    return ApiError(
        "invalid_body",
        "The body holds numbers no JSON parser here can read: NaN, Infinity, or beyond a double or a 64-bit integer",
        errors=[FieldError(path, "number out of range") for path in paths],
    )


def validate(model: type[M], data: object, *, code: str = "invalid_body") -> M:
    if bad := nul_paths(data):
        raise ApiError(code, "Text may not contain NUL characters", errors=[FieldError(p, "contains NUL") for p in bad])
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ApiError(code, "The request does not match the expected shape", errors=field_errors(exc)) from None


@dataclass(frozen=True)
class BodyDeadlines:
    """How long a body may pause between bytes (`idle_s`) and take in all (`total_s`)."""

    idle_s: float = BODY_IDLE_TIMEOUT_S
    total_s: float = BODY_TIMEOUT_S


def body_deadlines(request: Request) -> BodyDeadlines:
    """The service's BODY_IDLE_TIMEOUT_S and BODY_TIMEOUT_S, or their defaults for an app without a runtime."""
    runtime = getattr(request.app.state, "runtime", None)
    if runtime is None:
        return BodyDeadlines()
    return BodyDeadlines(runtime.settings.body_idle_timeout_s, runtime.settings.body_timeout_s)


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The request body, at most `max_bytes`: 413 `payload_too_large` at once for a larger Content-Length, else as
    soon as the bytes received pass the limit (the rest is never read). 408 `request_timeout` when the client
    pauses longer than the idle deadline or has not sent it all within the total one (`body_deadlines`), so a
    client that trickles its body holds a request slot for a bounded time, whether or not the proxy is in front."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise ApiError("payload_too_large", f"The body exceeds {max_bytes} bytes")
    deadlines = body_deadlines(request)
    loop = asyncio.get_running_loop()
    last_moment = loop.time() + deadlines.total_s
    body = bytearray()
    try:
        async with asyncio.timeout(min(deadlines.idle_s, deadlines.total_s)) as deadline:
            async for chunk in request.stream():
                body += chunk
                if len(body) > max_bytes:
                    raise ApiError("payload_too_large", f"The body exceeds {max_bytes} bytes")
                deadline.reschedule(min(loop.time() + deadlines.idle_s, last_moment))
    except TimeoutError:
        raise ApiError("request_timeout", "The request body did not arrive in time") from None
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
        raise malformed_json(body) from None


async def parse_body(request: Request, model: type[M], max_bytes: int = MAX_JSON_BODY_BYTES) -> M:
    return validate(model, await read_json(request, max_bytes))


def parse_query(query: Mapping[str, str], model: type[M]) -> M:
    return validate(model, dict(query), code="invalid_query")


# The canonical text of a UUID, as every id we hand out is spelled (either case: RFC 9562 says to accept upper).
_CANONICAL_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def path_uuid(request: Request, name: str) -> uuid.UUID:
    """The UUID in the path parameter `name`, in its canonical 36-character hyphenated form (either case);
    anything else is 404 `not_found`, exactly like an id that names nothing (a malformed id is a resource that does
    not exist, not a bad request, and never a 500). `uuid.UUID` alone also takes braces, `urn:uuid:` and no
    hyphens, which would give one resource several paths (and caches or ACLs keyed on the path several names)."""
    text = request.path_params[name]
    if not isinstance(text, str) or _CANONICAL_UUID.fullmatch(text) is None:
        raise ApiError("not_found")
    return uuid.UUID(text)


def path_org(request: Request) -> uuid.UUID:
    """The org id of an internal route's path (`/internal/orgs/{org_id}/...`, core's and compliance's), canonical
    as `path_uuid` takes it; anything else is 400 `bad_request` naming `org_id`: the caller is one of our services,
    which scoped the org itself, so a malformed one is its bug to see, not a resource that does not exist."""
    text = request.path_params["org_id"]
    if not isinstance(text, str) or _CANONICAL_UUID.fullmatch(text) is None:
        raise ApiError("bad_request", "The org id is not a UUID", errors=[FieldError("org_id", "not a UUID")])
    return uuid.UUID(text)
