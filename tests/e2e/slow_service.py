"""A service built exactly like the real ones, plus a `/slow` route, for drain and shutdown tests.

Run as `python tests/e2e/slow_service.py` with the project root on PYTHONPATH.
"""

import asyncio

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from shared.app import build_service_app
from shared.config import Settings
from shared.runner import run_service


async def slow(request: Request) -> JSONResponse:
    seconds = float(request.query_params.get("s", "2"))
    await asyncio.sleep(seconds)
    return JSONResponse({"slept_s": seconds})


def create_app(settings: Settings) -> Starlette:
    return build_service_app(settings, [Route("/slow", slow)], title="slow test service")


if __name__ == "__main__":
    run_service("slow", create_app)
