"""The proxy's settings: the shared ones plus upstreams, route limits, health checks and CORS."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from urllib.parse import urlsplit

from proxy.limits import MAX_REQUESTS_PER_CLIENT, POOL_WAIT_S, BodyPolicy
from proxy.routing import (
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_PREFIXES,
    DEFAULT_TIMEOUT_S,
    MiB,
    RouteTable,
    build_route_table,
)
from proxy.upstreams import HealthPolicy
from shared.config import (
    DEV_ONLY_MARKER,
    SERVICE_PORTS,
    ConfigError,
    Env,
    Secret,
    Settings,
    environ_with_dotenv,
    load_settings,
)

SERVICE_NAME = "api-gateway"
CONNECT_TIMEOUT_S = 2.0
POOL_SIZE_PER_UPSTREAM = 100
REGULATOR_MAX_CONCURRENCY = 32
FEDERATE_TIMEOUT_S = 3.0
# Bulk import takes files above the default 1 MiB: issue #11's 5 MiB per request, the core service's own cap
# (services/core/imports.py MAX_BODY_BYTES), so an oversized file is refused here before it reaches core.
IMPORT_MAX_BODY_BYTES = 5 * MiB
DEFAULT_BODY_LIMITS = {"/bank-lines/import": IMPORT_MAX_BODY_BYTES}
DEFAULT_DEV_ORIGINS = ("http://localhost:3000", "http://127.0.0.1:3000")
# A scrape credential is a bearer token (RFC 6750 section 2.1 characters); 32 characters of hex are 128 bits.
MIN_SCRAPE_TOKEN_CHARS = 32
BEARER_TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
HOST_PORT = re.compile(r"[a-z0-9.\-]+(:[0-9]{1,5})?|\[[0-9a-f:.]+\](:[0-9]{1,5})?")


@dataclass(frozen=True)
class ProxySettings(Settings):
    upstream_urls: dict[str, list[str]]
    routes: RouteTable
    health: HealthPolicy
    cors_allowed_origins: frozenset[str]
    connect_timeout_s: float
    pool_size: int
    pool_wait_s: float
    max_requests_per_client: int
    body: BodyPolicy
    regulator_max_concurrency: int
    federate_timeout_s: float
    metrics_bearer_token: Secret | None  # required on /metrics and /federate in production
    public_hosts: frozenset[bytes]  # the Host values accepted in production, lowercase


def parse_overrides(env: Env, name: str, cast: type[float] | type[int]) -> dict[str, float] | dict[str, int]:
    """`/prefix=value,/other=value` into a mapping, naming the variable on any malformed entry."""
    raw = env.text(name, "")
    result: dict[str, float] = {}
    for entry in filter(None, (part.strip() for part in raw.split(","))):
        prefix, sep, value = entry.partition("=")
        try:
            if not sep or not prefix.startswith("/"):
                raise ValueError
            number = cast(value)
            if not math.isfinite(number) or number < 0 or (cast is float and number == 0):
                raise ValueError
            result[prefix.rstrip("/")] = number
        except ValueError:
            raise ConfigError(f"{name} entries must look like /prefix=positive-number, got {entry!r}") from None
    return result


def parse_prefixes(env: Env) -> tuple[tuple[str, str], ...]:
    """`PROXY_ROUTES=/auth=auth,/users=auth,...` replaces the whole prefix table; unset keeps SPEC's."""
    raw = env.text("PROXY_ROUTES", "")
    if not raw.strip():
        return DEFAULT_PREFIXES
    table = []
    for entry in filter(None, (part.strip() for part in raw.split(","))):
        prefix, sep, service = entry.partition("=")
        if not sep or not prefix.startswith("/") or service not in SERVICE_PORTS:
            raise ConfigError(
                f"PROXY_ROUTES entries must look like /prefix=service with a service among "
                f"{', '.join(SERVICE_PORTS)}, got {entry!r}"
            )
        table.append((prefix.rstrip("/") or "/", service))
    return tuple(table)


def parse_urls(env: Env, service: str) -> list[str]:
    name = f"UPSTREAM_{service.upper()}_URLS"
    raw = env.text(name, f"http://127.0.0.1:{SERVICE_PORTS[service]}")
    urls = [url.strip().rstrip("/") for url in raw.split(",") if url.strip()]
    for url in urls:
        problem = ConfigError(f"{name} must be a comma-separated list of http://host:port URLs, got {url!r}")
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            raise problem from None
        if parts.scheme not in ("http", "https") or not parts.hostname or not port or parts.path:
            raise problem
    if not urls:
        raise ConfigError(f"{name} must name at least one instance")
    return urls


def parse_scrape_token(env: Env, production: bool) -> Secret | None:
    raw = env.text("METRICS_BEARER_TOKEN", "")
    if not raw:
        return None
    if not BEARER_TOKEN.fullmatch(raw) or len(raw) < MIN_SCRAPE_TOKEN_CHARS:
        raise ConfigError(
            f"METRICS_BEARER_TOKEN must be at least {MIN_SCRAPE_TOKEN_CHARS} characters of A-Z a-z 0-9 -._~+/"
        )
    if production and DEV_ONLY_MARKER in raw:
        raise ConfigError("METRICS_BEARER_TOKEN is a dev-only value, refused when APGMS_ENV=production")
    return Secret(raw)


def parse_public_hosts(env: Env, production: bool) -> frozenset[bytes]:
    """`PUBLIC_HOSTS=api.example.com,api.example.com:8443`: required in production, where any other Host is 400."""
    raw = env.text("PUBLIC_HOSTS", "")
    hosts = [host.strip().lower() for host in raw.split(",") if host.strip()]
    for host in hosts:
        if not HOST_PORT.fullmatch(host):
            raise ConfigError(f"PUBLIC_HOSTS entries must look like host or host:port, got {host!r}")
    if production and not hosts:
        raise ConfigError("PUBLIC_HOSTS is required when APGMS_ENV=production (the Host names clients use)")
    return frozenset(host.encode() for host in hosts)


def load_proxy_settings(environ: Mapping[str, str] | None = None) -> ProxySettings:
    merged = environ_with_dotenv(environ)
    # The proxy keeps no state and seals nothing: the services' DATABASE_URL, REDIS_URL, APGMS_MASTER_KEY and client
    # secrets are never read, so it starts without them, in production too, and a bad one cannot stop it.
    base = load_settings(SERVICE_NAME, merged, stateless=True)
    env = Env(merged)
    body_limits = {**DEFAULT_BODY_LIMITS, **parse_overrides(env, "PROXY_BODY_LIMITS", int)}
    timeouts = parse_overrides(env, "PROXY_TIMEOUTS", float)
    try:
        routes = build_route_table(
            parse_prefixes(env),
            default_max_body_bytes=env.integer("PROXY_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES, minimum=0),
            default_timeout_s=env.number("PROXY_TIMEOUT_S", DEFAULT_TIMEOUT_S, minimum=0.01),
            body_limits={k: int(v) for k, v in body_limits.items()},
            timeouts=timeouts,
        )
    except ValueError as exc:
        raise ConfigError(f"PROXY_BODY_LIMITS/PROXY_TIMEOUTS: {exc}") from None
    default_origins = "" if base.is_production else ",".join(DEFAULT_DEV_ORIGINS)
    origins = frozenset(
        o.strip().rstrip("/") for o in env.text("CORS_ALLOWED_ORIGINS", default_origins).split(",") if o.strip()
    )
    return ProxySettings(
        **{f.name: getattr(base, f.name) for f in fields(Settings)},
        upstream_urls={service: parse_urls(env, service) for service in routes.services},
        routes=routes,
        health=HealthPolicy(
            interval_s=env.number("PROXY_HEALTH_INTERVAL_S", HealthPolicy.interval_s, minimum=0.05),
            timeout_s=env.number("PROXY_HEALTH_TIMEOUT_S", HealthPolicy.timeout_s, minimum=0.05),
            unhealthy_threshold=env.integer("PROXY_UNHEALTHY_THRESHOLD", HealthPolicy.unhealthy_threshold, minimum=1),
            healthy_threshold=env.integer("PROXY_HEALTHY_THRESHOLD", HealthPolicy.healthy_threshold, minimum=1),
            eject_after_failures=env.integer(
                "PROXY_EJECT_AFTER_FAILURES", HealthPolicy.eject_after_failures, minimum=1
            ),
        ),
        cors_allowed_origins=origins,
        connect_timeout_s=env.number("PROXY_CONNECT_TIMEOUT_S", CONNECT_TIMEOUT_S, minimum=0.01),
        pool_size=env.integer("PROXY_POOL_SIZE", POOL_SIZE_PER_UPSTREAM, minimum=1),
        pool_wait_s=env.number("PROXY_POOL_WAIT_S", POOL_WAIT_S, minimum=0.01),
        max_requests_per_client=env.integer("PROXY_MAX_REQUESTS_PER_CLIENT", MAX_REQUESTS_PER_CLIENT, minimum=1),
        body=BodyPolicy(
            buffer_max_bytes=env.integer("PROXY_BUFFER_MAX_BYTES", BodyPolicy.buffer_max_bytes, minimum=0),
            buffer_total_bytes=env.integer("PROXY_BUFFER_TOTAL_BYTES", BodyPolicy.buffer_total_bytes, minimum=0),
            idle_timeout_s=env.number("PROXY_BODY_IDLE_TIMEOUT_S", BodyPolicy.idle_timeout_s, minimum=0.01),
            total_timeout_s=env.number("PROXY_BODY_TIMEOUT_S", BodyPolicy.total_timeout_s, minimum=0.01),
        ),
        regulator_max_concurrency=env.integer("REGULATOR_MAX_CONCURRENCY", REGULATOR_MAX_CONCURRENCY, minimum=1),
        federate_timeout_s=env.number("FEDERATE_TIMEOUT_S", FEDERATE_TIMEOUT_S, minimum=0.1),
        metrics_bearer_token=parse_scrape_token(env, base.is_production),
        public_hosts=parse_public_hosts(env, base.is_production),
    )
