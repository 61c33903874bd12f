"""The proxy's scrape endpoints: `/federate` over shared, briefly cached expositions with bounded matching, and the
scrape credential that guards it and `/metrics` on the public port in production.

Issue #9, finding 1: one public request could hold the event loop for 20 s. Here every federation shares one
fetch of the services' expositions per `EXPOSITION_TTL_S` (concurrent requests await the same fetch), matching
runs in slices of `SLICE_S` with the loop yielded in between (and a rest of `REST_RATIO` slices, so federation
takes at most a fifth of the loop), only `MAX_MATCHING` federations match at once (each
slice of each matching federation is a delay for every other request: ten of them would add ten slices to each
turn of the loop), at most `MAX_WAITING` wait for their turn and each gets `BUDGET_S` of loop time.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import Awaitable, Callable, Generator, Mapping, Sequence
from dataclasses import dataclass

import aiohttp
from starlette.requests import Request
from starlette.responses import Response

from proxy.config import ProxySettings
from proxy.federation import (
    MAX_SELECTORS,
    BudgetExceeded,
    Selector,
    SelectorError,
    Source,
    index_steps,
    parse_exposition_steps,
    parse_selector_steps,
    render_steps,
    run_in_slices,
)
from proxy.routing import MiB
from proxy.upstreams import Instance, Upstream
from shared.config import Secret
from shared.errors import ApiError, FieldError, problem_response
from shared.log import get_logger
from shared.metrics import metrics_text
from shared.types import ASGIApp, Receive, Scope, Send

FEDERATE_MEDIA_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Prometheus scrapes every 15 s or more: one second of staleness costs nothing and turns N concurrent
# federations into one fetch.
EXPOSITION_TTL_S = 1.0
MAX_EXPOSITION_BYTES = 8 * MiB
# Measured on the worst case the caps allow, ten at a time (tests/e2e/test_federate.py, 2-core VM under other
# load): 1 ms slices did no better than 2 ms; resting 1x or 2x each slice left other requests' p99 at 31-71 ms,
# resting 4x at 27-55 ms with their p50 where it was without federations. A federation alone then takes a few
# times its 10-20 ms of work; Prometheus scrapes every 15 s or more.
SLICE_S = 0.002
REST_RATIO = 4.0
BUDGET_S = 2.0
MAX_MATCHING = 1
MAX_WAITING = 32
WAIT_TIMEOUT_S = 10.0
SCRAPE_PATHS = frozenset({"/metrics", "/federate"})

log = get_logger(__name__)


async def fetch_metrics(session: aiohttp.ClientSession, url: str, timeout_s: float) -> str | None:
    """An instance's exposition, or None when it cannot be had within `timeout_s` or is too large."""
    try:
        async with session.get(f"{url}/metrics", timeout=aiohttp.ClientTimeout(total=timeout_s)) as response:
            if response.status != 200:
                return None
            body = bytearray()
            async for chunk in response.content.iter_chunked(64 * 1024):
                body += chunk
                if len(body) > MAX_EXPOSITION_BYTES:
                    log.warning("exposition_too_large", url=url, limit_bytes=MAX_EXPOSITION_BYTES)
                    return None
            return body.decode("utf-8", errors="replace")
    except (aiohttp.ClientError, TimeoutError):
        return None


@dataclass(frozen=True)
class Snapshot:
    sources: Sequence[Source]
    taken: float


class ExpositionCache:
    """The parsed expositions of the proxy and every instance, fetched at most once per `ttl_s`; requests that
    arrive while a fetch runs await that fetch (single flight). Holds one snapshot."""

    def __init__(self, fetch: Callable[[], Awaitable[Sequence[Source]]], ttl_s: float = EXPOSITION_TTL_S) -> None:
        self.fetch = fetch
        self.ttl_s = ttl_s
        self.snapshot: Snapshot | None = None
        self.pending: asyncio.Task[Snapshot] | None = None

    async def get(self) -> Sequence[Source]:
        if self.snapshot is not None and time.monotonic() - self.snapshot.taken < self.ttl_s:
            return self.snapshot.sources
        if self.pending is None:
            self.pending = asyncio.create_task(self._refresh())
        # Shielded: a client that leaves must not cancel the fetch the others await.
        return (await asyncio.shield(self.pending)).sources

    async def _refresh(self) -> Snapshot:
        try:
            snapshot = Snapshot(await self.fetch(), time.monotonic())
            self.snapshot = snapshot
            return snapshot
        finally:
            self.pending = None


class MatchingSlots:
    """At most `size` federations matching at once and `max_waiting` waiting, each for at most `timeout_s`."""

    def __init__(self, size: int = MAX_MATCHING, max_waiting: int = MAX_WAITING, timeout_s: float = WAIT_TIMEOUT_S):
        self.semaphore = asyncio.Semaphore(size)
        self.max_waiting = max_waiting
        self.timeout_s = timeout_s
        self.waiting = 0

    async def acquire(self) -> None:
        busy = ApiError("service_unavailable", "Too many federations at once; retry", headers={"retry-after": "1"})
        if self.waiting >= self.max_waiting:
            raise busy
        self.waiting += 1
        try:
            await asyncio.wait_for(self.semaphore.acquire(), self.timeout_s)
        except TimeoutError:
            raise busy from None
        finally:
            self.waiting -= 1

    def release(self) -> None:
        self.semaphore.release()


def check_match_count(raw: Sequence[str]) -> None:
    if not raw:
        raise ApiError("invalid_query", "At least one match[] selector is required")
    if len(raw) > MAX_SELECTORS:
        raise ApiError("invalid_query", f"At most {MAX_SELECTORS} match[] selectors are allowed")


def parse_match_steps(raw: Sequence[str]) -> Generator[None, None, list[Selector]]:
    """The `match[]` selectors of a request, or `invalid_query` naming each malformed one; yields after each
    regex compiled (one takes up to about 5 ms, see `proxy.federation.RE2_MAX_MEM_BYTES`) and each selector."""
    selectors, errors = [], []
    for index, text in enumerate(raw):
        try:
            selectors.append((yield from parse_selector_steps(text)))
        except SelectorError as exc:
            errors.append(FieldError(f"match[].{index}", str(exc)))
        yield
    if errors:
        raise ApiError("invalid_query", "A match[] selector is malformed", errors=errors)
    return selectors


def federate_endpoint(
    settings: ProxySettings, upstreams: Mapping[str, Upstream], sessions: dict[str, aiohttp.ClientSession]
) -> Callable[[Request], Awaitable[Response]]:
    own_labels = {"service": settings.service, "instance": f"{settings.host}:{settings.port}"}

    async def parsed(added: dict[str, str], text: str) -> Source | None:
        try:
            families = await run_in_slices(
                parse_exposition_steps(text), slice_s=SLICE_S, budget_s=BUDGET_S, rest_ratio=REST_RATIO
            )
            return await run_in_slices(
                index_steps(added, families), slice_s=SLICE_S, budget_s=BUDGET_S, rest_ratio=REST_RATIO
            )
        except BudgetExceeded:
            log.warning("exposition_too_slow_to_parse", service=added["service"], instance=added["instance"])
            return None

    async def fetch_all() -> list[Source]:
        instances: list[Instance] = [i for upstream in upstreams.values() for i in upstream.instances]
        texts = await asyncio.gather(
            *(fetch_metrics(sessions["_health"], i.url, settings.federate_timeout_s) for i in instances)
        )
        labelled = [(own_labels, metrics_text().decode())]
        labelled += [
            ({"service": i.service, "instance": i.label}, text)
            for i, text in zip(instances, texts, strict=True)
            if text is not None
        ]
        sources = [await parsed(added, text) for added, text in labelled]
        return [source for source in sources if source is not None]

    cache = ExpositionCache(fetch_all)
    slots = MatchingSlots()

    async def federate(request: Request) -> Response:
        raw = request.query_params.getlist("match[]")
        check_match_count(raw)
        await slots.acquire()
        try:
            # Parsed first: a malformed selector costs no fetch.
            selectors = await run_in_slices(
                parse_match_steps(raw), slice_s=SLICE_S, budget_s=BUDGET_S, rest_ratio=REST_RATIO
            )
            sources = await cache.get()
            text = await run_in_slices(
                render_steps(sources, selectors), slice_s=SLICE_S, budget_s=BUDGET_S, rest_ratio=REST_RATIO
            )
        except BudgetExceeded:
            raise ApiError(
                "service_unavailable",
                f"These selectors need more than {BUDGET_S} s of matching; narrow them (an exact metric name is "
                "the cheapest)",
            ) from None
        finally:
            slots.release()
        return Response(text, media_type=FEDERATE_MEDIA_TYPE)

    return federate


def bearer_credentials(value: bytes | None) -> bytes | None:
    """The token of an `Authorization: Bearer <token>` header (the scheme is case-insensitive, RFC 9110 11.1)."""
    if value is None:
        return None
    scheme, _, token = value.partition(b" ")
    return token.strip() if scheme.lower() == b"bearer" else None


class ScrapeCredentialMiddleware:
    """`/metrics` and `/federate` answer only a request bearing `token` (compared in constant time); without a
    configured token, nobody. Installed in production only, in front of the proxy's own endpoints."""

    def __init__(self, app: ASGIApp, *, token: Secret | None) -> None:
        self.app = app
        self.token = token.reveal().encode() if token is not None else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in SCRAPE_PATHS:
            await self.app(scope, receive, send)
            return
        presented = bearer_credentials(next((v for k, v in scope["headers"] if k == b"authorization"), None))
        if self.token is None or presented is None or not hmac.compare_digest(presented, self.token):
            response = problem_response(
                "unauthorized",
                "Scraping needs the configured bearer credential",
                headers={"www-authenticate": 'Bearer realm="metrics"'},
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)
