"""What every service's `create_app(settings)` is built on: the middleware stack, the operational routes and
the lifespan that opens and closes the pool and the Redis client.

Middleware order, outermost first: request context (request ID on every response) → metrics and access log →
anomaly detection (repeated 401/403 per address or principal) → error boundary (an unexpected exception becomes
a counted, logged 500 problem) → Starlette's routing.

The `Runtime` holds what the process shares: the pool, Redis, a token verifier per audience (user tokens and
service tokens, one JWKS cache), and the `ServiceClient` a service calls the others with, built from its
SERVICE_CLIENT_SECRET. `Runtime.run_in_background` runs a service's long-lived work (a sampler, a schedule) as a
task from start-up to shutdown; a service with a database runs the cleanup of expired idempotency records that way
(`shared.idempotency.run_cleanup`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis.asyncio as aioredis
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from shared.anomaly import AnomalyDetector, AnomalyMiddleware
from shared.authz import PrincipalCheck, http_jwks_fetcher, new_verifiers
from shared.cache import create_redis, ping_redis
from shared.config import Settings
from shared.context import InFlight, RequestContextMiddleware
from shared.db import Database
from shared.errors import EXCEPTION_HANDLERS, ErrorBoundaryMiddleware
from shared.health import Check, Health
from shared.idempotency import run_cleanup
from shared.log import get_logger
from shared.metrics import MetricsMiddleware, metrics_endpoint
from shared.openapi import openapi_document
from shared.ratelimit import make_backend
from shared.revocation import Revocations
from shared.service_client import ServiceClient
from shared.tokens import Verifier
from shared.types import ASGIApp

__all__ = [
    "API_VERSION",
    "IDEMPOTENCY_CLEANUP_TASK",
    "Background",
    "Hook",
    "Runtime",
    "build_runtime",
    "build_service_app",
    "service_middleware",
    "wrap",
]

API_VERSION = "0.1.0"
IDEMPOTENCY_CLEANUP_TASK = "idempotency-cleanup"

Hook = Callable[["Runtime"], Awaitable[None]]
# What `Runtime.run_in_background` runs: given the started runtime, the coroutine of the task.
Background = Callable[["Runtime"], Coroutine[Any, Any, None]]

log = get_logger(__name__)


@dataclass
class Runtime:
    """The process-wide resources of one service, reachable as `request.app.state.runtime`."""

    settings: Settings
    health: Health
    in_flight: InFlight
    revocations: Revocations
    db: Database | None = None
    redis: aioredis.Redis | None = None
    # Audience → the verifier of tokens for it (shared.authz.new_verifiers); `guard(audience=...)` picks one.
    verifiers: dict[str, Verifier] = field(default_factory=dict)
    # None for a process that calls no other service or was given no SERVICE_CLIENT_SECRET (outside production).
    service_client: ServiceClient | None = None
    on_startup: list[Hook] = field(default_factory=list)
    on_shutdown: list[Hook] = field(default_factory=list)
    # Run by `guard` after a principal is authorized, in order; each may refuse it with an ApiError (core refuses
    # every route of a deleted org with 410 gone).
    principal_checks: list[PrincipalCheck] = field(default_factory=list)
    closing: asyncio.Task[None] | None = None

    def verifier_for(self, audience: str) -> Verifier:
        """The verifier of tokens for `audience`; a RuntimeError (a 500) when this process verifies none."""
        try:
            return self.verifiers[audience]
        except KeyError:
            raise RuntimeError(f"this process verifies no tokens for the audience {audience}") from None

    def require_service_client(self) -> ServiceClient:
        """The client to call other services with; a RuntimeError naming the missing setting when there is none."""
        if self.service_client is None:
            raise RuntimeError(f"{self.settings.service} has no service client: set SERVICE_CLIENT_SECRET")
        return self.service_client

    def run_in_background(self, name: str, start: Background) -> None:
        """Run `start(runtime)` as the task `name` from start-up to shutdown: a start-up hook creates it (after the
        pool is open, so `start` may use `runtime.db`), a shutdown hook cancels it and waits for it to end. A task
        that ended early, returned or failed, does not hold up shutdown; a failure is logged when it happens, as
        `background_task_failed` with the task's name, since nothing else awaits the task until then."""
        tasks: list[asyncio.Task[None]] = []

        async def start_task(runtime: Runtime) -> None:
            task = asyncio.create_task(start(runtime), name=name)
            task.add_done_callback(_log_failure)
            tasks.append(task)

        async def stop_task(_: Runtime) -> None:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            tasks.clear()

        self.on_startup.append(start_task)
        self.on_shutdown.append(stop_task)

    async def close(self) -> None:
        """The shutdown hooks (last registered first), then Redis and the pool. Done once: a second caller
        waits for the same work to finish."""
        if self.closing is None:
            self.closing = asyncio.ensure_future(self._close())
        await asyncio.shield(self.closing)

    async def _close(self) -> None:
        for hook in reversed(self.on_shutdown):
            await hook(self)
        if self.redis is not None:
            await self.redis.aclose()
        if self.db is not None:
            await self.db.close()


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and (error := task.exception()) is not None:
        log.error("background_task_failed", task=task.get_name(), error=type(error).__name__, message=str(error))


def build_runtime(settings: Settings) -> Runtime:
    db = Database.from_settings(settings) if settings.database_url else None
    redis = create_redis(settings.redis_url) if settings.redis_url else None
    checks: dict[str, Check] = {}
    if db is not None:
        checks["postgres"] = db.ping
    if redis is not None:
        client = redis

        async def redis_check(timeout_s: float) -> float:
            return await ping_redis(client, timeout_s)

        checks["redis"] = redis_check
    # Redis down degrades a service (limits fall back to its memory) but does not stop it serving.
    health = Health(settings.service, checks, settings.ready_timeout_s, degradable=frozenset({"redis"}))
    fetch_jwks, close_jwks = http_jwks_fetcher(settings.auth_url)
    revocations = Revocations(redis)
    service_client = (
        ServiceClient(settings.auth_url, settings.service_client_id, settings.service_client_secret)
        if settings.service_client_id and settings.service_client_secret
        else None
    )
    runtime = Runtime(
        settings=settings,
        health=health,
        in_flight=InFlight(),
        db=db,
        redis=redis,
        verifiers=new_verifiers(fetch_jwks, settings.token_issuer, revocations.refuses),
        service_client=service_client,
        revocations=revocations,
    )

    async def start_revocations(_: Runtime) -> None:
        await revocations.start()

    async def stop_revocations(_: Runtime) -> None:
        await revocations.stop()

    async def close_jwks_session(_: Runtime) -> None:
        await close_jwks()

    runtime.on_startup.append(start_revocations)
    runtime.on_shutdown.append(stop_revocations)
    runtime.on_shutdown.append(close_jwks_session)
    if db is not None:
        database = db
        runtime.run_in_background(IDEMPOTENCY_CLEANUP_TASK, lambda _: run_cleanup(database))
    if service_client is not None:
        caller = service_client

        async def close_service_client(_: Runtime) -> None:
            await caller.close()

        runtime.on_shutdown.append(close_service_client)
    return runtime


def service_middleware(
    settings: Settings, runtime: Runtime, extra: Sequence[Middleware] = (), *, detect_anomalies: bool = True
) -> list[Middleware]:
    """The shared middleware, outermost first (see the module docstring), then `extra`."""
    return [
        Middleware(
            RequestContextMiddleware,
            trusted_hops=settings.trusted_hops,
            in_flight=runtime.in_flight,
            is_draining=lambda: runtime.health.draining,
        ),
        Middleware(MetricsMiddleware),
        *(
            [Middleware(AnomalyMiddleware, detector=AnomalyDetector(make_backend(runtime.redis)))]
            if detect_anomalies
            else []
        ),
        Middleware(ErrorBoundaryMiddleware),
        *extra,
    ]


def wrap(app: ASGIApp, middleware: Sequence[Middleware]) -> ASGIApp:
    """`app` inside `middleware` (outermost first), as Starlette would stack them, without Starlette's own layers."""
    for cls, args, kwargs in reversed(middleware):
        app = cls(app, *args, **kwargs)
    return app


def build_service_app(
    settings: Settings,
    routes: Sequence[BaseRoute] = (),
    *,
    title: str,
    runtime: Runtime | None = None,
    extra_middleware: Sequence[Middleware] = (),
    detect_anomalies: bool = True,
) -> Starlette:
    """A Starlette app with `/health`, `/ready`, `/metrics`, `/openapi.json` and the shared middleware."""
    runtime = runtime or build_runtime(settings)

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        if runtime.db is not None:
            await runtime.db.start()
        for hook in runtime.on_startup:
            await hook(runtime)
        try:
            yield
        finally:
            await runtime.close()

    operational = [
        Route("/health", runtime.health.health_endpoint, methods=["GET"], name="health"),
        Route("/ready", runtime.health.ready_endpoint, methods=["GET"], name="ready"),
        Route("/metrics", metrics_endpoint, methods=["GET"], name="metrics", include_in_schema=False),
    ]
    all_routes = [*operational, *routes]
    document = orjson.dumps(openapi_document(title, API_VERSION, all_routes))

    async def openapi(_: Request) -> Response:
        return Response(document, media_type="application/json")

    all_routes.append(Route("/openapi.json", openapi, methods=["GET"], include_in_schema=False))
    app = Starlette(
        routes=all_routes,
        middleware=service_middleware(settings, runtime, extra_middleware, detect_anomalies=detect_anomalies),
        exception_handlers=dict(EXCEPTION_HANDLERS),
        lifespan=lifespan,
    )
    app.state.runtime = runtime
    return app
