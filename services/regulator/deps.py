"""What the regulator's handlers share, built once at start-up by `create_app` (`deps.start`): the settings, the
login guard (per-credential and per-address throttling and lockout, in Redis when the service has it, so every
replica counts together), and the name of the portal's session cookie. Handlers reach it with
`regulator_deps(request)`, typed, never through loose `app.state` keys."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg
from starlette.requests import Request

from services.regulator.config import RegulatorSettings
from shared.app import Runtime
from shared.ratelimit import LoginGuard, make_backend

__all__ = [
    "DEV_SESSION_COOKIE",
    "POOL_ACQUIRE_TIMEOUT_S",
    "SECURE_SESSION_COOKIE",
    "RegulatorDeps",
    "regulator_deps",
    "session_cookie_name",
    "start",
]

# `__Host-`: the browser accepts it only Secure, from this host, with Path=/ and no Domain, so a sibling subdomain
# cannot plant a session (cookie tossing). Plain HTTP in dev and test cannot carry it.
SECURE_SESSION_COOKIE = "__Host-apgms_regulator"
DEV_SESSION_COOKIE = "apgms_regulator"
# A handler waiting longer than this for a pool connection would only hide exhaustion.
POOL_ACQUIRE_TIMEOUT_S = 5.0
LOGIN_GUARD_NAME = "regulator-login"


def session_cookie_name(settings: RegulatorSettings) -> str:
    return SECURE_SESSION_COOKIE if settings.secure_cookies else DEV_SESSION_COOKIE


@dataclass(frozen=True)
class RegulatorDeps:
    settings: RegulatorSettings
    runtime: Runtime
    login_guard: LoginGuard

    @property
    def session_cookie(self) -> str:
        """The portal's cookie name, which the guard reads too (only this one: see SECURE_SESSION_COOKIE)."""
        return session_cookie_name(self.settings)

    @property
    def pool(self) -> asyncpg.Pool:
        assert self.runtime.db is not None
        return self.runtime.db.pool


async def start(runtime: Runtime, settings: RegulatorSettings) -> RegulatorDeps:
    return RegulatorDeps(settings, runtime, LoginGuard(make_backend(runtime.redis), name=LOGIN_GUARD_NAME))


def regulator_deps(request: Request) -> RegulatorDeps:
    deps = getattr(request.app.state, "regulator", None)
    if not isinstance(deps, RegulatorDeps):
        raise RuntimeError("the regulator's dependencies are built at start-up; the app has not started")
    return deps
