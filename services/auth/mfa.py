"""TOTP enrolment and step-up (being written)."""

from starlette.requests import Request
from starlette.responses import Response

from shared.errors import ApiError


async def totp_begin(request: Request) -> Response:
    raise ApiError("not_found")


async def totp_confirm(request: Request) -> Response:
    raise ApiError("not_found")


async def step_up(request: Request) -> Response:
    raise ApiError("not_found")
