"""HTTP reads of the `apgms` commands that call the API (`evidence verify --keys URL`, `backup evidence-pack`):
every call has a deadline, every body a size bound, and every transport failure becomes a `FetchError` whose
message a user can act on, never a traceback.

    async with client_session() as http:
        async with http.get(url, timeout=deadline(REQUEST_TIMEOUT_S)) as response:
            body = await read_bounded(response, MAX_DOCUMENT_BYTES, url)
    ... except TRANSPORT_ERRORS as error: raise transport_failure(url, error)
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson

__all__ = [
    "CHUNK_BYTES",
    "CONNECT_TIMEOUT_S",
    "MAX_DOCUMENT_BYTES",
    "READ_IDLE_TIMEOUT_S",
    "REQUEST_TIMEOUT_S",
    "TRANSPORT_ERRORS",
    "FetchError",
    "client_session",
    "deadline",
    "fetch_json",
    "iter_bounded",
    "problem_detail",
    "read_bounded",
    "transport_failure",
]

KiB = 1024
MiB = 1024 * KiB
CONNECT_TIMEOUT_S = 10.0
# The longest silence while an answer's body arrives: a stalled server is given up on, a slow large one is not.
READ_IDLE_TIMEOUT_S = 30.0
# A whole call for one small document (a report, a pack, a JWKS).
REQUEST_TIMEOUT_S = 60.0
# A report or an evidence pack envelope is tens of KB; a JWKS a few hundred bytes per key.
MAX_DOCUMENT_BYTES = 16 * MiB
CHUNK_BYTES = 64 * KiB

TRANSPORT_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError, ValueError)


class FetchError(Exception):
    """A call that did not give a usable answer; `str()` is the message for the user."""


def deadline(total_s: float) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(total=total_s, connect=CONNECT_TIMEOUT_S, sock_read=READ_IDLE_TIMEOUT_S)


def client_session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(timeout=deadline(REQUEST_TIMEOUT_S), raise_for_status=False)


def transport_failure(url: str, error: BaseException) -> FetchError:
    """The user's sentence for a call that failed below HTTP (unreachable, timed out, cut off, not a URL)."""
    if isinstance(error, asyncio.TimeoutError):
        return FetchError(f"no complete answer from {url} in time (the call has a deadline): the server is too slow")
    if isinstance(error, aiohttp.InvalidURL | aiohttp.NonHttpUrlClientError):
        # A malformed URL, or another scheme (ftp://, file://): aiohttp's own message is only the URL again.
        return FetchError(f"{url} is not a valid http(s) URL")
    if isinstance(error, aiohttp.ClientConnectorError):
        return FetchError(f"cannot reach {url}: {error.os_error.strerror or error.os_error}; is the service running?")
    if isinstance(error, aiohttp.ClientPayloadError):
        return FetchError(f"the answer of {url} was cut off before its end")
    return FetchError(f"the call to {url} failed: {str(error) or type(error).__name__}")


def _too_large(url: str, limit: int) -> FetchError:
    return FetchError(f"the answer of {url} is larger than the {limit:,} bytes allowed for it")


async def iter_bounded(response: aiohttp.ClientResponse, limit: int, url: str) -> AsyncIterator[bytes]:
    """The body's chunks as they arrive, `FetchError` once more than `limit` bytes came."""
    if response.content_length is not None and response.content_length > limit:
        raise _too_large(url, limit)
    size = 0
    async for chunk in response.content.iter_chunked(CHUNK_BYTES):
        size += len(chunk)
        if size > limit:
            raise _too_large(url, limit)
        yield chunk


async def read_bounded(response: aiohttp.ClientResponse, limit: int, url: str) -> bytes:
    return b"".join([chunk async for chunk in iter_bounded(response, limit, url)])


def problem_detail(body: bytes) -> tuple[str | None, str | None]:
    """(code, detail or title) of an RFC 9457 problem body; (None, None) when the body is not one."""
    try:
        problem = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None, None
    if not isinstance(problem, dict):
        return None, None
    code = problem.get("code")
    text = problem.get("detail") or problem.get("title")
    return (code if isinstance(code, str) else None), (text if isinstance(text, str) else None)


async def fetch_json(url: str, *, limit: int = MAX_DOCUMENT_BYTES, timeout_s: float = REQUEST_TIMEOUT_S) -> Any:
    """GET `url` and parse its JSON answer; `FetchError` for a non-2xx answer, a body that is not JSON, one over
    `limit`, or any transport failure."""
    try:
        async with client_session() as http, http.get(url, timeout=deadline(timeout_s)) as response:
            body = await read_bounded(response, limit, url)
            status, reason = response.status, response.reason
    except TRANSPORT_ERRORS as error:
        raise transport_failure(url, error) from None
    if not 200 <= status < 300:
        _, detail = problem_detail(body)
        raise FetchError(f"{url} answered {status} {reason}" + (f": {detail}" if detail else ""))
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        raise FetchError(f"the answer of {url} is not JSON") from None
