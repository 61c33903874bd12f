"""The upstream every path of the proxy benchmark hits: a bare ASGI app, so it is never the bottleneck.

GET /anything           -> 200 {"ok":true} (a small JSON body)
GET /anything?bytes=N   -> N bytes streamed in 64 KiB chunks
"""

from urllib.parse import parse_qs

BODY = b'{"ok":true,"items":[1,2,3],"note":"benchmark upstream"}'
CHUNK = b"x" * 65536


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    query = parse_qs(scope.get("query_string", b"").decode())
    if "bytes" in query:
        total = int(query["bytes"][0])
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/octet-stream")]}
        )
        sent = 0
        while sent < total:
            chunk = CHUNK[: total - sent]
            sent += len(chunk)
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    if scope["path"] in ("/ready", "/health"):
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": b'{"status":"pass"}'})
        return
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": BODY})
