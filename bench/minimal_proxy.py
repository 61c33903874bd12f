"""The ceiling reference of bench/proxy.py: the smallest useful ASGI proxy on the same client library.

Forwards every request's method and path to one upstream with a pooled aiohttp session and relays status and body:
no logging, metrics, request IDs, header hygiene, streaming or error handling. What our proxy reaches relative to
this, on the same server in the same run, is the price of everything it does per request.

    UPSTREAM_URL=http://127.0.0.1:8001 granian --interface asgi bench.minimal_proxy:app
    UPSTREAM_URL=http://127.0.0.1:8001 PORT=8002 python -m bench.minimal_proxy     (granian embedded, as ours runs)
"""

import os

import aiohttp

UPSTREAM_URL = os.environ.get("UPSTREAM_URL", "http://127.0.0.1:8001")
_session: list[aiohttp.ClientSession] = []


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            _session.append(aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100)))
            await send({"type": "lifespan.startup.complete"})
        await _session[0].close()
        await send({"type": "lifespan.shutdown.complete"})
        return
    async with _session[0].request(scope["method"], UPSTREAM_URL + scope["path"]) as response:
        body = await response.read()
    content_type = response.headers.get("content-type", "application/octet-stream").encode("latin-1")
    await send({"type": "http.response.start", "status": response.status, "headers": [(b"content-type", content_type)]})
    await send({"type": "http.response.body", "body": body})


async def serve_embedded(port: int) -> None:
    """granian embedded in this event loop, the way `python -m proxy` serves ours (bench/proxy_instructions.py)."""
    from granian.constants import HTTPModes, Interfaces
    from granian.server.embed import Server

    server = Server(app, address="127.0.0.1", port=port, interface=Interfaces.ASGI, http=HTTPModes.http1)
    await server.serve()


if __name__ == "__main__":
    import uvloop

    uvloop.run(serve_embedded(int(os.environ.get("PORT", "8002"))))
