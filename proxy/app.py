"""Composition root of the routing proxy (`api-gateway`): the one public port in front of every service."""

from __future__ import annotations

import asyncio

import aiohttp
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Route

from proxy.config import ProxySettings
from proxy.edge import EdgeMiddleware
from proxy.forward import SKIP_AUTO_HEADERS, ForwardedRequest, Forwarder
from proxy.limits import ClientCap, PoolGate
from proxy.scrape import ScrapeCredentialMiddleware, federate_endpoint
from proxy.upstreams import Upstream, build_upstreams, run_health_checks
from shared.app import Runtime, build_runtime, build_service_app, service_middleware, wrap
from shared.health import Check
from shared.log import get_logger
from shared.types import ASGIApp, Receive, Scope, Send

KEEPALIVE_TIMEOUT_S = 30.0
# How long a resolved upstream name is kept (aiohttp's default, named): an instance rescheduled at a new address
# under the same name is reached within this.
DNS_CACHE_TTL_S = 60
# The pool of the session for health checks and /federate, each of which reaches every instance at once: room for
# this many instances per service, and some spare.
HEALTH_CONNECTIONS_PER_UPSTREAM = 4
HEALTH_SPARE_CONNECTIONS = 8

log = get_logger(__name__)


def upstream_check(upstream: Upstream) -> Check:
    """A readiness check that passes when the service has a ready instance, per the last active checks."""

    async def check(_: float) -> float:
        if not upstream.ready:
            raise ConnectionError(f"no ready instance of {upstream.service}")
        return 0.0

    return check


def new_session(pool_size: int, *, fresh_connections: bool = False) -> aiohttp.ClientSession:
    """A pooled client session; with `fresh_connections`, each request opens its own connection and closes it."""
    keep_alive = {"force_close": True} if fresh_connections else {"keepalive_timeout": KEEPALIVE_TIMEOUT_S}
    connector = aiohttp.TCPConnector(limit=pool_size, ttl_dns_cache=DNS_CACHE_TTL_S, **keep_alive)
    return aiohttp.ClientSession(
        connector=connector,
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        skip_auto_headers=SKIP_AUTO_HEADERS,
        request_class=ForwardedRequest,
    )


def create_app(settings: ProxySettings) -> ProxyDispatch:
    upstreams = build_upstreams(settings.upstream_urls)
    runtime = build_runtime(settings)
    runtime.health.checks.update({name: upstream_check(upstream) for name, upstream in upstreams.items()})
    sessions: dict[str, aiohttp.ClientSession] = {}
    tasks: list[asyncio.Task[None]] = []

    async def start(_: Runtime) -> None:
        for service in upstreams:
            sessions[service] = new_session(settings.pool_size)
        # Each check on a new connection: behind a Kubernetes Service (one URL, kube-proxy spreading connections
        # over the ready pods) a kept-alive check would stay on one pod, and that pod draining (/ready 503 for
        # SHUTDOWN_DELAY_S) would eject the whole service while its other pods are ready. A new connection reaches
        # only a ready pod, so the check asks "does this URL have a ready instance", which is what routing needs.
        health_pool = len(upstreams) * HEALTH_CONNECTIONS_PER_UPSTREAM + HEALTH_SPARE_CONNECTIONS
        sessions["_health"] = new_session(health_pool, fresh_connections=True)
        tasks.append(asyncio.create_task(run_health_checks(sessions["_health"], upstreams, settings.health)))

    async def stop(_: Runtime) -> None:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*(session.close() for session in sessions.values()))

    runtime.on_startup.append(start)
    runtime.on_shutdown.append(stop)
    edge = [
        Middleware(
            EdgeMiddleware,
            allowed_origins=settings.cors_allowed_origins,
            public_hosts=settings.public_hosts if settings.is_production else None,
            trusted_hops=settings.trusted_hops,
            hsts=settings.is_production,
        )
    ]
    own_endpoints = edge
    if settings.is_production:
        own_endpoints = [*edge, Middleware(ScrapeCredentialMiddleware, token=settings.metrics_bearer_token)]
        if settings.metrics_bearer_token is None:
            log.warning(
                "scraping_disabled", reason="METRICS_BEARER_TOKEN is not set: /metrics and /federate answer 401"
            )
    # The services count 401/403 per address and principal; counting them here too would double the events.
    app = build_service_app(
        settings,
        [Route("/federate", federate_endpoint(settings, upstreams, sessions), methods=["GET"], name="federate")],
        title="APGMS api-gateway",
        runtime=runtime,
        extra_middleware=own_endpoints,
        detect_anomalies=False,
    )
    forwarder = Forwarder(
        routes=settings.routes,
        upstreams=upstreams,
        sessions=sessions,
        policy=settings.health,
        trusted_hops=settings.trusted_hops,
        regulator_slots=asyncio.Semaphore(settings.regulator_max_concurrency),
        connect_timeout_s=settings.connect_timeout_s,
        pool_gates={service: PoolGate(settings.pool_size) for service in upstreams},
        pool_wait_s=settings.pool_wait_s,
        clients=ClientCap(settings.max_requests_per_client),
        body=settings.body,
        is_draining=lambda: runtime.health.draining,
    )
    proxied = wrap(forwarder, service_middleware(settings, runtime, edge, detect_anomalies=False))
    return ProxyDispatch(app, proxied)


class ProxyDispatch:
    """Proxied requests go through our middleware straight to the forwarder; the proxy's own endpoints (and the
    lifespan) through Starlette. Skipping Starlette's router and exception layers on the hot path: +14%
    throughput in bench/proxy.py's setup (granian, c=50)."""

    def __init__(self, app: Starlette, proxied: ASGIApp) -> None:
        self.app = app
        self.proxied = proxied
        self.state = app.state
        self.own_paths = frozenset(route.path for route in app.routes if isinstance(route, Route))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in self.own_paths:
            await self.proxied(scope, receive, send)
        else:
            await self.app(scope, receive, send)
