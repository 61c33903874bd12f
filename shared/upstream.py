"""One typed read of another service's internal API, with a deadline: what a service that shows another's data
(compliance reading core, the regulator reading compliance and core) does on every call.

The call goes through the runtime's service client (its service token; the caller's request ID and trace context
go along) and asks for msgpack. A failure is the caller's upstream problem, never a 500 and never a hang:

    the service (or auth, for the token) unreachable, a non-2xx       502 upstream_unavailable
    answer, an answer larger than `max_bytes` (MAX_RESPONSE_BYTES,
    abandoned there), or one that does not parse into the model
    no answer within the deadline (the token fetch included)         504 upstream_timeout

each logged once as `<service>_call_failed` (or `<service>_answer_invalid`) with the path and the cause (the
status, or the first validation error), never the body. Some refusals are the caller's own, not the upstream's
failure (a pack id the upstream does not know in the org asked, a cursor it did not hand out): `refusals` maps such a
status to a function making the problem to raise instead of the 502.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import aiohttp
from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from shared.errors import ApiError
from shared.log import get_logger
from shared.service_client import ResponseTooLarge, ServiceAuthError, ServiceCallError

__all__ = ["read_model"]

M = TypeVar("M", bound=BaseModel)

log = get_logger(__name__)


async def read_model(
    request: Request,
    service: str,
    base_url: str,
    path: str,
    model: type[M],
    *,
    deadline_s: float,
    params: Mapping[str, str] | None = None,
    refusals: Mapping[int, Callable[[], ApiError]] | None = None,
    max_bytes: int | None = None,
) -> M:
    """GET `base_url + path` from `service` (its name, for problems and logs) as `model`, within `deadline_s`,
    reading at most `max_bytes` of its answer (the service client's bound, MAX_RESPONSE_BYTES, when None)."""
    client = request.app.state.runtime.require_service_client()
    title = service.capitalize()
    try:
        async with asyncio.timeout(deadline_s):
            document: Any = await client.get_msgpack(
                f"{base_url}{path}", params=dict(params or {}), max_bytes=max_bytes
            )
    except TimeoutError:
        log.warning(f"{service}_call_failed", path=path, error="timeout", deadline_s=deadline_s)
        raise ApiError("upstream_timeout", f"{title} did not answer within {deadline_s:g}s") from None
    except ServiceCallError as error:
        refusal = (refusals or {}).get(error.status)
        if refusal is not None:
            raise refusal() from None
        log.warning(f"{service}_call_failed", path=path, error="status", status=error.status)
        raise ApiError("upstream_unavailable", f"{title} answered {error.status}") from None
    except ResponseTooLarge as error:
        log.warning(f"{service}_call_failed", path=path, error="too_large", max_bytes=error.max_bytes)
        raise ApiError("upstream_unavailable", f"{title}'s answer was larger than {error.max_bytes} bytes") from None
    except (ServiceAuthError, aiohttp.ClientError, ValueError) as error:
        log.warning(f"{service}_call_failed", path=path, error=type(error).__name__)
        raise ApiError("upstream_unavailable", f"{title} could not be reached") from None
    try:
        return model.model_validate(document)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "$"
        log.error(f"{service}_answer_invalid", path=path, at=where, problem=first["msg"], errors=error.error_count())
        raise ApiError("upstream_unavailable", f"{title}'s answer was not understood") from None
