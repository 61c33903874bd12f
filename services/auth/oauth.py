"""OAuth2 client credentials (being written)."""

from starlette.requests import Request
from starlette.responses import Response

from shared.errors import ApiError


async def token(request: Request) -> Response:
    raise ApiError("not_found")
