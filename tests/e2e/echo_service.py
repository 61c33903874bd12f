"""A service built exactly like the real ones (shared app, middleware and runner) whose routes echo what
reached them, for proxy and shutdown tests.

    /slow?s=2              sleeps, then answers {"slept_s": 2}
    /{anything}?sleep=S    echoes method, path, query, headers and body size after sleeping S seconds
    /{anything}?bytes=N    streams N bytes of body (for memory tests)
    /{anything}?gzip=1     answers a gzip-encoded body

Run as `python -m tests.e2e.echo_service` with the project root on PYTHONPATH.
"""

import asyncio
import gzip
import os

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from shared.app import build_service_app
from shared.config import Settings
from shared.log import get_logger
from shared.runner import run_service

CHUNK = b"x" * 65536
log = get_logger("echo")


async def slow(request: Request) -> JSONResponse:
    seconds = float(request.query_params.get("s", "2"))
    await asyncio.sleep(seconds)
    return JSONResponse({"slept_s": seconds})


async def echo(request: Request) -> Response:
    log.info("echo_arrived", path=request.url.path)  # in flight: tests can wait for this instead of sleeping
    await asyncio.sleep(float(request.query_params.get("sleep", "0")))
    if "bytes" in request.query_params:
        total = int(request.query_params["bytes"])

        async def body():
            sent = 0
            while sent < total:
                chunk = CHUNK[: total - sent]
                sent += len(chunk)
                yield chunk

        return StreamingResponse(body(), media_type="application/octet-stream")
    if "gzip" in request.query_params:
        return Response(gzip.compress(b"compressed payload " * 100), headers={"content-encoding": "gzip"})
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
    log.info("echo", path=request.url.path)
    return JSONResponse(
        {
            "instance": os.environ.get("PORT"),
            "method": request.method,
            "path": request.url.path,
            "query": request.url.query,
            "headers": [[k, v] for k, v in request.headers.items()],
            "body_bytes": size,
        },
        headers={"connection": "x-upstream-secret", "x-upstream-secret": "must-not-cross", "keep-alive": "timeout=5"},
    )


def create_app(settings: Settings) -> Starlette:
    methods = ["GET", "POST", "PUT", "PATCH", "DELETE"]
    return build_service_app(
        settings, [Route("/slow", slow), Route("/{path:path}", echo, methods=methods)], title="echo test service"
    )


if __name__ == "__main__":
    run_service("echo", create_app)
