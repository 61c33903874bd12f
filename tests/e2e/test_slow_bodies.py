"""A service reads a request body under two deadlines (BODY_IDLE_TIMEOUT_S between bytes, BODY_TIMEOUT_S for all
of it), so a client that stalls or trickles its body, straight to the service rather than through the proxy,
gets a 408 problem and holds the request for a bounded time."""

from __future__ import annotations

import asyncio
import time

import orjson

IDLE_S = 0.5
TOTAL_S = 1.5
DEADLINES = {"BODY_IDLE_TIMEOUT_S": str(IDLE_S), "BODY_TIMEOUT_S": str(TOTAL_S)}
# Time for the service's answer to travel back, beyond the deadline itself.
SLACK_S = 1.0


async def post_slowly(port: int, declared: int, chunks: list[bytes], gap_s: float) -> tuple[int, dict, float]:
    """POST /auth/login declaring `declared` bytes, sending `chunks` `gap_s` apart; the status, problem and seconds
    until the answer arrived."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    writer.write(
        b"POST /auth/login HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {declared}\r\n\r\n".encode()
    )
    answer = asyncio.ensure_future(read_response(reader))
    try:
        for chunk in chunks:
            if answer.done():
                break
            writer.write(chunk)
            await writer.drain()
            await asyncio.wait({answer}, timeout=gap_s)
        status, body = await asyncio.wait_for(answer, timeout=TOTAL_S + SLACK_S + 5)
    finally:
        writer.close()
    return status, orjson.loads(body), time.monotonic() - started


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:] if line)
    return int(lines[0].split(" ", 2)[1]), await reader.readexactly(int(headers["content-length"]))


async def test_a_stalled_body_is_a_408_after_the_idle_deadline(start_service) -> None:
    auth = start_service("auth", DEADLINES)
    status, problem, elapsed = await post_slowly(auth.port, 100, [b'{"email": '], gap_s=10)
    assert (status, problem["code"]) == (408, "request_timeout")
    assert IDLE_S <= elapsed < IDLE_S + SLACK_S


async def test_a_trickled_body_is_a_408_after_the_total_deadline(start_service) -> None:
    auth = start_service("auth", DEADLINES)
    # One byte every 0.2 s never trips the idle deadline; the total one ends it.
    status, problem, elapsed = await post_slowly(auth.port, 100, [b" "] * 100, gap_s=0.2)
    assert (status, problem["code"]) == (408, "request_timeout")
    assert TOTAL_S <= elapsed < TOTAL_S + SLACK_S


async def test_a_body_that_keeps_coming_in_time_is_read(start_service) -> None:
    auth = start_service("auth", DEADLINES)
    body = orjson.dumps({"email": "nobody@example.com", "password": "x" * 12})
    status, problem, _ = await post_slowly(auth.port, len(body), [body[:10], body[10:]], gap_s=0.2)
    assert (status, problem["code"]) == (401, "bad_credentials")
