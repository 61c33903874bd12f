"""Composition root of the auth service."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.routing import Route

from services.auth import internal, mfa, oauth, sessions, users
from services.auth.config import AuthSettings
from services.auth.keys import SigningKeys
from shared.app import Runtime, build_runtime, build_service_app
from shared.authz import new_verifiers
from shared.crypto import SecretBox
from shared.ratelimit import LoginGuard, make_backend


def create_app(settings: AuthSettings) -> Starlette:
    runtime = build_runtime(settings)
    assert runtime.db is not None
    box = SecretBox(settings.require_master_key())
    routes = [
        Route("/auth/login", sessions.login, methods=["POST"]),
        Route("/auth/refresh", sessions.refresh, methods=["POST"]),
        Route("/auth/logout", sessions.logout, methods=["POST"]),
        Route("/auth/me", sessions.me, methods=["GET"]),
        Route("/auth/.well-known/jwks.json", sessions.jwks, methods=["GET"]),
        Route("/auth/mfa/totp/begin", mfa.totp_begin, methods=["POST"]),
        Route("/auth/mfa/totp/confirm", mfa.totp_confirm, methods=["POST"]),
        Route("/auth/mfa/step-up", mfa.step_up, methods=["POST"]),
        Route("/auth/oauth/token", oauth.token, methods=["POST"]),
        Route("/users", users.list_users, methods=["GET"]),
        Route("/users", users.create_user, methods=["POST"]),
        Route("/users/{user_id}", users.update_user, methods=["PATCH"]),
        Route("/users/{user_id}/mfa", mfa.reset_totp, methods=["DELETE"]),
        Route("/internal/orgs/{org_id}/users", internal.org_users, methods=["GET"]),
        Route("/internal/orgs/{org_id}/erase", internal.erase_org, methods=["POST"]),
    ]
    app = build_service_app(settings, routes, title="APGMS auth service", runtime=runtime)

    async def start(rt: Runtime) -> None:
        assert rt.db is not None
        keys = SigningKeys(rt.db.pool, box)
        app.state.issuer = sessions.Issuer(settings, keys)
        app.state.box = box
        app.state.login_guard = LoginGuard(make_backend(rt.redis))
        # The auth service verifies its own tokens from its own keys, not over HTTP to itself.
        rt.verifiers = new_verifiers(keys.jwks, settings.token_issuer, rt.revocations.refuses)

    runtime.on_startup.append(start)
    return app
