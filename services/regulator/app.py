"""Composition root of the regulator service: the regulator's login and session guard, its read-only views of one
org (fetched from compliance and core, each read audited in the org's chain), the admins' credential routes, and the
HTML portal. At start-up (when the pool exists) it builds what the handlers share (`services.regulator.deps`)."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.routing import Mount, Route

from services.regulator import api, credentials, deps, health, portal, sessions
from services.regulator.config import RegulatorSettings
from shared.app import Runtime, build_runtime, build_service_app


def create_app(settings: RegulatorSettings) -> Starlette:
    runtime = build_runtime(settings)
    assert runtime.db is not None
    routes = [
        Route("/regulator/health", health.regulator_health, methods=["GET"]),
        Route("/regulator/login", sessions.login, methods=["POST"]),
        Route("/regulator/logout", sessions.logout, methods=["POST"]),
        Route("/regulator/credentials", credentials.list_credentials, methods=["GET"]),
        Route("/regulator/credentials", credentials.create_credential, methods=["POST"]),
        Route("/regulator/credentials/{credential_id}/revoke", credentials.revoke_credential, methods=["POST"]),
        Route("/regulator/compliance/report", api.report, methods=["GET"]),
        Route("/regulator/alerts", api.alerts, methods=["GET"]),
        Route("/regulator/monitoring/snapshots", api.snapshots, methods=["GET"]),
        Route("/regulator/bank-lines/summary", api.bank_line_summary, methods=["GET"]),
        Route("/regulator/evidence", api.evidence_list, methods=["GET"]),
        Route("/regulator/evidence/{pack_id}", api.evidence_item, methods=["GET"]),
        Mount("/regulator/portal", routes=portal.routes),
    ]
    app = build_service_app(settings, routes, title="APGMS regulator service", runtime=runtime)

    async def start(rt: Runtime) -> None:
        app.state.regulator = await deps.start(rt, settings)

    runtime.on_startup.append(start)
    return app
