"""Typed configuration read once from the environment at start-up.

Precedence is environment > `.env` file (dev and test only) > default. A missing or malformed variable raises
`ConfigError` naming the variable; the runner turns that into one line on stderr and exit code 2.

Each process reads only what it uses: the proxy keeps no state, so it never reads DATABASE_URL, REDIS_URL,
APGMS_MASTER_KEY or a service client's credentials, and starts in production without them; only a process that
seals secrets (auth) reads the master key; only a service that calls others reads SERVICE_CLIENT_SECRET.
"""

from __future__ import annotations

import base64
import binascii
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast
from urllib.parse import urlsplit

__all__ = [
    "CALLING_SERVICES",
    "DEV_ONLY_MARKER",
    "ENVIRONMENTS",
    "MASTER_KEY_BYTES",
    "PROXY_PORT",
    "PUBLIC_DEV_MASTER_KEY",
    "SERVICE_CLIENT_SECRET_VARIABLE",
    "SERVICE_PORTS",
    "ConfigError",
    "Env",
    "Environment",
    "Secret",
    "Settings",
    "environ_with_dotenv",
    "key_problem",
    "load_settings",
    "new_master_key",
    "new_service_client_secret",
    "read_dotenv",
    "service_client_id",
    "service_client_secret_variable",
]

Environment = Literal["dev", "test", "production"]
ENVIRONMENTS: tuple[Environment, ...] = ("dev", "test", "production")

SERVICE_PORTS = {"auth": 3001, "core": 3002, "compliance": 3003, "regulator": 3004}
PROXY_PORT = 3000

DEFAULT_HOST = "127.0.0.1"
DB_CONNECT_TIMEOUT_S = 3.0
DB_STATEMENT_TIMEOUT_MS = 5_000
DB_POOL_MAX_SIZE = 10
READY_CHECK_TIMEOUT_S = 1.0
GRACEFUL_TIMEOUT_S = 15.0
# Long enough for the proxy to eject the instance (two failed 0.5 s checks) before the listener closes.
SHUTDOWN_DELAY_S = 2.0
# A request body's bytes must keep coming (a gap of at most the idle deadline) and be all in within the total one,
# as at the proxy (PROXY_BODY_IDLE_TIMEOUT_S, PROXY_BODY_TIMEOUT_S): a 5 MiB import needs about 90 KB/s.
BODY_IDLE_TIMEOUT_S = 10.0
BODY_TIMEOUT_S = 60.0
DEFAULT_TOKEN_ISSUER = "urn:apgms:auth"  # noqa: S105 (an identifier, not a secret)
MASTER_KEY_BYTES = 32
# The dev master key of earlier versions, published in this repository: whoever can read a database sealed under it
# can open its signing keys and mint tokens. Refused in every environment; `make run` and the `apgms` CLI generate
# a key per checkout instead (apgms.devstack.dev_master_key).
PUBLIC_DEV_MASTER_KEY = base64.b64encode(b"apgms-dev-only-master-key-000000").decode()


# A service calls the others as the OAuth client `service-<name>` (client credentials at the auth service, which
# knows each caller's secret from SERVICE_CLIENT_SECRET_<NAME>, see services/auth/config.py).
SERVICE_CLIENT_ID_PREFIX = "service-"
# The services that call others with a service token: all but auth, which mints its own.
CALLING_SERVICES = tuple(name for name in SERVICE_PORTS if name != "auth")
SERVICE_CLIENT_SECRET_VARIABLE = "SERVICE_CLIENT_SECRET"  # noqa: S105 (a variable's name, not a secret)
# 32 random bytes as base64url are 43 characters; a shorter secret is a typo or a password someone chose.
SERVICE_CLIENT_SECRET_BYTES = 32
MIN_SERVICE_CLIENT_SECRET_CHARS = 43

# Dev-only credentials shipped in the repo (docker-compose.yml, .env examples) contain this marker;
# production refuses any secret that does.
DEV_ONLY_MARKER = "dev-only"


class ConfigError(Exception):
    """A variable is missing or malformed; the message names it and never contains its value if secret."""


class Secret:
    """A value that must never be printed: its repr and str are masked."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def read_dotenv(path: Path) -> dict[str, str]:
    """Parse a `.env` file of `NAME=value` lines (comments and blank lines ignored, optional quotes)."""
    values: dict[str, str] = {}
    if not path.is_file():
        return values
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        name, _, value = line.partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        values[name.strip().removeprefix("export ").strip()] = value
    return values


_MISSING = object()


class Env:
    """Reads and casts variables, raising `ConfigError` with the variable's name on any problem."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ

    def _raw(self, name: str, default: object) -> str | None:
        value = self._environ.get(name)
        if value is None or value == "":
            if default is _MISSING:
                raise ConfigError(f"{name} is required but not set")
            return None
        return value

    def text(self, name: str, default: object = _MISSING) -> str:
        value = self._raw(name, default)
        return cast("str", default) if value is None else value

    def integer(
        self, name: str, default: object = _MISSING, *, minimum: int | None = None, maximum: int | None = None
    ) -> int:
        value = self._raw(name, default)
        if value is None:
            return cast("int", default)
        try:
            number = int(value)
        except ValueError:
            raise ConfigError(f"{name} must be an integer, got {value!r}") from None
        if minimum is not None and number < minimum:
            raise ConfigError(f"{name} must be at least {minimum}, got {number}")
        if maximum is not None and number > maximum:
            raise ConfigError(f"{name} must be at most {maximum}, got {number}")
        return number

    def number(self, name: str, default: object = _MISSING, *, minimum: float = 0.0) -> float:
        value = self._raw(name, default)
        if value is None:
            return cast("float", default)
        try:
            number = float(value)
            if not math.isfinite(number):
                raise ValueError
        except ValueError:
            raise ConfigError(f"{name} must be a finite number, got {value!r}") from None
        if number < minimum:
            raise ConfigError(f"{name} must be at least {minimum}, got {number}")
        return number

    def choice(self, name: str, choices: tuple[str, ...], default: object = _MISSING) -> str:
        value = self.text(name, default)
        if value not in choices:
            raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
        return value

    def master_key(self, name: str, *, required: bool) -> Secret | None:
        """32 bytes, base64; always required in production. The published dev key of earlier versions is refused
        everywhere, and in production any key carrying DEV_ONLY_MARKER."""
        production = self._environ.get("APGMS_ENV") == "production"
        value = self._raw(name, None)
        if value is None:
            if required or production:
                raise ConfigError(
                    f"{name} is required but not set (32 random bytes, base64; `make run` and the apgms CLI "
                    "generate one per checkout in .devdb/master.key)"
                )
            return None
        problem = key_problem(value, MASTER_KEY_BYTES, production=production)
        if problem is not None:
            raise ConfigError(f"{name} {problem}")
        return Secret(value)

    def url(self, name: str, schemes: tuple[str, ...], *, required: bool) -> Secret | None:
        """A connection URL; it may hold a password, so it is wrapped and never echoed in errors."""
        value = self._raw(name, _MISSING if required else None)
        if value is None:
            return None
        if DEV_ONLY_MARKER in value and self._environ.get("APGMS_ENV") == "production":
            raise ConfigError(f"{name} uses a dev-only default credential, refused when APGMS_ENV=production")
        problem = ConfigError(f"{name} must be a {' or '.join(schemes)} URL with a host")
        try:
            parts = urlsplit(value)
            located = parts.hostname or "host=" in parts.query or (parts.scheme == "unix" and parts.path)
            _ = parts.port  # raises for a port that is not a number from 0 to 65535
        except ValueError:
            raise problem from None
        if parts.scheme not in schemes or not located:
            raise problem
        return Secret(value)

    def client_secret(self, name: str, *, required: bool) -> Secret | None:
        """A service client's secret: at least MIN_SERVICE_CLIENT_SECRET_CHARS characters; in production one
        carrying DEV_ONLY_MARKER is refused, and a missing one too when `required`."""
        production = self._environ.get("APGMS_ENV") == "production"
        value = self._raw(name, _MISSING if required and production else None)
        if value is None:
            return None
        if len(value) < MIN_SERVICE_CLIENT_SECRET_CHARS:
            raise ConfigError(f"{name} must be at least {MIN_SERVICE_CLIENT_SECRET_CHARS} characters")
        if production and DEV_ONLY_MARKER in value:
            raise ConfigError(f"{name} is a dev-only value, refused when APGMS_ENV=production")
        return Secret(value)


@dataclass(frozen=True)
class Settings:
    """What every service and the proxy read at start-up."""

    service: str
    env: Environment
    host: str
    port: int
    database_url: Secret | None
    redis_url: Secret | None
    log_level: str
    db_connect_timeout_s: float
    db_statement_timeout_ms: int
    db_pool_max_size: int
    ready_timeout_s: float
    graceful_timeout_s: float
    shutdown_delay_s: float
    body_idle_timeout_s: float
    body_timeout_s: float
    trusted_hops: int
    master_key: Secret | None  # read only by a process that seals secrets (auth)
    token_issuer: str
    auth_url: str
    # The OAuth client this service calls the others as; the secret is None outside production when not given
    # (then the service has no `runtime.service_client`), and always for a process that calls no one.
    service_client_id: str | None
    service_client_secret: Secret | None

    @property
    def is_production(self) -> bool:
        return self.env == "production"

    def require_master_key(self) -> Secret:
        if self.master_key is None:
            raise ConfigError("APGMS_MASTER_KEY is required but not set")
        return self.master_key


def environ_with_dotenv(environ: Mapping[str, str] | None = None, dotenv: Path = Path(".env")) -> dict[str, str]:
    """The process environment over the `.env` file; the file is ignored in production."""
    base = dict(os.environ if environ is None else environ)
    if base.get("APGMS_ENV") == "production":
        return base
    return {**read_dotenv(dotenv), **base}


def load_settings(
    service: str,
    environ: Mapping[str, str] | None = None,
    *,
    database_required: bool = True,
    master_key_required: bool = False,
    stateless: bool = False,
    service_client: bool = False,
) -> Settings:
    """Read and validate once the variables this process uses; raises `ConfigError` naming the first bad one.

    `master_key_required`: the process seals secrets (auth) and needs APGMS_MASTER_KEY in every environment; no
    other process reads it. `stateless`: DATABASE_URL and REDIS_URL are not read (the proxy). `service_client`:
    the service calls others as the client `service-<name>` and reads its SERVICE_CLIENT_SECRET, required in
    production."""
    env = Env(environ_with_dotenv(environ))
    return Settings(
        service=service,
        env=cast("Environment", env.choice("APGMS_ENV", ENVIRONMENTS, "dev")),
        host=env.text("HOST", DEFAULT_HOST),
        port=env.integer("PORT", SERVICE_PORTS.get(service, PROXY_PORT), minimum=0, maximum=65535),
        database_url=None
        if stateless
        else env.url("DATABASE_URL", ("postgres", "postgresql"), required=database_required),
        redis_url=None if stateless else env.url("REDIS_URL", ("redis", "rediss", "unix"), required=False),
        log_level=env.choice("LOG_LEVEL", ("debug", "info", "warning", "error"), "info"),
        db_connect_timeout_s=env.number("DB_CONNECT_TIMEOUT_S", DB_CONNECT_TIMEOUT_S),
        db_statement_timeout_ms=env.integer("DB_STATEMENT_TIMEOUT_MS", DB_STATEMENT_TIMEOUT_MS, minimum=1),
        db_pool_max_size=env.integer("DB_POOL_MAX_SIZE", DB_POOL_MAX_SIZE, minimum=1),
        ready_timeout_s=env.number("READY_CHECK_TIMEOUT_S", READY_CHECK_TIMEOUT_S),
        graceful_timeout_s=env.number("GRACEFUL_TIMEOUT_S", GRACEFUL_TIMEOUT_S),
        shutdown_delay_s=env.number("SHUTDOWN_DELAY_S", SHUTDOWN_DELAY_S),
        body_idle_timeout_s=env.number("BODY_IDLE_TIMEOUT_S", BODY_IDLE_TIMEOUT_S),
        body_timeout_s=env.number("BODY_TIMEOUT_S", BODY_TIMEOUT_S),
        trusted_hops=env.integer("TRUSTED_PROXY_HOPS", 0, minimum=0),
        master_key=env.master_key("APGMS_MASTER_KEY", required=True) if master_key_required else None,
        token_issuer=env.text("TOKEN_ISSUER", DEFAULT_TOKEN_ISSUER),
        auth_url=env.text("AUTH_URL", f"http://127.0.0.1:{SERVICE_PORTS['auth']}").rstrip("/"),
        service_client_id=service_client_id(service) if service_client else None,
        service_client_secret=env.client_secret(SERVICE_CLIENT_SECRET_VARIABLE, required=True)
        if service_client
        else None,
    )


def service_client_id(service: str) -> str:
    """The OAuth client id a service calls the others as."""
    return SERVICE_CLIENT_ID_PREFIX + service


def service_client_secret_variable(service: str) -> str:
    """Where the auth service reads the secret of `service`'s client: SERVICE_CLIENT_SECRET_CORE, ..."""
    return f"{SERVICE_CLIENT_SECRET_VARIABLE}_{service.upper()}"


def new_service_client_secret() -> str:
    """A fresh random service client secret (base64url, MIN_SERVICE_CLIENT_SECRET_CHARS characters)."""
    return base64.urlsafe_b64encode(os.urandom(SERVICE_CLIENT_SECRET_BYTES)).decode().rstrip("=")


def key_problem(value: str, size: int, *, production: bool) -> str | None:
    """Why `value` is not a usable key of `size` bytes written in base64, as the end of a sentence that starts with
    the key's name, or None: not base64 of `size` bytes, the dev key published in earlier versions (refused
    everywhere), or a key carrying DEV_ONLY_MARKER in production. Never echoes the value."""
    try:
        key = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        key = None
    if key is None or len(key) != size:
        return f"must be {size} bytes, base64-encoded"
    if key == base64.b64decode(PUBLIC_DEV_MASTER_KEY):
        return "is the dev key published in earlier versions, refused everywhere"
    if production and DEV_ONLY_MARKER.encode() in key:
        return "is a dev-only key, refused when APGMS_ENV=production"
    return None


def new_master_key() -> str:
    """A fresh random master key, base64-encoded as `APGMS_MASTER_KEY` takes it."""
    return base64.b64encode(os.urandom(MASTER_KEY_BYTES)).decode()
